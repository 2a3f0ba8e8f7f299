"""The active catalogue as an immutable, indexed snapshot.

A check must be a handful of dict look-ups, so everything a rule needs is resolved
here once per catalogue load: codes index their entries, policy severities are a full
map (defaults filled in), send-out approvals are a set of (institution, test) pairs,
qualification dates are already the last covered microsecond in the catalogue's time
zone. A reload builds a whole new Snapshot and the server swaps one reference, so a
request that read the reference keeps a consistent catalogue to its end.

``cds.catalog`` turns a JSON file into a Snapshot (validation lives there); tests and
benchmarks may build one directly with :meth:`Snapshot.create`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple
from zoneinfo import ZoneInfo

from cds.domain import (
    DEFAULT_SEVERITY,
    RETENTION_MARGIN_US,
    US_PER_DAY,
    US_PER_SECOND,
    Decision,
    ItemCategory,
    OverrideOption,
    ReasonCode,
)

DEFAULT_TIMEZONE = "Asia/Shanghai"
# The coding system of item codes when the catalogue names none (CDS Hooks door).
DEFAULT_CODE_SYSTEM = "urn:cds:item"


class Institution(NamedTuple):
    id: str
    name: str
    level: str
    groups: frozenset[str]


class RecognitionItem(NamedTuple):
    code: str
    name: str
    category: ItemCategory  # LAB or EXAM
    validity_days: int
    scope: str  # "PROVINCE" | "GROUP"
    source: str = ""
    price_fen: int | None = None  # what one recognised result saves (supervision report)
    silent: bool = False  # its reasons are counted and logged, never answered

    @property
    def validity_us(self) -> int:
        return self.validity_days * US_PER_DAY


class GeneTest(NamedTuple):
    code: str
    name: str
    genes: tuple[str, ...]
    method: str
    indications: tuple[str, ...]  # ICD-10 prefixes; () = no indication check
    price_item_code: str | None  # None = not priced: may not be charged
    price_fen: int | None
    requires_mdt_first_visit: bool
    requires_consent: bool
    in_house_institutions: frozenset[str]
    repeat_interval_days: int | None  # None = no repeat check
    source: str = ""
    silent: bool = False  # its reasons are counted and logged, never answered


class SendoutLab(NamedTuple):
    id: str
    name: str
    qualification_valid_until: dt.date
    qualification_end_us: int  # end of that day in the catalogue's zone (exclusive bound)
    approved: frozenset[tuple[str, str]]  # (institution_id, gene_test_code)


def end_of_day_us(day: dt.date, tz: dt.tzinfo) -> int:
    """First microsecond after ``day`` in ``tz``: a date "is valid through the end of its day"."""
    nxt = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return int(nxt.timestamp()) * US_PER_SECOND


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    effective_date: str
    timezone: str
    institutions: Mapping[str, Institution]
    recognition_items: Mapping[str, RecognitionItem]
    gene_tests: Mapping[str, GeneTest]
    sendout_labs: Mapping[str, SendoutLab]
    override_reasons: Mapping[str, OverrideOption]
    # The override reasons in catalogue order, as offered on a reason.
    override_options: tuple[OverrideOption, ...]
    # Every ReasonCode -> its decision after policy (a SILENT code: its default).
    severity: Mapping[str, Decision]
    # Where it came from (path) and a content digest, for status and logs.
    source: str = ""
    digest: str = ""
    # How long results of codes this catalogue does not know are kept: the longest
    # recognition window, so a catalogue that adds the item soon can still use them,
    # without a decade-long gene-test repeat interval pinning unknown lab rows.
    unknown_retention_us: int = 0
    _retention: Mapping[str, int] = field(default_factory=dict, repr=False)
    # The CDS Hooks door: which codings of a ServiceRequest are our item codes, and
    # where a card links a prior result ("" = no links).
    code_system: str = DEFAULT_CODE_SYSTEM
    report_url_template: str = ""
    # The catalogue's own wording: reason code -> template (cds.catalog.messages); codes
    # it does not list keep the built-in text.
    messages: Mapping[str, str] = field(default_factory=dict)
    # Codes whose policy is SILENT: evaluated, counted and logged, never answered.
    silent_codes: frozenset[str] = frozenset()

    @classmethod
    def create(
        cls,
        *,
        version: str,
        effective_date: str = "",
        timezone: str = DEFAULT_TIMEZONE,
        institutions: Iterable[Institution] = (),
        recognition_items: Iterable[RecognitionItem] = (),
        gene_tests: Iterable[GeneTest] = (),
        sendout_labs: Iterable[SendoutLab] = (),
        override_reasons: Iterable[OverrideOption] = (),
        severity: Mapping[str, Decision] | None = None,
        source: str = "",
        digest: str = "",
        code_system: str = DEFAULT_CODE_SYSTEM,
        report_url_template: str = "",
        messages: Mapping[str, str] | None = None,
        silent_codes: Iterable[str] = (),
    ) -> Snapshot:
        """Index validated entries. Callers guarantee uniqueness and references."""
        recog = {r.code: r for r in recognition_items}
        genes = {g.code: g for g in gene_tests}
        overrides = tuple(override_reasons)
        sev: dict[str, Decision] = {str(c): d for c, d in DEFAULT_SEVERITY.items()}
        for code, decision in (severity or {}).items():
            sev[str(ReasonCode(code))] = Decision(decision)
        retention: dict[str, int] = {}
        for r in recog.values():
            retention[r.code] = max(retention.get(r.code, 0), r.validity_us)
        for g in genes.values():
            if g.repeat_interval_days is not None:
                window = g.repeat_interval_days * US_PER_DAY
                retention[g.code] = max(retention.get(g.code, 0), window)
        return cls(
            version=version,
            effective_date=effective_date,
            timezone=timezone,
            institutions=MappingProxyType({i.id: i for i in institutions}),
            recognition_items=MappingProxyType(recog),
            gene_tests=MappingProxyType(genes),
            sendout_labs=MappingProxyType({lab.id: lab for lab in sendout_labs}),
            override_reasons=MappingProxyType({o.code: o for o in overrides}),
            override_options=overrides,
            severity=MappingProxyType(sev),
            source=source,
            digest=digest,
            unknown_retention_us=max(
                (r.validity_us for r in recog.values()),
                default=max(retention.values(), default=0),
            ),
            _retention=MappingProxyType(retention),
            code_system=code_system,
            report_url_template=report_url_template,
            messages=MappingProxyType({str(ReasonCode(c)): t for c, t in (messages or {}).items()}),
            silent_codes=frozenset(str(ReasonCode(c)) for c in silent_codes),
        )

    def retention_us(self, item_code: str) -> int:
        """How long after ``reported_at`` a result of this code is kept: as long as it can
        matter to a rule, plus the margin that keeps a back-dated ``order_time`` exact
        (``RETENTION_MARGIN_US``). Zero stays zero: a result no rule can use is not kept."""
        window = self._retention.get(item_code, self.unknown_retention_us)
        return window + RETENTION_MARGIN_US if window else 0

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)
