"""Send-out of a gene test to an outside lab: approval, qualification date, in-house option.

Approvals are (institution, test) pairs and qualification ends are exclusive
microsecond bounds, both resolved by the Snapshot, so each check is a set or integer
comparison. An unknown lab is "not approved" and has no qualification to check.
"""

from __future__ import annotations

from collections.abc import Mapping

from cds.catalog.snapshot import GeneTest, SendoutLab
from cds.domain import Decision, Order, Reason, ReasonCode
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
        "in_house",
        "in_house_reason",
        "name",
        "not_approved_decision",
        "source",
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
        self.in_house_reason = Reason(
            _IN_HOUSE,
            ctx.severity[_IN_HOUSE],
            f"本院可开展「{self.name}」，不应外送检测。",
            (),
            (),
            source,
        )

    def check(self, order: Order, lab_id: str, out: list[Reason]) -> None:
        """Append every send-out reason for sending this test to ``lab_id`` (non-empty)."""
        lab = self._labs.get(lab_id)
        if lab is None:
            out.append(
                Reason(
                    _NOT_APPROVED,
                    self.not_approved_decision,
                    f"外送实验室 {lab_id} 不在获批的外送实验室名单中，不得外送「{self.name}」。",
                    (),
                    (),
                    self.source,
                )
            )
        else:
            if (order.institution_id, self.code) not in lab.approved:
                out.append(
                    Reason(
                        _NOT_APPROVED,
                        self.not_approved_decision,
                        f"外送实验室「{lab.name or lab.id}」"
                        f"未获准承接本院的「{self.name}」外送检测。",
                        (),
                        (),
                        self.source,
                    )
                )
            if order.order_time_us >= lab.qualification_end_us:
                out.append(
                    Reason(
                        _EXPIRED,
                        self.expired_decision,
                        f"外送实验室「{lab.name or lab.id}」的资质有效期至 "
                        f"{lab.qualification_valid_until.isoformat()}，已过期，不得外送。",
                        (),
                        (),
                        self.source,
                    )
                )
        if order.institution_id in self.in_house:
            out.append(self.in_house_reason)
