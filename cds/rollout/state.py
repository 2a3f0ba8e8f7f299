"""The active catalogue and engine, and how a reload replaces them.

The whole of "hot reload" is one attribute: :attr:`CatalogState.active`. A request
reads it once and uses that :class:`Active` to its end; a reload builds a complete new
Snapshot and Engine off the event loop, then assigns the attribute. Nothing is ever
mutated in place, so a request can never see half of two catalogues, and a bad file
leaves the old reference where it was.

Reloads are serialised by a lock (two administrators, or SIGHUP during an RPC reload,
must not interleave their "previous version" and status updates).

Every reload, dry run or real, also says what it does to clinicians: the recent orders
are replayed against the catalogue in force and the new one (``replayer``, wired by the
server, :mod:`cds.rollout.replay`), after the lock is released.

A version must name one rule set, or the decision log (which records only the version)
lies about which rules decided: a file whose ``version`` is the active one but whose
bytes differ is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from cds.catalog.diff import diff_snapshots
from cds.catalog.load import CatalogError, load_catalog, parse_catalog
from cds.catalog.snapshot import Snapshot
from cds.metrics import Metrics
from cds.rollout.impact import NO_IMPACT, Impact
from cds.rules.engine import Engine

log = logging.getLogger(__name__)

# gRPC status details travel in a header; the contract cuts the error list at 4 KB.
MAX_ERROR_MESSAGE_BYTES = 4096


class Active(NamedTuple):
    snapshot: Snapshot
    engine: Engine
    version: str
    loaded_at_us: int


class ReloadOutcome(NamedTuple):
    activated: bool
    version: str
    previous_version: str
    changes: list[str]
    impact: Impact = NO_IMPACT


# (engine in force, new engine) -> what changes for the recent orders.
ImpactReplayer = Callable[[Engine, Engine], Awaitable[Impact]]


def errors_message(errors: list[str], limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """All errors, one per line, cut at ``limit`` UTF-8 bytes with a count of the rest."""
    head = f"catalogue refused, {len(errors)} error(s):"
    lines = [head]
    size = len(head.encode())
    reserve = 64  # room for the "... and N more" line
    for i, error in enumerate(errors):
        cost = len(error.encode()) + 1
        if size + cost > limit - reserve:
            lines.append(f"... and {len(errors) - i} more error(s)")
            break
        lines.append(error)
        size += cost
    return "\n".join(lines)


def same_version_other_content(active: Snapshot, new: Snapshot) -> None:
    """Refuse a file that reuses the active version for other bytes (both from files)."""
    known = active.digest and new.digest
    if known and new.version == active.version and new.digest != active.digest:
        raise CatalogError(
            [
                f"$.version: {new.version!r} is the active version, whose file differs from "
                f"this one (sha256 {active.digest[:12]}… active, {new.digest[:12]}… here); "
                "give this edition a new version"
            ],
            source=new.source,
        )


def _now_us() -> int:
    return time.time_ns() // 1000


class CatalogState:
    """Holds the active catalogue; the only writer of :attr:`active` is :meth:`reload`."""

    def __init__(
        self,
        path: str,
        snapshot: Snapshot,
        *,
        metrics: Metrics | None = None,
        loader: Callable[[str], Snapshot] = load_catalog,
    ) -> None:
        self.path = path
        self._loader = loader
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.active = self._activate(snapshot)
        self.last_error = ""
        self.last_error_at_us = 0
        self.replayer: ImpactReplayer | None = None

    @classmethod
    def load(
        cls,
        path: str,
        *,
        metrics: Metrics | None = None,
        loader: Callable[[str], Snapshot] = load_catalog,
    ) -> CatalogState:
        """The initial load, synchronous (before the server exists); raises CatalogError."""
        return cls(path, loader(path), metrics=metrics, loader=loader)

    def _activate(self, snapshot: Snapshot) -> Active:
        active = Active(snapshot, Engine(snapshot), snapshot.version, _now_us())
        if self._metrics is not None:
            self._metrics.catalog_loaded.set(active.loaded_at_us / 1e6)
        return active

    def _build_active(self, content: bytes | None, source: str) -> tuple[Snapshot, Engine]:
        if content is None:
            snapshot = self._loader(self.path)
        else:
            snapshot = parse_catalog(content, source=source)
        return snapshot, Engine(snapshot)

    async def reload(
        self, dry_run: bool = False, content: bytes | None = None, *, source: str | None = None
    ) -> ReloadOutcome:
        """Validate the configured file and (unless ``dry_run``) activate it; then replay
        the recent orders to say what changed for them.

        Parsing and indexing run in a worker thread so checks keep being answered.
        A dry run only reports: it neither activates, nor counts, nor touches status.
        Raises :class:`CatalogError` with every error; the active catalogue is then
        unchanged. ``content`` stands in for the file's bytes: with several workers the
        parent reads the file once and every worker activates exactly those bytes; for
        a dry run it may be a candidate, named by ``source`` in errors and logs.
        """
        where = source or self.path
        async with self._lock:
            previous = self.active
            try:
                snapshot, engine = await asyncio.to_thread(self._build_active, content, where)
                same_version_other_content(previous.snapshot, snapshot)
            except Exception as e:
                if isinstance(e, CatalogError):
                    refused = e
                else:  # a loader bug must not take the service down
                    log.exception("catalogue reload failed unexpectedly")
                    errors = [f"{where}: {type(e).__name__}: {e}"]
                    refused = CatalogError(errors, source=where)
                self._log_refusal(refused.errors, dry_run, where)
                if not dry_run:
                    self._record_failure(refused.errors)
                if refused is e:
                    raise
                raise refused from e
            changes = diff_snapshots(previous.snapshot, snapshot)
            if not dry_run:
                self.active = Active(snapshot, engine, snapshot.version, _now_us())
                self.last_error = ""
                self.last_error_at_us = 0
                if self._metrics is not None:
                    self._metrics.reload_success.inc()
                    self._metrics.catalog_loaded.set(self.active.loaded_at_us / 1e6)
                log.info(
                    "catalogue %s activated: version %s (previous %s)",
                    self.path,
                    snapshot.version,
                    previous.version,
                )
        impact = await self._impact(previous.engine, engine)
        if not dry_run:
            log.info(
                "catalogue version %s: %d lines of %d recent orders answered differently",
                snapshot.version,
                impact.lines_changed,
                impact.orders_replayed,
            )
        return ReloadOutcome(not dry_run, snapshot.version, previous.version, changes, impact)

    async def _impact(self, before: Engine, after: Engine) -> Impact:
        if self.replayer is None:
            return NO_IMPACT
        try:
            return await self.replayer(before, after)
        except Exception:  # the reload itself succeeded: a preview bug must not undo that
            log.exception("replaying recent orders failed")
            return NO_IMPACT

    def refuse(self, errors: list[str]) -> None:
        """Record a reload refused elsewhere (the parent of several workers could not
        read the file), exactly as if this process had refused it."""
        self._log_refusal(errors, False, self.path)
        self._record_failure(errors)

    def _log_refusal(self, errors: list[str], dry_run: bool, where: str) -> None:
        if dry_run:
            # A preview: the caller gets every error in its answer, and an administrator
            # iterating on a candidate would otherwise put a multi-line WARNING in the
            # log per try. One line, that it happened.
            log.info(
                "catalogue %s refused (dry run), version %s keeps serving: %d errors "
                "returned to the caller",
                where,
                self.active.version,
                len(errors),
            )
            return
        # Catalogue errors name JSON paths and codes, never patients: safe to log whole.
        log.warning(
            "catalogue %s refused, version %s keeps serving:\n%s",
            where,
            self.active.version,
            errors_message(errors),
        )

    def _record_failure(self, errors: list[str]) -> None:
        self.last_error = errors_message(errors)
        self.last_error_at_us = _now_us()
        if self._metrics is not None:
            self._metrics.reload_failure.inc()
