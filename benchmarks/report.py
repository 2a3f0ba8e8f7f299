"""results.json, RESULTS.md (targets vs measured) and latency_vs_rate.png from one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (key, what, target text, predicate on the measured value)
TARGETS: list[tuple[str, str, str, Any]] = [
    (
        "throughput_ratio",
        "service/empty throughput (h2load, order mix)",
        "≥ 0.85",
        lambda v: v >= 0.85,
    ),
    (
        "p99_ratio_half_rate",
        "service/empty p99 at half the empty saturation rate",
        "≤ 1.5",
        lambda v: v <= 1.5,
    ),
    ("engine_3_item_us", "Engine.evaluate, 3-item order", "≤ 25 µs", lambda v: v <= 25),
    ("rss_per_result_bytes", "RSS per cached result at 1M results", "≤ 300 B", lambda v: v <= 300),
    ("ingest_results_per_s", "PutResults ingest", "≥ 100,000 /s", lambda v: v >= 100_000),
    ("reload_ms", "10,000-entry catalogue reload under load", "< 150 ms", lambda v: v < 150),
    ("reload_failed_calls", "failed calls during the reload run", "0", lambda v: v == 0),
    (
        "redis_added_p50_ms",
        "Redis store: added p50 vs in-process, same rate",
        "≤ +0.3 ms",
        lambda v: v <= 0.3,
    ),
]


def _point_at(points: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    for p in points or ():
        if round(p["offered_rps"]) == round(rate):
            return p
    return None


def headline(res: dict[str, Any]) -> dict[str, float]:
    """The figures the targets are judged on, computed from the raw sections."""
    h: dict[str, float] = {}
    emp, svc = res.get("empty", {}), res.get("service", {})
    if emp.get("h2load") and svc.get("h2load") and emp["h2load"]["mix_rps"]:
        h["throughput_ratio"] = svc["h2load"]["mix_rps"] / emp["h2load"]["mix_rps"]
    if emp.get("python_closed") and svc.get("python_closed"):
        h["throughput_ratio_python_driver"] = (
            svc["python_closed"]["rps"] / emp["python_closed"]["rps"]
        )
    half = res.get("half_rate")
    pe = _point_at(emp.get("open"), half) if half else None
    ps = _point_at(svc.get("open"), half) if half else None
    if pe and ps and pe.get("p99_us") and ps.get("p99_us"):
        h["p99_ratio_half_rate"] = ps["p99_us"] / pe["p99_us"]
        h["p50_ratio_half_rate"] = ps["p50_us"] / pe["p50_us"]
    if pe and ps and pe.get("server_cpu_us_per_call") and ps.get("server_cpu_us_per_call"):
        h["server_cpu_per_call_ratio_half_rate"] = (
            ps["server_cpu_us_per_call"] / pe["server_cpu_us_per_call"]
        )
    eng = res.get("engine", {}).get("cases", {})
    if "lab_3_items" in eng:
        h["engine_3_item_us"] = eng["lab_3_items"]["median_us"]
    ing = svc.get("ingest", {})
    if ing.get("rss_per_result_bytes") is not None:
        h["rss_per_result_bytes"] = ing["rss_per_result_bytes"]
    if ing.get("results_per_s"):
        h["ingest_results_per_s"] = ing["results_per_s"]
    rl = res.get("reload", {})
    if "reload_ms" in rl:
        h["reload_ms"] = rl["reload_ms"]
        h["reload_failed_calls"] = rl["failed_calls"]
    rd = res.get("redis", {}).get("open_half_rate")
    if rd and ps and rd.get("p50_us") and ps.get("p50_us"):
        h["redis_added_p50_ms"] = (rd["p50_us"] - ps["p50_us"]) / 1000
    w = res.get("workers", {})
    if w.get("1", {}).get("h2load") and w.get("2", {}).get("h2load"):
        h["workers_2_vs_1_throughput"] = w["2"]["h2load"]["mix_rps"] / w["1"]["h2load"]["mix_rps"]
    return h


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _ms(us: Any) -> str:
    return "–" if us is None else f"{us / 1000:.2f}"


def _options_text(opts: Any) -> str:
    if not isinstance(opts, dict):
        return str(opts)
    pairs = ", ".join(f"{k}={v}" for k, v in opts.get("options", [])) or "none"
    return (
        f"{opts.get('from')} ({pairs}; maximum_concurrent_rpcs="
        f"{opts.get('maximum_concurrent_rpcs')})"
    )


def markdown(res: dict[str, Any]) -> str:
    h = res["headline"]
    m = res["machine"]
    lines = [
        "# cds benchmark results",
        "",
        f"Command: `{res['command']}` (what `make bench` runs), {res['started_at']}, "
        f"{res.get('wall_s', 0):.0f} s.",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory']}, Linux {m['kernel']}; "
        f"Python {m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']} "
        f"({m['protobuf_backend']} backend), {m['h2load'] or 'no h2load'}. "
        f"Load average at start {' '.join(m['loadavg_start'])}, at end "
        f"{' '.join(m.get('loadavg_end', []))} (the machine is shared).",
        "",
        f"Layout: server on CPU {res['layout']['server_cpus']}, drivers on CPU "
        f"{res['layout']['driver_cpus']}. Catalogue: {res.get('catalog', {}).get('source')}. "
        f"Empty server options: {_options_text(res.get('empty_server_options'))}.",
        "",
        "## Targets",
        "",
        "| target | measured | goal | pass |",
        "|---|---|---|---|",
    ]
    for key, what, goal, ok in TARGETS:
        v = h.get(key)
        verdict = "–" if v is None else ("PASS" if ok(v) else "FAIL")
        lines.append(f"| {what} | {_fmt(v)} | {goal} | {verdict} |")
    extra = {
        "throughput_ratio_python_driver": "service/empty throughput (Python driver, closed loop)",
        "p50_ratio_half_rate": "service/empty p50 at half rate",
        "server_cpu_per_call_ratio_half_rate": "service/empty server CPU per call at half rate",
        "workers_2_vs_1_throughput": "2 workers / 1 worker throughput (Redis)",
    }
    for key, what in extra.items():
        if key in h:
            lines.append(f"| {what} | {_fmt(h[key])} | report | – |")
    if res.get("error"):
        lines += ["", "**The run failed part-way**; what was measured is below.", ""]
        lines += ["```", res["error"][-1500:].rstrip(), "```"]
        if res.get("service_exit"):
            lines += ["", res["service_exit"]]
    if res.get("skipped"):
        lines += ["", "Skipped sections:", ""]
        lines += [f"- **{k}**: {v}" for k, v in res["skipped"].items()]

    for name in ("empty", "service"):
        sec = res.get(name)
        if not sec:
            continue
        lines += ["", f"## {'Empty gRPC server' if name == 'empty' else 'Service'}", ""]
        if name == "empty":
            lines.append(
                f"Canned response {sec['response_bytes']} bytes; saturation "
                f"{_fmt(sec.get('saturation_rps'), 0)} req/s (from {sec.get('saturation_from')})."
            )
        else:
            lines += _ingest_lines(sec.get("ingest", {}))
            rsp = sec.get("responses", {})
            lines += [
                "",
                f"Sampled responses: mean {_fmt(rsp.get('mean_bytes'), 0)} B; decisions "
                f"{rsp.get('decisions')}; reasons {rsp.get('reasons')}.",
                "",
                *_workload_check(rsp.get("per_kind", {})),
            ]
        pc = sec.get("python_closed")
        if pc:
            lines += [
                "",
                f"Python driver, closed loop ({pc['concurrency']} in flight): "
                f"{_fmt(pc['rps'], 0)} req/s, p50 {_ms(pc.get('p50_us'))} ms, "
                f"driver CPU {pc['driver_cpu_frac']:.0%}, server CPU {pc['server_cpu_frac']:.0%}.",
            ]
        hl = sec.get("h2load")
        if hl:
            fams = ", ".join(f"{f['family']} {_fmt(f.get('rps'), 0)}/s" for f in hl["families"])
            lines += [
                "",
                f"h2load closed loop ({hl.get('connections', 4)} connections × "
                f"{hl.get('streams_per_connection', 16)} streams): mix "
                f"{_fmt(hl['mix_rps'], 0)} req/s ({fams}); HTTP failures {hl['http_failed']}; "
                f"grpc codes {hl.get('grpc_codes')}.",
            ]
        if sec.get("open"):
            lines += ["", *_open_table(sec["open"])]
    prof = res.get("service", {}).get("profile")
    if prof and prof.get("top_own"):
        lines += [
            "",
            f"Profile of the service at {prof['rate']:,.0f} req/s (py-spy, GIL-holding "
            f"samples, {prof['samples']:,}; stacks in `{prof['file']}`), top frames by own time:",
            "",
            *(f"- {t['share']:.1%} `{t['frame']}`" for t in prof["top_own"][:12]),
            "",
            "cds's own frames, inclusive (share of samples with the frame on the stack):",
            "",
            *(f"- {t['share']:.1%} `{t['frame']}`" for t in prof.get("top_cds_inclusive", [])[:12]),
        ]
    lines += _engine_lines(res.get("engine"))
    lines += _reload_lines(res.get("reload"))
    lines += _redis_lines(res.get("redis"), res.get("workers"))
    lines += ["", "Plot: `latency_vs_rate.png`. All figures: `results.json`.", ""]
    return "\n".join(lines)


def _ingest_lines(ing: dict[str, Any]) -> list[str]:
    mib = 2**20
    return [
        f"Preload: {_fmt(ing.get('accepted'))} results ({_fmt(ing.get('rejected'))} rejected) "
        f"over {_fmt(ing.get('patients'))} patients in {_fmt(ing.get('seconds'), 1)} s = "
        f"{_fmt(ing.get('results_per_s'), 0)} results/s (batches of {ing.get('batch_size')}, "
        f"{ing.get('inflight_batches')} in flight). "
        f"RSS {_fmt((ing.get('rss_before_bytes') or 0) / mib, 0)} → "
        f"{_fmt((ing.get('rss_after_bytes') or 0) / mib, 0)} MiB = "
        f"{_fmt(ing.get('rss_per_result_bytes'), 0)} B per cached result "
        f"(cds_results_cached {_fmt(ing.get('results_cached'))})."
    ]


def _workload_check(per_kind: dict[str, dict[str, int]]) -> list[str]:
    """Per order class, how often each reason came back: does the mix do what it says?"""
    if not per_kind:
        return []
    rows = ["| order class | sampled | reasons returned (share of the class) |", "|---|---|---|"]
    for kind, counts in per_kind.items():
        n = counts.get("n", 0)
        reasons = ", ".join(
            f"{code} {c / n:.0%}" for code, c in sorted(counts.items()) if code != "n" and n
        )
        rows.append(f"| {kind} | {n} | {reasons or 'none'} |")
    return rows


def _open_table(points: list[dict[str, Any]]) -> list[str]:
    head = (
        "offered /s",
        "achieved /s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "late",
        "dropped",
        "errors",
        "driver CPU",
        "server CPU",
        "server CPU µs/call",
        "others on server core",
    )
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        cells = (
            f"{p['offered_rps']:,.0f}",
            f"{p['achieved_rps']:,.0f}",
            *(_ms(p.get(k)) for k in ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")),
            str(p["late"]),
            str(p["dropped"]),
            str(sum(p["errors"].values())),
            f"{p['driver_cpu_frac']:.0%}",
            f"{(p.get('server_cpu_frac') or 0):.0%}",
            _fmt(p.get("server_cpu_us_per_call"), 0),
            f"{(p.get('server_core_others_frac') or 0):.0%}",
        )
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _engine_lines(eng: dict[str, Any] | None) -> list[str]:
    if not eng:
        return []
    lines = ["", "## Engine micro-benchmark", ""]
    if "cases" not in eng:
        return [*lines, f"Failed: `{eng.get('error', '')[-300:]}`"]
    lines += ["| order | median µs | min µs | reasons |", "|---|---|---|---|"]
    for name, c in eng["cases"].items():
        reasons = ", ".join(c["reasons"]) or "–"
        lines.append(f"| {name} | {c['median_us']:.1f} | {c['min_us']:.1f} | {reasons} |")
    return lines


def _reload_lines(rl: dict[str, Any] | None) -> list[str]:
    if not rl:
        return []
    b, d = rl.get("before", {}), rl.get("during", {})
    err = f", error {rl['reload_error']}" if "reload_error" in rl else ""
    return [
        "",
        "## Reload under load",
        "",
        f"{rl['entries']:,} entries reloaded at {rl['rate']:,.0f} req/s open loop: "
        f"ReloadCatalog took {_fmt(rl.get('reload_ms'), 1)} ms "
        f"(activated {rl.get('activated')}, version {rl.get('version')}{err}); "
        f"failed calls {rl['failed_calls']} (errors {rl['errors']}, dropped {rl['dropped']}). "
        f"p99 before {_ms(b.get('p99_us'))} ms ({b.get('count', 0)} calls), during the reload "
        f"{_ms(d.get('p99_us'))} ms, max {_ms(d.get('max_us'))} ms "
        f"({d.get('count', 0)} calls in flight while it ran).",
    ]


def _redis_lines(rd: dict[str, Any] | None, workers: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if rd:
        ing = rd.get("ingest", {})
        pt = rd.get("open_half_rate", {})
        rss = (ing.get("rss_after_bytes") or 0) / 2**20
        lines += [
            "",
            "## Redis store (issue 5)",
            "",
            f"Ingest {_fmt(ing.get('results_per_s'), 0)} results/s; Redis memory "
            f"{_fmt(rd.get('redis_bytes_per_result'), 0)} B per result; service RSS "
            f"{_fmt(rss, 0)} MiB. At {_fmt(pt.get('offered_rps'), 0)} req/s: "
            f"p50 {_ms(pt.get('p50_us'))} ms, p99 {_ms(pt.get('p99_us'))} ms, "
            f"errors {pt.get('errors')}. "
            f"h2load mix {_fmt(rd.get('h2load', {}).get('mix_rps'), 0)} req/s.",
        ]
    if workers:
        lines += ["", "## Workers (Redis store, unpinned)", ""]
        for n, row in workers.items():
            mix = row.get("h2load", {}).get("mix_rps")
            rss = row.get("rss_bytes", 0) / 2**20
            lines.append(
                f"- {n} worker(s): h2load mix {_fmt(mix, 0)} req/s, RSS {_fmt(rss, 0)} MiB"
            )
    return lines


def _overloaded(p: dict[str, Any]) -> bool:
    return bool(p.get("dropped") or sum(p.get("errors", {}).values()))


def plot(res: dict[str, Any], path: Path) -> bool:
    series = [(k, res.get(k, {}).get("open")) for k in ("service", "empty")]
    series = [(k, pts) for k, pts in series if pts]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    ax.set_yscale("log")
    colours = {"service": "tab:red", "empty": "tab:blue"}
    labels = {"service": "cds service", "empty": "empty gRPC server"}
    overloaded_label = "calls failed or dropped (overloaded)"
    for name, pts in series:
        pts = [p for p in pts if p.get("count")]
        x = [p["offered_rps"] for p in pts]
        for key, style, lab in (("p50_us", "-o", "p50"), ("p99_us", "--s", "p99")):
            y = [p[key] / 1000 for p in pts]
            ax.plot(x, y, style, color=colours[name], label=f"{labels[name]} {lab}", ms=5)
            bad = [(xi, yi) for xi, yi, p in zip(x, y, pts, strict=True) if _overloaded(p)]
            if bad:
                ax.plot(
                    *zip(*bad, strict=True),
                    "x",
                    color="black",
                    ms=9,
                    label=overloaded_label,
                )
                overloaded_label = "_nolegend_"
    # Vertical markers, labelled along the bottom edge (x in data, y in axes units).
    edge = ax.get_xaxis_transform()
    marks = [
        (
            res.get("empty", {}).get("saturation_rps"),
            "tab:blue",
            "empty server\nsaturation",
            "left",
        ),
        (
            res.get("service", {}).get("h2load", {}).get("mix_rps"),
            "tab:red",
            "service\nsaturation",
            "right",
        ),
        (res.get("half_rate"), "grey", "half empty\nsaturation", "left"),
    ]
    for xv, colour, text, side in marks:
        if xv:
            ax.axvline(xv, color=colour, alpha=0.4, linestyle=":")
            pad = " " if side == "left" else ""
            ax.text(
                xv,
                0.02,
                f"{pad}{text}{' ' if side == 'right' else ''}",
                transform=edge,
                color=colour,
                fontsize=8,
                va="bottom",
                ha=side,
            )
    ax.set_xlabel("offered rate (requests/s, open loop)")
    ax.set_ylabel("latency from scheduled send (ms, log scale)")
    m = res["machine"]
    ax.set_title(
        f"Check latency vs offered rate — {m['cores']}-core {m['cpu_model']}, grpcio {m['grpcio']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda k: names[k].startswith("calls failed"))
    ax.legend([handles[k] for k in order], [names[k] for k in order], fontsize=8, loc="upper left")
    ax.set_xlim(left=0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_all(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res["headline"] = headline(res)
    (out / "results.json").write_text(
        json.dumps(res, indent=1, ensure_ascii=False, default=str) + "\n"
    )
    plot(res, out / "latency_vs_rate.png")
    (out / "RESULTS.md").write_text(markdown(res), encoding="utf-8")
