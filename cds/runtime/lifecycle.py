"""The one lifecycle of a cds process: start, serve until told to stop, drain, stop.

A lone server, each worker of ``--workers N`` and their supervisor all run through
:func:`serve`, so the order of the steps and what they print cannot drift apart:
SIGTERM/SIGINT (or, for a worker, its parent going away) ends serving; another one
while stopping cuts the drain window short (``Service.hurry``: an operator's second
Ctrl-C, a supervisor in a hurry); SIGHUP calls the process's reload; a start that fails
prints why and exits 1; a stop that drains cleanly exits 0.

Checks that need doing once per ``cds serve``, whatever the number of processes —
the protected-mode listen policy, for gRPC and for CDS Hooks — are here too
(:func:`check_transport`): the lone server and the supervisor call it before anything
binds; a worker trusts its parent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from cds.config import ServeConfig
from cds.security.transport import check_listen_policy, check_metrics_listen

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What :func:`serve` runs."""

    async def start(self) -> None:
        """Bind and start serving; raises OSError/RuntimeError/ValueError if it cannot."""

    async def stop(self) -> bool:
        """Drain and release everything; True when everything stopped cleanly."""

    def serving(self) -> str:
        """The start-up log line: what is served where (tests and operators read it)."""

    def draining(self) -> str:
        """The log line that says how the stop proceeds."""

    def hurry(self) -> None:
        """A second stop signal: end the drain window now (in-flight calls keep --grace)."""


def check_transport(config: ServeConfig, log: logging.Logger) -> None:
    """The protected-mode listen policy, once per ``cds serve``: raises ValueError (fit
    for the operator) or logs the warning that an accepted risk deserves."""
    warnings = [
        check_listen_policy(
            config.listen,
            tls=config.tls_cert is not None,
            auth=config.auth_tokens is not None,
            insecure=config.insecure,
        ),
        check_metrics_listen(config.metrics_listen),
    ]
    if config.hooks_listen is not None:
        warnings.append(
            check_listen_policy(
                config.hooks_listen,
                tls=config.tls_cert is not None,
                auth=config.hooks_jwt_issuers is not None,
                insecure=config.insecure,
                auth_name="JWT verification (--hooks-jwt-issuers)",
                calls="call the CDS Hooks services",
            )
        )
    for warning in warnings:
        if warning is not None:
            log.warning("%s", warning)


def print_refused_catalog(path: str, errors: Sequence[str]) -> int:
    """Every error of a catalogue that keeps the process from starting; the exit code."""
    print(f"cds: catalogue {path} is invalid:", file=sys.stderr)
    for error in errors:
        print(f"  {error}", file=sys.stderr)
    return 1


async def serve(
    service: Service,
    *,
    log: logging.Logger,
    name: str = "cds",
    reload: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    stop_when: asyncio.Future[Any] | None = None,
    stop_signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> int:
    """Run ``service`` until a stop signal (or ``stop_when`` completes); the exit code.

    ``reload`` runs on SIGHUP (a new task each time; a reload in progress is the
    reload's own business). ``name`` prefixes what is printed when the start fails.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in stop_signals:
        loop.add_signal_handler(sig, stopping.set)
    tasks: set[asyncio.Task[Any]] = set()
    started = False
    if reload is not None:
        # Installed before the start, so an early SIGHUP cannot kill the process (its
        # default action); it reloads nothing until the service is up.
        def on_hup() -> None:
            if not started:
                log.warning("SIGHUP before the service started: nothing reloaded")
                return
            task = loop.create_task(reload())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await service.start()
    except (RuntimeError, OSError, ValueError) as e:
        print(f"{name}: cannot start: {e}", file=sys.stderr)
        await service.stop()
        return 1
    started = True
    if stop_when is not None:
        stop_when.add_done_callback(lambda _: stopping.set())
    log.info("%s", service.serving())
    await stopping.wait()
    log.info("stopping: %s", service.draining())
    for sig in stop_signals:
        loop.add_signal_handler(sig, service.hurry)
    for task in tasks:
        task.cancel()
    clean = await service.stop()
    if clean:
        log.info("stopped")
        return 0
    log.error("stopped with errors")
    return 1
