"""CDS Hooks end to end: a real `cds serve --hooks-listen`, called over HTTP as an EMR
would, with results fed and decisions checked over gRPC.

Discovery, every rule as a card, an unsigned session with a duplicate across two
ServiceRequests, feedback reaching the decision log and the metrics, every error
status, and requests and feedback in the shapes other implementations send
(tests/data/hooks: our own fixtures, written after the public shapes of the Inferno
Da Vinci CRD test kit, HL7's PDDI-CDS guide and AHRQ's CQL Services).
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

import pytest

from cds.domain import OVERRIDABLE_CODES, ReasonCode
from cds.hooks.ids import card_ref, card_uuid
from cds.v1 import result_feed_pb2
from tests.support.protos import DAY_US, now_us, result
from tests.support.server import DATA, load_test_catalog, running_server

pytestmark = pytest.mark.e2e

HOOKS_DATA = DATA / "hooks"
REPORT = "https://platform.example/report?id={result_id}"
SIGN = "/cds-services/cds-order-sign"
SELECT = "/cds-services/cds-order-select"


def hooks_catalog() -> dict[str, Any]:
    """The test catalogue with a report viewer and a lab whose qualification ended."""
    catalog = copy.deepcopy(load_test_catalog())
    catalog["report_url_template"] = REPORT
    catalog["sendout_labs"].append(
        {
            "id": "LAB-OLD",
            "name": "资质过期的检验所",
            "qualification_valid_until": "2020-12-31",
            "approved": [{"institution_id": "H1", "gene_tests": ["EGFR"]}],
        }
    )
    return catalog


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hooks")
    args = ["--hooks-listen", "127.0.0.1:0", "--hooks-institution", "H1"]
    with running_server(workdir, hooks_catalog(), extra_args=args) as s:
        yield s


def service_request(sr_id: str | None, code: str, *, system: str = "urn:cds:item", **line: Any):
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": system, "code": code}]},
    }
    if sr_id is not None:
        resource["id"] = sr_id
    if "category" in line:
        resource["category"] = [
            {"coding": [{"system": "urn:cds:item-category", "code": line["category"]}]}
        ]
    if "price" in line:
        resource["extension"] = [{"url": "urn:cds:price-item", "valueString": line["price"]}]
    if "lab" in line:
        resource["performer"] = [
            {"identifier": {"system": "urn:cds:sendout-lab", "value": line["lab"]}}
        ]
    if line.get("consent"):
        resource["supportingInfo"] = [{"reference": f"Consent/c-{sr_id}"}]
    return resource


def hook_request(
    *resources: dict[str, Any],
    patient: str,
    hook: str = "order-sign",
    diagnoses: tuple[str, ...] = (),
    encounter_class: str | None = None,
    extension: dict[str, Any] | None = None,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/dr-1",
            "patientId": patient,
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [{"resource": r} for r in resources],
            },
        },
    }
    prefetch: dict[str, Any] = {}
    if diagnoses:
        prefetch["conditions"] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Condition",
                        "clinicalStatus": {"coding": [{"code": "active"}]},
                        "code": {
                            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": d}]
                        },
                    }
                }
                for d in diagnoses
            ],
        }
    if encounter_class is not None:
        prefetch["encounter"] = {"resourceType": "Encounter", "class": {"code": encounter_class}}
    if prefetch:
        request["prefetch"] = prefetch
    if extension is not None:
        request["extension"] = extension
    return request


def put(server, *results):
    answer = server.feed.PutResults(result_feed_pb2.PutResultsRequest(results=results), timeout=5)
    assert answer.accepted == len(results), answer.errors


def cards_of(server, request, path=SIGN):
    status, body = server.hooks(path, request)
    assert status == 200, body
    return body["cards"]


def reasons(card):
    return card["extension"]["cds.decision"]["reason_codes"]


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


# --------------------------------------------------------------------------- discovery


def test_discovery_lists_order_select_and_order_sign_with_what_they_prefetch(server):
    status, body = server.hooks("/cds-services")
    assert status == 200
    services = {s["id"]: s for s in body["services"]}
    assert {k: s["hook"] for k, s in services.items()} == {
        "cds-order-select": "order-select",
        "cds-order-sign": "order-sign",
    }
    for s in services.values():
        assert s["description"] and s["title"]
        assert s["prefetch"]["conditions"] == "Condition?patient={{context.patientId}}"


# --------------------------------------------------------------------------- every rule

YESTERDAY = now_us() - DAY_US
GENE = {"category": "GENE_TEST", "consent": True}
# reason code -> (draft orders, results the patient has, diagnoses, encounter class, extension)
RULES: dict[str, tuple[list[dict[str, Any]], list[tuple[str, str]], tuple[str, ...], Any, Any]] = {
    "RECOGNIZABLE_RESULT_EXISTS": ([service_request("k", "K")], [("K", "H2")], (), None, None),
    "RECOGNITION_EXEMPT_EMERGENCY": ([service_request("k", "K")], [("K", "H1")], (), "EMER", None),
    "DUPLICATE_IN_REQUEST": ([service_request("a", "NA"), service_request("b", "NA")], [], (),
                             None, None),
    "GENE_TEST_NOT_IN_CATALOGUE": ([service_request("g", "GENE-X", category="GENE_TEST")], [],
                                   (), None, None),
    "GENE_TEST_NOT_PRICED": ([service_request("g", "NTRK", **GENE)], [], (), None, None),
    "PRICE_ITEM_MISMATCH": ([service_request("g", "EGFR", price="P-OTHER", **GENE)], [],
                            ("C34.1",), None, None),
    "GENE_TEST_INDICATION_MISMATCH": ([service_request("g", "EGFR", **GENE)], [], ("C50.9",),
                                      None, None),
    "MDT_REQUIRED": ([service_request("g", "EGFR", **GENE)], [], ("C34.1",), None,
                     {"urn:cds:first-oncology-visit": True}),
    "CONSENT_REQUIRED": ([service_request("g", "EGFR", category="GENE_TEST")], [], ("C34.1",),
                         None, None),
    "SENDOUT_LAB_NOT_APPROVED": ([service_request("g", "EGFR", lab="LAB-NONE", **GENE)], [],
                                 ("C34.1",), None, None),
    "SENDOUT_LAB_QUALIFICATION_EXPIRED": ([service_request("g", "EGFR", lab="LAB-OLD", **GENE)],
                                          [], ("C34.1",), None, None),
    "SENDOUT_AVAILABLE_IN_HOUSE": ([service_request("g", "EGFR", lab="LAB1", **GENE)], [],
                                   ("C34.1",), None, None),
    "GENE_TEST_REPEATED": ([service_request("g", "EGFR", **GENE)], [("EGFR", "H3")], ("C34.1",),
                           None, None),
}  # fmt: skip
INDICATOR = {"BLOCK": "critical", "WARN": "warning", "ALLOW": "info"}


def test_the_rule_table_covers_every_reason_code():
    assert set(RULES) == {str(c) for c in ReasonCode}


@pytest.mark.parametrize("code", sorted(RULES))
def test_each_rule_is_a_card_with_its_indicator_summary_source_and_override_reasons(server, code):
    drafts, results, diagnoses, encounter, extension = RULES[code]
    patient = f"P-RULE-{code}"
    put(server, *(result(f"R-{code}-{i}", patient, item, inst, YESTERDAY)
                  for i, (item, inst) in enumerate(results)))  # fmt: skip
    request = hook_request(
        *drafts,
        patient=patient,
        diagnoses=diagnoses,
        encounter_class=encounter,
        extension=extension,
    )
    cards = [c for c in cards_of(server, request) if code in reasons(c)]
    assert len(cards) == 1, cards
    card = cards[0]
    decision = card["extension"]["cds.decision"]["decision"].removeprefix("DECISION_")
    assert card["indicator"] == INDICATOR[decision]
    assert 0 < len(card["summary"]) < 140
    assert card["source"]["label"]
    assert f"`{code}`" in card["detail"]
    assert ("overrideReasons" in card) == (code in OVERRIDABLE_CODES)
    for reason in card.get("overrideReasons", ()):
        assert reason["system"] == "urn:cds:override-reason" and reason["display"]
    ref = card_ref(card["uuid"])
    assert ref is not None and ref.decision_id == card["extension"]["cds.decision"]["decision_id"]


def test_a_recognisable_result_card_lists_and_links_the_prior_result_and_suggests_dropping(
    server,
):
    put(server, result("R-LINK/1", "P-LINK", "K", "H2", YESTERDAY))
    (card,) = cards_of(server, hook_request(service_request("sr-k", "K"), patient="P-LINK"))
    assert "测试第二医院" in card["detail"] and "R-LINK/1" in card["detail"]
    assert card["links"] == [
        {
            "label": card["links"][0]["label"],
            "url": "https://platform.example/report?id=R-LINK%2F1",
            "type": "absolute",
        }
    ]
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    assert suggestion["actions"] == [
        {"type": "delete", "description": suggestion["label"], "resourceId": "ServiceRequest/sr-k"}
    ]
    assert card_ref(suggestion["uuid"]).kind == 1 and suggestion["uuid"] != card["uuid"]


def test_a_session_with_the_same_item_in_two_service_requests_warns_the_second(server):
    first, second = service_request("sr-1", "HBA1C"), service_request("sr-2", "HBA1C")
    other = {"resourceType": "MedicationRequest", "id": "rx", "status": "draft"}
    request = hook_request(first, other, second, patient="P-SESSION", hook="order-select")
    request["context"]["selections"] = ["ServiceRequest/sr-2"]
    (card,) = cards_of(server, request, SELECT)
    assert reasons(card) == ["DUPLICATE_IN_REQUEST"]
    assert card["extension"]["cds.decision"]["line_id"] == "sr-2"
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/sr-2"


def test_a_request_naming_no_item_of_ours_has_no_cards_and_no_decision(server):
    request = hook_request(service_request("x", "2823-3", system="http://loinc.org"),
                           patient="P-NONE")  # fmt: skip
    before = server.metrics_text()
    assert cards_of(server, request) == []
    assert metric(server.metrics_text(), "cds_item_decisions_total", decision="allow") == metric(
        before, "cds_item_decisions_total", decision="allow"
    )


# --------------------------------------------------------------------------- feedback


def feedback(server, card, outcome, path=SIGN + "/feedback", **reason):
    entry: dict[str, Any] = {
        "card": card,
        "outcome": outcome,
        "outcomeTimestamp": "2026-01-01T00:00:00Z",
    }
    if reason:
        entry["overrideReason"] = reason
    return server.hooks(path, {"feedback": [entry]})


def recognition_card(server, patient):
    put(server, result(f"R-{patient}", patient, "K", "H1", YESTERDAY))
    (card,) = cards_of(server, hook_request(service_request("sr-k", "K"), patient=patient))
    return card


def test_accepted_and_overridden_feedback_reach_the_decision_log_and_the_metrics(server):
    before = server.metrics_text()
    accepted = recognition_card(server, "P-FB-1")
    overridden = recognition_card(server, "P-FB-2")
    assert feedback(server, accepted["uuid"], "accepted") == (200, {})
    assert feedback(server, accepted["uuid"], "accepted") == (200, {})  # a retry: harmless
    reason = {"reason": {"system": "urn:cds:override-reason", "code": "OTHER"},
              "userComment": "术前复查"}  # fmt: skip
    assert feedback(server, overridden["uuid"], "overridden", **reason) == (200, {})

    records = [r for r in server.decision_log_records() if r["type"] == "feedback"]
    ids = {c["extension"]["cds.decision"]["decision_id"]: c for c in (accepted, overridden)}
    mine = [r for r in records if r["decision_id"] in ids]
    assert [(r["line_id"], r["outcome"], r["override_code"], r["comment"]) for r in mine] == [
        ("sr-k", "ACCEPTED", "", ""),
        ("sr-k", "OVERRIDDEN", "OTHER", "术前复查"),
    ]
    after = server.metrics_text()
    for outcome in ("accepted", "overridden"):
        assert metric(after, "cds_feedback_total", outcome=outcome) == 1 + metric(
            before, "cds_feedback_total", outcome=outcome
        )
    labels = {"endpoint": "feedback", "service": "cds-order-sign", "status": "200"}
    assert metric(after, "cds_hooks_requests_total", **labels) == 3 + metric(
        before, "cds_hooks_requests_total", **labels
    )


# --------------------------------------------------------------------------- errors


def issue(body):
    assert body["resourceType"] == "OperationOutcome"
    (first, *_) = body["issue"]
    return first["diagnostics"]


def too_many_lines():
    return hook_request(*(service_request(f"s{i}", f"C{i}") for i in range(101)), patient="P")


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        (SIGN, b"not json", 400, "$: the body is not a JSON document"),
        (SIGN, {"hook": "order-select", "context": {}}, 400, "hook: expected 'order-sign'"),
        (SIGN, {"hook": "order-sign", "context": {"patientId": "P", "draftOrders": []}}, 400,
         "context.draftOrders: expected a JSON object"),
        (SIGN, {"hook": "order-sign", "context": {"patientId": "P", "draftOrders": {}}}, 400,
         "context.draftOrders: expected a FHIR Bundle"),
        (SIGN, too_many_lines(), 400, "context.draftOrders: at most 100 ServiceRequests"),
        (SIGN, hook_request(service_request("s", "K"), patient="P" * 129), 400,
         "context.patientId: longer than 128 characters"),
        (SIGN, hook_request(service_request("s", "K"), service_request("s", "HBA1C"), patient="P"),
         400, "context.draftOrders.entry[1].resource.id: repeats context.draftOrders.entry[0]"),
        (SIGN + "/feedback", {"feedback": [{"card": "x", "outcome": "ignored"}]}, 400,
         "feedback[0].outcome: must be accepted or overridden"),
        ("/cds-services/patient-greeter", {"hook": "patient-view"}, 404, "service: no such"),
        ("/cds-services/a/b/c", {}, 404, "$: no such endpoint"),
        (SIGN + "/feedback", {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted"}]},
         404, "feedback[0].card: not a card of this service"),
        (SIGN + "/feedback",
         {"feedback": [{"card": card_uuid("0123456789abcdef-9", 0), "outcome": "accepted"}]},
         404, "feedback[0].card: unknown or no longer remembered"),
        (SIGN, {"hook": "order-sign", "context": {"draftOrders": {"resourceType": "Bundle"}}},
         412, "context.patientId: required"),
        (SIGN, {"hook": "order-sign", "context": {"patientId": "P"}}, 412,
         "context.draftOrders: required"),
    ],
)  # fmt: skip
def test_a_refused_request_gets_its_status_and_an_operation_outcome_naming_the_field(
    server, path, body, status, message
):
    data = body if isinstance(body, bytes) else None
    got, answer = server.hooks(path, None if data else body, data=data)
    assert (got, issue(answer)[: len(message)]) == (status, message)


def test_a_wrong_method_and_an_oversized_body_are_refused_with_an_outcome(server):
    status, body = server.hooks(SIGN)  # GET
    assert (status, issue(body)[:21]) == (405, "$: method not allowed")
    status, body = server.hooks(SIGN, data=b" " * (9 * 1024 * 1024))
    assert (status, issue(body)) == (413, "$: the body is larger than 8 MiB")


def test_overriding_a_fixed_block_is_refused_as_the_line_allows_no_override(server):
    request = hook_request(service_request("g", "EGFR", category="GENE_TEST"), patient="P-422",
                           diagnoses=("C34.1",))  # fmt: skip
    (card,) = cards_of(server, request)
    assert reasons(card) == ["CONSENT_REQUIRED"]
    reason = {"reason": {"system": "urn:cds:override-reason", "code": "OTHER"}, "userComment": "x"}
    status, body = feedback(server, card["uuid"], "overridden", **reason)
    assert (status, issue(body)) == (
        422,
        "feedback[0].card: none of this line's reasons can be overridden "
        "(a block is fixed at its cause)",
    )


def test_an_override_reason_the_card_did_not_offer_is_refused_naming_the_field(server):
    card = recognition_card(server, "P-FOREIGN")
    foreign = {"reason": {"system": "https://emr.example/reasons", "code": "d7ecf885"}}
    status, body = feedback(server, card["uuid"], "overridden", **foreign)
    assert status == 400 and issue(body).startswith("feedback[0].overrideReason.reason.system")
    status, body = feedback(server, card["uuid"], "overridden")  # dismissed, no reason given
    assert (status, issue(body)) == (
        400,
        "feedback[0].overrideReason.reason.code: required when outcome is OVERRIDDEN",
    )


def test_refusals_are_counted_by_endpoint_service_and_status(server):
    before = metric(server.metrics_text(), "cds_hooks_requests_total",
                    endpoint="service", service="cds-order-sign", status="412")  # fmt: skip
    server.hooks(SIGN, {"hook": "order-sign", "context": {"patientId": "P"}})
    after = metric(server.metrics_text(), "cds_hooks_requests_total",
                   endpoint="service", service="cds-order-sign", status="412")  # fmt: skip
    assert after == before + 1


def test_a_path_or_method_no_endpoint_takes_is_counted_as_other(server):
    """Such requests go to a catch-all route; the label stays 'other', never the
    caller's path (unbounded) nor 'service' (what that route's pattern looks like)."""
    labels = {"endpoint": "other", "service": ""}
    before = {s: metric(server.metrics_text(), "cds_hooks_requests_total", status=s, **labels)
              for s in ("404", "405")}  # fmt: skip
    assert server.hooks("/no-such-endpoint", {"x": 1})[0] == 404
    assert server.hooks("/cds-services", {"x": 1})[0] == 405  # POST where only GET is served
    text = server.metrics_text()
    for status in ("404", "405"):
        n = metric(text, "cds_hooks_requests_total", status=status, **labels)
        assert n == before[status] + 1, status
    assert "no-such-endpoint" not in text


# --------------------------------------------------------------------------- peers' shapes


def fixture(name: str) -> dict[str, Any]:
    return json.loads((HOOKS_DATA / name).read_text(encoding="utf-8"))


def test_a_crd_shaped_order_sign_is_read_and_has_a_card_only_for_our_item(server):
    request = fixture("order-sign-crd-shape.json")
    assert cards_of(server, request) == []  # no prior result: nothing to say
    put(server, result("R-CRD", "PATIENT-CRD", "K", "H2", YESTERDAY))
    (card,) = cards_of(server, request)
    assert reasons(card) == ["RECOGNIZABLE_RESULT_EXISTS"]  # AMB: not the emergency exemption
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "ServiceRequest/sr-potassium"


def test_a_pddi_shaped_order_select_reads_consent_and_stu3_conditions(server):
    # Consent is given and the active Condition is C34.1: the EGFR line has no reason.
    assert cards_of(server, fixture("order-select-pddi-shape.json"), SELECT) == []
    without = fixture("order-select-pddi-shape.json")
    del without["prefetch"]["item6"]
    (card,) = cards_of(server, without, SELECT)
    assert reasons(card) == ["GENE_TEST_INDICATION_MISMATCH"]


def test_null_prefetch_values_mean_no_data_not_an_error(server):
    request = fixture("order-select-null-prefetch.json")
    assert cards_of(server, request, SELECT) == []
    put(server, result("R-NULL", "PATIENT-NULL", "HBA1C", "H1", YESTERDAY))
    (card,) = cards_of(server, request, SELECT)
    assert reasons(card) == ["RECOGNIZABLE_RESULT_EXISTS"]


def test_ahrq_shaped_feedback_with_accepted_suggestions_and_an_override_is_recorded(server):
    accepted = recognition_card(server, "P-AHRQ-1")
    overridden = recognition_card(server, "P-AHRQ-2")
    text = (HOOKS_DATA / "feedback-ahrq-shape.json").read_text(encoding="utf-8")
    text = text.replace("CARD_ACCEPTED", accepted["uuid"])
    text = text.replace("SUGGESTION_ACCEPTED", accepted["suggestions"][0]["uuid"])
    text = text.replace("CARD_OVERRIDDEN", overridden["uuid"])
    assert server.hooks(SIGN + "/feedback", json.loads(text)) == (200, {})
    # The same shape naming cards this service never issued: read, then not found.
    status, body = server.hooks(SIGN + "/feedback", fixture("feedback-ahrq-shape.json"))
    assert status == 404 and [i["expression"] for i in body["issue"]] == [
        ["feedback[0].card"],
        ["feedback[1].card"],
    ]


# --------------------------------------------------------------------------- supervision


def test_orders_through_the_hooks_door_are_counted_with_the_grpc_ones(tmp_path):
    """The counts records are the report's denominators: both doors' orders are in them."""
    args = ["--hooks-listen", "127.0.0.1:0", "--hooks-institution", "H1"]
    with running_server(tmp_path, hooks_catalog(), extra_args=args) as s:
        cards_of(s, hook_request(service_request("sr-1", "CT"), patient="count-hooks-1"))
    counts = [r for r in s.decision_log_records() if r["type"] == "counts"]
    counted = {
        (row["institution_id"], row["item_code"]): row["n"] for c in counts for row in c["lines"]
    }
    assert counted == {("H1", "CT"): 1}
    assert sum(o["n"] for c in counts for o in c["orders"] if o["institution_id"] == "H1") == 1
