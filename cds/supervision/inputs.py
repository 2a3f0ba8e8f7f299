"""Which files a report reads, and their lines, streamed.

A directory stands for every decision-log file in it: the live file
(``decisions.jsonl``), its rotations (``decisions.jsonl.1`` …), and the per-worker files
of ``cds serve --workers N`` (``decisions.w0.jsonl``, ``decisions.w0.jsonl.3`` …), so a
whole ``/var/log/cds`` of one host, or of many hosts copied side by side, is one
argument. Files are read in binary, in 1 MiB chunks, never whole: a month of a large
hospital is gigabytes.

A file that cannot be opened or read is :class:`InputError` (the command exits 1 naming
it). A line that is not a JSON object is not an error: a crash (``kill -9``, power)
can leave a torn last line, and a restarted server appends after it, so the tear may
also sit in the middle of a file. Such lines are skipped and counted, never fatal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

# decisions.jsonl, decisions.jsonl.3, decisions.w1.jsonl, decisions.w1.jsonl.10
LOG_FILE = re.compile(r"^.+\.jsonl(\.\d+)?$")
CHUNK = 1024 * 1024


class InputError(Exception):
    """An input that cannot be read; the message names it and says why."""


def log_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The files named, and the decision-log files of the directories named, in order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir() if LOG_FILE.match(p.name) and p.is_file())
            except OSError as e:
                raise InputError(f"{path}: cannot list the directory: {_why(e)}") from None
            if not found:
                raise InputError(
                    f"{path}: no decision-log files in it (expected *.jsonl, *.jsonl.N)"
                )
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in files:  # a file named twice (a directory and one of its files) counts once
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def lines(path: Path) -> Iterator[bytes]:
    """The file's lines (without the newline), streamed; InputError if it cannot be read."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, across yields
    except OSError as e:
        raise InputError(f"{path}: cannot open: {_why(e)}") from None
    try:
        rest = b""
        while True:
            try:
                chunk = f.read(CHUNK)
            except OSError as e:
                raise InputError(f"{path}: cannot read: {_why(e)}") from None
            if not chunk:
                break
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            yield from parts
        if rest:
            yield rest
    finally:
        f.close()


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__
