"""How ``cds serve`` is configured: every setting once, with its default, its flag's help
and its check.

A new setting is one field here: ``cds serve``'s flags are built from these fields
(:func:`cds.cli.add_serve_flags`), a worker of ``--workers N`` receives the same
dataclass, and :class:`ServeConfig` refuses a bad combination itself, with a message
naming the flags, before anything is opened. Importable without gRPC or the rules, so
the client commands of the CLI start fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
# Beyond this grpc.aio answers RESOURCE_EXHAUSTED at once instead of queueing.
DEFAULT_MAX_CONCURRENT_RPCS = 1000
# A load balancer holds one health Watch per backend check; reflection is for people.
DEFAULT_MAX_STREAMS = 100
# Relative to the working directory; `make run` keeps it under the git-ignored var/.
DEFAULT_DECISION_LOG = "var/decisions.jsonl"
# Rotated at 64 MiB into .1 … .10: about 700 MB of history.
DEFAULT_DECISION_LOG_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_DECISION_LOG_BACKUPS = 10
DEFAULT_DECISION_TTL_SECONDS = 3600.0
# How often each process writes its line and order counts to the decision log: the
# supervision report's denominators (a crash loses at most this much of them).
DEFAULT_COUNTS_INTERVAL_SECONDS = 60.0
DEFAULT_MAX_DECISIONS = 100_000
# ~300-600 bytes a decision of a few lines (benchmarks/decision_memory.py): the count
# bound is reached first on ordinary orders; this one holds when orders are huge.
DEFAULT_MAX_DECISION_BYTES = 64 * 1024 * 1024
# Results kept per (patient, item code), the newest by report time: a check walks a
# patient's results of an ordered item, so one huge feed of one item must not make every
# later check of it slow. The rules read the newest few; 100 is many months of daily tests.
DEFAULT_MAX_RESULTS_PER_ITEM = 100
# The most a call may wait on the results store or the decision log, whatever deadline
# the client set (or none), so a stalled Redis or disk cannot hold concurrency slots for
# ever. Generous enough for the largest valid PutResults on a busy Redis.
DEFAULT_DEADLINE_CAP_SECONDS = 5.0
# Recent orders kept to preview a catalogue change on (cds.rollout.replay): about a
# busy hospital's day, and no more than a replay can judge while checks go on.
DEFAULT_REPLAY_ORDERS = 100_000
# On SIGTERM, how long health says NOT_SERVING while calls are still answered, so load
# balancers move traffic away before anything is refused. A health Watch (gRPC
# client-side health checking, Envoy) sees it at once; a load balancer that polls needs
# its interval times its failure threshold (1-2 s x 2-3 for typical Envoy and nginx
# settings), Kubernetes' endpoint removal a few seconds to reach every proxy. With
# --grace's 10 s this keeps a stop within Kubernetes' default 30 s termination grace.
DEFAULT_DRAIN_SECONDS = 5.0

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")


class ConfigError(ValueError):
    """The settings contradict themselves; the message names the flags to fix."""


def _setting(
    help: str,
    *,
    check: str = "",
    group: str = "",
    metavar: str | None = None,
    negated_by: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Field metadata that becomes the flag: ``check`` is ``positive`` or
    ``non-negative``; ``negated_by`` is (flag, help) of a flag that sets the field to
    None (``--no-decision-log``)."""
    return {"help": help, "check": check, "group": group, "metavar": metavar,
            "negated_by": negated_by}  # fmt: skip


SECURITY = "security (docs/security.md)"
HOOKS = "CDS Hooks (README, CDS Hooks)"


@dataclass(frozen=True)
class ServeConfig:
    catalog: str = field(metadata=_setting("catalogue JSON file", metavar="PATH"))
    listen: str = field(
        default=DEFAULT_LISTEN,
        metadata=_setting("gRPC address; port 0 picks a free one", metavar="HOST:PORT"),
    )
    metrics_listen: str = field(
        default=DEFAULT_METRICS_LISTEN,
        metadata=_setting("Prometheus metrics at http://HOST:PORT/metrics", metavar="HOST:PORT"),
    )
    max_results: int = field(
        default=1_000_000,
        metadata=_setting(
            "results kept in memory; least recently used patients go first", check="positive"
        ),
    )
    max_results_per_item: int = field(
        default=DEFAULT_MAX_RESULTS_PER_ITEM,
        metadata=_setting(
            "results kept per patient and item code (either store); older ones are dropped",
            check="positive",
        ),
    )
    results: str | None = field(
        default=None,
        metadata=_setting(
            "shared results store: redis://HOST:PORT/DB (or rediss://, unix://, "
            "redis+cluster://HOST:PORT); default the in-process store",
            metavar="URL",
        ),
    )
    workers: int = field(
        default=1,
        metadata=_setting(
            "processes serving the one --listen port (SO_REUSEPORT); more than 1 needs --results",
            check="positive",
        ),
    )
    decision_log: str | None = field(
        default=DEFAULT_DECISION_LOG,
        metadata=_setting(
            "JSON-lines log of WARN/BLOCK decisions and feedback",
            metavar="PATH",
            negated_by=("--no-decision-log", "record no decisions or feedback"),
        ),
    )
    pseudonym_key: str | None = field(
        default=None,
        metadata=_setting(
            "key file for pseudonymising ids in the log (default: a per-process random key)",
            metavar="PATH",
        ),
    )
    decision_log_max_bytes: int = field(
        default=DEFAULT_DECISION_LOG_MAX_BYTES,
        metadata=_setting("rotate the decision log when it would grow past this", check="positive"),
    )
    decision_log_backups: int = field(
        default=DEFAULT_DECISION_LOG_BACKUPS,
        metadata=_setting("rotated files kept: PATH.1 (newest) … PATH.N", check="non-negative"),
    )
    counts_interval: float = field(
        default=DEFAULT_COUNTS_INTERVAL_SECONDS,
        metadata=_setting(
            "seconds between the decision log's counts records (lines and orders checked)",
            check="positive",
        ),
    )
    drain_seconds: float = field(
        default=DEFAULT_DRAIN_SECONDS,
        metadata=_setting(
            "on SIGTERM, seconds health says NOT_SERVING while calls are still answered "
            "(for load balancers to move away); then new calls are refused UNAVAILABLE",
            check="non-negative",
        ),
    )
    grace: float = field(
        default=10.0,
        metadata=_setting(
            "seconds in-flight calls may take to finish on SIGTERM, after --drain-seconds",
            check="non-negative",
        ),
    )
    max_decisions: int = field(
        default=DEFAULT_MAX_DECISIONS,
        metadata=_setting("decisions remembered for feedback", check="positive"),
    )
    max_decision_bytes: int = field(
        default=DEFAULT_MAX_DECISION_BYTES,
        metadata=_setting(
            "bytes the remembered decisions may take; the oldest go first beyond this or "
            "--max-decisions",
            check="positive",
        ),
    )
    decision_ttl: float = field(
        default=DEFAULT_DECISION_TTL_SECONDS,
        metadata=_setting("seconds a decision is remembered for feedback", check="non-negative"),
    )
    replay_orders: int = field(
        default=DEFAULT_REPLAY_ORDERS,
        metadata=_setting(
            "recent orders kept in memory (never logged) to show a catalogue reload's impact "
            "on; 0 keeps none",
            check="non-negative",
        ),
    )
    tls_cert: str | None = field(
        default=None,
        metadata=_setting("server certificate (PEM); needs --tls-key", group=SECURITY),
    )
    tls_key: str | None = field(
        default=None, metadata=_setting("server private key (PEM)", group=SECURITY)
    )
    tls_client_ca: str | None = field(
        default=None,
        metadata=_setting("CA of client certificates: requires mutual TLS", group=SECURITY),
    )
    auth_tokens: str | None = field(
        default=None,
        metadata=_setting(
            "roles file: hashed bearer tokens and certificate subjects", group=SECURITY
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=_setting(
            "allow a non-loopback --listen without both TLS and --auth-tokens (logged)",
            group=SECURITY,
        ),
    )
    max_concurrent_rpcs: int = field(
        default=DEFAULT_MAX_CONCURRENT_RPCS,
        metadata=_setting(
            "calls in progress (streams not counted); beyond this, calls get "
            "RESOURCE_EXHAUSTED at once",
            check="positive",
            group=SECURITY,
        ),
    )
    max_streams: int = field(
        default=DEFAULT_MAX_STREAMS,
        metadata=_setting(
            "open health Watch and reflection streams; beyond this a new one gets "
            "RESOURCE_EXHAUSTED (they never take the room of --max-concurrent-rpcs)",
            check="positive",
            group=SECURITY,
        ),
    )
    deadline_cap: float = field(
        default=DEFAULT_DEADLINE_CAP_SECONDS,
        metadata=_setting(
            "seconds a call may wait on the results store or the decision log, whatever "
            "the client's deadline, or a CDS Hooks body may take to arrive",
            check="positive",
            group=SECURITY,
        ),
    )
    log_level: str = field(
        default="INFO", metadata=_setting("Python logging level", metavar="LEVEL")
    )
    # -- the CDS Hooks door (cds/hooks/): off unless --hooks-listen is given ------------
    hooks_listen: str | None = field(
        default=None,
        metadata=_setting(
            "also serve CDS Hooks 2.0 over HTTP here (HTTPS with --tls-cert); port 0 picks "
            "a free one",
            group=HOOKS,
            metavar="HOST:PORT",
        ),
    )
    hooks_institution: str | None = field(
        default=None,
        metadata=_setting(
            "institution_id of CDS Hooks calls whose JWT carries no tenant",
            group=HOOKS,
            metavar="ID",
        ),
    )
    hooks_jwt_issuers: str | None = field(
        default=None,
        metadata=_setting(
            "trusted CDS clients (JSON: iss, public keys or a JWKS file); every call must "
            "then carry their signed JWT; without it CDS Hooks takes no JWT (loopback only)",
            group=HOOKS,
        ),
    )
    hooks_base_url: str | None = field(
        default=None,
        metadata=_setting(
            "the base URL CDS clients call (a JWT's aud must be this URL + /cds-services/…); "
            "default http(s)://--hooks-listen",
            group=HOOKS,
            metavar="URL",
        ),
    )

    def __post_init__(self) -> None:
        errors = [e for e in self._problems() if e]
        if errors:
            raise ConfigError("; ".join(errors))

    def _problems(self) -> list[str]:
        out = [_checked(f.name, getattr(self, f.name), f.metadata["check"]) for f in fields(self)]
        if (self.tls_cert is None) != (self.tls_key is None):
            out.append("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            out.append("--tls-client-ca needs --tls-cert and --tls-key")
        if self.workers > 1 and self.results is None:
            out.append(
                f"--workers {self.workers} needs a shared results store "
                "(--results redis://HOST:PORT/DB): with the in-process store a result would "
                "land in one worker only and the others would not see it"
            )
        if self.results is not None:
            out.append(results_url_problem(self.results))
        for flag, address in (("--listen", self.listen), ("--metrics-listen", self.metrics_listen)):
            if not (flag == "--listen" and address.startswith(("unix:", "unix-abstract:"))):
                try:
                    split_host_port(address, flag=flag)
                except ValueError as e:
                    out.append(str(e))
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            out.append(f"--log-level {self.log_level!r}: not a logging level")
        out.extend(self._hooks_problems())
        return out

    def _hooks_problems(self) -> list[str]:
        if self.hooks_listen is None:
            return [
                f"{_flag(name)} needs --hooks-listen"
                for name in ("hooks_institution", "hooks_jwt_issuers", "hooks_base_url")
                if getattr(self, name) is not None
            ]
        out = []
        try:
            split_host_port(self.hooks_listen, flag="--hooks-listen")
        except ValueError as e:
            out.append(str(e))
        if self.hooks_institution is None and self.hooks_jwt_issuers is None:
            out.append(
                "--hooks-listen needs --hooks-institution (the institution the calls come "
                "from) or --hooks-jwt-issuers (clients whose JWT tenant names it)"
            )
        if self.hooks_institution is not None and not 0 < len(self.hooks_institution) <= 128:
            out.append("--hooks-institution: 1 to 128 characters")
        if self.hooks_base_url is not None:
            parts = urlsplit(self.hooks_base_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
                out.append(
                    f"--hooks-base-url {self.hooks_base_url!r}: expected http(s)://HOST[:PORT][/PATH]"
                )
        return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked(name: str, value: Any, check: str) -> str:
    if check == "positive" and not value > 0:
        return f"{_flag(name)} {value}: must be more than 0"
    if check == "non-negative" and value < 0:
        return f"{_flag(name)} {value}: must not be negative"
    return ""


def results_url_problem(url: str) -> str:
    """Why ``url`` names no Redis we can use ("" when it does), fit for the operator."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        return (
            f"--results {url!r}: expected redis://HOST:PORT/DB, rediss://…, unix://PATH "
            "or redis+cluster://HOST:PORT"
        )
    if parts.scheme != "unix" and not parts.hostname:
        return f"--results {url!r}: no host"
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return f"--results {url!r}: {e}"
    return ""


def split_host_port(address: str, *, flag: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` into the unbracketed host and the port.

    An empty host (``:50051``) means every interface, as gRPC reads it; the caller
    decides whether that is allowed. ``flag`` names the setting in the error message.
    """
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not sep or not port.isdigit():
            raise ValueError(f"{flag} {address!r}: expected [IPV6]:PORT")
        return host, int(port)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT")
    return host, int(port)
