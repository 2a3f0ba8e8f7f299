"""Every row of catalog/README.md's "Trying the rules" table, tried as a user would:
the row's example request from examples/, sent with `cds check` to a real server on
the shipped catalogue, earns exactly the reason the row promises."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from tests.support.server import REPO_ROOT, running_server

pytestmark = pytest.mark.e2e

EXAMPLES = REPO_ROOT / "examples"
SHIPPED = REPO_ROOT / "catalog" / "catalog.json"
TABLE = "### Trying the rules with the shipped file"
# the reason cell's code -> {example file: the reason codes it earns}
EXPECTED = {
    "GENE_TEST_NOT_PRICED": {"check-gene-not-priced.json": ["GENE_TEST_NOT_PRICED"]},
    "GENE_TEST_INDICATION_MISMATCH": {
        "check-gene-indication.json": ["GENE_TEST_INDICATION_MISMATCH"]
    },
    "SENDOUT_LAB_NOT_APPROVED": {"check-sendout-not-approved.json": ["SENDOUT_LAB_NOT_APPROVED"]},
    "SENDOUT_LAB_QUALIFICATION_EXPIRED": {
        "check-sendout-expired.json": ["SENDOUT_LAB_QUALIFICATION_EXPIRED"]
    },
    "SENDOUT_AVAILABLE_IN_HOUSE": {"check-sendout-in-house.json": ["SENDOUT_AVAILABLE_IN_HOUSE"]},
    "RECOGNIZABLE_RESULT_EXISTS": {
        "check-exam-consortium.json": ["RECOGNIZABLE_RESULT_EXISTS"],
        "check-exam-outside-consortium.json": [],
    },
}


def table_rows() -> list[list[str]]:
    text = (REPO_ROOT / "catalog" / "README.md").read_text(encoding="utf-8")
    section = text.split(TABLE, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows[1:]]


def test_every_row_of_the_table_names_its_examples_and_they_exist():
    rows = table_rows()
    assert {re.search(r"`([A-Z_]+)`", reason).group(1) for _, reason, _ in rows} == set(EXPECTED)
    for _, reason, examples in rows:
        code = re.search(r"`([A-Z_]+)`", reason).group(1)
        for name in EXPECTED[code]:
            assert f"`{name}`" in examples and (EXAMPLES / name).is_file(), name


def cds(server, *args: str, stdin: str | None = None) -> str:
    done = server.cli(*args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("examples"), SHIPPED) as s:
        three_days_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%FT%TZ")
        results = (EXAMPLES / "results-exam.jsonl").read_text(encoding="utf-8")
        cds(s, "results", "put", "-", stdin=results.replace("REPORTED_AT", three_days_ago))
        yield s


@pytest.mark.parametrize(
    ("name", "codes"), [item for row in EXPECTED.values() for item in row.items()]
)
def test_each_example_earns_exactly_the_reason_its_row_promises(server, name, codes):
    answer = json.loads(cds(server, "check", str(EXAMPLES / name)))
    assert [r["code"] for i in answer["items"] for r in i["reasons"]] == codes
