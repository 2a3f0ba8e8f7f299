"""The clinician's wording of each reason: built-in templates, their placeholders, parsing.

``Reason.message`` is text for the order screen, and the people who know how it should
read are the province's administrators, not a release. So each reason code has a
template with named placeholders (``{item_name}``), the catalogue's top-level
``messages`` may replace any of them, and this module is the one place that says which
placeholders each code offers. Loading refuses a template with an unknown placeholder
(or an unbalanced brace, a format spec, a conversion) with its JSON path, so a typo is
found when the file is validated, not on a clinician's screen.

The rules (``cds.rules.wording``) compile each template once per catalogue: whatever
the catalogue already fixes (the item's name, its window) is filled in then, and only
what depends on the order (how many prior results, the newest one's date and
institution, the lab named) is left for the check.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from types import MappingProxyType

from cds.domain import ReasonCode

_ITEM = ("item_code", "item_name")
_PRIOR = ("count", "latest_date", "latest_institution")

# Reason code -> its placeholders (docs/reference.md, "Messages and sources").
PLACEHOLDERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        ReasonCode.RECOGNIZABLE_RESULT_EXISTS: (*_ITEM, "validity_days", *_PRIOR),
        ReasonCode.RECOGNITION_EXEMPT_EMERGENCY: (*_ITEM, "validity_days", *_PRIOR),
        ReasonCode.DUPLICATE_IN_REQUEST: (*_ITEM, "first_line_id"),
        ReasonCode.GENE_TEST_NOT_IN_CATALOGUE: ("item_code",),
        ReasonCode.GENE_TEST_NOT_PRICED: _ITEM,
        ReasonCode.PRICE_ITEM_MISMATCH: (*_ITEM, "price_item_code"),
        ReasonCode.GENE_TEST_INDICATION_MISMATCH: (*_ITEM, "indications"),
        ReasonCode.MDT_REQUIRED: _ITEM,
        ReasonCode.CONSENT_REQUIRED: _ITEM,
        ReasonCode.SENDOUT_LAB_NOT_APPROVED: (*_ITEM, "lab_id", "lab_name"),
        ReasonCode.SENDOUT_LAB_QUALIFICATION_EXPIRED: (
            *_ITEM,
            "lab_id",
            "lab_name",
            "qualification_date",
        ),
        ReasonCode.SENDOUT_AVAILABLE_IN_HOUSE: _ITEM,
        ReasonCode.GENE_TEST_REPEATED: (*_ITEM, "repeat_interval_days", *_PRIOR),
    }
)

_FOUND = (
    "「{item_name}」有 {count} 份可互认的既往结果（互认有效期 {validity_days} 天），"
    "最近一次为 {latest_date}（{latest_institution}）"
)

# The wording a code has when the catalogue gives none.
BUILT_IN: Mapping[str, str] = MappingProxyType(
    {
        ReasonCode.RECOGNIZABLE_RESULT_EXISTS: (
            _FOUND + "，请优先互认；如需复查，请选择不予互认的理由。"
        ),
        ReasonCode.RECOGNITION_EXEMPT_EMERGENCY: "急诊免于互认提醒：" + _FOUND + "。",
        ReasonCode.DUPLICATE_IN_REQUEST: (
            "「{item_name}」在本次申请中重复开具（与明细 {first_line_id} 相同）。"
        ),
        ReasonCode.GENE_TEST_NOT_IN_CATALOGUE: (
            "基因检测项目 {item_code} 不在推荐目录中，不得开具。"
        ),
        ReasonCode.GENE_TEST_NOT_PRICED: "「{item_name}」尚无获批的收费项目，不得收费开具。",
        ReasonCode.PRICE_ITEM_MISMATCH: (
            "「{item_name}」须按目录收费项目 {price_item_code} 收费，不得替换为其他收费项目。"
        ),
        ReasonCode.GENE_TEST_INDICATION_MISMATCH: (
            "患者诊断不符合「{item_name}」的适应证（{indications}）。"
        ),
        ReasonCode.MDT_REQUIRED: (
            "肿瘤患者首诊开具「{item_name}」须先经多学科会诊（MDT），请先完成 MDT 讨论并登记记录。"
        ),
        ReasonCode.CONSENT_REQUIRED: "「{item_name}」须先签署知情同意书。",
        ReasonCode.SENDOUT_LAB_NOT_APPROVED: (
            "外送实验室「{lab_name}」未获准承接本院的「{item_name}」外送检测。"
        ),
        ReasonCode.SENDOUT_LAB_QUALIFICATION_EXPIRED: (
            "外送实验室「{lab_name}」的资质有效期至 {qualification_date}，已过期，不得外送。"
        ),
        ReasonCode.SENDOUT_AVAILABLE_IN_HOUSE: "本院可开展「{item_name}」，不应外送检测。",
        ReasonCode.GENE_TEST_REPEATED: (
            "患者已有 {count} 份「{item_name}」结果在重复检测间隔（{repeat_interval_days} 天）内，"
            "最近一次为 {latest_date}（{latest_institution}）；如确需重复检测，请选择理由。"
        ),
    }
)

# A lab the catalogue does not list has no name to quote: the built-in wording says so
# differently. A catalogue's SENDOUT_LAB_NOT_APPROVED template covers both cases
# (``lab_name`` is then the id as ordered).
BUILT_IN_UNKNOWN_LAB = "外送实验室 {lab_id} 不在获批的外送实验室名单中，不得外送「{item_name}」。"

# (literal text, placeholder or None), in order: what a template is made of.
Part = tuple[str, str | None]


class TemplateError(ValueError):
    """Why a template cannot be used; the message is fit to follow its JSON path."""


def parse_template(code: str, text: str) -> list[Part]:
    """The template's parts, or :class:`TemplateError` saying what is wrong with it.

    ``{{`` and ``}}`` are literal braces. A placeholder is a bare name from
    ``PLACEHOLDERS[code]``: no positional ``{}``, no attribute or index, no format spec
    or conversion, so a template can neither reach into an object nor fail at render.
    """
    allowed = PLACEHOLDERS[code]
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise TemplateError(
            f"not a template: {e} (write {{{{ and }}}} for literal braces)"
        ) from None
    parts: list[Part] = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        shown = (
            "{"
            + name
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if name not in allowed:
            raise TemplateError(
                f"unknown placeholder {shown}; {code} offers "
                + ", ".join("{" + p + "}" for p in allowed)
            )
        if spec or conversion:
            raise TemplateError(f"{shown}: format specs and conversions are not supported")
        parts.append((literal, name))
    return parts


def template_of(messages: Mapping[str, str], code: str, built_in: str | None = None) -> str:
    """The catalogue's template for ``code``, else ``built_in``, else the code's own."""
    return messages.get(code) or built_in or BUILT_IN[code]
