"""Transport security, the protected-mode listen policy, and abuse limits for the server.

Protected mode (after Redis): a server with no TLS or no authentication is only safe
where nobody else can reach it, so it may listen on loopback only. Listening elsewhere
needs both TLS (so tokens and patient data are not sent in the clear) and authentication
(so not everyone can call admin RPCs), or an explicit ``--insecure`` that is logged.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path

import grpc
import grpc.aio

from cds.config import split_host_port

# A contract-valid PutResults (10,000 results, every string at its 128-character limit)
# is about 5.4 MB on the wire; 8 MiB admits it and refuses anything much larger before
# it is parsed. gRPC's own default is 4 MiB, which would refuse a valid batch.
DEFAULT_MAX_RECEIVE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_SEND_BYTES = 4 * 1024 * 1024
# The concurrency limit and the deadline cap are `cds serve` settings: cds.config.
# Headers (incl. the bearer token) above this are refused by the transport.
DEFAULT_MAX_METADATA_BYTES = 16 * 1024


class TlsConfigError(ValueError):
    """A TLS file is missing or not PEM; the message names the flag and the file."""


def _read_pem(path: str | os.PathLike[str], flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{flag} {path}: not a PEM file")
    return data


def server_credentials(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> grpc.ServerCredentials:
    """``--tls-cert``/``--tls-key``; with ``--tls-client-ca`` every client must present a
    certificate signed by that CA (mutual TLS), whose subject ``cds.security.auth`` maps
    to a role."""
    cert_pem = _read_pem(cert, "--tls-cert")
    key_pem = _read_pem(key, "--tls-key")
    if b"PRIVATE KEY-----" not in key_pem:
        raise TlsConfigError(f"--tls-key {key}: no PEM private key in it")
    ca_pem = _read_pem(client_ca, "--tls-client-ca") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=ca_pem is not None,
    )


def https_context(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The same certificate, key and (mutual TLS) client CA as gRPC, for the CDS Hooks
    door's HTTPS; TLS 1.2 at least, as the CDS Hooks spec's HTTPS requirement implies."""
    _read_pem(cert, "--tls-cert")
    if b"PRIVATE KEY-----" not in _read_pem(key, "--tls-key"):
        raise TlsConfigError(f"--tls-key {key}: no PEM private key in it")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
        if client_ca is not None:
            _read_pem(client_ca, "--tls-client-ca")
            context.load_verify_locations(os.fspath(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as e:
        raise TlsConfigError(f"--tls-cert/--tls-key: not a usable pair ({e.reason})") from None
    return context


def is_loopback(listen: str) -> bool:
    """True only when the address is certainly local: loopback IPs, ``localhost``, a
    Unix socket. Any other name counts as reachable, since it may resolve anywhere."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host, _ = split_host_port(listen, flag="--listen")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name, "" or "*": all interfaces or unknown
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_listen_policy(
    listen: str,
    *,
    tls: bool,
    auth: bool,
    insecure: bool,
    auth_name: str = "authentication (--auth-tokens)",
    calls: str = "call every RPC",
) -> str | None:
    """Protected mode for the gRPC port, and (``auth_name`` the JWT check) the CDS Hooks one.

    Returns None when the address is fine, a warning to log when ``--insecure`` overrides
    the policy, and raises ``ValueError`` (message fit for the operator) otherwise.
    """
    if (tls and auth) or is_loopback(listen):
        return None
    missing = " and ".join(
        name
        for name, on in (
            ("TLS (--tls-cert/--tls-key)", tls),
            (auth_name, auth),
        )
        if not on
    )
    if insecure:
        return (
            f"--insecure: listening on {listen} without {missing}; anyone who can reach "
            f"this address can {calls} and read patient data in transit"
        )
    raise ValueError(
        f"refusing to listen on {listen} without {missing}: the service handles patient "
        f"data. Configure {missing}, listen on 127.0.0.1, or pass --insecure to accept "
        f"the risk explicitly."
    )


def check_metrics_listen(listen: str) -> str | None:
    """A warning when metrics leave loopback: they carry no identifiers, but do reveal
    traffic and configuration, and the endpoint has no authentication."""
    if is_loopback(listen):
        return None
    return (
        f"metrics are served without authentication on {listen}; restrict access to it "
        f"(firewall or a scraping proxy)"
    )


def server_options(
    *,
    max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
    max_send_message_bytes: int = DEFAULT_MAX_SEND_BYTES,
    max_metadata_bytes: int = DEFAULT_MAX_METADATA_BYTES,
) -> list[tuple[str, int]]:
    """Channel arguments for ``grpc.aio.server(options=...)``.

    ``maximum_concurrent_rpcs`` is not a channel argument: it is passed as
    ``grpc.aio.server(maximum_concurrent_rpcs=...)`` (``--max-concurrent-rpcs``).
    """
    return [
        ("grpc.max_receive_message_length", max_receive_message_bytes),
        ("grpc.max_send_message_length", max_send_message_bytes),
        ("grpc.max_metadata_size", max_metadata_bytes),
    ]
