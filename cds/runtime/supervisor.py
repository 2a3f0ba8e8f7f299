"""``cds serve --workers N``: one parent, N worker processes serving one port.

Shape, after gRPC's multiprocessing example: the parent creates no gRPC object at all.
It validates the catalogue, binds the port with SO_REUSEPORT (kept bound, never
listening, so the port stays ours while a worker restarts and ``:0`` resolves once),
then starts each worker as a fresh interpreter (``python -m cds.runtime.worker``) that binds
the same port with ``grpc.so_reuseport``. The kernel spreads *connections* over the
workers; a channel stays on the worker it connected to.

What the parent owns:

* **Metrics.** Workers write to ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, wiped
  of ``*.db`` at start, or a fresh temporary directory removed at exit); the parent
  serves ``MultiProcessCollector`` over them at ``--metrics-listen``, plus
  ``cds_workers`` and ``cds_worker_restarts_total``.
* **Reloads.** ``ReloadCatalog`` on any worker, or SIGHUP to the parent, becomes one
  reload: the parent reads the file once and sends those bytes to every worker; the
  RPC is answered when all have replied, with the sum of their impacts (each worker
  replays the orders it checked itself). A dry run goes to every worker the same way
  (the file's bytes, or the RPC's candidate), activates nothing, and sums the same.
  A file refused by one is refused by all (same bytes, same validator); if workers
  ever disagree (one crashed or timed out mid-reload) the reload fails visibly — the
  RPC gets ``FAILED_PRECONDITION`` naming the workers, an ERROR is logged — and those
  workers are restarted with the catalogue in force, so ``GetCatalogStatus``
  converges on one version. SIGHUP also has every worker re-read the tokens file and
  the pseudonym keys.
* **Crashes.** A worker that exits unexpectedly is logged at ERROR, counted and
  restarted (same port, same decision-log file, the catalogue in force). More than
  ``RESTART_LIMIT`` unexpected exits within ``RESTART_WINDOW_S`` means something is
  systematically wrong: the parent then stops every worker and exits 1, loudly, for
  the service manager to see.
* **Shutdown.** SIGTERM/SIGINT: every worker gets SIGTERM and drains as a lone server
  does (health NOT_SERVING, calls answered for ``--drain-seconds``, then refused while
  those in flight get ``--grace``); a second signal is passed on too, cutting the drain
  window short; the parent exits 0 once all have exited 0.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from cds.catalog.load import CatalogError, load_catalog, parse_catalog
from cds.config import ServeConfig, split_host_port
from cds.rollout.impact import Impact
from cds.runtime import control
from cds.runtime.lifecycle import check_transport, print_refused_catalog, serve
from cds.runtime.metrics_http import MetricsServer
from cds.runtime.server import _redacted
from cds.security.pseudonyms import MIN_KEY_BYTES
from cds.service.admin import CANDIDATE_SOURCE

log = logging.getLogger(__name__)

RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
START_TIMEOUT_S = 60.0
APPLY_TIMEOUT_S = 60.0
STOP_MARGIN_S = 10.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Worker:
    """The parent's view of one worker process."""

    def __init__(
        self,
        index: int,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.index = index
        self.process = process
        self.reader = reader
        self.writer = writer
        self.ready: asyncio.Future[control.Header] = asyncio.get_running_loop().create_future()
        self.replies: dict[int, asyncio.Future[control.Header]] = {}
        self.expected_exit = False
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)


class _SupervisorMetrics:
    """The parent's own two series (a custom collector: nothing here touches the
    multiprocess files, so nothing is counted twice)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._s = supervisor

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cds_workers",
            "Worker processes running (cds serve --workers).",
            value=sum(1 for w in self._s.workers if w is not None and w.alive),
        )
        yield CounterMetricFamily(
            "cds_worker_restarts",
            "Workers restarted after exiting unexpectedly or missing a reload.",
            value=self._s.restarts,
        )


class Supervisor:
    def __init__(
        self,
        config: ServeConfig,
        content: bytes,
        listen: str,
        metrics_dir: str,
        pseudonym_key: tuple[str, str] | None,
        hooks_listen: str | None = None,
    ) -> None:
        self.config = config
        self.hooks_listen = hooks_listen  # --hooks-listen resolved: every worker serves it
        self.content = content  # the catalogue in force: what a (re)started worker gets
        self.listen = listen
        self.metrics_dir = metrics_dir
        self.pseudonym_key = pseudonym_key
        self.workers: list[Worker | None] = [None] * config.workers
        self.env = dict(os.environ, **{MULTIPROC_ENV: metrics_dir})
        self.reload_lock = asyncio.Lock()
        self.ids = itertools.count(1)
        self.stopping = asyncio.Event()
        self.started = False
        self.fatal: str | None = None
        self.restarts = 0
        self._crashes: collections.deque[float] = collections.deque()
        self.metrics_address = ""  # HOST:PORT, once the parent's metrics endpoint listens
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- workers ------------------------------------------------------------------------

    async def spawn(self, index: int) -> Worker:
        # Under the reload lock: a worker is registered and handed the catalogue in
        # force before any later reload fans out, so it cannot miss one.
        async with self.reload_lock:
            parent_end, child_end = socket.socketpair()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "cds.runtime.worker",
                    str(child_end.fileno()),
                    pass_fds=(child_end.fileno(),),
                    env=self.env,
                    start_new_session=True,
                )
            finally:
                child_end.close()
            reader, writer = await control.open_channel(parent_end)
            worker = Worker(index, process, reader, writer)
            self.workers[index] = worker
            header = {
                "op": "init",
                "index": index,
                "listen": self.listen,
                "hooks_listen": self.hooks_listen,
                "config": asdict(self.config),
                "pseudonym_key": self.pseudonym_key,
            }
            await control.send(writer, header, self.content)
        worker.tasks = [self._task(self._follow(worker)), self._task(self._watch(worker))]
        return worker

    def _task(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _follow(self, worker: Worker) -> None:
        try:
            while True:
                header, body = await control.receive(worker.reader)
                op = header["op"]
                if op == "ready":
                    if not worker.ready.done():
                        worker.ready.set_result(header)
                    if self.started:
                        log.info("worker %d (pid %d) serving again", worker.index, header["pid"])
                elif op == "reload":
                    self._task(self._answer_reload(worker, header, body))
                elif op in ("applied", "previewed"):
                    answer = worker.replies.pop(header["id"], None)
                    if answer is not None and not answer.done():
                        answer.set_result(header)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            gone = ConnectionError(f"worker {worker.index} closed its control channel")
            for answer in [worker.ready, *worker.replies.values()]:
                if not answer.done():
                    answer.set_exception(gone)
                    answer.exception()  # retrieved: nobody may be waiting on it
            worker.replies.clear()

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        mark_process_dead(worker.process.pid, self.metrics_dir)  # its live gauges go
        worker.writer.close()
        if self.stopping.is_set():
            return
        if not self.started:
            self._fail(f"worker {worker.index} exited with code {code} while starting")
            return
        if worker.expected_exit:
            log.warning("worker %d restarted to take the catalogue in force", worker.index)
        else:
            log.error(
                "worker %d (pid %d) exited with code %d: restarting it",
                worker.index,
                worker.process.pid,
                code,
            )
            now = time.monotonic()
            self._crashes.append(now)
            while self._crashes and self._crashes[0] < now - RESTART_WINDOW_S:
                self._crashes.popleft()
            if len(self._crashes) > RESTART_LIMIT:
                self._fail(
                    f"workers exited unexpectedly {len(self._crashes)} times within "
                    f"{RESTART_WINDOW_S:.0f} s: stopping the service"
                )
                return
        self.restarts += 1
        try:
            await self.spawn(worker.index)
        except OSError as e:
            self._fail(f"cannot restart worker {worker.index}: {e}")

    def _fail(self, why: str) -> None:
        if self.fatal is None:
            self.fatal = why
            log.critical("%s", why)
        self.stopping.set()

    # -- the lifecycle (cds.runtime.lifecycle.serve) ----------------------------------------

    async def start(self) -> None:
        try:
            await self.start_all()
        except (RuntimeError, OSError) as e:
            raise RuntimeError(f"cannot start the workers: {e}") from e

    async def stop(self) -> bool:
        clean = await self.stop_all()
        return clean and self.fatal is None

    def serving(self) -> str:
        host, port = split_host_port(self.listen)
        ready = [w.ready.result() for w in self.workers if w is not None]
        hooks = ""
        if self.hooks_listen is not None:
            hooks_host, hooks_port = split_host_port(self.hooks_listen)
            scheme = "https" if self.config.tls_cert is not None else "http"
            base = self.config.hooks_base_url or f"{scheme}://{hooks_host}:{hooks_port}"
            hooks = f", CDS Hooks on {base.rstrip('/')}/cds-services"
        return (
            f"serving catalogue version {ready[0]['version']} on {host}:{port}, metrics on "
            f"http://{self.metrics_address}/metrics{hooks} ({self.config.workers} workers, pids "
            f"{','.join(str(r['pid']) for r in ready)}; results {_redacted(self.config.results)})"
        )

    def draining(self) -> str:
        if self.fatal is not None:
            return f"after a fatal error ({self.fatal})"
        return (
            f"draining every worker: {self.config.drain_seconds:.1f} s of --drain-seconds, "
            f"then up to {self.config.grace:.1f} s for calls in flight"
        )

    def hurry(self) -> None:
        """A second stop signal: every worker gets it too (its drain window ends)."""
        for worker in self.workers:
            if worker is not None and worker.alive:
                worker.terminate()

    async def start_all(self) -> None:
        """Start every worker and wait until each serves; raises RuntimeError if one cannot."""
        for index in range(self.config.workers):
            await self.spawn(index)
        pending: set[asyncio.Future[Any]] = {w.ready for w in self.workers if w is not None}
        stop = self._task(self.stopping.wait())
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while pending and not self.stopping.is_set():
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise RuntimeError(f"workers not ready within {START_TIMEOUT_S:.0f} s")
                done, _ = await asyncio.wait(
                    [*pending, stop], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for future in done - {stop}:
                    pending.discard(future)
                    if future.exception() is not None:
                        raise RuntimeError(self.fatal or str(future.exception()))
        finally:
            stop.cancel()
        if self.fatal is not None:
            raise RuntimeError(self.fatal)
        self.started = True

    async def stop_all(self) -> bool:
        """SIGTERM every worker, wait for the drain; True if all exited 0."""
        self.stopping.set()
        workers = [w for w in self.workers if w is not None]
        for worker in workers:
            worker.terminate()
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        if waits:
            budget = self.config.drain_seconds + self.config.grace + STOP_MARGIN_S
            _, late = await asyncio.wait(waits, timeout=budget)
            for worker in workers:
                if worker.alive:
                    log.error("worker %d did not stop in time: killed", worker.index)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            if late:
                await asyncio.wait(late)
        for task in list(self._tasks):
            task.cancel()
        return all(w.process.returncode == 0 for w in workers)

    # -- reloads --------------------------------------------------------------------------

    async def _answer_reload(self, worker: Worker, header: control.Header, body: bytes) -> None:
        if header.get("dry_run"):
            candidate = body if header.get("candidate") else None
            result = await self.preview_all(candidate, origin=worker.index)
        else:
            result = await self.reload_all(origin=worker.index)
        with contextlib.suppress(ConnectionError):
            await control.send(worker.writer, {"op": "reloaded", "id": header["id"], **result})

    async def _ask_all(
        self, targets: list[Worker], header: control.Header, content: bytes
    ) -> dict[int, control.Header | None]:
        """Send one request to every target; each one's reply, None where none came."""
        request_id = next(self.ids)
        loop = asyncio.get_running_loop()
        answers: dict[int, asyncio.Future[control.Header]] = {}
        for worker in targets:
            answer = answers[worker.index] = loop.create_future()
            worker.replies[request_id] = answer
            try:
                await control.send(worker.writer, {**header, "id": request_id}, content)
            except ConnectionError as e:
                answer.set_exception(e)
        if answers:
            await asyncio.wait(answers.values(), timeout=APPLY_TIMEOUT_S)
        replies: dict[int, control.Header | None] = {}
        for index, answer in answers.items():
            ok = answer.done() and answer.exception() is None
            replies[index] = answer.result() if ok else None
            if not answer.done():
                answer.cancel()
        return replies

    async def preview_all(self, candidate: bytes | None, origin: int) -> control.Header:
        """A dry run in every worker: validated alike, each replays its own orders."""
        source = CANDIDATE_SOURCE if candidate is not None else self.config.catalog
        if candidate is None:
            try:
                candidate = await asyncio.to_thread(Path(self.config.catalog).read_bytes)
            except OSError as e:
                return {"ok": False, "errors": [f"$: cannot read {source}: {e.strerror or e}"]}
        targets = [w for w in self.workers if w is not None and w.alive]
        replies = await self._ask_all(targets, {"op": "preview", "source": source}, candidate)
        answered = [r for r in replies.values() if r is not None]
        if targets and len(answered) == len(targets):
            if all(r["ok"] for r in answered):
                reply = replies.get(origin) or answered[0]
                assert reply is not None
                impact = Impact.total(Impact.from_json(r["impact"]) for r in answered)
                return {**_outcome(reply), "impact": impact.as_json()}
            if not any(r["ok"] for r in answered):
                return {"ok": False, "errors": answered[0]["errors"]}
        missing = ", ".join(str(i) for i, r in replies.items() if r is None or not r["ok"])
        return {
            "ok": False,
            "errors": [
                f"dry run answered by {len(answered)} of {len(targets)} workers alike "
                f"(not: worker {missing or '-'}); nothing was changed, try again"
            ],
        }

    async def reload_all(self, origin: int | None = None) -> control.Header:
        """One reload for every worker: the file's bytes, read once, activated by each."""
        async with self.reload_lock:
            targets = [w for w in self.workers if w is not None and w.alive]
            try:
                content = await asyncio.to_thread(Path(self.config.catalog).read_bytes)
            except OSError as e:
                errors = [f"$: cannot read {self.config.catalog}: {e.strerror or e}"]
                for worker in targets:
                    with contextlib.suppress(ConnectionError):
                        await control.send(worker.writer, {"op": "refuse", "errors": errors})
                return {"ok": False, "errors": errors}
            replies = await self._ask_all(targets, {"op": "apply"}, content)
            return self._settle(content, targets, replies, origin)

    def _settle(
        self,
        content: bytes,
        targets: list[Worker],
        replies: dict[int, control.Header | None],
        origin: int | None,
    ) -> control.Header:
        activated = [i for i, r in replies.items() if r is not None and r["ok"]]
        if targets and len(activated) == len(targets):
            self.content = content
            reply = (replies.get(origin) if origin is not None else None) or replies[activated[0]]
            assert reply is not None  # activated: it replied
            log.info(
                "catalogue version %s activated in all %d workers", reply["version"], len(targets)
            )
            impact = Impact.total(Impact.from_json(r["impact"]) for r in replies.values() if r)
            return {**_outcome(reply), "impact": impact.as_json()}
        refused = [r for r in replies.values() if r is not None and not r["ok"]]
        if targets and len(refused) == len(targets):
            return {"ok": False, "errors": refused[0]["errors"]}  # refused alike everywhere
        if activated:
            self.content = content
        lagging = [
            w
            for w in targets
            if replies[w.index] is None or (activated and w.index not in activated)
        ]
        why = "; ".join(
            f"worker {w.index}: " + ("no answer" if replies[w.index] is None else "refused it")
            for w in targets
            if w.index not in activated
        )
        message = (
            f"catalogue reload reached {len(activated)} of {len(targets)} workers ({why}); "
            "restarting those with the catalogue in force"
        )
        log.error("%s", message)
        for worker in lagging:
            worker.expected_exit = True
            worker.terminate()
        return {"ok": False, "errors": [message]}

    async def on_sighup(self) -> None:
        result = await self.reload_all()
        if not result["ok"]:
            log.warning("SIGHUP: catalogue not reloaded; the version in force keeps serving")
        for worker in self.workers:
            if worker is not None and worker.alive:
                with contextlib.suppress(ConnectionError):
                    await control.send(worker.writer, {"op": "hup"})


def _outcome(reply: control.Header) -> control.Header:
    return {
        "ok": True,
        "version": reply["version"],
        "previous": reply["previous"],
        "changes": reply["changes"],
    }


def _prepare_metrics_dir() -> tuple[str, bool]:
    """The operator's ``PROMETHEUS_MULTIPROC_DIR`` wiped of old files, or a fresh one."""
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        return tempfile.mkdtemp(prefix="cds-metrics-"), True
    os.makedirs(given, exist_ok=True)
    for stale in Path(given).glob("*.db"):
        stale.unlink()
    return given, False


def _reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Bind (not listen) with SO_REUSEPORT; returns the socket and ``HOST:PORT`` resolved."""
    host, port = split_host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    return sock, (f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}")


def _load_catalog(path: str) -> bytes:
    """The file's bytes once validated; raises CatalogError with every error."""
    try:
        content = Path(path).read_bytes()
    except OSError:
        load_catalog(path)  # refuses with the usual "cannot read" error
        raise
    parse_catalog(content, source=path)
    return content


async def supervise(config: ServeConfig) -> int:
    """Run ``config.workers`` workers until SIGTERM/SIGINT; returns the exit code."""
    try:
        content = _load_catalog(config.catalog)
    except CatalogError as refused:
        return print_refused_catalog(config.catalog, refused.errors)
    try:
        check_transport(config, log)
        reserved, listen = _reserve_port(config.listen)
    except (OSError, ValueError) as e:
        print(f"cds: cannot start: {e}", file=sys.stderr)
        return 1
    hooks_reserved, hooks_listen = None, None
    if config.hooks_listen is not None:  # the CDS Hooks port, shared by the workers too
        try:
            hooks_reserved, hooks_listen = _reserve_port(config.hooks_listen)
        except OSError as e:
            reserved.close()
            print(f"cds: cannot start: --hooks-listen: {e}", file=sys.stderr)
            return 1
    pseudonym_key = None
    if config.decision_log is not None and config.pseudonym_key is None:
        log.warning(
            "no --pseudonym-key configured: audit pseudonyms use a random key shared by "
            "the workers of this run and will not link across restarts"
        )
        pseudonym_key = (f"ephemeral-{secrets.token_hex(4)}", secrets.token_hex(MIN_KEY_BYTES))
    metrics_dir, own_dir = _prepare_metrics_dir()
    supervisor = Supervisor(config, content, listen, metrics_dir, pseudonym_key, hooks_listen)
    httpd: MetricsServer | None = None
    try:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=metrics_dir)
        registry.register(_SupervisorMetrics(supervisor))
        metrics_host, metrics_port = split_host_port(config.metrics_listen)
        try:
            httpd = MetricsServer(registry, metrics_host, metrics_port)
        except OSError as e:
            print(f"cds: cannot listen: {e}", file=sys.stderr)
            return 1
        supervisor.metrics_address = f"{metrics_host}:{httpd.server_port}"
        return await serve(
            supervisor,
            log=log,
            reload=supervisor.on_sighup,
            stop_when=asyncio.ensure_future(supervisor.stopping.wait()),
        )
    finally:
        if httpd is not None:
            httpd.close()
        reserved.close()
        if hooks_reserved is not None:
            hooks_reserved.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
