"""The CDS Hooks adapter's pure parts: card uuids, reading a hook call, writing cards."""

from __future__ import annotations

import re
import uuid

import pytest

from cds.catalog.snapshot import Institution, Snapshot
from cds.domain import Decision, EncounterType, Evaluation, ItemCategory, ItemDecision, Reason
from cds.hooks.cards import SUMMARY_MAX, CardMaker
from cds.hooks.fhir import Draft, HookError, read_call
from cds.hooks.ids import CARD, SUGGESTION, card_ref, card_uuid, new_decision_ids
from cds.orders.checker import Checked

# --------------------------------------------------------------------------- card uuids


def test_a_card_uuid_is_an_rfc_version_8_uuid_that_names_decision_line_and_kind():
    ids = new_decision_ids()
    for _ in range(3):
        decision_id = ids()
        for line in (0, 1, 99):
            for kind in (CARD, SUGGESTION):
                card = card_uuid(decision_id, line, kind)
                parsed = uuid.UUID(card)
                assert (parsed.version, parsed.variant) == (8, uuid.RFC_4122)
                assert card_ref(card) == (decision_id, line, kind)


def test_the_hooks_doors_decision_ids_keep_the_shape_the_uuid_packs():
    assert re.fullmatch(r"[0-9a-f]{16}-1", new_decision_ids()())


@pytest.mark.parametrize(
    "card", [str(uuid.uuid4()), "not-a-uuid", "", "00000000-0000-8000-8000-000000000000"]
)
def test_anything_else_is_not_a_card_of_ours(card):
    assert card_ref(card) is None


def test_a_decision_id_of_another_shape_cannot_become_a_card():
    with pytest.raises(ValueError):
        card_uuid("abc-1", 0)


# --------------------------------------------------------------------------- reading a call


def sr(sr_id, *codings, **fields):
    resource = {"resourceType": "ServiceRequest", "code": {"coding": list(codings)}, **fields}
    if sr_id is not None:
        resource["id"] = sr_id
    return resource


def ours(code, system="urn:cds:item"):
    return {"system": system, "code": code}


def call(*resources, hook="order-sign", institution="H1", code_system="urn:cds:item", **extra):
    context = {
        "patientId": "P1",
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]},
        **extra.pop("context", {}),
    }
    body = {"hook": hook, "hookInstance": "i-1", "context": context, **extra}
    return read_call(body, hook, code_system, institution, 1_700_000_000_000_000)


def test_only_service_requests_with_a_coding_of_the_code_system_become_lines():
    loinc = {"system": "http://loinc.org", "code": "2823-3"}
    got = call(
        {"resourceType": "MedicationRequest", "id": "m"},
        sr("a", loinc),
        sr("b", loinc, ours("K")),
        sr(None, ours("HBA1C")),
        {"resourceType": "ServiceRequest", "id": "c", "code": {"text": "free text"}},
    )
    assert [(i.line_id, i.item_code) for i in got.order.items] == [("b", "K"), ("entry-3", "HBA1C")]
    assert got.drafts == (Draft(2, "b"), Draft(3, ""))
    lab = call(sr("a", loinc), code_system="http://loinc.org")
    assert [i.item_code for i in lab.order.items] == ["2823-3"]


def test_no_line_of_ours_is_no_order():
    assert call(sr("a", {"system": "http://loinc.org", "code": "x"})).order is None


def test_line_details_come_from_category_extension_performer_and_supporting_info():
    (line,) = call(
        sr(
            "g",
            ours("EGFR"),
            category=[{"coding": [{"system": "urn:cds:item-category", "code": "GENE_TEST"}]}],
            extension=[{"url": "urn:cds:price-item", "valueCode": "P-1"}],
            performer=[{"identifier": {"system": "urn:cds:sendout-lab", "value": "LAB1"}}],
            supportingInfo=[{"reference": "Consent/c1"}],
        )
    ).order.items
    assert line[2:] == (ItemCategory.GENE_TEST, "P-1", "LAB1", True)
    (bare,) = call(sr("g", ours("EGFR"))).order.items
    assert bare[2:] == (ItemCategory.UNSPECIFIED, "", "", False)


def condition(code, status="active", system="http://hl7.org/fhir/sid/icd-10"):
    return {"resourceType": "Condition", "clinicalStatus": status,
            "code": {"coding": [{"system": system, "code": code}]}}  # fmt: skip


def test_active_icd10_conditions_of_prefetch_become_diagnoses():
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": condition("C34.1")},
            {"resource": condition("J18.9", {"coding": [{"code": "resolved"}]})},
            {"resource": condition("254637007", system="http://snomed.info/sct")},
            {"resource": condition("C50.9", system="http://hl7.org/fhir/sid/icd-10-cm")},
        ],
    }
    got = call(sr("a", ours("K")), prefetch={"x": bundle, "y": None, "z": condition("C34.1")})
    assert got.order.diagnosis_codes == ("C34.1", "C50.9")


@pytest.mark.parametrize(
    ("encounter", "expected"),
    [
        ({"class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"}},
         EncounterType.EMERGENCY),
        ({"class": [{"coding": [{"code": "IMP"}]}]}, EncounterType.INPATIENT),  # R5
        ({"class": {"code": "AMB"}}, EncounterType.OUTPATIENT),
        ({"class": {"system": "http://other.example", "code": "EMER"}}, EncounterType.UNSPECIFIED),
    ],
)  # fmt: skip
def test_the_encounter_class_gives_the_encounter_type(encounter, expected):
    prefetch = {"encounter": {"resourceType": "Encounter", **encounter}}
    assert call(sr("a", ours("K")), prefetch=prefetch).order.encounter_type == expected


def test_clinician_department_mdt_and_first_visit_are_read():
    order = call(
        sr("a", ours("K")),
        context={"userId": "Practitioner/7"},
        extension={"urn:cds:first-oncology-visit": True, "urn:cds:mdt-record-id": "MDT-1",
                   "urn:cds:department-id": "D1"},
    ).order  # fmt: skip
    assert (order.clinician_id, order.department_id, order.mdt_record_id) == (
        "Practitioner/7", "D1", "MDT-1")  # fmt: skip
    assert order.first_oncology_visit and order.request_id == "i-1"


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"institution": None}, 412, "institution: the JWT has no tenant"),
        ({"context": {"patientId": ""}}, 412, "context.patientId: required"),
        ({"context": {"userId": "u" * 129}}, 400, "context.userId: longer than 128 characters"),
        ({"hookInstance": 7}, 400, "hookInstance: expected a string"),
        ({"extension": {"urn:cds:first-oncology-visit": "yes"}}, 400,
         "extension.urn:cds:first-oncology-visit: expected true or false"),
        ({"prefetch": []}, 400, "prefetch: expected a JSON object"),
    ],
)  # fmt: skip
def test_a_bad_call_is_refused_naming_what_the_caller_sent(kwargs, status, message):
    with pytest.raises(HookError) as refused:
        call(sr("a", ours("K")), **kwargs)
    assert (refused.value.status, refused.value.message[: len(message)]) == (status, message)


def test_a_line_over_the_string_limit_is_named_by_its_entry():
    with pytest.raises(HookError) as refused:
        call(sr("a", ours("K")), sr("b", ours("K" * 129)))
    assert refused.value.message == (
        "context.draftOrders.entry[1].resource.code.coding.code: longer than 128 characters"
    )


# --------------------------------------------------------------------------- cards


def reason(message, decision=Decision.WARN, code="GENE_TEST_INDICATION_MISMATCH"):
    return Reason(code, decision, message, source="见 https://policy.example/doc，第三条")


def test_a_long_summary_is_cut_under_140_characters_and_counts_the_other_reasons():
    snapshot = Snapshot.create(
        version="v", institutions=[Institution("H1", "一院", "", frozenset())]
    )
    reasons = (reason("长" * 300, Decision.BLOCK, "CONSENT_REQUIRED"), reason("短"))
    item = ItemDecision("1", "EGFR", Decision.BLOCK, reasons)
    checked = Checked(new_decision_ids()(), "v", Evaluation(Decision.BLOCK, (item,)), ())
    (card,) = CardMaker(snapshot).cards(checked, (Draft(0, "sr"),))
    assert len(card["summary"]) <= SUMMARY_MAX and card["summary"].endswith("…（共 2 条）")
    assert card["indicator"] == "critical"
    assert card["source"]["url"] == "https://policy.example/doc"
    assert card["source"]["topic"]["code"] == "CONSENT_REQUIRED"
    assert "suggestions" not in card and "overrideReasons" not in card


def test_markdown_in_clinician_text_is_escaped():
    snapshot = Snapshot.create(version="v")
    item = ItemDecision("1", "X", Decision.WARN, (reason("a|b *c* <d>"),))
    checked = Checked(new_decision_ids()(), "v", Evaluation(Decision.WARN, (item,)), ())
    (card,) = CardMaker(snapshot).cards(checked, (Draft(0, ""),))
    assert r"a\|b \*c\* \<d\>" in card["detail"]
