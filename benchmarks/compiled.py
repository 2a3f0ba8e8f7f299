"""A measured prototype of a compiled hot path: this tree with its modules built by Cython.

Issue 12 asks what a compiled hot path would buy, measured rather than estimated. The
cheapest honest prototype compiles the very source the service runs: Cython translates
each pure-Python module of ``cds/`` to C, unchanged (no type declarations, no rewritten
code), so the compiled tree is the pure-Python path, run without the bytecode
interpreter's dispatch and frames. What it saves is the interpreter's share; what it
cannot save is what the code does through the C API (dict and attribute look-ups,
object allocation, upb's field reads), which a hand-written C or Rust handler would
avoid as well. So the figure is a floor of what compilation buys, and the bare empty
server's count is the ceiling.

The build goes into a copy of the tree (``--out``), never into the working tree: a
``.so`` beside a ``.py`` shadows it on import, and the service must keep running its
pure-Python path. Modules Cython cannot compile (a compiler crash, say) stay as Python
in the copy and are listed, so the figure says exactly what was compiled. Nothing here
is a runtime dependency: Cython and a C compiler are needed only to build the copy.

One command builds it and counts instructions per Check against the source::

    python -m benchmarks.compiled --out /tmp/cds-compiled --percall

``--test`` runs the test suite against the compiled copy: the prototype is only worth
a figure if it gives the same answers.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Generated protobuf code and package markers: nothing of ours runs in them per call.
SKIP_DIRS = ("cds/v1",)
SKIP_NAMES = ("__init__.py", "__main__.py")
# Run with ``python -m``, which needs a code object an extension module does not have.
AS_PYTHON = {"cds/runtime/worker.py": "run with python -m (a worker's entry point)"}
# Annotations stay hints, as in Python: Cython would otherwise enforce ``code: str``
# exactly and refuse a ``StrEnum`` member, a behaviour the pure-Python path does not have.
DIRECTIVES = ("-X", "annotation_typing=False")


def copy_tree(src: Path, out: Path) -> None:
    """Tracked and untracked-but-not-ignored files of ``src``: what ``--tree .`` runs."""
    listed = subprocess.run(
        ["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    if out.exists():
        shutil.rmtree(out)
    for name in filter(None, listed):
        rel = Path(os.fsdecode(name))
        source = src / rel
        if not source.is_file() and not source.is_symlink():  # deleted in the working tree
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)  # catalog/schema.json is one


def modules(out: Path) -> list[Path]:
    return sorted(
        p.relative_to(out)
        for p in (out / "cds").rglob("*.py")
        if p.name not in SKIP_NAMES
        and not any(p.relative_to(out).as_posix().startswith(d + "/") for d in SKIP_DIRS)
    )


def cythonize_one(out: Path, module: Path) -> tuple[Path, str | None]:
    """Build ``module`` in place in ``out``; the first error line when it cannot be."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "Cython.Build.Cythonize",
            "-i",
            "-3",
            "-q",
            *DIRECTIVES,
            str(module),
        ],
        cwd=out,
        capture_output=True,
        text=True,
    )
    if done.returncode == 0:
        return module, None
    lines = (done.stdout + done.stderr).splitlines()
    where = next((ln for ln in lines if ln.startswith(str(module) + ":")), "")
    return module, where or (lines[-1] if lines else f"exit {done.returncode}")


def build(src: Path, out: Path, jobs: int) -> tuple[list[Path], dict[Path, str]]:
    copy_tree(src, out)
    compiled: list[Path] = []
    failed: dict[Path, str] = {}
    failed.update((Path(m), why) for m, why in AS_PYTHON.items() if (out / m).exists())
    todo = [m for m in modules(out) if m.as_posix() not in AS_PYTHON]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for module, error in pool.map(lambda m: cythonize_one(out, m), todo):
            if error is None:
                compiled.append(module)
            else:
                failed[module] = error
    for c_file in (out / "cds").rglob("*.c"):  # the generated C: megabytes, not needed
        c_file.unlink()
    shutil.rmtree(out / "build", ignore_errors=True)
    return compiled, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path("."), help="tree to compile (.)")
    parser.add_argument("--out", type=Path, required=True, help="where the compiled copy goes")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--percall",
        action="store_true",
        help="then count instructions per Check: source vs compiled (benchmarks.percall)",
    )
    parser.add_argument("--calls", type=int, help="Checks per class for --percall")
    parser.add_argument(
        "--test", action="store_true", help="then run the test suite against the compiled copy"
    )
    args = parser.parse_args(argv)
    src, out = args.src.resolve(), args.out.resolve()
    if out == src or src / "cds" in (out, *out.parents):
        parser.error("--out must not be the source tree or inside its cds/")
    try:
        import Cython  # noqa: F401
    except ImportError:
        parser.error("Cython is not installed: pip install -e '.[bench]'")
    compiled, failed = build(src, out, args.jobs)
    print(f"compiled {len(compiled)} modules into {out}")
    for module, error in sorted(failed.items()):
        print(f"left as Python: {module}: {error}")
    status = 0
    if args.test:
        env = dict(os.environ, PYTHONPATH=str(out))
        status = subprocess.run(
            [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/"],
            cwd=out,
            env=env,
        ).returncode
    if args.percall and status == 0:
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.percall",
                "--no-bare",
                *(["--calls", str(args.calls)] if args.calls else []),
                "--tree",
                f"python={src}",
                "--tree",
                f"compiled={out}",
            ],
            cwd=ROOT,
        ).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
