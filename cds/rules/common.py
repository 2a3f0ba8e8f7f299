"""What every rule family shares: the compiled catalogue context and message helpers.

Rules are compiled once per catalogue (``Engine.__init__``) against a ``RuleContext``;
everything that does not depend on the order (severities after policy, display names,
group peers, citations) is resolved here so a check only compares and looks up.
Messages are compiled from their templates here too (``cds.rules.wording``); what is
left of them runs only once a reason has fired, never on the allow path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from cds.catalog.messages import BUILT_IN_UNKNOWN_LAB, template_of
from cds.catalog.snapshot import Snapshot
from cds.domain import (
    US_PER_SECOND,
    Decision,
    OverrideOption,
    PriorResult,
    ReasonCode,
    StoredResult,
    new_tuple,
)
from cds.rules.wording import Render, compile_template

_NOT_APPROVED = str(ReasonCode.SENDOUT_LAB_NOT_APPROVED)

# The national rule behind mutual recognition; cited when an item carries no source.
NATIONAL_RECOGNITION_POLICY = (
    "国卫医发〔2022〕6号《关于印发医疗机构检查检验结果互认管理办法的通知》"
)


@lru_cache(maxsize=65_536)
def _day(zone: ZoneInfo, us: int) -> str:
    # Cached: a prior result is cited on every check of its patient, and datetime's
    # zone conversion and formatting cost far more than the look-up.
    return dt.datetime.fromtimestamp(us // US_PER_SECOND, zone).date().isoformat()


def _reported_at(prior: PriorResult) -> int:
    return prior.reported_at_us


# The newest prior results a reason lists; the rest are only counted. A patient with
# thousands of results of one item once made a 100-line Check build a 165 MB answer
# (refused by grpc after seconds of the event loop's time) and a 131 MB log line.
MAX_LISTED_PRIOR_RESULTS = 10


def listed(prior: tuple[PriorResult, ...]) -> tuple[tuple[PriorResult, ...], int]:
    """The prior results a reason lists (newest first, at most MAX_LISTED_PRIOR_RESULTS)
    and how many more counted."""
    if len(prior) <= MAX_LISTED_PRIOR_RESULTS:
        return prior, 0
    return prior[:MAX_LISTED_PRIOR_RESULTS], len(prior) - MAX_LISTED_PRIOR_RESULTS


def prior_results(
    rows: Iterable[StoredResult],
    order_time_us: int,
    window_us: int,
    *,
    recognised_at: str | None = None,
    peers: frozenset[str] | None = None,
) -> tuple[PriorResult, ...]:
    """The rows inside ``[reported_at, reported_at + window]`` at ``order_time_us`` (both
    ends inclusive), as prior results newest first.

    With ``recognised_at`` (the ordering institution) only the rows it may recognise:
    its own, or HR-marked ones from an institution in ``peers`` (None: any, the
    province-wide scope). Every window is checked here and the result sorted, whatever
    the store did: a store bug cannot change a judgement. ``valid_until`` is the
    window's last instant.
    """
    counted: list[PriorResult] | None = None
    for r in rows:
        reported = r.reported_at_us
        if reported > order_time_us or reported + window_us < order_time_us:
            continue
        if (
            recognised_at is not None
            and r.institution_id != recognised_at
            and not (r.recognition_mark and (peers is None or r.institution_id in peers))
        ):
            continue
        if counted is None:
            counted = []
        counted.append(
            new_tuple(
                PriorResult,
                (r.result_id, r.institution_id, r.item_code, reported, reported + window_us),
            )
        )
    if counted is None:
        return ()
    if len(counted) > 1:
        counted.sort(key=_reported_at, reverse=True)
    return tuple(counted)


class RuleContext(NamedTuple):
    """Per-catalogue facts the rule families read while compiling and when a reason fires."""

    zone: ZoneInfo
    # Every reason code -> its decision after policy.
    severity: Mapping[str, Decision]
    # The catalogue's override reasons, in catalogue order.
    override_options: tuple[OverrideOption, ...]
    institution_names: Mapping[str, str]
    # institution id -> every catalogued institution sharing at least one group with it.
    group_peers: Mapping[str, frozenset[str]]
    # Cited for a gene-test rule that has no catalogue entry (or an entry without source).
    catalogue_citation: str
    # Every reason code -> its message as a function of the code's placeholders
    # (cds.rules.wording), from the catalogue's template or the built-in one.
    wording: Mapping[str, Render]
    # SENDOUT_LAB_NOT_APPROVED for a lab the catalogue does not list.
    unknown_lab_wording: Render
    # Codes whose policy is SILENT (their reasons carry ``silent``).
    silent_codes: frozenset[str]

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> RuleContext:
        by_group: dict[str, set[str]] = {}
        for inst in snapshot.institutions.values():
            for group in inst.groups:
                by_group.setdefault(group, set()).add(inst.id)
        peers: dict[str, frozenset[str]] = {}
        for inst in snapshot.institutions.values():
            members: set[str] = set()
            for group in inst.groups:
                members |= by_group[group]
            if members:
                peers[inst.id] = frozenset(members)
        version = f"（版本 {snapshot.version}）" if snapshot.version else ""
        return cls(
            zone=snapshot.zone,
            severity=dict(snapshot.severity),
            override_options=tuple(snapshot.override_options),
            institution_names={i.id: i.name or i.id for i in snapshot.institutions.values()},
            group_peers=peers,
            catalogue_citation=f"肿瘤基因检测推荐目录{version}",
            wording={
                str(c): compile_template(c, template_of(snapshot.messages, c)) for c in ReasonCode
            },
            unknown_lab_wording=compile_template(
                _NOT_APPROVED, template_of(snapshot.messages, _NOT_APPROVED, BUILT_IN_UNKNOWN_LAB)
            ),
            silent_codes=snapshot.silent_codes,
        )

    def day(self, us: int) -> str:
        """A calendar date in the catalogue's zone, as clinicians read it."""
        return _day(self.zone, us)

    def institution_name(self, institution_id: str) -> str:
        return self.institution_names.get(institution_id) or institution_id
