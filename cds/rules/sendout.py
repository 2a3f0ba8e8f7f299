"""Send-out of a gene test to an outside lab: approval, qualification date, in-house option.

Approvals are (institution, test) pairs and qualification ends are exclusive
microsecond bounds, both resolved by the Snapshot, so each check is a set or integer
comparison. An unknown lab is "not approved" and has no qualification to check.
"""

from __future__ import annotations

from collections.abc import Mapping

from cds.catalog.snapshot import GeneTest, SendoutLab
from cds.domain import Decision, Order, Reason, ReasonCode, new_tuple
from cds.rules.common import RuleContext

_NOT_APPROVED = str(ReasonCode.SENDOUT_LAB_NOT_APPROVED)
_EXPIRED = str(ReasonCode.SENDOUT_LAB_QUALIFICATION_EXPIRED)
_IN_HOUSE = str(ReasonCode.SENDOUT_AVAILABLE_IN_HOUSE)


class SendoutRule:
    """The send-out checks of one gene test, with the in-house reason prebuilt."""

    __slots__ = (
        "_labs",
        "code",
        "expired_decision",
        "expired_message",
        "expired_silent",
        "in_house",
        "in_house_reason",
        "name",
        "not_approved_decision",
        "not_approved_message",
        "not_approved_silent",
        "source",
        "unknown_lab_message",
    )

    def __init__(
        self, test: GeneTest, source: str, labs: Mapping[str, SendoutLab], ctx: RuleContext
    ) -> None:
        self._labs = labs
        self.code = test.code
        self.name = test.name or test.code
        self.source = source
        self.in_house = test.in_house_institutions
        self.not_approved_decision: Decision = ctx.severity[_NOT_APPROVED]
        self.expired_decision: Decision = ctx.severity[_EXPIRED]
        self.not_approved_message = ctx.wording[_NOT_APPROVED]
        self.unknown_lab_message = ctx.unknown_lab_wording
        self.expired_message = ctx.wording[_EXPIRED]
        self.not_approved_silent = test.silent or _NOT_APPROVED in ctx.silent_codes
        self.expired_silent = test.silent or _EXPIRED in ctx.silent_codes
        self.in_house_reason = Reason(
            _IN_HOUSE,
            ctx.severity[_IN_HOUSE],
            ctx.wording[_IN_HOUSE](test.code, self.name),
            (),
            (),
            source,
            test.silent or _IN_HOUSE in ctx.silent_codes,
        )

    def check(self, order: Order, lab_id: str, out: list[Reason]) -> None:
        """Append every send-out reason for sending this test to ``lab_id`` (non-empty)."""
        lab = self._labs.get(lab_id)
        if lab is None:
            out.append(
                new_tuple(
                    Reason,
                    (
                        _NOT_APPROVED,
                        self.not_approved_decision,
                        self.unknown_lab_message(self.code, self.name, lab_id, lab_id),
                        (),
                        (),
                        self.source,
                        self.not_approved_silent,
                        0,  # prior_results_omitted
                    ),
                )
            )
        else:
            if (order.institution_id, self.code) not in lab.approved:
                out.append(
                    new_tuple(
                        Reason,
                        (
                            _NOT_APPROVED,
                            self.not_approved_decision,
                            self.not_approved_message(
                                self.code, self.name, lab.id, lab.name or lab.id
                            ),
                            (),
                            (),
                            self.source,
                            self.not_approved_silent,
                            0,  # prior_results_omitted
                        ),
                    )
                )
            if order.order_time_us >= lab.qualification_end_us:
                out.append(
                    new_tuple(
                        Reason,
                        (
                            _EXPIRED,
                            self.expired_decision,
                            self.expired_message(
                                self.code,
                                self.name,
                                lab.id,
                                lab.name or lab.id,
                                lab.qualification_valid_until.isoformat(),
                            ),
                            (),
                            (),
                            self.source,
                            self.expired_silent,
                            0,  # prior_results_omitted
                        ),
                    )
                )
        if order.institution_id in self.in_house:
            out.append(self.in_house_reason)
