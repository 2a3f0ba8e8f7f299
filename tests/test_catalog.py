"""Catalogue loading, validation, snapshot building, diffs and the shipped catalogue."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from cds.catalog.diff import diff_snapshots, summarize
from cds.catalog.load import CatalogError, load_catalog, parse_catalog, schema
from cds.catalog.snapshot import Snapshot
from cds.domain import (
    BACKDATE_LIMIT_US,
    RETENTION_MARGIN_US,
    US_PER_DAY,
    US_PER_SECOND,
    Decision,
    ItemCategory,
    ReasonCode,
)
from tests.support.big_catalog import big_catalog, big_catalog_bytes

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "catalog" / "catalog.json"
LISTS = ("institutions", "recognition_items", "gene_tests", "sendout_labs", "override_reasons")


def small_doc() -> dict[str, Any]:
    """A valid catalogue with one or two entries of each kind; tests break it on purpose."""
    return {
        "version": "t-1",
        "effective_date": "2025-01-01",
        "timezone": "Asia/Shanghai",
        "institutions": [
            {"id": "A", "name": "医院A", "level": "三级甲等", "groups": ["G1"]},
            {"id": "B", "name": "医院B", "groups": ["G1", "G2"]},
        ],
        "recognition_items": [
            {"code": "2823-3", "name": "血清钾", "category": "LAB", "validity_days": 7},
            {
                "code": "CT",
                "name": "胸部CT",
                "category": "EXAM",
                "validity_days": 30,
                "scope": "GROUP",
            },
        ],
        "gene_tests": [
            {
                "code": "EGFR",
                "name": "EGFR",
                "genes": ["EGFR"],
                "method": "NGS",
                "indications": ["C34"],
                "price_item_code": "P1",
                "price_fen": 100,
                "in_house_institutions": ["A"],
                "repeat_interval_days": 180,
            },
            {"code": "NTRK", "name": "NTRK", "indications": [], "price_item_code": None},
        ],
        "sendout_labs": [
            {
                "id": "L1",
                "name": "Lab 1",
                "qualification_valid_until": "2025-12-31",
                "approved": [{"institution_id": "B", "gene_tests": ["EGFR", "NTRK"]}],
            }
        ],
        "override_reasons": [
            {"code": "CONDITION_CHANGED", "display": "病情变化"},
            {"code": "OTHER", "display": "其他", "requires_comment": True},
        ],
        "policy": {"severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK"}},
    }


def errors_of(doc: Any) -> list[str]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(orjson.dumps(doc))
    return info.value.errors


def us(iso: str) -> int:
    t = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(t.timestamp()) * US_PER_SECOND + t.microsecond


# --------------------------------------------------------------------------- shipped


def test_shipped_catalogue_validates_with_every_list_filled() -> None:
    snap = load_catalog(SHIPPED)
    assert snap.version
    assert snap.timezone == "Asia/Shanghai"
    for name in LISTS:
        assert len(getattr(snap, name)) > 0, name


def test_shipped_catalogue_cites_a_source_on_every_entry() -> None:
    doc = json.loads(SHIPPED.read_text(encoding="utf-8"))
    for name in LISTS:
        for entry in doc[name]:
            assert entry.get("source", "").strip(), f"{name}: {entry}"


def test_shipped_catalogue_has_the_six_national_override_reasons_and_one_needs_a_comment() -> None:
    snap = load_catalog(SHIPPED)
    assert len(snap.override_options) == 6
    assert [o.code for o in snap.override_options if o.requires_comment] == ["OTHER"]


def test_shipped_catalogue_demonstrates_an_unpriced_test_and_an_expired_lab() -> None:
    snap = load_catalog(SHIPPED)
    assert any(g.price_item_code is None for g in snap.gene_tests.values())
    shipped_on = us("2026-11-01T00:00:00Z")
    ends = [lab.qualification_end_us for lab in snap.sendout_labs.values()]
    assert min(ends) < shipped_on < max(ends)
    assert any(i.groups for i in snap.institutions.values())


def test_shipped_catalogue_marks_invented_prices_as_examples() -> None:
    snap = load_catalog(SHIPPED)
    for g in snap.gene_tests.values():
        assert g.price_item_code is None or g.price_item_code.startswith("EXAMPLE-")


# --------------------------------------------------------------------------- schema file


def test_repo_schema_path_is_the_packaged_schema_file() -> None:
    repo_schema = REPO / "catalog" / "schema.json"
    assert repo_schema.is_symlink()
    assert os.path.samefile(repo_schema, REPO / "cds" / "catalog" / "schema.json")
    assert json.loads(repo_schema.read_text(encoding="utf-8")) == schema()


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())


def test_reference_validator_finds_errors_at_the_same_paths() -> None:
    """jsonschema (the reference implementation) and jsonschema-rs must read the schema alike."""
    doc = small_doc()
    doc["extra"] = 1
    doc["recognition_items"][0]["validity_days"] = 0
    doc["recognition_items"][1]["category"] = "XRAY"
    doc["gene_tests"][0]["repeat_interval_days"] = "often"
    doc["sendout_labs"][0]["qualification_valid_until"] = "31/12/2025"
    doc["policy"]["severity"]["MDT_REQUIRED"] = "MAYBE"
    del doc["override_reasons"][0]["display"]
    reference = {
        tuple(e.absolute_path) for e in jsonschema.Draft202012Validator(schema()).iter_errors(doc)
    }
    assert reference == {
        (),
        ("recognition_items", 0, "validity_days"),
        ("recognition_items", 1, "category"),
        ("gene_tests", 0, "repeat_interval_days"),
        ("sendout_labs", 0, "qualification_valid_until"),
        ("policy", "severity", "MDT_REQUIRED"),
        ("override_reasons", 0),
    }
    ours = errors_of(doc)
    assert [e.split(":")[0] for e in ours] == [
        "$.extra",
        "$.gene_tests[0].repeat_interval_days",
        "$.override_reasons[0].display",
        "$.policy.severity.MDT_REQUIRED",
        "$.recognition_items[0].validity_days",
        "$.recognition_items[1].category",
        "$.sendout_labs[0].qualification_valid_until",
    ]


# --------------------------------------------------------------------------- errors


def break_doc(mutate: Any) -> dict[str, Any]:
    doc = small_doc()
    mutate(doc)
    return doc


def _dup(list_key: str) -> Any:
    return lambda d: d[list_key].append(copy.deepcopy(d[list_key][0]))


ERROR_CASES = {
    "unknown top-level key": (lambda d: d.update(gene_test=[]), "$.gene_test: unknown key"),
    "missing version": (lambda d: d.pop("version"), "$.version: required key is missing"),
    "empty version": (lambda d: d.update(version=""), "$.version: "),
    "duplicate institution": (_dup("institutions"), "$.institutions[2].id: duplicate institution"),
    "duplicate recognition item": (
        _dup("recognition_items"),
        "$.recognition_items[2].code: duplicate recognition item code '2823-3' "
        "(first at $.recognition_items[0].code)",
    ),
    "duplicate gene test": (_dup("gene_tests"), "$.gene_tests[2].code: duplicate gene test"),
    "duplicate send-out lab": (_dup("sendout_labs"), "$.sendout_labs[1].id: duplicate send-out"),
    "duplicate override reason": (
        _dup("override_reasons"),
        "$.override_reasons[2].code: duplicate override reason",
    ),
    "approval names unknown institution": (
        lambda d: d["sendout_labs"][0]["approved"][0].update(institution_id="Z"),
        "$.sendout_labs[0].approved[0].institution_id: unknown institution 'Z'",
    ),
    "approval names unknown gene test": (
        lambda d: d["sendout_labs"][0]["approved"][0]["gene_tests"].append("KRAS"),
        "$.sendout_labs[0].approved[0].gene_tests[2]: unknown gene test 'KRAS'",
    ),
    "in-house list names unknown institution": (
        lambda d: d["gene_tests"][0]["in_house_institutions"].append("Q"),
        "$.gene_tests[0].in_house_institutions[1]: unknown institution 'Q'",
    ),
    "zero validity": (
        lambda d: d["recognition_items"][0].update(validity_days=0),
        "$.recognition_items[0].validity_days: ",
    ),
    "negative validity": (
        lambda d: d["recognition_items"][1].update(validity_days=-7),
        "$.recognition_items[1].validity_days: ",
    ),
    "validity not an integer": (
        lambda d: d["recognition_items"][0].update(validity_days="7"),
        "$.recognition_items[0].validity_days: expected integer, got string",
    ),
    "fractional validity": (
        lambda d: d["recognition_items"][0].update(validity_days=7.5),
        "$.recognition_items[0].validity_days: expected integer, got number",
    ),
    "zero repeat interval": (
        lambda d: d["gene_tests"][0].update(repeat_interval_days=0),
        "$.gene_tests[0].repeat_interval_days: ",
    ),
    "malformed qualification date": (
        lambda d: d["sendout_labs"][0].update(qualification_valid_until="2025/12/31"),
        "$.sendout_labs[0].qualification_valid_until: ",
    ),
    "short effective date": (
        lambda d: d.update(effective_date="2025-1-5"),
        "$.effective_date: ",
    ),
    "impossible qualification date": (
        lambda d: d["sendout_labs"][0].update(qualification_valid_until="2025-02-30"),
        "$.sendout_labs[0].qualification_valid_until: '2025-02-30' is not a calendar date",
    ),
    "impossible effective date": (
        lambda d: d.update(effective_date="2025-13-01"),
        "$.effective_date: '2025-13-01' is not a calendar date",
    ),
    "unknown time zone": (
        lambda d: d.update(timezone="Mars/Olympus_Mons"),
        "$.timezone: 'Mars/Olympus_Mons' is not an IANA time zone",
    ),
    "time zone that is a region, not a zone": (
        lambda d: d.update(timezone="Asia"),
        "$.timezone: 'Asia' is not an IANA time zone",
    ),
    "time zone that is a path": (
        lambda d: d.update(timezone="../../etc/passwd"),
        "$.timezone: '../../etc/passwd' is not an IANA time zone",
    ),
    "unknown severity code": (
        lambda d: d["policy"]["severity"].update(RESULT_EXISTS="WARN"),
        "$.policy.severity.RESULT_EXISTS: not a reason code of the contract",
    ),
    "bad severity value": (
        lambda d: d["policy"]["severity"].update(MDT_REQUIRED="DENY"),
        "$.policy.severity.MDT_REQUIRED: ",
    ),
    "lower-case severity value": (
        lambda d: d["policy"]["severity"].update(MDT_REQUIRED="warn"),
        "$.policy.severity.MDT_REQUIRED: ",
    ),
    "unknown policy key": (
        lambda d: d["policy"].update(severty={}),
        "$.policy.severty: unknown key",
    ),
    "bad scope": (
        lambda d: d["recognition_items"][0].update(scope="CITY"),
        "$.recognition_items[0].scope: ",
    ),
    "bad category": (
        lambda d: d["recognition_items"][0].update(category="GENE_TEST"),
        "$.recognition_items[0].category: ",
    ),
    "gene test without indications key": (
        lambda d: d["gene_tests"][1].pop("indications"),
        "$.gene_tests[1].indications: required key is missing",
    ),
    "lower-case ICD-10 prefix": (
        lambda d: d["gene_tests"][0].update(indications=["c34"]),
        "$.gene_tests[0].indications[0]: ",
    ),
    "price without a price item": (
        lambda d: d["gene_tests"][1].update(price_fen=5000),
        "$.gene_tests[1].price_fen: a price is given but price_item_code is null",
    ),
    "empty code": (
        lambda d: d["recognition_items"][0].update(code=""),
        "$.recognition_items[0].code: ",
    ),
    "negative recognition price": (
        lambda d: d["recognition_items"][0].update(price_fen=-1),
        "$.recognition_items[0].price_fen: ",
    ),
    "list given as object": (
        lambda d: d.update(institutions={"A": {}}),
        "$.institutions: expected array, got object",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_each_kind_of_error_is_reported_at_its_path(case: str) -> None:
    mutate, expected = ERROR_CASES[case]
    errors = errors_of(break_doc(mutate))
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors


def test_non_json_bytes_are_one_clear_error() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(b"version: 1\n", source="cat.yaml")
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("$: not a UTF-8 JSON document")
    assert str(info.value).startswith("cat.yaml: catalogue refused, 1 error")


def test_non_utf8_bytes_are_one_clear_error() -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog('{"version": "版本"}'.encode("gb18030"))
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("$: not a UTF-8 JSON document")


def test_a_json_array_is_not_a_catalogue() -> None:
    assert errors_of([]) == ["$: expected object, got array"]


def test_a_leading_byte_order_mark_is_accepted() -> None:
    data = b"\xef\xbb\xbf" + orjson.dumps(small_doc())
    snap = parse_catalog(data)
    assert snap.version == "t-1"
    assert snap.digest == hashlib.sha256(data).hexdigest()


def test_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert info.value.errors == [f"$: cannot read {path}: No such file or directory"]


def test_directory_instead_of_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    assert info.value.errors[0].startswith(f"$: cannot read {tmp_path}: ")


def test_several_errors_in_one_file_are_all_reported_in_path_order() -> None:
    doc = big_catalog(300)
    doc["zzz"] = True
    doc["recognition_items"][10]["code"] = doc["recognition_items"][2]["code"]
    doc["recognition_items"][2]["validity_days"] = -1
    doc["gene_tests"][5]["repeat_interval_days"] = 0
    doc["sendout_labs"][0]["qualification_valid_until"] = "2025-02-29"
    doc["sendout_labs"][0]["approved"][0]["institution_id"] = "NOWHERE"
    doc["policy"]["severity"]["BOGUS"] = "BLOCK"
    del doc["version"]
    errors = errors_of(doc)
    assert [e.split(": ")[0] for e in errors] == [
        "$.gene_tests[5].repeat_interval_days",
        "$.policy.severity.BOGUS",
        "$.recognition_items[2].validity_days",
        "$.recognition_items[10].code",
        "$.sendout_labs[0].approved[0].institution_id",
        "$.sendout_labs[0].qualification_valid_until",
        "$.version",
        "$.zzz",
    ]
    assert errors == errors_of(doc)  # same file, same report


def test_error_message_lists_every_error() -> None:
    doc = small_doc()
    doc["a"] = doc["b"] = 1
    with pytest.raises(CatalogError) as info:
        parse_catalog(orjson.dumps(doc))
    assert str(info.value).splitlines()[1:] == ["$.a: unknown key", "$.b: unknown key"]


def test_extra_descriptive_keys_on_entries_are_accepted() -> None:
    doc = small_doc()
    for name in LISTS:
        for entry in doc[name]:
            entry.update(source="某指南", notes="说明", local_code="HIS-001", tags=[1, 2])
    doc["sendout_labs"][0]["approved"][0]["notes"] = "since 2024"
    doc["policy"]["notes"] = "defaults except one"
    assert parse_catalog(orjson.dumps(doc)).version == "t-1"


def test_a_ten_thousand_entry_catalogue_is_valid() -> None:
    snap = parse_catalog(big_catalog_bytes(10_000))
    total = sum(len(getattr(snap, name)) for name in LISTS)
    assert total == 10_000


# --------------------------------------------------------------------------- snapshot


def test_snapshot_carries_entries_defaults_policy_source_and_digest(tmp_path: Path) -> None:
    data = orjson.dumps(small_doc())
    path = tmp_path / "c.json"
    path.write_bytes(data)
    snap = load_catalog(path)
    assert snap.source == str(path)
    assert snap.digest == hashlib.sha256(data).hexdigest()
    assert snap.effective_date == "2025-01-01"
    k = snap.recognition_items["2823-3"]
    assert (k.category, k.validity_days, k.scope) == (ItemCategory.LAB, 7, "PROVINCE")
    assert snap.recognition_items["CT"].category is ItemCategory.EXAM
    ntrk = snap.gene_tests["NTRK"]
    assert ntrk.price_item_code is None and ntrk.price_fen is None
    assert ntrk.requires_mdt_first_visit and ntrk.requires_consent
    assert ntrk.repeat_interval_days is None and ntrk.indications == ()
    assert snap.gene_tests["EGFR"].in_house_institutions == frozenset({"A"})
    assert snap.sendout_labs["L1"].approved == frozenset({("B", "EGFR"), ("B", "NTRK")})
    assert not snap.institutions["A"].groups.isdisjoint(snap.institutions["B"].groups)
    assert [o.code for o in snap.override_options] == ["CONDITION_CHANGED", "OTHER"]
    assert snap.override_reasons["CONDITION_CHANGED"].requires_comment is False
    assert snap.severity[ReasonCode.RECOGNIZABLE_RESULT_EXISTS] is Decision.BLOCK
    assert snap.severity[ReasonCode.GENE_TEST_REPEATED] is Decision.WARN


def test_timezone_defaults_to_asia_shanghai() -> None:
    doc = small_doc()
    del doc["timezone"]
    assert parse_catalog(orjson.dumps(doc)).timezone == "Asia/Shanghai"


def test_cds_hooks_keys_default_to_our_item_urn_and_no_report_links() -> None:
    snap = parse_catalog(orjson.dumps(small_doc()))
    assert snap.code_system == "urn:cds:item"
    assert snap.report_url_template == ""


def test_cds_hooks_keys_are_read_and_a_change_is_listed_in_the_diff() -> None:
    doc = small_doc()
    old = parse_catalog(orjson.dumps(doc))
    doc["code_system"] = "http://loinc.org"
    doc["report_url_template"] = "https://platform.example/report?id={result_id}"
    new = parse_catalog(orjson.dumps(doc))
    assert new.code_system == "http://loinc.org"
    assert new.report_url_template == "https://platform.example/report?id={result_id}"
    changes = diff_snapshots(old, new)
    assert "code_system: urn:cds:item -> http://loinc.org" in changes
    assert any(c.startswith("report_url_template: (none) -> https://") for c in changes)


@pytest.mark.parametrize(
    "template",
    ["https://platform.example/report", "ftp://x/{result_id}", "/report/{result_id}",
     "https://x/{id}", "https://x/{result_id} y"],
)  # fmt: skip
def test_a_report_url_template_without_result_id_or_not_absolute_http_is_refused(
    template: str,
) -> None:
    doc = small_doc()
    doc["report_url_template"] = template
    with pytest.raises(CatalogError) as refused:
        parse_catalog(orjson.dumps(doc))
    assert [e.split(":")[0] for e in refused.value.errors] == ["$.report_url_template"]


def test_qualification_date_covers_its_whole_day_in_the_catalogue_zone() -> None:
    lab = parse_catalog(orjson.dumps(small_doc())).sendout_labs["L1"]
    # 2025-12-31 24:00 in Asia/Shanghai (UTC+8) is 2025-12-31T16:00Z.
    assert us("2025-12-31T15:59:59.999999Z") < lab.qualification_end_us
    assert not us("2025-12-31T16:00:00Z") < lab.qualification_end_us
    assert lab.qualification_valid_until == dt.date(2025, 12, 31)


def test_qualification_end_follows_the_catalogue_timezone() -> None:
    doc = small_doc()
    doc["timezone"] = "UTC"
    lab = parse_catalog(orjson.dumps(doc)).sendout_labs["L1"]
    assert lab.qualification_end_us == us("2026-01-01T00:00:00Z")


def test_retention_is_the_longest_window_that_can_use_a_result_and_the_backdating_margin():
    doc = small_doc()
    doc["recognition_items"].append(
        {"code": "EGFR", "name": "EGFR", "category": "LAB", "validity_days": 400}
    )
    snap = parse_catalog(orjson.dumps(doc))
    margin = RETENTION_MARGIN_US
    assert snap.retention_us("2823-3") == 7 * US_PER_DAY + margin
    assert snap.retention_us("CT") == 30 * US_PER_DAY + margin
    assert snap.retention_us("EGFR") == 400 * US_PER_DAY + margin  # beyond its 180-day repeat
    assert snap.retention_us("UNKNOWN") == 400 * US_PER_DAY + margin


def test_the_retention_margin_outlasts_the_backdating_limit() -> None:
    # Every order_time the service accepts must still see every result valid then.
    assert RETENTION_MARGIN_US > BACKDATE_LIMIT_US


def test_a_catalogue_no_rule_of_which_can_use_a_result_keeps_none() -> None:
    assert parse_catalog(b'{"version": "empty"}').retention_us("ANY") == 0


# --------------------------------------------------------------------------- diff


def snap_of(doc: dict[str, Any]) -> Snapshot:
    return parse_catalog(orjson.dumps(doc))


def test_diff_against_nothing_describes_the_first_catalogue() -> None:
    lines = diff_snapshots(None, snap_of(small_doc()))
    assert len(lines) == 1
    assert lines[0].startswith("no active catalogue; activating version t-1 (2 institutions")


def test_diff_of_identical_files_says_no_changes() -> None:
    a, b = snap_of(small_doc()), snap_of(small_doc())
    assert diff_snapshots(a, b) == ["no changes: identical file (version t-1)"]


def test_diff_ignores_notes_but_says_nothing_changed() -> None:
    doc = small_doc()
    doc["institutions"][0]["notes"] = "edited"
    lines = diff_snapshots(snap_of(small_doc()), snap_of(doc))
    assert lines == ["no changes to any rule (version t-1; only notes or layout differ)"]


def test_diff_reports_field_changes_adds_removes_and_severity() -> None:
    new = small_doc()
    new["version"] = "t-2"
    new["recognition_items"][0]["validity_days"] = 14
    new["recognition_items"][1]["scope"] = "PROVINCE"
    new["recognition_items"].append(
        {"code": "2951-2", "name": "血清钠", "category": "LAB", "validity_days": 7}
    )
    del new["gene_tests"][1]
    new["sendout_labs"][0]["approved"][0]["gene_tests"] = ["EGFR"]
    new["sendout_labs"][0]["approved"].append({"institution_id": "A", "gene_tests": ["EGFR"]})
    new["sendout_labs"][0]["qualification_valid_until"] = "2026-06-30"
    new["override_reasons"][1]["requires_comment"] = False
    new["policy"]["severity"] = {"MDT_REQUIRED": "WARN"}
    assert diff_snapshots(snap_of(small_doc()), snap_of(new)) == [
        "version: t-1 -> t-2",
        "recognition item 2823-3 (血清钾): validity_days 7 -> 14",
        "recognition item 2951-2 (血清钠) added",
        "recognition item CT (胸部CT): scope GROUP -> PROVINCE",
        "gene test NTRK (NTRK) removed",
        "send-out lab L1 (Lab 1): qualification_valid_until 2025-12-31 -> 2026-06-30; "
        "approved +[A/EGFR] -[B/NTRK]",
        "override reason OTHER (其他): requires_comment true -> false",
        "policy severity RECOGNIZABLE_RESULT_EXISTS: BLOCK -> WARN",
        "policy severity MDT_REQUIRED: BLOCK -> WARN",
    ]


def test_a_recognition_item_carries_its_price_for_the_savings_figure() -> None:
    doc = small_doc()
    doc["recognition_items"][0]["price_fen"] = 1500
    snap = snap_of(doc)
    assert snap.recognition_items["2823-3"].price_fen == 1500
    assert snap.recognition_items["CT"].price_fen is None
    new = copy.deepcopy(doc)
    new["recognition_items"][0]["price_fen"] = 1800
    assert diff_snapshots(snap, snap_of(new)) == [
        "version unchanged (t-1) although the content changed",
        "recognition item 2823-3 (血清钾): price_fen 1500 -> 1800",
    ]


def test_diff_reports_reworded_added_and_removed_messages() -> None:
    old = small_doc()
    old["messages"] = {"MDT_REQUIRED": "须 MDT", "CONSENT_REQUIRED": "须签字"}
    new = small_doc()
    new["version"] = "t-2"
    new["messages"] = {"MDT_REQUIRED": "须先 MDT", "GENE_TEST_NOT_PRICED": "未定价"}
    assert diff_snapshots(snap_of(old), snap_of(new)) == [
        "version: t-1 -> t-2",
        "message GENE_TEST_NOT_PRICED: catalogue wording '未定价' instead of the built-in",
        "message MDT_REQUIRED: '须 MDT' -> '须先 MDT'",
        "message CONSENT_REQUIRED: back to the built-in wording",
    ]


def test_summary_says_which_codes_the_catalogue_rewords() -> None:
    doc = small_doc()
    assert "messages: built-in wording" in summarize(snap_of(doc))
    doc["messages"] = {"MDT_REQUIRED": "须 MDT"}
    assert "messages: catalogue wording for MDT_REQUIRED" in summarize(snap_of(doc))


def test_diff_flags_changed_content_under_an_unchanged_version() -> None:
    new = small_doc()
    new["institutions"][1]["groups"] = ["G2"]
    assert diff_snapshots(snap_of(small_doc()), snap_of(new)) == [
        "version unchanged (t-1) although the content changed",
        "institution B (医院B): groups -[G1]",
    ]


def test_diff_reports_reordered_override_reasons() -> None:
    new = small_doc()
    new["version"] = "t-2"
    new["override_reasons"].reverse()
    lines = diff_snapshots(snap_of(small_doc()), snap_of(new))
    assert lines[-1] == "override reasons reordered: OTHER, CONDITION_CHANGED"


def test_diff_is_cut_at_its_limit_with_a_count_of_the_rest() -> None:
    old = big_catalog(1_000)
    new = big_catalog(1_000, version="big-2")
    for item in new["recognition_items"]:
        item["validity_days"] += 1
    lines = diff_snapshots(snap_of(old), snap_of(new), limit=10)
    n_items = len(new["recognition_items"])
    assert len(lines) == 10
    assert lines[-1] == f"... and {n_items + 1 - 9} more changes ({n_items + 1} in all)"


# --------------------------------------------------------------------------- summary


def test_summary_names_version_date_and_counts() -> None:
    text = summarize(snap_of(small_doc()))
    assert "catalogue version t-1" in text
    assert "effective date: 2025-01-01; time zone: Asia/Shanghai" in text
    assert "recognition items: 2 (1 LAB, 1 EXAM; 1 GROUP scope)" in text
    assert "gene tests: 2 (1 not priced)" in text
    assert "send-out labs: 1" in text
    assert "override reasons: 2" in text
    assert "policy: RECOGNIZABLE_RESULT_EXISTS=BLOCK" in text


def test_unknown_codes_are_retained_for_the_longest_recognition_window_not_gene_intervals():
    snapshot = load_catalog(SHIPPED)
    longest_recognition = max(r.validity_us for r in snapshot.recognition_items.values())
    longest_gene = max(snapshot.retention_us(code) for code in snapshot.gene_tests)
    assert longest_gene > longest_recognition  # a long gene-test repeat interval
    assert snapshot.retention_us("NOT-IN-ANY-LIST") == longest_recognition + RETENTION_MARGIN_US
