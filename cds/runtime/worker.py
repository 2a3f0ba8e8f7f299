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

from cds.catalog.load import CatalogError
from cds.config import ServeConfig
from cds.rollout.impact import Impact
from cds.rollout.state import ReloadOutcome
from cds.runtime import control
from cds.runtime.lifecycle import serve
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

    async def reload(self, dry_run: bool, candidate: bytes | None) -> ReloadOutcome:
        """The RPC's reload, for every worker: the parent reads the file once (or passes
        the candidate on), every worker validates it and replays its own recent orders,
        and the impact is their sum; a real reload is activated by all."""
        request_id = next(self._ids)
        answer: asyncio.Future[control.Header] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        header = {"op": "reload", "id": request_id, "dry_run": dry_run}
        header["candidate"] = candidate is not None
        try:
            await control.send(self._writer, header, candidate or b"")
            result = await answer
        finally:
            self._waiting.pop(request_id, None)
        if not result["ok"]:
            raise CatalogError(result["errors"])
        return ReloadOutcome(
            not dry_run,
            result["version"],
            result["previous"],
            result["changes"],
            Impact.from_json(result["impact"]),
        )

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
            elif op == "preview":
                await control.send(self._writer, await self._apply(header, body, dry_run=True))
            elif op == "refuse":
                self.server.state.refuse(header["errors"])
            elif op == "reloaded":
                answer = self._waiting.get(header["id"])
                if answer is not None and not answer.done():
                    answer.set_result(header)
            elif op == "hup":
                await self.server.reload_credentials()

    async def _apply(
        self, header: control.Header, content: bytes, *, dry_run: bool = False
    ) -> control.Header:
        reply: control.Header = {"op": "previewed" if dry_run else "applied", "id": header["id"]}
        try:
            outcome = await self.server.state.reload(
                dry_run=dry_run, content=content, source=header.get("source")
            )
        except CatalogError as refused:
            reply.update(ok=False, errors=refused.errors)
        else:
            reply.update(
                ok=True,
                version=outcome.version,
                previous=outcome.previous_version,
                changes=outcome.changes,
                impact=outcome.impact.as_json(),
            )
        return reply

    async def send(self, header: control.Header) -> None:
        await control.send(self._writer, header)


class _Worker:
    """The worker's server as the lifecycle runs it: the parent is told once the server
    serves, ``parent_gone`` completes when the control channel closes (no orphan keeps
    serving the port), and stopping also closes the channel."""

    def __init__(self, server: CdsServer, link: ParentLink, writer: asyncio.StreamWriter) -> None:
        self._server = server
        self._link = link
        self._writer = writer
        self.following: asyncio.Task[None] | None = None
        self.parent_gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        await self._server.start()
        await self._link.send(
            {"op": "ready", "pid": os.getpid(), "version": self._server.state.active.version}
        )
        self.following = asyncio.get_running_loop().create_task(self._link.follow())
        self.following.add_done_callback(self._parent_gone)

    def _parent_gone(self, _: asyncio.Task[None]) -> None:
        if not self.parent_gone.done():
            self.parent_gone.set_result(None)

    async def stop(self) -> bool:
        clean = await self._server.stop()
        if self.following is not None:
            self.following.cancel()
        self._writer.close()
        return clean

    def serving(self) -> str:
        return self._server.serving()

    def draining(self) -> str:
        return self._server.draining()

    def hurry(self) -> None:
        self._server.hurry()


async def run(fd: int) -> int:
    reader, writer = await control.open_channel(socket.socket(fileno=fd))
    header, content = await control.receive(reader)
    index = header["index"]
    config = replace(
        ServeConfig(**header["config"]),
        listen=header["listen"],
        hooks_listen=header.get("hooks_listen"),
    )
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker-{index} %(name)s: %(message)s",
    )
    link = ParentLink(reader, writer)
    key = header.get("pseudonym_key")
    pseudonymizer = Pseudonymizer([(key[0], bytes.fromhex(key[1]))]) if key else None
    role = WorkerRole(index, content, pseudonymizer, link.reload)
    try:
        server = CdsServer.create(config, role)
    except (CatalogError, OSError, ValueError) as e:
        print(f"cds worker {index}: cannot start: {e}", file=sys.stderr)
        return 1
    link.server = server
    worker = _Worker(server, link, writer)
    # Only SIGTERM: the parent decides about reloads and Ctrl-C (see main()).
    return await serve(
        worker,
        log=log,
        name=f"cds worker {index}",
        stop_when=worker.parent_gone,
        stop_signals=(signal.SIGTERM,),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The parent decides about reloads and shutdown; stray terminal signals do not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return asyncio.run(run(int(args[0])))


if __name__ == "__main__":
    sys.exit(main())
