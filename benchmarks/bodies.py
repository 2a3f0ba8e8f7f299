"""Pre-serialized request bodies in one file: each a 4-byte big-endian length, then bytes.

Kept apart from the workload generator so a driver process imports nothing heavy and
starts quickly."""

from __future__ import annotations

import struct
from pathlib import Path


def write_bodies(path: str | Path, bodies: list[bytes]) -> None:
    with open(path, "wb") as f:
        for b in bodies:
            f.write(struct.pack(">I", len(b)))
            f.write(b)


def read_bodies(path: str | Path) -> list[bytes]:
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack_from(">I", data, i)
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out
