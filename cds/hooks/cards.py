"""An answered order -> CDS Hooks cards: one card per line that has reasons.

The card carries what the gRPC answer carries, in CDS Hooks' terms:

* ``indicator``: the line's decision, ``critical`` (BLOCK), ``warning`` (WARN), ``info``
  (ALLOW: a reason shown but not warned, e.g. the emergency exemption);
* ``summary``: the most severe reason's clinician message, under 140 characters (cut
  with an ellipsis, and a count when the line has more reasons);
* ``detail`` (GitHub-flavoured Markdown): every reason with its decision and code, and
  the prior results as a table (reported, institution name, result id, valid until;
  times in the catalogue's time zone);
* ``source.label``: the most severe reason's citation (``source.url`` when the
  citation holds an http(s) URL), ``source.topic`` its reason code (system
  ``urn:cds:reason-code``): program against that, not the wording;
* ``overrideReasons``: the override options the line offers, as Codings of
  ``urn:cds:override-reason`` with their ``display``;
* ``links``: with the catalogue's ``report_url_template``, the report of each prior
  result;
* ``suggestions``: for a recognisable prior result or a duplicate line of the session,
  dropping the draft order (a ``delete`` of ``ServiceRequest/<id>``), so that accepting
  the card means what recognition asks for;
* ``uuid``: names (decision_id, line) for feedback (:mod:`cds.hooks.ids`), and
  ``extension["cds.decision"]`` spells them out with every reason code.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote

from cds.catalog.snapshot import Snapshot
from cds.domain import US_PER_SECOND, Decision, ItemDecision, PriorResult, Reason, ReasonCode
from cds.hooks.fhir import Draft
from cds.hooks.ids import CARD, SUGGESTION, card_uuid
from cds.orders.checker import Checked

OVERRIDE_REASON_SYSTEM = "urn:cds:override-reason"
REASON_CODE_SYSTEM = "urn:cds:reason-code"
EXTENSION = "cds.decision"
SUMMARY_MAX = 139  # "< 140 characters"

_INDICATOR = {Decision.BLOCK: "critical", Decision.WARN: "warning"}
_DECISION_LABEL = {Decision.BLOCK: "拦截", Decision.WARN: "提醒", Decision.ALLOW: "提示"}
_DROP: dict[str, str] = {
    ReasonCode.RECOGNIZABLE_RESULT_EXISTS: "撤销本项开单，互认已有结果",
    ReasonCode.DUPLICATE_IN_REQUEST: "撤销重复的开单",
}
_URL = re.compile(r"https?://[^\s，。；、）)]+")
_MARKDOWN = re.compile(r"([\\`*_\[\]<>|])")


def _md(text: str) -> str:
    """Text as Markdown that renders as written (no stray emphasis, links or tables)."""
    return _MARKDOWN.sub(r"\\\1", text).replace("\n", " ")


def _lead(reasons: tuple[Reason, ...]) -> Reason:
    """The most severe reason, the first of equals (reasons come in rule order)."""
    return max(reasons, key=lambda r: r.decision)  # max keeps the first maximum


def _summary(lead: Reason, n_reasons: int) -> str:
    more = f"（共 {n_reasons} 条）" if n_reasons > 1 else ""
    text = lead.message.replace("\n", " ")
    room = SUMMARY_MAX - len(more)
    if len(text) > room:
        text = text[: room - 1] + "…"
    return text + more


class CardMaker:
    """Cards for one answer, against the catalogue that decided it."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._zone = snapshot.zone

    def cards(self, checked: Checked, drafts: tuple[Draft, ...]) -> list[dict[str, Any]]:
        return [
            self._card(checked.decision_id, index, item, drafts[index])
            for index, item in enumerate(checked.evaluation.items)
            if item.reasons
        ]

    def _time(self, us: int) -> str:
        moment = dt.datetime.fromtimestamp(us / US_PER_SECOND, tz=self._zone)
        return moment.strftime("%Y-%m-%d %H:%M")

    def _institution(self, institution_id: str) -> str:
        known = self._snapshot.institutions.get(institution_id)
        return known.name if known is not None else institution_id

    def _card(
        self, decision_id: str, index: int, item: ItemDecision, draft: Draft
    ) -> dict[str, Any]:
        reasons = item.reasons
        lead = _lead(reasons)
        source: dict[str, Any] = {"label": lead.source or "cds"}
        url = _URL.search(lead.source)
        if url is not None:
            source["url"] = url.group(0)
        source["topic"] = {"system": REASON_CODE_SYSTEM, "code": lead.code}
        card: dict[str, Any] = {
            "uuid": card_uuid(decision_id, index, CARD),
            "summary": _summary(lead, len(reasons)),
            "indicator": _INDICATOR.get(item.decision, "info"),
            "detail": self._detail(reasons),
            "source": source,
        }
        drop = next((_DROP[r.code] for r in reasons if r.code in _DROP), None)
        if drop is not None and draft.resource_id:
            action = {
                "type": "delete",
                "description": drop,
                "resourceId": f"ServiceRequest/{draft.resource_id}",
            }
            card["suggestions"] = [
                {
                    "label": drop,
                    "uuid": card_uuid(decision_id, index, SUGGESTION),
                    "isRecommended": True,
                    "actions": [action],
                }
            ]
            card["selectionBehavior"] = "at-most-one"
        options = {o.code: o for r in reasons for o in r.override_options}
        if options:
            card["overrideReasons"] = [
                {"system": OVERRIDE_REASON_SYSTEM, "code": o.code, "display": o.display}
                for o in options.values()
            ]
        links = self._links(reasons)
        if links:
            card["links"] = links
        card["extension"] = {
            EXTENSION: {
                "decision_id": decision_id,
                "line_id": item.line_id,
                "item_code": item.item_code,
                "decision": f"DECISION_{item.decision.name}",
                "reason_codes": [r.code for r in reasons],
            }
        }
        return card

    def _priors(self, reasons: tuple[Reason, ...]) -> list[PriorResult]:
        seen: dict[str, PriorResult] = {}
        for r in reasons:
            for p in r.prior_results:
                seen.setdefault(p.result_id, p)
        return list(seen.values())

    def _detail(self, reasons: tuple[Reason, ...]) -> str:
        lines = [
            f"- **{_DECISION_LABEL.get(r.decision, '提示')}** `{r.code}`：{_md(r.message)}"
            for r in reasons
        ]
        priors = self._priors(reasons)
        if priors:
            lines += ["", "既往结果：", "", "| 报告时间 | 报告机构 | 结果编号 | 有效至 |"]
            lines.append("|---|---|---|---|")
            lines += [
                f"| {self._time(p.reported_at_us)} | {_md(self._institution(p.institution_id))} "
                f"| {_md(p.result_id)} | {self._time(p.valid_until_us)} |"
                for p in priors
            ]
            omitted = max((r.prior_results_omitted for r in reasons), default=0)
            if omitted:
                lines.append(f"另有 {omitted} 项较早的结果未列出。")
        commented = {
            o.code: o.display for r in reasons for o in r.override_options if o.requires_comment
        }
        if commented:
            lines += ["", f"选择以下理由须填写说明：{_md('、'.join(commented.values()))}"]
        return "\n".join(lines)

    def _links(self, reasons: tuple[Reason, ...]) -> list[dict[str, str]]:
        template = self._snapshot.report_url_template
        if not template:
            return []
        return [
            {
                "label": f"查看报告：{self._time(p.reported_at_us)[:10]} "
                f"{self._institution(p.institution_id)}（{p.result_id}）",
                "url": template.replace("{result_id}", quote(p.result_id, safe="")),
                "type": "absolute",
            }
            for p in self._priors(reasons)
        ]
