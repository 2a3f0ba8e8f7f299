"""The same item ordered twice in one request (every line after the first is flagged).

Cited to the national recognition rule whatever the item: its point is avoiding
needless repeat testing, which is what a doubled line is.
"""

from __future__ import annotations

from cds.domain import Decision, Reason, ReasonCode
from cds.rules.common import NATIONAL_RECOGNITION_POLICY

_DUPLICATE = str(ReasonCode.DUPLICATE_IN_REQUEST)


class DuplicateRule:
    """Builds the reason once a repeat is seen; the engine tracks first lines per code."""

    __slots__ = ("decision",)

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def reason(self, name: str, first_line_id: str) -> Reason:
        return Reason(
            _DUPLICATE,
            self.decision,
            f"「{name}」在本次申请中重复开具（与明细 {first_line_id} 相同）。",
            (),
            (),
            NATIONAL_RECOGNITION_POLICY,
        )
