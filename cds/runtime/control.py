"""The parent <-> worker control channel of ``cds serve --workers N``: framed messages.

A Unix socket pair per worker, created by the parent before the worker starts (its
end is inherited as a file descriptor). A frame is a small JSON header and an optional
binary body — the catalogue's bytes travel as they are, not re-encoded. Both ends
are the same program, so the format needs no versioning; it never leaves the host.

Messages (``op``):

* parent -> worker: ``init`` (config, index, port; body: catalogue), ``apply`` (body:
  catalogue bytes to activate), ``preview`` (body: catalogue bytes to validate and
  replay recent orders against, a dry run), ``refuse`` (the file could not be read:
  record it), ``reloaded`` (the answer to the worker's ``reload``), ``hup`` (tokens and
  keys).
* worker -> parent: ``ready``, ``reload`` (an RPC asked for one, dry run or not; body:
  the candidate, if any), ``applied`` and ``previewed`` (each with the worker's impact).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson

_HEAD = struct.Struct("<II")
# A frame can carry a whole catalogue; a 10,000-entry one is a few MB.
STREAM_LIMIT = 256 * 1024 * 1024

Header = dict[str, Any]


async def open_channel(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(sock=sock, limit=STREAM_LIMIT)


async def send(writer: asyncio.StreamWriter, header: Header, body: bytes = b"") -> None:
    head = orjson.dumps(header)
    writer.write(_HEAD.pack(len(head), len(body)) + head + body)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple[Header, bytes]:
    """The next frame; raises ``asyncio.IncompleteReadError`` when the other end closed."""
    head_size, body_size = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    header: Header = orjson.loads(await reader.readexactly(head_size))
    body = await reader.readexactly(body_size) if body_size else b""
    return header, body
