"""One worker of ``cds serve --workers N``: ``python -m cds.runtime.worker FD``,
started by :mod:`cds.runtime.supervisor`.

The worker is an ordinary :class:`~cds.runtime.server.CdsServer` with a :class:`WorkerRole`:
it binds the parent's port with SO_REUSEPORT, writes metrics to the shared
multiprocess directory (the parent serves them), keeps its own decision log file,
and turns a ``ReloadCatalog`` RPC into a request to the parent, which has every
worker activate the same bytes before the RPC is answered.

It lives in its own session (a terminal's Ctrl-C or SIGHUP reaches only the parent,
which coordinates) and stops by itself, draining, on SIGTERM or when the control
channel closes (the parent is gone: no orphan keeps serving the port).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from cds.config import ServeConfig
from cds.rollout.state import CatalogRefused, ReloadOutcome
from cds.runtime import control
from cds.runtime.server import CdsServer, WorkerRole
from cds.security.pseudonyms import Pseudonymizer

log = logging.getLogger(__name__)


class ParentLink:
    """This worker's end of the control channel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[control.Header]] = {}
        self.server: Any = None  # the CdsServer, once built

    async def reload(self, dry_run: bool) -> ReloadOutcome:
        """The RPC's reload: a dry run stays here; a real one goes through the parent."""
        if dry_run:
            outcome: ReloadOutcome = await self.server.state.reload(dry_run=True)
            return outcome
        request_id = next(self._ids)
        answer: asyncio.Future[control.Header] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            await control.send(self._writer, {"op": "reload", "id": request_id})
            result = await answer
        finally:
            self._waiting.pop(request_id, None)
        if not result["ok"]:
            raise CatalogRefused(result["errors"])
        return ReloadOutcome(True, result["version"], result["previous"], result["changes"])

    async def follow(self) -> None:
        """Serve the parent's messages until it closes the channel."""
        while True:
            try:
                header, body = await control.receive(self._reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            op = header["op"]
            if op == "apply":
                await control.send(self._writer, await self._apply(header, body))
            elif op == "refuse":
                self.server.state.refuse(header["errors"])
            elif op == "reloaded":
                answer = self._waiting.get(header["id"])
                if answer is not None and not answer.done():
                    answer.set_result(header)
            elif op == "hup":
                await self.server.reload_credentials()

    async def _apply(self, header: control.Header, content: bytes) -> control.Header:
        reply: control.Header = {"op": "applied", "id": header["id"]}
        try:
            outcome = await self.server.state.reload(content=content)
        except CatalogRefused as refused:
            reply.update(ok=False, errors=refused.errors)
        else:
            reply.update(
                ok=True,
                version=outcome.version,
                previous=outcome.previous_version,
                changes=outcome.changes,
            )
        return reply

    async def send(self, header: control.Header) -> None:
        await control.send(self._writer, header)


async def serve(fd: int) -> int:
    reader, writer = await control.open_channel(socket.socket(fileno=fd))
    header, content = await control.receive(reader)
    index = header["index"]
    logging.basicConfig(
        level=header["log_level"],
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
    )
    config = replace(ServeConfig(**header["config"]), listen=header["listen"])
    link = ParentLink(reader, writer)
    key = header.get("pseudonym_key")
    pseudonymizer = Pseudonymizer([(key[0], bytes.fromhex(key[1]))]) if key else None
    role = WorkerRole(index, content, pseudonymizer, link.reload)
    try:
        server = CdsServer.create(config, role)
    except (CatalogRefused, OSError, ValueError) as e:
        print(f"cds worker {index}: cannot start: {e}", file=sys.stderr)
        return 1
    link.server = server
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    try:
        await server.start()
    except (RuntimeError, OSError, ValueError) as e:
        print(f"cds worker {index}: cannot listen on {config.listen}: {e}", file=sys.stderr)
        await server.stop()
        return 1
    await link.send({"op": "ready", "pid": os.getpid(), "version": server.state.active.version})
    following = loop.create_task(link.follow())
    following.add_done_callback(lambda _: stopping.set())  # the parent is gone
    await stopping.wait()
    log.info("stopping: draining for up to %.1f s", config.grace)
    await server.stop()
    following.cancel()
    writer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The parent decides about reloads and shutdown; stray terminal signals do not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return asyncio.run(serve(int(args[0])))


if __name__ == "__main__":
    sys.exit(main())
