"""How `cds serve` is configured, with its defaults: importable without gRPC or the rules,
so the client commands of the CLI start fast."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_MAX_RESULTS = 1_000_000
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_MAX_DECISIONS = 100_000
DEFAULT_DECISION_TTL_SECONDS = 3600.0
# Beyond this grpc.aio answers RESOURCE_EXHAUSTED at once instead of queueing.
DEFAULT_MAX_CONCURRENT_RPCS = 1000
# Relative to the working directory; `make run` keeps it under the git-ignored var/.
DEFAULT_DECISION_LOG = "var/decisions.jsonl"
# Rotated at 64 MiB into .1 … .10: ~700 MB of history, about 2 M WARN/BLOCK records.
DEFAULT_DECISION_LOG_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_DECISION_LOG_BACKUPS = 10
# The most a call may wait on the results store or the decision log, whatever deadline
# the client set (or none), so a stalled Redis or disk cannot hold concurrency slots for
# ever. Generous enough for the largest valid PutResults (10,000 rows) on a busy Redis.
DEFAULT_DEADLINE_CAP_SECONDS = 5.0
DEFAULT_WORKERS = 1


@dataclass(frozen=True)
class ServeConfig:
    catalog: str
    listen: str = DEFAULT_LISTEN
    metrics_listen: str = DEFAULT_METRICS_LISTEN
    max_results: int = DEFAULT_MAX_RESULTS
    decision_log: str | None = DEFAULT_DECISION_LOG  # None: not recorded
    pseudonym_key: str | None = None
    grace: float = DEFAULT_GRACE_SECONDS
    max_decisions: int = DEFAULT_MAX_DECISIONS
    decision_ttl: float = DEFAULT_DECISION_TTL_SECONDS
    # Security (docs/security.md): TLS, roles, protected mode, overload shedding.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_tokens: str | None = None
    insecure: bool = False
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    deadline_cap: float = DEFAULT_DEADLINE_CAP_SECONDS
    decision_log_max_bytes: int = DEFAULT_DECISION_LOG_MAX_BYTES
    decision_log_backups: int = DEFAULT_DECISION_LOG_BACKUPS
    # Scale (issue 5): None = the in-process store; else a redis:// URL (cds.results.factory).
    results: str | None = None
    workers: int = DEFAULT_WORKERS


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
