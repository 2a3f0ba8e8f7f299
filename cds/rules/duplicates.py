"""The same item ordered twice in one request (every line after the first is flagged).

Cited to the national recognition rule whatever the item: its point is avoiding
needless repeat testing, which is what a doubled line is.
"""

from __future__ import annotations

from cds.domain import Reason, ReasonCode, new_tuple
from cds.rules.common import NATIONAL_RECOGNITION_POLICY, RuleContext

_DUPLICATE = str(ReasonCode.DUPLICATE_IN_REQUEST)


class DuplicateRule:
    """Builds the reason once a repeat is seen; the engine tracks first lines per code."""

    __slots__ = ("_message", "decision", "silent")

    def __init__(self, ctx: RuleContext) -> None:
        self.decision = ctx.severity[_DUPLICATE]
        self._message = ctx.wording[_DUPLICATE]
        self.silent = _DUPLICATE in ctx.silent_codes

    def reason(self, code: str, name: str, first_line_id: str) -> Reason:
        return new_tuple(
            Reason,
            (
                _DUPLICATE,
                self.decision,
                self._message(code, name, first_line_id),
                (),
                (),
                NATIONAL_RECOGNITION_POLICY,
                self.silent,
                0,  # prior_results_omitted
            ),
        )
