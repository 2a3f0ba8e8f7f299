"""The offline catalogue commands: validate (--strict), diff."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

from tests.support.server import REPO_ROOT, cds_command, load_test_catalog, server_env

SHIPPED = REPO_ROOT / "catalog" / "catalog.json"


def cds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cds_command(*args), capture_output=True, text=True, env=server_env(), timeout=60
    )


def write(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return str(path)


def test_strict_validation_refuses_every_entry_still_marked_as_an_example():
    plain = cds("catalog", "validate", str(SHIPPED))
    assert plain.returncode == 0, plain.stderr
    strict = cds("catalog", "validate", "--strict", str(SHIPPED))
    assert strict.returncode == 1
    errors = [line.strip() for line in strict.stderr.splitlines()[1:]]
    assert (
        "$.recognition_items[12]: EXAMPLE-EXAM-CT-CHEST is still marked as an example "
        "(EXAMPLE in code, notes, source); replace it with the real entry or remove it"
    ) in errors
    assert any(e.startswith("$.sendout_labs[1]: EXAMPLE-LAB-B is still marked") for e in errors)
    assert any("(EXAMPLE in notes, price_item_code)" in e for e in errors)  # a gene test
    marked = {e.split(":")[0] for e in errors}
    assert "$.recognition_items[0]" not in marked  # a real LOINC item with a cited window
    assert not any(m.startswith("$.override_reasons") for m in marked)  # the national six


def test_strict_validation_passes_a_catalogue_without_examples(tmp_path):
    done = cds("catalog", "validate", "--strict", write(tmp_path / "c.json", load_test_catalog()))
    assert done.returncode == 0, done.stderr
    assert "catalogue version test-1" in done.stdout


def test_strict_validation_reports_ordinary_errors_too(tmp_path):
    doc = load_test_catalog()
    doc["institutions"][0]["notes"] = "EXAMPLE hospital"
    doc["recognition_items"][0]["validity_days"] = 0
    done = cds("catalog", "validate", "--strict", write(tmp_path / "c.json", doc))
    assert done.returncode == 1
    assert "$.institutions[0]: H1 is still marked as an example" in done.stderr
    assert "$.recognition_items[0].validity_days" in done.stderr


def test_diff_lists_what_changes_between_two_files_offline(tmp_path):
    old = load_test_catalog()
    new = copy.deepcopy(old)
    new["version"] = "test-2"
    new["recognition_items"][0]["validity_days"] = 14
    new["policy"] = {"severity": {"GENE_TEST_REPEATED": "SILENT"}}
    done = cds("catalog", "diff", write(tmp_path / "a.json", old), write(tmp_path / "b.json", new))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "version: test-1 -> test-2",
        "recognition item K (血清钾): validity_days 7 -> 14",
        "policy severity GENE_TEST_REPEATED: WARN -> SILENT",
    ]


def test_diff_of_an_invalid_file_names_its_errors_and_exits_1(tmp_path):
    good = write(tmp_path / "a.json", load_test_catalog())
    bad = write(tmp_path / "b.json", {"version": "x", "surprise": 1})
    done = cds("catalog", "diff", good, bad)
    assert done.returncode == 1
    assert "b.json: invalid, 1 error(s):" in done.stderr
    assert "$.surprise: unknown key" in done.stderr
