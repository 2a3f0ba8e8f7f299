"""Tumour gene-test ordering rules (肿瘤基因检测): list, price, indication, MDT, consent, repeat.

They apply by item code to any ordered item whose code is on the catalogue's list,
whatever category the EMR gave it; an item the EMR calls a gene test that is not on
the list is refused outright and gets no other gene-test reason. Every reason whose
wording depends only on the catalogue is built here once, so a firing rule appends a
prebuilt object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cds.catalog.snapshot import GeneTest, SendoutLab
from cds.domain import (
    US_PER_DAY,
    Order,
    OrderItem,
    Reason,
    ReasonCode,
    StoredResult,
)
from cds.rules.common import RuleContext, prior_results
from cds.rules.sendout import SendoutRule

_NOT_IN_CATALOGUE = str(ReasonCode.GENE_TEST_NOT_IN_CATALOGUE)
_NOT_PRICED = str(ReasonCode.GENE_TEST_NOT_PRICED)
_PRICE_MISMATCH = str(ReasonCode.PRICE_ITEM_MISMATCH)
_INDICATION = str(ReasonCode.GENE_TEST_INDICATION_MISMATCH)
_MDT = str(ReasonCode.MDT_REQUIRED)
_CONSENT = str(ReasonCode.CONSENT_REQUIRED)
_REPEATED = str(ReasonCode.GENE_TEST_REPEATED)

# How many indication prefixes a message lists before it says "等".
_SHOWN_INDICATIONS = 8


def not_in_catalogue(item_code: str, ctx: RuleContext) -> Reason:
    return Reason(
        _NOT_IN_CATALOGUE,
        ctx.severity[_NOT_IN_CATALOGUE],
        f"基因检测项目 {item_code} 不在推荐目录中，不得开具。",
        (),
        (),
        ctx.catalogue_citation,
    )


def _indication_text(prefixes: tuple[str, ...]) -> str:
    shown = "、".join(prefixes[:_SHOWN_INDICATIONS])
    return shown + ("等" if len(prefixes) > _SHOWN_INDICATIONS else "")


class GeneTestRule:
    """One gene test, compiled: its static reasons and what the dynamic checks compare."""

    __slots__ = (
        "_ctx",
        "code",
        "consent_reason",
        "indication_reason",
        "indications",
        "mdt_reason",
        "name",
        "not_priced_reason",
        "price_item_code",
        "price_mismatch_reason",
        "repeat_days",
        "repeat_decision",
        "repeat_us",
        "sendout",
        "source",
    )

    def __init__(self, test: GeneTest, labs: Mapping[str, SendoutLab], ctx: RuleContext) -> None:
        sev = ctx.severity
        name = test.name or test.code
        source = test.source or ctx.catalogue_citation
        self._ctx = ctx
        self.code = test.code
        self.name = name
        self.source = source
        self.price_item_code = test.price_item_code
        self.not_priced_reason: Reason | None = None
        if test.price_item_code is None:
            self.not_priced_reason = Reason(
                _NOT_PRICED,
                sev[_NOT_PRICED],
                f"「{name}」尚无获批的收费项目，不得收费开具。",
                (),
                (),
                source,
            )
        # Unused while the test is unpriced: NOT_PRICED replaces any mismatch then.
        self.price_mismatch_reason = Reason(
            _PRICE_MISMATCH,
            sev[_PRICE_MISMATCH],
            f"「{name}」须按目录收费项目 {test.price_item_code} 收费，不得替换为其他收费项目。",
            (),
            (),
            source,
        )
        # ICD-10 codes compare case-insensitively; prefixes are upper-cased once here.
        self.indications = tuple(p.strip().upper() for p in test.indications)
        self.indication_reason = Reason(
            _INDICATION,
            sev[_INDICATION],
            f"患者诊断不符合「{name}」的适应证（{_indication_text(self.indications)}）。",
            (),
            (),
            source,
        )
        self.mdt_reason: Reason | None = None
        if test.requires_mdt_first_visit:
            self.mdt_reason = Reason(
                _MDT,
                sev[_MDT],
                f"肿瘤患者首诊开具「{name}」须先经多学科会诊（MDT），请先完成 MDT 讨论并登记记录。",
                (),
                (),
                source,
            )
        self.consent_reason: Reason | None = None
        if test.requires_consent:
            self.consent_reason = Reason(
                _CONSENT,
                sev[_CONSENT],
                f"「{name}」须先签署知情同意书。",
                (),
                (),
                source,
            )
        self.repeat_days = test.repeat_interval_days
        self.repeat_us = (
            None if test.repeat_interval_days is None else test.repeat_interval_days * US_PER_DAY
        )
        self.repeat_decision = sev[_REPEATED]
        self.sendout = SendoutRule(test, source, labs, ctx)

    def check(
        self,
        order: Order,
        item: OrderItem,
        rows: Sequence[StoredResult] | None,
        out: list[Reason],
    ) -> None:
        """Append every gene-test reason this line earns; ``rows`` are results of this code."""
        if self.not_priced_reason is not None:
            out.append(self.not_priced_reason)
        elif item.price_item_code and item.price_item_code != self.price_item_code:
            out.append(self.price_mismatch_reason)
        if self.indications and not self._indicated(order.diagnosis_codes):
            out.append(self.indication_reason)
        if self.mdt_reason is not None and order.first_oncology_visit and not order.mdt_record_id:
            out.append(self.mdt_reason)
        if self.consent_reason is not None and not item.consent_signed:
            out.append(self.consent_reason)
        if item.sendout_lab_id:
            self.sendout.check(order, item.sendout_lab_id, out)
        if self.repeat_us is not None and rows:
            reason = self._repeated(order.order_time_us, self.repeat_us, rows)
            if reason is not None:
                out.append(reason)

    def _indicated(self, diagnoses: tuple[str, ...]) -> bool:
        prefixes = self.indications
        return any(d.strip().upper().startswith(prefixes) for d in diagnoses)

    def _repeated(self, t: int, interval: int, rows: Sequence[StoredResult]) -> Reason | None:
        prior = prior_results(rows, t, interval)
        if not prior:
            return None
        return Reason(
            _REPEATED,
            self.repeat_decision,
            f"患者已有 {len(prior)} 份「{self.name}」结果"
            f"在重复检测间隔（{self.repeat_days} 天）内，"
            f"最近一次为 {self._ctx.newest(prior)}；如确需重复检测，请选择理由。",
            prior,
            self._ctx.override_options,
            self.source,
        )
