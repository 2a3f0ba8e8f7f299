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
    new_tuple,
)
from cds.rules.common import RuleContext, listed, prior_results
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


class NotInCatalogue:
    """The refusal of a gene test off the list; its message names the code as ordered."""

    __slots__ = ("_ctx", "_message", "decision", "silent")

    def __init__(self, ctx: RuleContext) -> None:
        self._ctx = ctx
        self.decision = ctx.severity[_NOT_IN_CATALOGUE]
        self._message = ctx.wording[_NOT_IN_CATALOGUE]
        self.silent = _NOT_IN_CATALOGUE in ctx.silent_codes

    def __call__(self, item_code: str) -> Reason:
        return new_tuple(
            Reason,
            (
                _NOT_IN_CATALOGUE,
                self.decision,
                self._message(item_code),
                (),
                (),
                self._ctx.catalogue_citation,
                self.silent,
                0,  # prior_results_omitted
            ),
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
        "repeat_days_text",
        "repeat_decision",
        "repeat_message",
        "repeat_silent",
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
        # ICD-10 codes compare case-insensitively; prefixes are upper-cased once here.
        self.indications = tuple(p.strip().upper() for p in test.indications)
        wording = ctx.wording

        def static(code: str, *more: object) -> Reason:
            message = wording[code](test.code, name, *more)
            return Reason(code, sev[code], message, (), (), source, silent(code))

        def silent(code: str) -> bool:
            return test.silent or code in ctx.silent_codes

        self.not_priced_reason: Reason | None = None
        if test.price_item_code is None:
            self.not_priced_reason = static(_NOT_PRICED)
        # Unused while the test is unpriced: NOT_PRICED replaces any mismatch then.
        self.price_mismatch_reason = static(_PRICE_MISMATCH, test.price_item_code)
        self.indication_reason = static(_INDICATION, _indication_text(self.indications))
        self.mdt_reason = static(_MDT) if test.requires_mdt_first_visit else None
        self.consent_reason = static(_CONSENT) if test.requires_consent else None
        self.repeat_us = (
            None if test.repeat_interval_days is None else test.repeat_interval_days * US_PER_DAY
        )
        self.repeat_decision = sev[_REPEATED]
        self.repeat_silent = silent(_REPEATED)
        self.repeat_message = wording[_REPEATED]
        self.repeat_days_text = str(test.repeat_interval_days)
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
        ctx = self._ctx
        newest = prior[0]
        shown, omitted = listed(prior)
        return new_tuple(
            Reason,
            (
                _REPEATED,
                self.repeat_decision,
                self.repeat_message(
                    self.code,
                    self.name,
                    self.repeat_days_text,
                    len(prior),
                    ctx.day(newest.reported_at_us),
                    ctx.institution_name(newest.institution_id),
                ),
                shown,
                ctx.override_options,
                self.source,
                self.repeat_silent,
                omitted,
            ),
        )
