"""Roles enforced on a real grpc.aio server: tokens, client certificates, reload."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import orjson
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

import cds.security.auth as auth_module
from cds.security.auth import (
    PERMISSION_DENIED_MESSAGE,
    UNAUTHENTICATED_MESSAGE,
    AuthConfigError,
    Authenticator,
    AuthInterceptor,
    Credentials,
    Role,
    bearer_token,
    hash_token,
    new_token,
    token_entry,
)
from cds.security.transport import server_credentials
from cds.service.rpcs import METHOD_ROLES
from cds.v1 import (
    catalog_admin_pb2,
    catalog_admin_pb2_grpc,
    order_check_pb2,
    order_check_pb2_grpc,
    result_feed_pb2,
    result_feed_pb2_grpc,
)
from tests.support.tls_certs import Authority

# method -> (request, response) message classes, for calling every RPC generically.
MESSAGES: dict[str, tuple[Any, Any]] = {
    "/cds.v1.OrderCheckService/Check": (
        order_check_pb2.CheckRequest,
        order_check_pb2.CheckResponse,
    ),
    "/cds.v1.OrderCheckService/SubmitFeedback": (
        order_check_pb2.SubmitFeedbackRequest,
        order_check_pb2.SubmitFeedbackResponse,
    ),
    "/cds.v1.ResultFeedService/PutResults": (
        result_feed_pb2.PutResultsRequest,
        result_feed_pb2.PutResultsResponse,
    ),
    "/cds.v1.ResultFeedService/WithdrawResults": (
        result_feed_pb2.WithdrawResultsRequest,
        result_feed_pb2.WithdrawResultsResponse,
    ),
    "/cds.v1.CatalogAdminService/ReloadCatalog": (
        catalog_admin_pb2.ReloadCatalogRequest,
        catalog_admin_pb2.ReloadCatalogResponse,
    ),
    "/cds.v1.CatalogAdminService/GetCatalogStatus": (
        catalog_admin_pb2.GetCatalogStatusRequest,
        catalog_admin_pb2.GetCatalogStatusResponse,
    ),
}

TOKENS = {role: new_token() for role in Role}


class OrderCheck(order_check_pb2_grpc.OrderCheckServiceServicer):
    async def Check(self, request: Any, context: Any) -> Any:
        return order_check_pb2.CheckResponse(catalog_version="reached")

    async def SubmitFeedback(self, request: Any, context: Any) -> Any:
        return order_check_pb2.SubmitFeedbackResponse()


class ResultFeed(result_feed_pb2_grpc.ResultFeedServiceServicer):
    async def PutResults(self, request: Any, context: Any) -> Any:
        return result_feed_pb2.PutResultsResponse()

    async def WithdrawResults(self, request: Any, context: Any) -> Any:
        return result_feed_pb2.WithdrawResultsResponse()


class CatalogAdmin(catalog_admin_pb2_grpc.CatalogAdminServiceServicer):
    async def ReloadCatalog(self, request: Any, context: Any) -> Any:
        return catalog_admin_pb2.ReloadCatalogResponse()

    async def GetCatalogStatus(self, request: Any, context: Any) -> Any:
        return catalog_admin_pb2.GetCatalogStatusResponse()


def write_credentials(
    path: Path, tokens: dict[str, Role], certificates: list | None = None
) -> Path:
    doc: dict[str, Any] = {
        "tokens": [
            token_entry(f"client-{i}", role, tok) for i, (tok, role) in enumerate(tokens.items())
        ]
    }
    if certificates is not None:
        doc["certificates"] = certificates
    path.write_bytes(orjson.dumps(doc))
    return path


@contextlib.asynccontextmanager
async def serve(
    authenticator: Authenticator | None,
    credentials: grpc.ServerCredentials | None = None,
) -> AsyncIterator[int]:
    interceptors = [AuthInterceptor(authenticator, METHOD_ROLES)] if authenticator else []
    server = grpc.aio.server(interceptors=interceptors)
    order_check_pb2_grpc.add_OrderCheckServiceServicer_to_server(OrderCheck(), server)
    result_feed_pb2_grpc.add_ResultFeedServiceServicer_to_server(ResultFeed(), server)
    catalog_admin_pb2_grpc.add_CatalogAdminServiceServicer_to_server(CatalogAdmin(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        ("cds.v1.OrderCheckService", reflection.SERVICE_NAME, health.SERVICE_NAME), server
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def call(
    channel: grpc.aio.Channel, method: str, token: str | None = None, header: str | None = None
) -> tuple[grpc.StatusCode, str]:
    """The status code and message of one call (OK and "" on success)."""
    request_cls, response_cls = MESSAGES.get(method, MESSAGES["/cds.v1.OrderCheckService/Check"])
    stub = channel.unary_unary(
        method,
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    metadata: list[tuple[str, str]] = []
    if header is not None:
        metadata.append(("authorization", header))
    elif token is not None:
        metadata.append(("authorization", f"Bearer {token}"))
    try:
        await stub(request_cls(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@pytest.fixture
def authenticator(tmp_path: Path) -> Authenticator:
    return Authenticator(
        write_credentials(tmp_path / "auth.json", {t: r for r, t in TOKENS.items()})
    )


def test_each_role_may_call_exactly_its_own_methods(authenticator: Authenticator) -> None:
    async def body() -> dict[tuple[str, Role], grpc.StatusCode]:
        async with (
            serve(authenticator) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            return {
                (method, role): (await call(ch, method, TOKENS[role]))[0]
                for method in METHOD_ROLES
                for role in Role
            }

    got = run(body)
    expected = {
        (method, role): grpc.StatusCode.OK
        if METHOD_ROLES[method] is role
        else grpc.StatusCode.PERMISSION_DENIED
        for method in METHOD_ROLES
        for role in Role
    }
    assert got == expected
    assert set(MESSAGES) == set(METHOD_ROLES)  # the matrix covers every protected RPC


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),  # no credentials at all
        ("Bearer " + "x" * 43, grpc.StatusCode.UNAUTHENTICATED),  # unknown token
        ("Basic dXNlcjpwYXNz", grpc.StatusCode.UNAUTHENTICATED),  # not a bearer token
        ("Bearer", grpc.StatusCode.UNAUTHENTICATED),  # empty token
    ],
)
def test_missing_or_bad_credentials_are_unauthenticated_without_saying_more(
    authenticator: Authenticator, header: str | None, expected: grpc.StatusCode
) -> None:
    async def body() -> list[tuple[grpc.StatusCode, str]]:
        async with (
            serve(authenticator) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            return [await call(ch, m, header=header) for m in METHOD_ROLES]

    for code, message in run(body):
        assert code == expected
        assert message == UNAUTHENTICATED_MESSAGE


def test_wrong_role_message_reveals_neither_role_nor_token_names(
    authenticator: Authenticator,
) -> None:
    async def body() -> tuple[grpc.StatusCode, str]:
        async with (
            serve(authenticator) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            return await call(ch, "/cds.v1.CatalogAdminService/ReloadCatalog", TOKENS[Role.EMR])

    assert run(body) == (grpc.StatusCode.PERMISSION_DENIED, PERMISSION_DENIED_MESSAGE)
    for word in ("admin", "emr", "client-"):
        assert word not in PERMISSION_DENIED_MESSAGE + UNAUTHENTICATED_MESSAGE


def test_unknown_method_is_refused_like_a_protected_one(authenticator: Authenticator) -> None:
    async def body() -> tuple[tuple[grpc.StatusCode, str], tuple[grpc.StatusCode, str]]:
        async with (
            serve(authenticator) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            anon = await call(ch, "/cds.v1.OrderCheckService/Secret")
            authed = await call(ch, "/cds.v1.OrderCheckService/Secret", TOKENS[Role.ADMIN])
            return anon, authed

    anon, authed = run(body)
    assert anon[0] == grpc.StatusCode.UNAUTHENTICATED
    assert authed[0] == grpc.StatusCode.PERMISSION_DENIED  # not UNIMPLEMENTED: no probing


def test_health_and_reflection_stay_open_without_credentials(
    authenticator: Authenticator,
) -> None:
    async def body() -> tuple[int, list[str]]:
        async with (
            serve(authenticator) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
        ):
            status = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            stream = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
            services = [s.name async for r in stream for s in r.list_services_response.service]
            return status.status, services

    status, services = run(body)
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert "cds.v1.OrderCheckService" in services


def test_reload_with_a_bad_file_keeps_the_old_tokens_and_a_good_one_replaces_them(
    tmp_path: Path,
) -> None:
    path = write_credentials(tmp_path / "auth.json", {TOKENS[Role.EMR]: Role.EMR})
    auth = Authenticator(path)
    replacement = new_token()
    check = "/cds.v1.OrderCheckService/Check"

    async def body() -> list[grpc.StatusCode]:
        codes = []
        async with serve(auth) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            codes.append((await call(ch, check, TOKENS[Role.EMR]))[0])
            path.write_text('{"tokens": [{"name": "x", "role": "root", "sha256": "zz"}]}')
            with pytest.raises(AuthConfigError, match=r"\$\.tokens\[0\]\.role"):
                auth.reload()
            codes.append((await call(ch, check, TOKENS[Role.EMR]))[0])
            write_credentials(path, {replacement: Role.EMR})
            auth.reload()
            codes.append((await call(ch, check, TOKENS[Role.EMR]))[0])
            codes.append((await call(ch, check, replacement))[0])
        return codes

    assert run(body) == [
        grpc.StatusCode.OK,
        grpc.StatusCode.OK,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OK,
    ]


# -- mutual TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    ca, other_ca = Authority(), Authority("another CA")
    return {
        "ca": ca,
        "server": ca.issue("localhost", server=True),
        "emr": ca.issue("emr-gateway", org="Fujian Test Hospital"),
        "admin": ca.issue("ops-console", org="Fujian Test Hospital"),
        "unmapped": ca.issue("someone-else", org="Fujian Test Hospital"),
        "foreign": other_ca.issue("emr-gateway", org="Fujian Test Hospital"),
    }


def tls_channel(pki: dict[str, Any], port: int, client: str | None) -> grpc.aio.Channel:
    pem = pki[client] if client else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].cert_pem,
        private_key=pem.key if pem else None,
        certificate_chain=pem.cert if pem else None,
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


@pytest.fixture
def mtls(tmp_path: Path, pki: dict[str, Any]) -> tuple[Authenticator, grpc.ServerCredentials]:
    for name in ("server",):
        (tmp_path / f"{name}.crt").write_bytes(pki[name].cert)
        (tmp_path / f"{name}.key").write_bytes(pki[name].key)
    (tmp_path / "ca.crt").write_bytes(pki["ca"].cert_pem)
    creds = server_credentials(
        tmp_path / "server.crt", tmp_path / "server.key", tmp_path / "ca.crt"
    )
    auth = Authenticator(
        write_credentials(
            tmp_path / "auth.json",
            {TOKENS[Role.FEED]: Role.FEED},
            certificates=[
                {"common_name": "emr-gateway", "role": "emr"},
                # as `openssl x509 -noout -subject -nameopt RFC2253` prints it
                {"subject": "O=Fujian Test Hospital,CN=ops-console", "role": "admin"},
            ],
        )
    )
    return auth, creds


def test_client_certificate_subject_maps_to_its_role(
    mtls: tuple[Authenticator, grpc.ServerCredentials], pki: dict[str, Any]
) -> None:
    auth, creds = mtls

    async def body() -> dict[tuple[str, str], grpc.StatusCode]:
        got = {}
        async with serve(auth, creds) as port:
            for client in ("emr", "admin", "unmapped"):
                async with tls_channel(pki, port, client) as ch:
                    for method in METHOD_ROLES:
                        got[client, method] = (await call(ch, method))[0]
        return got

    got = run(body)
    ok, denied = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED
    for method, role in METHOD_ROLES.items():
        assert got["emr", method] == (ok if role is Role.EMR else denied), method
        assert got["admin", method] == (ok if role is Role.ADMIN else denied), method
        assert got["unmapped", method] == grpc.StatusCode.UNAUTHENTICATED, method


def test_token_still_works_over_mutual_tls_and_decides_over_the_certificate(
    mtls: tuple[Authenticator, grpc.ServerCredentials], pki: dict[str, Any]
) -> None:
    auth, creds = mtls

    async def body() -> list[grpc.StatusCode]:
        async with serve(auth, creds) as port, tls_channel(pki, port, "emr") as ch:
            return [
                (await call(ch, "/cds.v1.ResultFeedService/PutResults", TOKENS[Role.FEED]))[0],
                (await call(ch, "/cds.v1.OrderCheckService/Check", TOKENS[Role.FEED]))[0],
            ]

    assert run(body) == [grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED]


@pytest.mark.parametrize("client", [None, "foreign"])
def test_without_a_certificate_from_the_client_ca_the_handshake_fails(
    mtls: tuple[Authenticator, grpc.ServerCredentials], pki: dict[str, Any], client: str | None
) -> None:
    auth, creds = mtls

    async def body() -> grpc.StatusCode:
        async with serve(auth, creds) as port, tls_channel(pki, port, client) as ch:
            return (await call(ch, "/cds.v1.OrderCheckService/Check"))[0]

    assert run(body) == grpc.StatusCode.UNAVAILABLE


# -- the credentials file and helpers ---------------------------------------------------


def test_credentials_file_reports_every_error_with_its_path() -> None:
    doc = {
        "tokens": [
            {"name": "a", "role": "emr", "sha256": "0" * 64},
            {"name": "a", "role": "god", "sha256": "0" * 64},
            {"name": "", "role": "feed", "sha256": "XYZ", "token": "plain"},
        ],
        "certificates": [{"common_name": "x", "subject": "CN=x", "role": "emr"}],
        "users": [],
    }
    with pytest.raises(AuthConfigError) as err:
        Credentials.parse(doc)
    text = str(err.value)
    for fragment in (
        "$.users: unknown key",
        "$.tokens[1].name: duplicate",
        "$.tokens[1].role",
        "$.tokens[1].sha256: the same token is listed twice",
        "$.tokens[2].name",
        "$.tokens[2].sha256",
        "$.tokens[2].token: unknown key",
        "$.certificates[0]: give exactly one",
    ):
        assert fragment in text


def test_missing_credentials_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read credentials file"):
        Authenticator(tmp_path / "absent.json")


def test_hash_token_matches_the_lookup_and_refuses_guessable_tokens() -> None:
    token = new_token()
    creds = Credentials.parse(
        {"tokens": [{"name": "n", "role": "feed", "sha256": hash_token(token)}]}
    )
    assert creds.role_of_token(token) is Role.FEED
    assert creds.role_of_token(token + "x") is None
    with pytest.raises(ValueError, match="at least 32"):
        hash_token("password123")


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), None),
        ((("x-other", "1"),), None),
        ((("authorization", "Bearer abc"),), "abc"),
        ((("authorization", "bearer abc"),), "abc"),
        ((("authorization", "Basic abc"),), ""),
    ],
)
def test_bearer_token_parsing(metadata: tuple, expected: str | None) -> None:
    assert bearer_token(metadata) == expected


def test_a_new_token_never_starts_with_a_dash_a_cli_would_read_as_an_option(monkeypatch):
    drawn = iter(["-" + "a" * 42, "b" * 43])
    monkeypatch.setattr(auth_module.secrets, "token_urlsafe", lambda n: next(drawn))
    assert auth_module.new_token() == "b" * 43
