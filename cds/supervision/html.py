"""The report as one self-contained HTML file for a hospital PC or a supervisor's laptop.

Everything is inside the file: styles, and charts drawn here as inline SVG (no
script, no font, no image, nothing fetched; a Content-Security-Policy says so to the
browser). Labels are Chinese for the quality-control officer and the supervisor, and
every code stays beside its name, so a figure can be traced back to the contract and
the catalogue. Charts where a reader would rather look than read (rates by
institution and item, reasons, the daily trend, send-out shares, clinicians' override
rate against their volume); tables for the exact figures.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape
from typing import Any

from cds.supervision.names import Names

ACCEPTED = "#1a9850"
OVERRIDDEN = "#f46d43"
NO_FEEDBACK = "#bdbdbd"
PRIMARY = "#2b6cb0"
WARNING = "#c53030"
FONT = "'PingFang SC','Microsoft YaHei','Noto Sans CJK SC','WenQuanYi Micro Hei',sans-serif"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _n(value: int) -> str:
    return f"{value:,}"


def _yuan(fen: int) -> str:
    return f"¥{fen / 100:,.2f}"


def _label(code: str, name: str) -> str:
    return f"{name}（{code}）" if name else code


# -- charts ------------------------------------------------------------------------------


def _stacked_rates(rows: Sequence[tuple[str, dict[str, Any]]], *, width: int = 1220) -> str:
    """One 100% bar per row: accepted / overridden / no feedback, the rate at the end."""
    if not rows:
        return _empty()
    label_w, bar_w, row_h = 300, width - 300 - 130, 26
    height = row_h * len(rows) + 34
    parts = [_svg_open(width, height)]
    for i, (label, f) in enumerate(rows):
        y = 8 + i * row_h
        reminded = f["reminded"] or 1
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="lbl">'
            f"{_e(_fit(label, label_w - 12))}<title>{_e(label)}</title></text>"
        )
        x = label_w
        for key, color in (
            ("accepted", ACCEPTED),
            ("overridden", OVERRIDDEN),
            ("no_feedback", NO_FEEDBACK),
        ):
            w = bar_w * f[key] / reminded
            if w > 0:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" '
                    f'fill="{color}"><title>{_e(label)} {key} {f[key]}</title></rect>'
                )
            x += w
        parts.append(
            f'<text x="{label_w + bar_w + 8}" y="{y + 15}" class="val">'
            f"{_pct(f['rate'])} · {_n(f['reminded'])}</text>"
        )
    legend_y = height - 12
    parts.append(_legend(label_w, legend_y))
    parts.append("</svg>")
    return "".join(parts)


def _legend(x: float, y: float) -> str:
    out = []
    for i, (text, color) in enumerate(
        (("已互认", ACCEPTED), ("未互认（有理由）", OVERRIDDEN), ("无反馈", NO_FEEDBACK))
    ):
        cx = x + i * 150
        out.append(
            f'<rect x="{cx}" y="{y - 9}" width="12" height="12" fill="{color}"/>'
            f'<text x="{cx + 17}" y="{y + 1}" class="lbl">{text}</text>'
        )
    return "".join(out)


def _bars(
    rows: Sequence[tuple[str, float, str]],
    *,
    color: str = PRIMARY,
    width: int = 760,
    highlight: set[int] | None = None,
) -> str:
    """Horizontal bars: (label, value, text shown at the bar's end)."""
    if not rows:
        return _empty()
    label_w, bar_w, row_h = 300, width - 300 - 110, 26
    top = max(v for _, v, _ in rows) or 1
    height = row_h * len(rows) + 10
    parts = [_svg_open(width, height)]
    for i, (label, value, text) in enumerate(rows):
        y = 5 + i * row_h
        w = max(bar_w * value / top, 1 if value else 0)
        fill = WARNING if highlight and i in highlight else color
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="lbl">'
            f"{_e(_fit(label, label_w - 12))}<title>{_e(label)}</title></text>"
            f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 8}" '
            f'fill="{fill}" rx="2"><title>{_e(label)}: {_e(text)}</title></rect>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" class="val">{_e(text)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _trend(by_day: dict[str, dict[str, Any]], *, width: int = 760, height: int = 260) -> str:
    """Reminders per day as columns, the day's recognition rate as a line (0-100%)."""
    days = sorted(by_day)
    if not days:
        return _empty()
    left, right, top, bottom = 56, 56, 16, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak, marks = _ticks(max(by_day[d]["reminded"] for d in days))
    step = min(plot_w / len(days), 60)
    parts = [_svg_open(width, height)]
    parts.append(_percent_grid(left, top, plot_w, plot_h, right=True))
    for mark in marks:
        y = top + plot_h * (1 - mark / peak)
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
            f"{mark:,.0f}</text>"
        )
    points = []
    every = max(1, len(days) // 10)
    for i, day in enumerate(days):
        f = by_day[day]
        x = left + i * step
        h = plot_h * f["reminded"] / peak
        parts.append(
            f'<rect x="{x + step * 0.15:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{step * 0.7:.1f}" height="{h:.1f}" fill="#c3dafe">'
            f"<title>{day}: 提醒 {f['reminded']}，互认率 {_pct(f['rate'])}</title></rect>"
        )
        if f["rate"] is not None:
            points.append((x + step / 2, top + plot_h * (1 - f["rate"])))
        if i % every == 0:
            parts.append(
                f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'class="axis">{day[5:]}</text>'
            )
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{ACCEPTED}" stroke-width="2.5"/>'
        )
        parts.extend(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{ACCEPTED}"/>' for x, y in points
        )
    parts.append(
        f'<text x="{left}" y="{height - 6}" class="lbl">■ 提醒次数（左轴）</text>'
        f'<text x="{left + 170}" y="{height - 6}" class="lbl" fill="{ACCEPTED}">'
        f"● 互认率（右轴）</text></svg>"
    )
    return "".join(parts).replace('class="lbl">■', 'class="lbl" fill="#7f9cf5">■')


def _scatter(clinicians: Sequence[dict[str, Any]], *, width: int = 1220, height: int = 340) -> str:
    """Each clinician: reminders (x) against the share of them overridden (y)."""
    points = [c for c in clinicians if c["reminded"]]
    if not points:
        return _empty()
    left, right, top, bottom = 56, 20, 16, 48
    plot_w, plot_h = width - left - right, height - top - bottom
    peak, marks = _ticks(max(c["reminded"] for c in points))
    overall = sum(c["overridden"] for c in points) / sum(c["reminded"] for c in points)
    parts = [_svg_open(width, height)]
    parts.append(_percent_grid(left, top, plot_w, plot_h, right=False))
    for mark in marks:
        x = left + plot_w * mark / peak
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" class="axis">'
            f"{mark:,.0f}</text>"
        )
    y_avg = top + plot_h * (1 - overall)
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{y_avg:.1f}" y2="{y_avg:.1f}" '
        f'stroke="{OVERRIDDEN}" stroke-dasharray="5,4"/>'
        f'<text x="{left + 6}" y="{y_avg - 6:.1f}" class="axis" '
        f'fill="{OVERRIDDEN}">全部医师 {_pct(overall)}</text>'
    )
    for c in points:
        share = c["overridden"] / c["reminded"]
        x = left + plot_w * c["reminded"] / peak
        y = top + plot_h * (1 - share)
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{OVERRIDDEN}" fill-opacity="0.55" '
            f'stroke="#9c4221" stroke-width="0.6"><title>{_e(c["clinician"])}（{_e(c["key_id"])}）'
            f"：提醒 {c['reminded']}，未互认 {c['overridden']}</title></circle>"
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle" class="lbl">'
        f"医师收到的互认提醒次数 →</text>"
        f'<text x="14" y="{top + plot_h / 2}" class="lbl" '
        f'transform="rotate(-90 14 {top + plot_h / 2})" text-anchor="middle">未互认比例 →</text>'
        "</svg>"
    )
    return "".join(parts)


def _percent_grid(left: float, top: float, plot_w: float, plot_h: float, *, right: bool) -> str:
    """Grid lines at 0, 25, … 100% with their labels on the plot's right or left."""
    out = []
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + plot_h * (1 - frac)
        x, anchor = (left + plot_w + 6, "start") if right else (left - 6, "end")
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{x}" y="{y + 4:.1f}" text-anchor="{anchor}" class="axis">'
            f"{frac * 100:.0f}%</text>"
        )
    return "".join(out)


def _ticks(peak: float) -> tuple[float, list[float]]:
    """A round axis top at or above ``peak`` and four or five round steps up to it."""
    if peak <= 0:
        return 1.0, [0.0, 1.0]
    raw = peak / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    if step < 1:
        step = 1.0
    top = step * math.ceil(peak / step)
    return top, [step * i for i in range(round(top / step) + 1)]


def _svg_open(width: int, height: int) -> str:
    # Drawn at its own size (shrunk on a narrow screen, never blown up): text stays
    # the size it was set in.
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img">'
    )


def _empty() -> str:
    return '<p class="empty">本期无数据</p>'


def _fit(text: str, px: float) -> str:
    """``text`` cut to about ``px`` pixels of 12.5 px type: a wide (CJK) character is
    about 12.5 px, any other about 7; the full text stays in the element's title."""
    width = 0.0
    for i, ch in enumerate(text):
        width += 12.5 if ord(ch) > 0x2E80 else 7.0
        if width > px:
            return text[: max(i - 1, 1)] + "…"
    return text


# -- tables ------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, numeric_from: int = 1) -> str:
    if not rows:
        return _empty()
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>'
        for i, h in enumerate(header)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"num" if i >= numeric_from else ""}">{c}</td>' for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _rate_rows(table: dict[str, dict[str, Any]], name: Any) -> list[list[str]]:
    return [
        [
            _e(_label(k, name(k))),
            _n(v["reminded"]),
            _n(v["accepted"]),
            _n(v["overridden"]),
            _n(v["no_feedback"]),
            f"<b>{_pct(v['rate'])}</b>",
        ]
        for k, v in table.items()
    ]


RATE_HEADER = ["名称（编码）", "提醒", "已互认", "未互认（有理由）", "无反馈", "互认率"]


# -- the page ----------------------------------------------------------------------------


def to_html(
    report: dict[str, Any], names: Names, *, generated_at: dt.datetime | None = None
) -> str:
    r = report["recognition"]
    g = report["gene_tests"]
    c = report["checks"]
    period = report["period"]
    generated = (generated_at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    catalog = names.catalog
    scope = "、".join(_label(i, names.institution(i)) for i in report["institutions"]) or "全部机构"

    kpis = [
        ("互认率", _pct(r["rate"]), "已互认 ÷ 提醒", "big"),
        ("互认提醒", _n(r["reminded"]), "显示可互认结果的医嘱行", ""),
        ("已互认", _n(r["accepted"]), "医师采纳提醒", ""),
        ("未互认（有理由）", _n(r["overridden"]), "医师填写理由后重新检查", ""),
        ("无反馈", _n(r["no_feedback"]), "不计为互认", ""),
        ("急诊豁免", _n(r["exempt_emergency"]), "RECOGNITION_EXEMPT_EMERGENCY", ""),
        ("估算节约", _yuan(r["savings_fen"]), f"{_n(r['accepted_unpriced'])} 行无价格", ""),
        ("检查检验医嘱", _n(c["orders"]), f"{_n(c['lines'])} 行", ""),
        ("肿瘤基因检测", _n(g["lines"]), f"外送 {_n(sum(g['sendouts'].values()))} 行", ""),
        (
            "外送集中预警",
            _n(len(g["concentration"])),
            "医师 × 机构",
            "alert" if g["concentration"] else "",
        ),
    ]
    kpi_html = "".join(
        f'<div class="kpi {cls}"><div class="k">{_e(k)}</div><div class="v">{v}</div>'
        f'<div class="s">{_e(s)}</div></div>'
        for k, v, s, cls in kpis
    )

    institutions = sorted(r["by_institution"].items(), key=lambda kv: (-(kv[1]["reminded"]), kv[0]))
    institution_rows = [
        (_label(i, names.institution(i)), f) for i, f in institutions if f["reminded"]
    ]
    items = sorted(r["by_item"].items(), key=lambda kv: (-kv[1]["reminded"], kv[0]))[:15]
    item_rows = [(_label(i, names.item(i)), f) for i, f in items]
    reasons = [
        (_label(code, names.override(code)), n, f"{_n(n)} · {n / max(r['overridden'], 1):.0%}")
        for code, n in r["override_reasons"].items()
    ]
    total_sendouts = sum(g["sendouts"].values()) or 1
    labs = [
        (_label(lab, names.lab(lab)), n, f"{n / total_sendouts:.1%} · {_n(n)}")
        for lab, n in g["sendouts"].items()
    ]
    gene_reasons = [
        (_label(code, names.reason(code)), n, _n(n)) for code, n in g["by_reason"].items()
    ]
    flagged = g["concentration"]
    concentration_rows = [
        [
            f"<code>{_e(f['clinician'])}</code>",
            _e(f["key_id"]),
            _e(_label(f["lab"], names.lab(f["lab"]))),
            _n(f["sendouts"]),
            _n(f["to_lab"]),
            f"<b>{f['share']:.0%}</b>",
        ]
        for f in flagged
    ]
    checks_rows = [
        [_e(_label(i, names.institution(i))), _n(v["orders"]), _n(v["lines"])]
        for i, v in c["by_institution"].items()
    ]
    department_rows = [
        [
            _e(_label(i, names.institution(i))),
            _e(d),
            _n(v["reminded"]),
            _n(v["accepted"]),
            _n(v["overridden"]),
            _n(v["no_feedback"]),
            f"<b>{_pct(v['rate'])}</b>",
        ]
        for i, depts in r["by_department"].items()
        for d, v in sorted(depts.items(), key=lambda kv: -kv[1]["reminded"])
    ]
    silent_rows = [
        [_e(_label(code, names.reason(code))), _n(n)] for code, n in report["silent"].items()
    ]
    concentration_table = _table(
        ["医师（化名）", "密钥", "外送机构", "外送行数", "送往该机构", "占比"],
        concentration_rows,
        numeric_from=3,
    )
    inputs = report["input"]
    torn_note = (
        f"；跳过并计数的残缺行 {_n(inputs['torn_lines'])}（进程崩溃时写到一半的记录）"
        if inputs["torn_lines"]
        else ""
    )
    catalog_note = (
        f"目录版本 {_e(catalog.version)}（{_e(catalog.timezone)}）"
        if catalog is not None
        else "未提供目录（--catalog）：无名称与价格，日期按 Asia/Shanghai"
    )
    body = f"""
<header>
  <h1>检查检验结果互认与肿瘤基因检测 · 监管报告</h1>
  <p class="meta">统计期间 <b>{_e(period["from"] or "—")}</b> 至 <b>{_e(period["to"] or "—")}</b>
  · 范围：{scope} · {catalog_note} · 生成于 {generated}</p>
</header>
<section class="kpis">{kpi_html}</section>

<section><h2>各机构互认率</h2>
<p class="note">每条为该机构收到的互认提醒，按最后一次反馈分为已互认、未互认（有理由）和无反馈；
右侧为互认率与提醒次数。无反馈的提醒不计为互认。</p>
{_stacked_rates(institution_rows)}</section>

<section><h2>各项目互认率（提醒最多的 15 项）</h2>{_stacked_rates(item_rows)}</section>

<section class="two">
<div><h2>未互认理由分布</h2>
<p class="note">国家规定的不予互认情形；每行按最后一次反馈计。</p>
{_bars(reasons, color=OVERRIDDEN, width=590)}</div>
<div><h2>每日互认趋势</h2>{_trend(r["by_day"], width=590)}</div>
</section>

<section><h2>医师未互认比例与提醒量</h2>
<p class="note">每个点为一名医师（化名）：横轴为收到的互认提醒次数，纵轴为其中填写理由未互认的比例；
虚线为全部医师的比例。提醒多且远高于虚线者，值得抽查其理由。
由化名追溯到人需经授权（见 README 的质控科一节：Supervision for the quality-control office）。</p>
{_scatter(r["clinicians"])}</section>

<section class="two">
<div><h2>外送检测机构占比</h2>
<p class="note">肿瘤基因检测外送医嘱行，按医嘱所填外送机构。</p>
{_bars(labs, width=590)}</div>
<div><h2>基因检测提示原因</h2>
<p class="note">基因检测医嘱行所带的每种提示（一行可有多种）。</p>
{_bars(gene_reasons, color=WARNING, width=590)}</div>
</section>

<section><h2>外送集中度预警</h2>
<p class="note">外送不少于 {_e(report.get("parameters", {}).get("concentration_min", ""))} 行、
且不低于 {_e(_pct(report.get("parameters", {}).get("concentration_share")))} 送往同一机构的医师
（闽卫医政函〔2024〕793号：检查医师与外送机构之间的利益关联）。</p>
{concentration_table}
</section>

<section><h2>各机构明细</h2>
{_table(RATE_HEADER, _rate_rows(dict(institutions), names.institution))}</section>

<section><h2>各项目明细</h2>
{_table(RATE_HEADER, _rate_rows(r["by_item"], names.item))}</section>

<section><h2>各科室明细</h2>
{_table(["机构", "科室", *RATE_HEADER[1:]], department_rows, numeric_from=2)}</section>

<section class="two">
<div><h2>医嘱量（分母）</h2>
{_table(["机构", "医嘱", "医嘱行"], checks_rows)}</div>
<div><h2>静默规则触发</h2>
<p class="note">试运行中的规则：只计数，不向医师显示。</p>
{_table(["原因", "次数"], silent_rows)}</div>
</section>

<footer>数据来源：cds 决策日志 {_n(inputs["files"])} 个文件、
{_n(inputs["records"])} 条记录{torn_note}。
患者与医师均为化名（带密钥编号），不含诊断与原始编号。互认率口径：已互认 ÷ 互认提醒；
系统只能看到提醒与医师反馈，未反馈的提醒不计为互认。</footer>
"""
    return f"""<!DOCTYPE html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>监管报告 {_e(period["from"] or "")} – {_e(period["to"] or "")}</title>
<style>{_CSS}</style></head><body>{body}</body></html>
"""


_CSS = f"""
body {{ font-family: {FONT}; color: #1a202c; background: #f7fafc; margin: 0 auto;
       max-width: 1320px; padding: 24px 32px 48px; line-height: 1.5; }}
header h1 {{ font-size: 26px; margin: 0 0 6px; color: #1a365d; }}
.meta {{ color: #4a5568; margin: 0 0 18px; font-size: 14px; }}
h2 {{ font-size: 18px; color: #2a4365; margin: 0 0 6px; }}
section {{ background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 16px 20px;
          margin: 0 0 16px; }}
section.kpis {{ display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px;
               background: none; border: 0; padding: 0; }}
section.two {{ display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }}
.kpi {{ background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 10px 14px; }}
.kpi .k {{ color: #4a5568; font-size: 13px; }}
.kpi .v {{ font-size: 24px; font-weight: 700; color: #1a365d; }}
.kpi.big .v {{ font-size: 30px; color: {ACCEPTED}; }}
.kpi.alert .v {{ color: {WARNING}; }}
.kpi .s {{ color: #718096; font-size: 12px; }}
.note {{ color: #718096; font-size: 13px; margin: 0 0 8px; }}
.chart {{ display: block; max-width: 100%; height: auto; }}
.chart .lbl {{ font-size: 12.5px; fill: #2d3748; }}
.chart .val {{ font-size: 12px; fill: #4a5568; }}
.chart .axis {{ font-size: 11px; fill: #718096; }}
.chart .grid {{ stroke: #edf2f7; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
th {{ text-align: left; color: #4a5568; border-bottom: 2px solid #e2e8f0; padding: 4px 8px; }}
th.num {{ text-align: right; }}
td {{ border-bottom: 1px solid #edf2f7; padding: 4px 8px; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
code {{ font-size: 12px; color: #553c9a; }}
.empty {{ color: #a0aec0; font-style: italic; }}
footer {{ color: #718096; font-size: 12px; margin-top: 12px; }}
@media print {{ body {{ background: #fff; }} section {{ break-inside: avoid; }} }}
"""
