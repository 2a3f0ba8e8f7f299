"""The supervision report: decision-log files in, the figures of the contract out.

The files are read by DuckDB (``read_json``, newline-delimited, in C++): chosen by
measurement against hand-written aggregation over orjson and against Polars
(docs/supervision.md has the figures; ``benchmarks/report_bench.py`` reproduces them).
Only the keys the report needs are read into a table, once; every figure is a query
over it. A line that is not a record (a crash's torn line, a foreign line) is read
as a row of nulls, counted per file and otherwise ignored.

Figures follow the national definition as far as the service can see: a reminder is a
recognisable prior result shown to the clinician (``RECOGNIZABLE_RESULT_EXISTS``, not
silent); it is recognised when the line's latest feedback is ``ACCEPTED``, re-tested
with a reason when it is ``OVERRIDDEN``; a reminder without feedback is *not* a
recognition. Feedback is joined to its line by (``decision_id``, ``line_id``) across
every file read, since it may land in another worker's file or on another host. A
feedback whose decision record is nowhere in the input (dropped under load: feedback
is self-contained for this) still counts its line, placed by the feedback's own time.

The join keeps state per reminded line (DuckDB spills it to a temporary directory
when it outgrows memory); that is fine for a hospital's month or year, and the reason
a province ships the same JSON lines to a log store instead (docs/supervision.md).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import duckdb

from cds.catalog.snapshot import DEFAULT_TIMEZONE, Snapshot
from cds.supervision.names import Names

REMINDED = "RECOGNIZABLE_RESULT_EXISTS"
EXEMPT = "RECOGNITION_EXEMPT_EMERGENCY"
OTHER = "other"  # what the counts records' null (folded) keys are reported as
DEFAULT_CONCENTRATION_MIN = 10
DEFAULT_CONCENTRATION_SHARE = 0.8

# Only the keys a figure uses: every other key costs parsing time and is left unread.
_REASON = "STRUCT(code VARCHAR, silent BOOLEAN)"
COLUMNS = {
    "type": "VARCHAR",
    "decision_id": "VARCHAR",
    "line_id": "VARCHAR",
    "timestamp": "VARCHAR",
    "from": "VARCHAR",
    "institution_id": "VARCHAR",
    "department_id": "VARCHAR",
    "key_id": "VARCHAR",
    "clinician": "VARCHAR",
    "item_code": "VARCHAR",
    "reason_codes": "VARCHAR[]",
    "outcome": "VARCHAR",
    "override_code": "VARCHAR",
    "items": f"STRUCT(line_id VARCHAR, item_code VARCHAR, gene_test BOOLEAN, "
    f"sendout_lab_id VARCHAR, reasons {_REASON}[])[]",
    "lines": "STRUCT(institution_id VARCHAR, department_id VARCHAR, item_code VARCHAR, "
    "decision VARCHAR, n BIGINT)[]",
    "orders": "STRUCT(institution_id VARCHAR, n BIGINT)[]",
    "folded": "STRUCT(lines BIGINT, orders BIGINT)",
}
# A counts record of the largest interval (10,000 keys) is about a megabyte.
MAX_RECORD_BYTES = 256 * 1024 * 1024


class Period(NamedTuple):
    """Inclusive calendar days (YYYY-MM-DD) in the catalogue's zone; None = unbounded."""

    first: str | None
    last: str | None


ALL_TIME = Period(None, None)


class ReportError(Exception):
    """The input cannot be read; the message names the file and why."""


def build_report(
    files: Sequence[Path],
    *,
    period: Period = ALL_TIME,
    institutions: Sequence[str] = (),
    catalog: Snapshot | None = None,
    concentration_min: int = DEFAULT_CONCENTRATION_MIN,
    concentration_share: float = DEFAULT_CONCENTRATION_SHARE,
    threads: int | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (the contract's keys and more)."""
    with tempfile.TemporaryDirectory(prefix="cds-report-") as spill:
        config: dict[str, Any] = {
            # Nothing is fetched: the json and icu extensions are built into the wheel.
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": spill,
        }
        if threads is not None:
            config["threads"] = threads
        con = duckdb.connect(config=config)
        try:
            return _Report(
                con,
                files,
                period,
                tuple(institutions),
                catalog,
                concentration_min,
                concentration_share,
            ).build()
        finally:
            con.close()


class _Report:
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        files: Sequence[Path],
        period: Period,
        institutions: tuple[str, ...],
        catalog: Snapshot | None,
        concentration_min: int,
        concentration_share: float,
    ) -> None:
        self.con = con
        self.files = [str(f) for f in files]
        self.period = period
        self.institutions = institutions
        self.catalog = catalog
        self.concentration_min = concentration_min
        self.concentration_share = concentration_share
        self.zone = catalog.timezone if catalog is not None else DEFAULT_TIMEZONE

    def q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, list(params)).fetchall()

    def build(self) -> dict[str, Any]:
        self._load()
        inputs = self._inputs()
        self._views()
        first, last = self._period()
        report: dict[str, Any] = {
            "period": {"from": first, "to": last},
            "institutions": list(self.institutions),
            "checks": self._checks(),
            "recognition": self._recognition(),
            "gene_tests": self._gene_tests(),
            "silent": dict(self.q(_SILENT)),
            "input": inputs,
            "parameters": {
                "concentration_min": self.concentration_min,
                "concentration_share": self.concentration_share,
                "timezone": self.zone,
            },
        }
        if self.catalog is not None:
            report["catalog"] = {
                "version": self.catalog.version,
                "names": Names(self.catalog).as_dict(),
            }
        return report

    # -- loading ----------------------------------------------------------------------

    def _load(self) -> None:
        self.con.execute("SET TimeZone = 'UTC'")
        try:
            self.con.execute(
                """
                CREATE TEMP TABLE log AS
                SELECT *,
                  CAST(timezone($zone, TRY_CAST(coalesce("from", "timestamp")
                       AS TIMESTAMPTZ)) AS DATE)::VARCHAR AS day
                FROM read_json($files, format = 'newline_delimited', columns = $columns,
                               ignore_errors = true, filename = true,
                               maximum_object_size = $max_bytes)
                """,
                {
                    "zone": self.zone,
                    "files": self.files,
                    "columns": COLUMNS,
                    "max_bytes": MAX_RECORD_BYTES,
                },
            )
        except duckdb.Error as e:
            raise ReportError(f"cannot read the decision logs: {_first_line(e)}") from None
        wanted = self.institutions
        self.con.execute(
            "CREATE TEMP TABLE wanted(institution_id VARCHAR); "
            "CREATE TEMP TABLE period(first VARCHAR, last VARCHAR);"
        )
        if wanted:
            self.con.executemany("INSERT INTO wanted VALUES (?)", [[i] for i in wanted])
        self.con.execute("INSERT INTO period VALUES (?, ?)", list(self.period))
        prices = []
        if self.catalog is not None:
            prices = [
                [code, item.price_fen]
                for code, item in self.catalog.recognition_items.items()
                if item.price_fen is not None
            ]
        self.con.execute("CREATE TEMP TABLE prices(item_code VARCHAR, price_fen BIGINT)")
        if prices:
            self.con.executemany("INSERT INTO prices VALUES (?, ?)", prices)

    def _inputs(self) -> dict[str, Any]:
        per_file = self.q(
            """
            SELECT filename, count(*),
                   count(*) FILTER (WHERE type IS NULL),
                   count(*) FILTER (WHERE type NOT IN ('decision', 'feedback', 'counts'))
            FROM log GROUP BY filename
            """
        )
        seen = {f: (n, torn, unknown) for f, n, torn, unknown in per_file}
        torn_by_file = {f: seen[f][1] for f in self.files if seen.get(f, (0, 0, 0))[1]}
        return {
            "files": len(self.files),
            "records": sum(n - torn for n, torn, _ in seen.values()),
            "torn_lines": sum(torn_by_file.values()),
            "torn_by_file": torn_by_file,
            "unknown_records": sum(u for _, _, u in seen.values()),
        }

    def _views(self) -> None:
        self.con.execute(_VIEWS)

    def _period(self) -> tuple[str | None, str | None]:
        first, last = self.period
        if first is None or last is None:
            seen = self.q(
                "SELECT min(day), max(day) FROM ("
                "SELECT day FROM decisions UNION ALL SELECT day FROM counts_in "
                "UNION ALL SELECT day FROM joined)"
            )[0]
            first = first or seen[0]
            last = last or seen[1]
        return first, last

    # -- figures ----------------------------------------------------------------------

    def _checks(self) -> dict[str, Any]:
        by_day = self.q(
            "SELECT day, sum(orders), sum(lines) FROM ("
            "SELECT day, n AS orders, 0 AS lines FROM count_orders "
            "UNION ALL SELECT day, 0, n FROM count_lines) GROUP BY day ORDER BY day"
        )
        orders = dict(self.q("SELECT institution, sum(n) FROM count_orders GROUP BY ALL"))
        lines = dict(self.q("SELECT institution, sum(n) FROM count_lines GROUP BY ALL"))
        folded = self.q(
            "SELECT coalesce(sum(folded.lines), 0), coalesce(sum(folded.orders), 0) FROM counts_in"
        )[0]
        return {
            "orders": sum(int(o) for _, o, _ in by_day),
            "lines": sum(int(n) for _, _, n in by_day),
            "lines_by_decision": {
                d: int(n)
                for d, n in self.q(
                    "SELECT decision, sum(n) FROM count_lines GROUP BY ALL ORDER BY 1"
                )
            },
            "by_institution": {
                i: {"orders": int(orders.get(i, 0)), "lines": int(lines.get(i, 0))}
                for i in sorted(orders.keys() | lines.keys())
            },
            "by_item": {
                i: int(n)
                for i, n in self.q(
                    "SELECT item, sum(n) AS n FROM count_lines GROUP BY ALL ORDER BY n DESC, item"
                )
            },
            "by_department": _nested(
                self.q(
                    "SELECT institution, department, sum(n) FROM count_lines "
                    "GROUP BY ALL ORDER BY 1, 2"
                )
            ),
            "by_day": {d: {"orders": int(o), "lines": int(n)} for d, o, n in by_day},
            "folded": {"lines": int(folded[0]), "orders": int(folded[1])},
        }

    def _recognition(self) -> dict[str, Any]:
        def grouped(*keys: str) -> list[tuple[Any, ...]]:
            cols = ", ".join(keys)
            return self.q(
                f"SELECT {cols}, count(*), count(*) FILTER (WHERE outcome = 'ACCEPTED'), "
                f"count(*) FILTER (WHERE outcome = 'OVERRIDDEN') FROM joined "
                f"GROUP BY ALL ORDER BY {cols}"
            )

        total = _figures(
            self.q(
                "SELECT count(*), count(*) FILTER (WHERE outcome = 'ACCEPTED'), "
                "count(*) FILTER (WHERE outcome = 'OVERRIDDEN') FROM joined"
            )[0]
        )
        exempt = dict(self.q("SELECT institution, count(*) FROM exempt GROUP BY ALL"))
        by_institution = {i: _figures(rest) for i, *rest in grouped("institution")}
        for institution in exempt:
            by_institution.setdefault(institution, _figures(()))
        for institution, figures in by_institution.items():
            figures["exempt_emergency"] = int(exempt.get(institution, 0))
        savings, unpriced = self.q(
            "SELECT coalesce(sum(p.price_fen), 0), count(*) FILTER (WHERE p.price_fen IS NULL) "
            "FROM joined j LEFT JOIN prices p ON p.item_code = j.item "
            "WHERE j.outcome = 'ACCEPTED'"
        )[0]
        departments: dict[str, dict[str, Any]] = defaultdict(dict)
        for institution, department, *rest in grouped("institution", "department"):
            departments[institution][department] = _figures(rest)
        clinicians = [
            {"clinician": c, "key_id": k} | _figures(rest)
            for k, c, *rest in self.q(
                "SELECT key_id, clinician, count(*) AS n, "
                "count(*) FILTER (WHERE outcome = 'ACCEPTED'), "
                "count(*) FILTER (WHERE outcome = 'OVERRIDDEN') FROM joined "
                "GROUP BY ALL ORDER BY n DESC, key_id, clinician"
            )
        ]
        return {
            **total,
            "override_reasons": {
                code: int(n)
                for code, n in self.q(
                    "SELECT override_code, count(*) AS n FROM joined "
                    "WHERE outcome = 'OVERRIDDEN' GROUP BY ALL ORDER BY n DESC, override_code"
                )
            },
            "exempt_emergency": int(sum(exempt.values())),
            "savings_fen": int(savings),
            "accepted_unpriced": int(unpriced),
            "by_institution": dict(sorted(by_institution.items())),
            "by_item": {i: _figures(rest) for i, *rest in grouped("item")},
            "by_department": dict(sorted(departments.items())),
            "by_day": {d: _figures(rest) for d, *rest in grouped("day")},
            "clinicians": clinicians,
        }

    def _gene_tests(self) -> dict[str, Any]:
        by_reason = self.q(
            "SELECT code, count(*) AS n FROM gene_reasons GROUP BY ALL ORDER BY n DESC, code"
        )
        sendouts = self.q(
            "SELECT lab, count(*) AS n FROM gene_lines WHERE lab <> '' "
            "GROUP BY ALL ORDER BY n DESC, lab"
        )

        def breakdown(key: str) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for k, n in self.q(f"SELECT {key}, count(*) FROM gene_lines GROUP BY ALL ORDER BY 1"):
                out[k] = {"lines": int(n), "by_reason": {}, "sendouts": {}}
            for k, code, n in self.q(
                f"SELECT {key}, code, count(*) AS n FROM gene_reasons "
                f"GROUP BY ALL ORDER BY 1, n DESC, code"
            ):
                out[k]["by_reason"][code] = int(n)
            for k, lab, n in self.q(
                f"SELECT {key}, lab, count(*) AS n FROM gene_lines WHERE lab <> '' "
                f"GROUP BY ALL ORDER BY 1, n DESC, lab"
            ):
                out[k]["sendouts"][lab] = int(n)
            return out

        return {
            "lines": int(self.q("SELECT count(*) FROM gene_lines")[0][0]),
            "by_reason": {c: int(n) for c, n in by_reason},
            "sendouts": {lab: int(n) for lab, n in sendouts},
            "concentration": self._concentration(),
            "by_institution": breakdown("institution"),
            "by_item": breakdown("item"),
        }

    def _concentration(self) -> list[dict[str, Any]]:
        rows = self.q(
            """
            WITH per_lab AS (
              SELECT key_id, clinician, lab, count(*) AS n FROM gene_lines
              WHERE lab <> '' GROUP BY ALL),
            per_clinician AS (
              SELECT key_id, clinician, sum(n) AS total,
                     arg_max(lab, (n, lab)) AS top_lab, max(n) AS top_n
              FROM per_lab GROUP BY ALL)
            SELECT clinician, key_id, top_lab, total, top_n FROM per_clinician
            WHERE total >= ? AND top_n::DOUBLE / total >= ?
            ORDER BY top_n::DOUBLE / total DESC, total DESC, clinician
            """,
            [self.concentration_min, self.concentration_share],
        )
        return [
            {
                "clinician": clinician,
                "key_id": key_id,
                "lab": lab,
                "sendouts": int(total),
                "to_lab": int(top),
                "share": int(top) / int(total),
            }
            for clinician, key_id, lab, total, top in rows
        ]


def _figures(row: Sequence[Any]) -> dict[str, Any]:
    reminded, accepted, overridden = (int(x) for x in row) if row else (0, 0, 0)
    return {
        "reminded": reminded,
        "accepted": accepted,
        "overridden": overridden,
        "no_feedback": reminded - accepted - overridden,
        "rate": accepted / reminded if reminded else None,
    }


def _nested(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for outer, inner, n in rows:
        out[outer][inner] = int(n)
    return dict(out)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# Every figure reads these views and tables (a table where it is read more than once);
# "inside" = in the period and the institutions asked for.
_VIEWS = f"""
CREATE TEMP VIEW in_period AS
  SELECT l.* FROM log l, period p
  WHERE l.day IS NOT NULL
    AND (p.first IS NULL OR l.day >= p.first) AND (p.last IS NULL OR l.day <= p.last);

CREATE TEMP VIEW decisions AS
  SELECT * FROM in_period
  WHERE type = 'decision'
    AND ((SELECT count(*) FROM wanted) = 0
         OR institution_id IN (SELECT institution_id FROM wanted));

-- Every decision's lines, "inside" when the decision is in the period and institutions
-- (the others are needed only to know that a reminder's decision record exists).
CREATE TEMP TABLE decision_lines AS
  SELECT decision_id, institution_id AS institution, department_id AS department,
         key_id, clinician, l.day, it.line_id, it.item_code AS item,
         coalesce(it.gene_test, false) AS gene, coalesce(it.sendout_lab_id, '') AS lab,
         it.reasons,
         l.day IS NOT NULL AND (p.first IS NULL OR l.day >= p.first)
           AND (p.last IS NULL OR l.day <= p.last)
           AND ((SELECT count(*) FROM wanted) = 0
                OR institution_id IN (SELECT institution_id FROM wanted)) AS inside
  FROM (SELECT *, unnest(items) AS it FROM log WHERE type = 'decision') l, period p;

CREATE TEMP TABLE all_reasons AS
  SELECT * EXCLUDE (reasons, r), r.code, coalesce(r.silent, false) AS silent
  FROM (SELECT *, unnest(reasons) AS r FROM decision_lines);

CREATE TEMP VIEW shown_reasons AS
  SELECT * FROM all_reasons WHERE inside AND NOT silent;

CREATE TEMP VIEW silent_reasons AS SELECT code FROM all_reasons WHERE inside AND silent;

CREATE TEMP VIEW reminded AS
  SELECT DISTINCT decision_id, line_id, institution, department, item, day, key_id, clinician
  FROM shown_reasons WHERE code = '{REMINDED}';

-- Lines whose decision record was read at all (in the period or not, shown or silent).
CREATE TEMP VIEW recorded_lines AS SELECT decision_id, line_id FROM decision_lines;

CREATE TEMP TABLE latest_feedback AS
  SELECT decision_id, line_id,
         arg_max(outcome, "timestamp") AS outcome,
         arg_max(coalesce(override_code, ''), "timestamp") AS override_code,
         arg_max(struct_pack(institution_id, department_id, item_code, day, key_id,
                             clinician), "timestamp") AS at
  FROM log
  WHERE type = 'feedback' AND list_contains(reason_codes, '{REMINDED}')
  GROUP BY decision_id, line_id;

CREATE TEMP TABLE joined AS
  SELECT r.institution, r.department, r.item, r.day, r.key_id, r.clinician,
         f.outcome, f.override_code
  FROM reminded r LEFT JOIN latest_feedback f USING (decision_id, line_id)
  UNION ALL
  SELECT f.at.institution_id, f.at.department_id, f.at.item_code, f.at.day, f.at.key_id,
         f.at.clinician, f.outcome, f.override_code
  FROM latest_feedback f, period p
  WHERE NOT EXISTS (SELECT 1 FROM recorded_lines a
                    WHERE a.decision_id = f.decision_id AND a.line_id = f.line_id)
    AND (p.first IS NULL OR f.at.day >= p.first) AND (p.last IS NULL OR f.at.day <= p.last)
    AND ((SELECT count(*) FROM wanted) = 0
         OR f.at.institution_id IN (SELECT institution_id FROM wanted));

CREATE TEMP VIEW exempt AS
  SELECT institution FROM shown_reasons WHERE code = '{EXEMPT}';

CREATE TEMP VIEW gene_lines AS SELECT * FROM decision_lines WHERE inside AND gene;

CREATE TEMP VIEW gene_reasons AS SELECT * FROM shown_reasons WHERE gene;

CREATE TEMP VIEW counts_in AS SELECT * FROM in_period WHERE type = 'counts';

CREATE TEMP TABLE count_lines AS
  SELECT day, coalesce(x.institution_id, '{OTHER}') AS institution,
         coalesce(x.department_id, '{OTHER}') AS department,
         coalesce(x.item_code, '{OTHER}') AS item, x.decision, x.n
  FROM (SELECT day, unnest(lines) AS x FROM counts_in)
  WHERE (SELECT count(*) FROM wanted) = 0
     OR x.institution_id IN (SELECT institution_id FROM wanted);

CREATE TEMP TABLE count_orders AS
  SELECT day, coalesce(x.institution_id, '{OTHER}') AS institution, x.n
  FROM (SELECT day, unnest(orders) AS x FROM counts_in)
  WHERE (SELECT count(*) FROM wanted) = 0
     OR x.institution_id IN (SELECT institution_id FROM wanted);
"""

_SILENT = "SELECT code, count(*) AS n FROM silent_reasons GROUP BY ALL ORDER BY n DESC, code"
