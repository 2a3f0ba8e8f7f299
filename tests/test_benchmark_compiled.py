"""benchmarks.compiled: the compiled prototype is built beside the source, never in it,
and says which modules it could not compile instead of failing or hiding them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compiled

pytest.importorskip("Cython")

# Cython 3.3 crashes on unpacking a slice whose length it cannot infer (as in
# cds/decisions/memory.py): the module must stay Python and be listed.
CRASHES_CYTHON = """
def first(record: list[int], pos: int) -> int:
    a, b = record[pos : pos + 2]
    return a + b
"""
PLAIN = """
def twice(x: str) -> str:
    return x * 2
"""


def _repo(root: Path) -> Path:
    (root / "cds").mkdir(parents=True)
    (root / "cds" / "__init__.py").write_text("")
    (root / "cds" / "plain.py").write_text(PLAIN)
    (root / "cds" / "crashes.py").write_text(CRASHES_CYTHON)
    (root / "cds" / "runtime").mkdir()
    (root / "cds" / "runtime" / "worker.py").write_text(PLAIN)
    (root / "schema.json").write_text("{}")
    (root / "cds" / "schema.json").symlink_to("../schema.json")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    return root


def test_a_compiled_copy_shadows_its_modules_and_lists_the_ones_left_as_python(
    tmp_path: Path,
) -> None:
    src = _repo(tmp_path / "src")
    out = tmp_path / "out"
    done, failed = compiled.build(src, out, jobs=2)
    assert done == [Path("cds/plain.py")]
    assert set(failed) == {Path("cds/crashes.py"), Path("cds/runtime/worker.py")}
    assert Path("cds/runtime/worker.py") in failed  # run with -m: always left as Python
    assert "MarkParallelAssignments" in failed[Path("cds/crashes.py")]
    # The source tree is untouched: no extension module next to its .py files.
    assert not list((src / "cds").glob("*.so"))
    assert (out / "cds" / "schema.json").is_symlink()
    probe = (
        "import cds.plain, cds.crashes;"
        "print(cds.plain.__file__.endswith('.so'), cds.crashes.__file__.endswith('.py'),"
        " cds.plain.twice('ab'))"
    )
    ran = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        env={"PYTHONPATH": str(out)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert ran.stdout.split() == ["True", "True", "abab"]


def test_the_compiled_copy_may_not_go_into_the_source_package(tmp_path: Path) -> None:
    src = _repo(tmp_path / "src")
    with pytest.raises(SystemExit):
        compiled.main(["--src", str(src), "--out", str(src / "cds" / "built")])
