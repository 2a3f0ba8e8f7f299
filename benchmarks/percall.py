"""Instructions per Check, whole process, counted by valgrind's callgrind (issue 12, item 2).

Why instructions: on this shared 2-core machine a CPU-time figure moves by tens of
per cent with the neighbours, so a 3 % speed-up cannot be shown with it. An instruction
count does not depend on the neighbours: the same calls into the same build count the
same within a fraction of a per cent. ``perf stat -e instructions`` would be the cheap
way, but this machine's VM exposes no hardware counters (``perf stat -e instructions
true`` says ``<not supported>``), so callgrind counts them instead, ~50x slower.

Each server (the bare empty server, and the service of each ``--tree``) runs under
``valgrind --tool=callgrind --instr-atstart=no``: start-up and the preload run
uninstrumented, near full speed. Then, per order class: instrumentation on, warm-up
calls, counters zeroed, exactly ``--calls`` Checks from a native client at a fixed
concurrency, a dump. Instructions per call = the dump's total / calls. Every thread of
the server is counted (gRPC's pollers, the event loop, the decision-log writer): the
whole process's cost of a call, not only the handler's. The same dumps give the cost
by library (the interpreter, gRPC's core, protobuf's upb, libc, …) and the top
functions, inclusive and self. ``--py-spy`` adds Python-level attribution: the same
calls against the native server, sampled by ``py-spy --native --gil``.

One command, a figure per call::

    python -m benchmarks.percall                      # bare vs this tree's service
    python -m benchmarks.percall --tree before=/tmp/base --tree after=.   # A/B

It prints a table (instructions per call, per server and class) and writes
``percall.json``, the callgrind dumps and ``callgrind_annotate`` listings to ``--out``.
``python -m benchmarks.run --only percall`` runs it as a section of the bench.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc

from benchmarks.procs import ServerProcess, cpu_set, free_port, tree_env

CHECK_METHOD = "/cds.v1.OrderCheckService/Check"
# Valgrind runs one guest thread at a time anyway; on one CPU the kernel does not move
# its threads around, and repeated counts agree to ~0.5 % instead of ~3 %.
DEFAULT_CPUS: str | None = "0" if (os.cpu_count() or 1) > 1 else None
PUT_RESULTS = "/cds.v1.ResultFeedService/PutResults"
# The longest py-spy samples one class of one server (see py_spy_pass).
SPY_SECONDS = 60.0
ROOT = Path(__file__).resolve().parent.parent
# Libraries as their file names start, for the cost-by-library table.
LIBRARIES = (
    ("libpython", "interpreter (libpython)"),
    ("cygrpc", "gRPC core + Cython (cygrpc)"),
    ("_message", "protobuf upb (_message)"),
    ("orjson", "orjson"),
    ("libc.so", "libc"),
    ("libcrypto", "OpenSSL libcrypto"),
    ("libssl", "OpenSSL libssl"),
    ("ld-linux", "dynamic loader (TLS lookups)"),
    ("libstdc++", "libstdc++"),
    ("_asyncio", "asyncio C accelerator"),
    ("vgpreload", "valgrind preload"),
)


@dataclass
class Subject:
    """One server to count: the bare empty server or a service from a source tree."""

    name: str
    kind: str  # "bare" | "service"
    tree: Path = ROOT
    flags: list[str] = field(default_factory=list)


def library_of(obj: str) -> str:
    base = os.path.basename(obj)
    for prefix, label in LIBRARIES:
        if base.startswith(prefix) or prefix in base:
            return label
    if "python3" in base or base == "python":
        return "interpreter (libpython)"
    return base or "?"


def parse_callgrind(path: Path) -> dict[str, Any]:
    """Self and inclusive ``Ir`` per function, and self per library, from one dump.

    The format (valgrind's callgrind_format): ``ob=``/``fl=``/``fn=`` lines name the
    object, file and function with ``(id) name`` compression; a cost line is a position
    and the event counts; a ``calls=`` line is followed by one cost line that is the
    callee's inclusive cost, which belongs to the caller's inclusive cost only."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fl": {}, "fn": {}}
    ns_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl"}
    ns_of |= {"cfl": "fl", "fn": "fn", "cfn": "fn"}
    self_cost: Counter[tuple[str, str]] = Counter()
    call_cost: Counter[tuple[str, str]] = Counter()
    total = 0
    ob = fn = ""
    in_call = False
    pattern = re.compile(r"^(\w+)=\((\d+)\)(?: (.*))?$")
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                ir = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    call_cost[(ob, fn)] += ir
                    in_call = False
                else:
                    self_cost[(ob, fn)] += ir
                continue
            if line.startswith("calls="):
                in_call = True
                continue
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split(":", 1)[1].split()[0] or 0))
                continue
            m = pattern.match(line)
            if m:
                key, ident, name = m.groups()
                ns = ns_of.get(key)
                if ns is None:
                    continue
                if name is not None:
                    names[ns][ident] = name
                value = names[ns].get(ident, "?")
                if key == "ob":
                    ob = value
                elif key == "fn":
                    fn = value
                continue
            if line.startswith(("ob=", "fn=")):  # uncompressed names
                key, value = line.split("=", 1)
                if key == "ob":
                    ob = value
                else:
                    fn = value
    by_lib: Counter[str] = Counter()
    for (obj, _fn), ir in self_cost.items():
        by_lib[library_of(obj)] += ir
    inclusive = Counter({k: self_cost[k] + call_cost[k] for k in set(self_cost) | set(call_cost)})
    return {
        "total_ir": total or sum(self_cost.values()),
        "self": self_cost,
        "inclusive": inclusive,
        "by_library": by_lib,
    }


def _is_leaf(obj: str) -> bool:
    return library_of(obj) not in {
        "interpreter (libpython)",
        "asyncio C accelerator",
        "gRPC core + Cython (cygrpc)",
    }


def _label(obj: str, fn: str) -> str:
    base = os.path.basename(obj)
    if fn.startswith("0x"):  # a stripped library: only an address, name the library
        return f"{base.split('.')[0]}:{fn.lstrip('0x') or '0'}"
    return f"{fn} [{base.split('.')[0]}]"


def summarise(parsed: dict[str, Any], calls: int, top: int = 15) -> dict[str, Any]:
    total = parsed["total_ir"]

    def rows(counter: Counter[tuple[str, str]], named_only: bool) -> list[dict[str, Any]]:
        out = []
        for (obj, fn), ir in counter.most_common():
            if named_only and (fn.startswith("0x") or fn == "?"):
                continue
            out.append(
                {"function": _label(obj, fn), "ir_per_call": ir / calls, "share": ir / total}
            )
            if len(out) >= top:
                break
        return out

    return {
        "calls": calls,
        "total_ir": total,
        "ir_per_call": total / calls,
        "by_library": {
            lib: {"ir_per_call": ir / calls, "share": ir / total}
            for lib, ir in parsed["by_library"].most_common()
        },
        "top_self": rows(parsed["self"], False),
        # Inclusive, outside the interpreter and gRPC's core: there every function is on
        # every call's stack (eval loop, task steps) or a stripped address, saying
        # nothing; the leaf libraries' entry points (upb's parse and serialise, orjson,
        # HMAC, write/sendmsg, malloc) say where C time goes.
        "top_inclusive": rows(
            Counter({k: v for k, v in parsed["inclusive"].items() if _is_leaf(k[0])}), True
        ),
    }


class CallgrindServer:
    """A server under callgrind with instrumentation off until asked for."""

    def __init__(
        self, cmd: list[str], out: Path, name: str, env: dict[str, str], cpus: str | None
    ) -> None:
        self.out = out
        self.name = name
        self.base = out / f"callgrind.{name}.out"
        for old in out.glob(f"callgrind.{name}.out*"):
            old.unlink()
        vg = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={self.base}",
        ]
        self.proc = ServerProcess([*vg, *cmd], cpus=cpus, log=out / f"{name}.log", env=env)
        self.parts = 0

    def control(self, *args: str) -> None:
        subprocess.run(
            ["callgrind_control", *args, str(self.proc.pid)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def dump(self) -> Path:
        self.control("--dump")
        self.parts += 1
        path = Path(f"{self.base}.{self.parts}")
        deadline = time.monotonic() + 60
        while not path.exists() or path.stat().st_size == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no callgrind dump {path}")
            time.sleep(0.1)
        return path


def fixed_calls(
    call: Any,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    *,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Exactly ``n`` Checks, ``concurrency`` in flight, bodies cycled, on an open channel
    (its connection set up before, outside the count): a fixed amount of work whatever
    the speed of the server (a valgrind one is ~50x slower). ``max_seconds`` stops
    sending early, for a sampler that needs time, not a count: ``calls`` says how many."""
    pending: collections.deque[grpc.Future] = collections.deque()
    errors: Counter[str] = Counter()
    t0 = time.monotonic()
    stop_at = None if max_seconds is None else t0 + max_seconds
    sent = 0
    for i in range(n):
        if stop_at is not None and i % concurrency == 0 and time.monotonic() >= stop_at:
            break
        if len(pending) >= concurrency:
            _settle(pending.popleft(), errors)
        pending.append(call.future(bodies[i % len(bodies)], timeout=300))
        sent += 1
    while pending:
        _settle(pending.popleft(), errors)
    return {"calls": sent, "errors": dict(errors), "wall_s": time.monotonic() - t0}


def _settle(fut: grpc.Future, errors: Counter[str]) -> None:
    try:
        fut.result()
    except grpc.RpcError as exc:
        errors[exc.code().name] += 1


def _preload(target: str, batches: list[bytes]) -> int:
    from cds.v1 import result_feed_pb2

    accepted = 0
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(PUT_RESULTS)
        for body in batches:
            accepted += result_feed_pb2.PutResultsResponse.FromString(
                call(body, timeout=600)
            ).accepted
    return accepted


@dataclass
class Workload:
    """What every subject is sent: the population to preload and the bodies per class."""

    batches: list[bytes]
    classes: dict[str, list[bytes]]
    empty_map: Path | None = None
    response_bytes: int | None = None


def build_workload(
    catalog_json: dict[str, Any], results: int, patients: int, classes: list[str]
) -> Workload:
    from benchmarks.workload import (
        WARN_CLASS,
        CatalogView,
        build_orders,
        build_population,
        build_warn_orders,
    )

    view = CatalogView.of(catalog_json)
    pop = build_population(view, results, patients, batch_size=min(5_000, results))
    orders = build_orders(view, pop, 2_000)
    out: dict[str, list[bytes]] = {}
    for c in classes:
        if c == "mix":
            out[c] = [o.body for o in orders]
        elif c == WARN_CLASS:
            out[c] = [o.body for o in build_warn_orders(view, pop, 500)]
        else:
            out[c] = [o.body for o in orders if o.kind == c]
        if not out[c]:
            raise SystemExit(f"no orders of class {c!r} in this workload")
    return Workload(pop.batches, out)


def start(
    subject: Subject, out: Path, catalog: Path, tmp: Path, wl: Workload, cpus: str | None
) -> Any:
    """The subject under callgrind, serving (and, for a service, preloaded)."""
    if subject.kind == "bare":
        cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
        if wl.response_bytes:
            cmd += ["--response-bytes", str(wl.response_bytes)]
        if wl.empty_map is not None:
            cmd += ["--class-responses", str(wl.empty_map)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        srv = CallgrindServer(cmd, out, subject.name, env, cpus)
        return srv, f"127.0.0.1:{srv.proc.wait_port_line(timeout=300)}"
    port, mport = free_port(), free_port()
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "cds",
        "serve",
        "--catalog",
        str(catalog),
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        f"127.0.0.1:{mport}",
        "--decision-log",
        str(tmp / f"percall-decisions-{subject.name}-{port}.jsonl"),
        *subject.flags,
    ]
    if "--no-decision-log" in cmd:
        i = cmd.index("--decision-log")
        del cmd[i : i + 2]
    env = tree_env(subject.tree)
    srv = CallgrindServer(cmd, out, subject.name, env, cpus)
    target = f"127.0.0.1:{port}"
    srv.proc.wait_serving(target, timeout=600)
    _preload(target, wl.batches)
    return srv, target


def count(
    subject: Subject,
    wl: Workload,
    out: Path,
    catalog: Path,
    tmp: Path,
    calls: int,
    warmup: int,
    concurrency: int,
    log: Any,
    idle_s: float = 5.0,
    cpus: str | None = None,
) -> dict[str, Any]:
    srv, target = start(subject, out, catalog, tmp, wl, cpus)
    res: dict[str, Any] = {"command": " ".join(srv.proc.cmd), "classes": {}}
    try:
        channel = grpc.insecure_channel(target)
        call = channel.unary_unary(CHECK_METHOD)
        srv.control("--instr=on")
        for cls, bodies in wl.classes.items():
            fixed_calls(call, bodies, warmup, concurrency)
            srv.control("--zero")
            t0 = time.monotonic()
            run = fixed_calls(call, bodies, calls, concurrency)
            window = time.monotonic() - t0
            dump = srv.dump()
            parsed = parse_callgrind(dump)
            s = summarise(parsed, calls) | {"dump": dump.name, "client": run, "window_s": window}
            annotate = out / f"{dump.name}.annotate.txt"
            with open(annotate, "w") as f:
                subprocess.run(
                    ["callgrind_annotate", "--inclusive=yes", str(dump)],
                    stdout=f,
                    stderr=subprocess.DEVNULL,
                    check=False,
                    timeout=300,
                )
            s["annotate"] = annotate.name
            res["classes"][cls] = s
            log(
                f"  {subject.name:10s} {cls:10s}: {s['ir_per_call']:,.0f} instructions/call "
                f"({calls} calls, {run['wall_s']:.0f} s under callgrind, "
                f"errors {sum(run['errors'].values())})"
            )
        # What the server does with no calls at all (gRPC's timers and pollers, the
        # event loop): counted over a quiet window, so a reader can see how much of a
        # figure is time- rather than call-driven (under valgrind a call takes ~50x
        # longer, so background work per call is inflated by as much).
        srv.control("--zero")
        t0 = time.monotonic()
        time.sleep(idle_s)
        dump = srv.dump()
        idle_wall = time.monotonic() - t0
        idle = parse_callgrind(dump)["total_ir"] / idle_wall
        res["idle_ir_per_s"] = idle
        for s in res["classes"].values():
            s["idle_share"] = idle * s["window_s"] / s["total_ir"] if s["total_ir"] else 0.0
        log(f"  {subject.name:10s} idle      : {idle:,.0f} instructions/s with no calls")
        srv.control("--instr=off")
        channel.close()
    finally:
        srv.proc.stop()
    return res


def py_spy_pass(
    subject: Subject,
    wl: Workload,
    out: Path,
    catalog: Path,
    tmp: Path,
    calls: int,
    concurrency: int,
) -> dict[str, Any]:
    """Python-level attribution: the same calls against the server run natively, sampled
    by py-spy (``--native --gil``: the thread holding the GIL, grpc's Cython frames
    shown). Shares of samples, inclusive, by function; a sample estimate, unlike the
    instruction counts."""
    from benchmarks.run import profile_shares

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy not installed"}
    port, mport = free_port(), free_port()
    if subject.kind == "bare":
        cmd = [sys.executable, "-m", "benchmarks.empty_server", "--listen", "127.0.0.1:0"]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
    else:
        cmd = [
            sys.executable,
            "-P",
            "-m",
            "cds",
            "serve",
            "--catalog",
            str(catalog),
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{mport}",
            "--decision-log",
            str(tmp / f"percall-spy-decisions-{port}.jsonl"),
            *subject.flags,
        ]
        env = tree_env(subject.tree)
    proc = ServerProcess(cmd, cpus=None, log=out / f"{subject.name}-spy.log", env=env)
    shares: dict[str, Any] = {}
    try:
        if subject.kind == "bare":
            target = f"127.0.0.1:{proc.wait_port_line()}"
        else:
            target = f"127.0.0.1:{port}"
            proc.wait_serving(target)
            _preload(target, wl.batches)
        channel = grpc.insecure_channel(target)
        call = channel.unary_unary(CHECK_METHOD)
        for cls, bodies in wl.classes.items():
            fixed_calls(call, bodies, min(calls, 500), concurrency)
            raw = out / f"py-spy.{subject.name}.{cls}.txt"
            rec = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--rate",
                    "500",
                    "--gil",
                    "--native",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)  # py-spy attaches
            # More calls than under callgrind: the server is ~50x faster here and py-spy
            # needs some seconds of samples. Bounded in time too: where py-spy's native
            # unwinding is slow it stops the server for most of each sample (seen: 20
            # calls/s, 11 minutes a server), and shares need samples, not a call count.
            sent = fixed_calls(call, bodies, calls * 5, concurrency, max_seconds=SPY_SECONDS)
            rec.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            rec.communicate(timeout=60)
            shares[cls] = profile_shares(raw) | {"file": raw.name, "calls": sent["calls"]}
        channel.close()
    finally:
        proc.stop()
    return shares


def measure(
    subjects: list[Subject],
    catalog_json: dict[str, Any],
    out: Path,
    *,
    classes: list[str],
    results: int,
    patients: int,
    calls: int,
    warmup: int,
    concurrency: int,
    with_py_spy: bool,
    log: Any,
    cpus: str | None = DEFAULT_CPUS,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    if cpus is not None:
        # The client keeps off the server's CPU, so it always has calls waiting for it.
        others = cpu_set(None) - cpu_set(cpus)
        if others:
            os.sched_setaffinity(0, others)
    catalog = out / "catalog.json"
    catalog.write_text(json.dumps(catalog_json, ensure_ascii=False), encoding="utf-8")
    wl = build_workload(catalog_json, results, patients, classes)
    res: dict[str, Any] = {
        "method": "valgrind --tool=callgrind, instructions (Ir) of every thread of the server "
        f"process, {calls} calls per class after {warmup} warm-up calls, "
        f"{concurrency} in flight, server on CPU {cpus or 'any'}, client native on the others",
        "valgrind": subprocess.run(
            ["valgrind", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "population": {"results": results, "patients": patients},
        "calls": calls,
        "concurrency": concurrency,
        "classes": classes,
        "subjects": {},
    }
    # The empty server answers each class with as many bytes as the first service does.
    services = [s for s in subjects if s.kind == "service"]
    if services:
        wl.response_bytes, wl.empty_map = _response_sizes(services[0], wl, out, catalog)
    for subject in subjects:
        log(f"percall: {subject.name} under callgrind")
        res["subjects"][subject.name] = count(
            subject, wl, out, catalog, out, calls, warmup, concurrency, log, cpus=cpus
        )
        if with_py_spy:
            res["subjects"][subject.name]["py_spy"] = py_spy_pass(
                subject, wl, out, catalog, out, calls, concurrency
            )
    return res


def _response_sizes(
    subject: Subject, wl: Workload, out: Path, catalog: Path
) -> tuple[int | None, Path | None]:
    """The service's mean response size on the first class's bodies and per body class,
    from a native run of it (for the empty server's canned replies)."""
    import base64

    from cds.v1 import order_check_pb2

    port, mport = free_port(), free_port()
    cmd = [sys.executable, "-P", "-m", "cds", "serve", "--catalog", str(catalog)]
    cmd += ["--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}"]
    cmd += ["--no-decision-log"]
    proc = ServerProcess(cmd, cpus=None, log=out / "sizes.log", env=tree_env(subject.tree))
    entries = []
    sizes: list[int] = []
    try:
        target = f"127.0.0.1:{port}"
        proc.wait_serving(target)
        _preload(target, wl.batches)
        with grpc.insecure_channel(target) as ch:
            call = ch.unary_unary(CHECK_METHOD)
            for bodies in wl.classes.values():
                for body in bodies[:200]:
                    n = order_check_pb2.CheckResponse.FromString(call(body, timeout=10)).ByteSize()
                    sizes.append(n)
                    entries.append(
                        {"request_b64": base64.b64encode(body).decode(), "response_bytes": n}
                    )
    finally:
        proc.stop()
    path = out / "class-responses.json"
    path.write_text(json.dumps(entries))
    return (round(sum(sizes) / len(sizes)) if sizes else None), path


def section(env: Any, catalog_json: dict[str, Any]) -> dict[str, Any]:
    """``python -m benchmarks.run --only percall``: bare vs this tree's service. The dumps
    go to the run's (git-ignored) tmp directory; the figures to results.json."""
    from benchmarks.run import log
    from benchmarks.workload import WARN_CLASS

    cfg = env.cfg
    subjects = [Subject("bare", "bare"), Subject("service", "service")]
    return measure(
        subjects,
        catalog_json,
        env.tmp / "percall",
        classes=["mix", WARN_CLASS],
        results=cfg.percall_results,
        patients=cfg.percall_patients,
        calls=cfg.percall_calls,
        warmup=cfg.percall_warmup_calls,
        concurrency=cfg.percall_concurrency,
        with_py_spy=True,
        log=log,
    )


def table(res: dict[str, Any]) -> str:
    """Instructions per call, per subject and class, with the ratio to the bare server."""
    subjects = res["subjects"]
    classes = res["classes"]
    lines = ["| server | " + " | ".join(f"{c} Ir/call" for c in classes) + " |"]
    lines.append("|---|" + "---|" * len(classes))
    bare = subjects.get("bare")
    for name, s in subjects.items():
        cells = []
        for c in classes:
            v = s["classes"].get(c, {}).get("ir_per_call")
            b = bare["classes"].get(c, {}).get("ir_per_call") if bare else None
            ratio = f" ({v / b:.2f}× bare)" if v and b and name != "bare" else ""
            cells.append(f"{v:,.0f}{ratio}" if v else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import QUICK, SHIPPED_CATALOG, Config, log
    from benchmarks.workload import WARN_CLASS, load_catalog_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=DIR[@FLAG,FLAG]: a service from that source tree (repeatable); "
        "default: service=. (this tree)",
    )
    p.add_argument("--no-bare", action="store_true", help="leave the bare empty server out")
    p.add_argument("--classes", default=f"mix,{WARN_CLASS}", help="mix, all_warn, lab_hit, …")
    p.add_argument("--calls", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--py-spy", action="store_true", help="also py-spy each server natively")
    p.add_argument(
        "--cpus",
        default=DEFAULT_CPUS,
        help="CPUs of the server under valgrind (default 0; the client takes the others)",
    )
    p.add_argument("--quick", action="store_true", help="toy scale (the smoke test)")
    p.add_argument("--out", type=Path, default=Path("/tmp/cds-percall"))
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else Config()
    if args.calls:
        cfg = replace(cfg, percall_calls=args.calls)
    if args.concurrency:
        cfg = replace(cfg, percall_concurrency=args.concurrency)
    subjects = [] if args.no_bare else [Subject("bare", "bare")]
    for t in args.tree or ["service=."]:
        name, _, spec = t.partition("=")
        d, _, flags = spec.partition("@")
        subjects.append(
            Subject(name, "service", Path(d).resolve(), flags.split(",") if flags else [])
        )
    res = measure(
        subjects,
        load_catalog_json(SHIPPED_CATALOG),
        args.out,
        classes=[c.strip() for c in args.classes.split(",") if c.strip()],
        results=cfg.percall_results,
        patients=cfg.percall_patients,
        calls=cfg.percall_calls,
        warmup=cfg.percall_warmup_calls,
        concurrency=cfg.percall_concurrency,
        with_py_spy=args.py_spy,
        log=log,
        cpus=args.cpus,
    )
    (args.out / "percall.json").write_text(json.dumps(res, indent=1, default=str))
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
