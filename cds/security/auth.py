"""Who may call what: roles, bearer tokens, client-certificate subjects, and the interceptor.

Each caller does only its own job: the EMR checks orders and sends feedback, the results
feed writes results, an administrator reloads and inspects the catalogue. Health and
reflection stay open so load balancers and ``grpcurl`` work without credentials.

Credentials come from one JSON file (``--auth-tokens PATH``), reloadable on SIGHUP::

    {
      "tokens": [
        {"name": "his-emr-1", "role": "emr",   "sha256": "<64 hex>"},
        {"name": "lis-feed",  "role": "feed",  "sha256": "<64 hex>"}
      ],
      "certificates": [
        {"common_name": "emr-gateway.hospital.local", "role": "emr"},
        {"subject": "O=Fujian Provincial Hospital,CN=ops-admin", "role": "admin"}
      ]
    }

Tokens are stored only as SHA-256 digests, so the file grants nothing to whoever reads
it. A plain fast hash is enough because tokens are 256-bit random strings
(``new_token()``), not passwords: there is nothing to guess. ``certificates`` map a
client certificate, verified by TLS against ``--tls-client-ca``, to a role by its
common name or its full subject as gRPC reports it (``x509_subject`` in the auth context):
RFC 4514 order, most significant last, exactly what
``openssl x509 -in client.crt -noout -subject -nameopt RFC2253`` prints after ``subject=``.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import grpc.aio
import orjson

_LOG = logging.getLogger(__name__)


class Role(StrEnum):
    EMR = "emr"
    FEED = "feed"
    ADMIN = "admin"


OPEN_SERVICES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# Deliberately generic: neither says which tokens, subjects or roles exist.
UNAUTHENTICATED_MESSAGE = "missing or invalid credentials"
PERMISSION_DENIED_MESSAGE = "the caller is not allowed to call this method"

MIN_TOKEN_CHARS = 32
_MAX_TOKEN_CHARS = 4096  # longer is not one of ours; refuse before hashing megabytes
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class AuthConfigError(ValueError):
    """The credentials file is unreadable or invalid; the message lists every problem."""


def new_token() -> str:
    """A fresh bearer token: 256 random bits, URL-safe (43 characters).

    Never one that starts with ``-``: ``cds check --token -x…`` would read it as an
    option (one token in 64 did), and so would most CLIs an integrator pastes it into.
    """
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def hash_token(token: str) -> str:
    """The ``sha256`` value to put in the tokens file for ``token``.

    Refuses short tokens: a fast hash protects only tokens that cannot be guessed.
    Shell: ``cds auth new-token`` makes a token and its entry.
    """
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            f"random ones (cds auth new-token)"
        )
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_entry(name: str, role: Role | str, token: str) -> dict[str, str]:
    """One ``tokens`` entry for the file (the token itself is not in it)."""
    return {"name": name, "role": Role(role).value, "sha256": hash_token(token)}


class TokenEntry(NamedTuple):
    name: str
    role: Role
    sha256: bytes


class Credentials(NamedTuple):
    """An immutable credential set; a reload builds a new one and swaps one reference."""

    tokens: Mapping[bytes, TokenEntry]  # keyed by the token's SHA-256 digest
    common_names: Mapping[str, Role]
    subjects: Mapping[str, Role]

    @classmethod
    def parse(cls, data: Any, source: str = "credentials") -> Credentials:
        """Validate the whole document, reporting every error with its JSON path."""
        errors: list[str] = []
        tokens: dict[bytes, TokenEntry] = {}
        common_names: dict[str, Role] = {}
        subjects: dict[str, Role] = {}
        if not isinstance(data, dict):
            raise AuthConfigError(f"{source}: $: expected an object")
        for key in data:
            if key not in ("tokens", "certificates"):
                errors.append(f"$.{key}: unknown key")
        names: set[str] = set()
        for i, entry in enumerate(_as_list(data.get("tokens", []), "$.tokens", errors)):
            at = f"$.tokens[{i}]"
            if not isinstance(entry, dict):
                errors.append(f"{at}: expected an object")
                continue
            name, role = entry.get("name"), _role(entry.get("role"), at, errors)
            digest = entry.get("sha256")
            if not isinstance(name, str) or not name:
                errors.append(f"{at}.name: expected a non-empty string")
            elif name in names:
                errors.append(f"{at}.name: duplicate name {name!r}")
            else:
                names.add(name)
            if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                errors.append(f"{at}.sha256: expected 64 lowercase hex characters")
            elif bytes.fromhex(digest) in tokens:
                errors.append(f"{at}.sha256: the same token is listed twice")
            elif role is not None and isinstance(name, str):
                tokens[bytes.fromhex(digest)] = TokenEntry(name, role, bytes.fromhex(digest))
            for extra in set(entry) - {"name", "role", "sha256"}:
                errors.append(f"{at}.{extra}: unknown key")
        certs = _as_list(data.get("certificates", []), "$.certificates", errors)
        for i, entry in enumerate(certs):
            at = f"$.certificates[{i}]"
            if not isinstance(entry, dict):
                errors.append(f"{at}: expected an object")
                continue
            role = _role(entry.get("role"), at, errors)
            keys = {"common_name", "subject"} & set(entry)
            if len(keys) != 1:
                errors.append(f"{at}: give exactly one of common_name or subject")
                continue
            key = keys.pop()
            value = entry[key]
            table = common_names if key == "common_name" else subjects
            if not isinstance(value, str) or not value:
                errors.append(f"{at}.{key}: expected a non-empty string")
            elif value in table:
                errors.append(f"{at}.{key}: {value!r} is listed twice")
            elif role is not None:
                table[value] = role
            for extra in set(entry) - {"common_name", "subject", "role"}:
                errors.append(f"{at}.{extra}: unknown key")
        if errors:
            raise AuthConfigError(f"{source}: " + "; ".join(errors))
        return cls(tokens, common_names, subjects)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Credentials:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise AuthConfigError(f"cannot read credentials file {path}: {exc.strerror}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise AuthConfigError(f"{path}: not valid JSON: {exc}") from exc
        return cls.parse(data, str(path))

    def role_of_token(self, token: str) -> Role | None:
        """The token's role, or None.

        The dict lookup is keyed by the token's SHA-256, so its timing can only reveal
        something about a digest, and steering a digest needs a preimage; the final
        ``compare_digest`` makes the match itself constant-time as well.
        """
        if len(token) > _MAX_TOKEN_CHARS:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = self.tokens.get(digest)
        if found is None or not hmac.compare_digest(found.sha256, digest):
            return None
        return found.role

    def role_of_peer(self, auth_context: Mapping[str, Any]) -> Role | None:
        """The role of a TLS-verified client certificate, or None."""
        if not (self.common_names or self.subjects):
            return None
        for cn in auth_context.get("x509_common_name", ()):
            role = self.common_names.get(_text(cn))
            if role is not None:
                return role
        for subject in auth_context.get("x509_subject", ()):
            role = self.subjects.get(_text(subject))
            if role is not None:
                return role
        return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _as_list(value: Any, at: str, errors: list[str]) -> list[Any]:
    if not isinstance(value, list):
        errors.append(f"{at}: expected a list")
        return []
    return value


def _role(value: Any, at: str, errors: list[str]) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        errors.append(f"{at}.role: expected one of {', '.join(r.value for r in Role)}")
        return None


def bearer_token(metadata: Any) -> str | None:
    """The token from ``authorization: Bearer <token>`` metadata, if present."""
    if not metadata:
        return None
    for key, value in metadata:
        if key == "authorization":
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
            return ""  # present but not a bearer token: treated as invalid credentials
    return None


class Authenticator:
    """Holds the current credential set; ``reload()`` swaps it atomically or not at all."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.credentials = Credentials.from_file(self.path)

    def reload(self) -> None:
        """Re-read the file (call on SIGHUP). On any error raise and keep the old set."""
        self.credentials = Credentials.from_file(self.path)
        _LOG.info(
            "credentials reloaded: %d tokens, %d certificate mappings",
            len(self.credentials.tokens),
            len(self.credentials.common_names) + len(self.credentials.subjects),
        )


Handler = grpc.RpcMethodHandler
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


def _deny_handler(code: grpc.StatusCode, message: str) -> Handler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(deny)


_UNAUTHENTICATED = _deny_handler(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
_PERMISSION_DENIED = _deny_handler(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces ``method_roles`` (``/<service>/<method>`` -> role) on every call.

    A method in neither ``method_roles`` nor ``open_prefixes`` is refused (fail closed):
    the RPC table (:data:`cds.service.rpcs.METHOD_ROLES`) gives every RPC its role.

    Token path (decided before the handler runs, no per-call allocation beyond the
    hash): one dict look-up for the method, one SHA-256, one dict look-up for the token.
    A presented token decides on its own: a bad one is UNAUTHENTICATED even if a
    certificate would have passed, so a misconfigured client fails loudly.

    Certificate path: the peer's auth context is only reachable from the servicer
    context, so the method's handler is wrapped (the wrapper is cached per method) and
    checks ``context.auth_context()`` before calling the real behaviour.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        method_roles: Mapping[str, Role],
        open_prefixes: tuple[str, ...] = OPEN_SERVICES,
    ) -> None:
        self._auth = authenticator
        self._method_roles = dict(method_roles)
        self._open = open_prefixes
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = handler_call_details.method
        required = self._method_roles.get(method)
        if required is None and method.startswith(self._open):
            return await continuation(handler_call_details)
        # An unknown method is refused like a protected one, so probing learns nothing.
        token = bearer_token(handler_call_details.invocation_metadata)
        credentials = self._auth.credentials
        if token is not None:
            role = credentials.role_of_token(token) if token else None
            if role is None:
                return _UNAUTHENTICATED
            if role is not required:
                return _PERMISSION_DENIED
            return await continuation(handler_call_details)
        if required is None or not (credentials.common_names or credentials.subjects):
            return _UNAUTHENTICATED
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_with_peer_check(handler, required)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_with_peer_check(self, handler: Handler, required: Role) -> Handler:
        if handler.request_streaming or handler.response_streaming:
            return _PERMISSION_DENIED  # no protected method streams; fail closed if one does
        inner: Callable[[Any, Any], Any] | None = handler.unary_unary
        if inner is None:
            return _PERMISSION_DENIED
        is_async = inspect.iscoroutinefunction(inner)
        auth = self._auth

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            role = auth.credentials.role_of_peer(context.auth_context())
            if role is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
            if role is not required:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE)
            if is_async:
                return await inner(request, context)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
