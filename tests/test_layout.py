"""The package's rooms depend on each other in one direction only.

A room is a top-level module or sub-package of ``cds``. Each may import only the rooms
listed for it here: the lower layers never reach up (the engine cannot import gRPC
adapters, the catalogue cannot import the server), which is what lets a newcomer
trust the folder names. A new room, or a new dependency, is a deliberate edit here.
"""

from __future__ import annotations

import ast
from pathlib import Path

CDS = Path(__file__).resolve().parents[1] / "cds"

# room -> rooms it may import (besides itself). ``v1`` is the generated protobuf code.
_BELOW_SERVICE = {"domain", "config", "metrics", "catalog", "results", "rules", "decisions"}
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "config": set(),
    "v1": set(),
    "metrics": {"domain"},
    "catalog": {"domain"},
    "results": {"domain", "config"},
    "security": {"config", "domain"},
    "rules": {"domain", "catalog", "results"},
    "decisions": {"domain", "config", "metrics", "results", "security"},
    "rollout": {"domain", "catalog", "rules", "metrics", "results"},
    "supervision": {"domain", "catalog"},
    "orders": {"domain", "config", "metrics", "results", "decisions", "rollout"},
    # The CDS Hooks door: FHIR/CDS Hooks JSON <-> domain over HTTP, beside gRPC's.
    "hooks": _BELOW_SERVICE | {"rollout", "orders", "security"},
    "service": _BELOW_SERVICE | {"rollout", "orders", "security", "v1"},
    "runtime": _BELOW_SERVICE | {"rollout", "orders", "security", "service", "hooks", "v1"},
    "cli": {"config", "catalog", "results", "rollout", "runtime", "security", "supervision", "v1"},
    "__main__": {"cli"},
}


def _room(path: Path) -> str:
    return path.relative_to(CDS).with_suffix("").parts[0]


def _imported_rooms(path: Path) -> set[str]:
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "cds":
                continue
            if len(parts) > 1:
                rooms.add(parts[1])
            else:
                rooms.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "cds" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def test_every_room_imports_only_the_rooms_below_it():
    wrong = []
    for path in sorted(CDS.rglob("*.py")):
        room = _room(path)
        if room == "__init__":
            continue
        assert room in ALLOWED, f"{path}: room {room!r} is not in tests/test_layout.py ALLOWED"
        for target in sorted(_imported_rooms(path) - {room} - ALLOWED[room]):
            wrong.append(f"{path.relative_to(CDS.parent)} imports cds.{target}")
    assert not wrong, "imports running against the layering:\n" + "\n".join(wrong)


def test_the_engine_loads_neither_grpc_nor_redis():
    import subprocess
    import sys

    probe = (
        "import sys, cds.rules.engine; "
        "print(sorted(m for m in ('grpc', 'redis', 'jsonschema_rs') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=CDS.parent
    )
    assert out.stdout.strip() == "[]"
