"""Protected mode, TLS configuration errors, and the abuse limits on a real grpc.aio server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from cds.security.transport import (
    DEFAULT_MAX_RECEIVE_BYTES,
    TlsConfigError,
    check_listen_policy,
    check_metrics_listen,
    is_loopback,
    server_credentials,
    server_options,
)
from cds.service.rpc import capped_timeout, deadline_cap
from cds.v1 import order_check_pb2, order_check_pb2_grpc, result_feed_pb2, types_pb2
from tests.support.tls_certs import Authority

LOOPBACK = ["127.0.0.1:50051", "127.8.9.1:1", "localhost:50051", "[::1]:50051",
            "[::ffff:127.0.0.1]:1", "unix:/run/cds.sock"]  # fmt: skip
REACHABLE = ["0.0.0.0:50051", "[::]:50051", ":50051", "10.1.2.3:50051", "cds.hospital.local:50051",
             "[2001:db8::1]:50051"]  # fmt: skip


@pytest.mark.parametrize("listen", LOOPBACK)
def test_loopback_needs_neither_tls_nor_auth(listen: str) -> None:
    assert is_loopback(listen)
    assert check_listen_policy(listen, tls=False, auth=False, insecure=False) is None


@pytest.mark.parametrize("listen", REACHABLE)
@pytest.mark.parametrize(
    ("tls", "auth", "missing"),
    [(False, False, "TLS"), (True, False, "authentication"), (False, True, "TLS")],
)
def test_reachable_address_is_refused_without_tls_and_auth(
    listen: str, tls: bool, auth: bool, missing: str
) -> None:
    assert not is_loopback(listen)
    with pytest.raises(ValueError, match=rf"refusing to listen on .*without.*{missing}") as err:
        check_listen_policy(listen, tls=tls, auth=auth, insecure=False)
    assert "--insecure" in str(err.value)


@pytest.mark.parametrize("listen", REACHABLE)
def test_insecure_allows_a_reachable_address_with_a_warning(listen: str) -> None:
    warning = check_listen_policy(listen, tls=False, auth=False, insecure=True)
    assert warning is not None and listen in warning


@pytest.mark.parametrize("listen", REACHABLE)
def test_tls_and_auth_together_may_listen_anywhere(listen: str) -> None:
    assert check_listen_policy(listen, tls=True, auth=True, insecure=False) is None


@pytest.mark.parametrize("listen", ["50051", "[::1]50051", "[::1"])
def test_malformed_listen_address_is_an_error(listen: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        check_listen_policy(listen, tls=False, auth=False, insecure=False)


def test_metrics_warn_only_when_they_leave_loopback() -> None:
    assert check_metrics_listen("127.0.0.1:9464") is None
    assert "without authentication" in (check_metrics_listen("0.0.0.0:9464") or "")


def test_tls_file_problems_name_the_flag_and_file(tmp_path: Path) -> None:
    pem = Authority().issue("localhost", server=True)
    (tmp_path / "c.pem").write_bytes(pem.cert)
    (tmp_path / "k.pem").write_bytes(pem.key)
    (tmp_path / "junk").write_text("not a certificate")
    with pytest.raises(TlsConfigError, match=r"--tls-cert .*absent"):
        server_credentials(tmp_path / "absent", tmp_path / "k.pem")
    with pytest.raises(TlsConfigError, match=r"--tls-key .*junk: not a PEM"):
        server_credentials(tmp_path / "c.pem", tmp_path / "junk")
    with pytest.raises(TlsConfigError, match=r"--tls-key .*no PEM private key"):
        server_credentials(tmp_path / "c.pem", tmp_path / "c.pem")
    with pytest.raises(TlsConfigError, match="--tls-client-ca"):
        server_credentials(tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "junk")
    assert server_credentials(tmp_path / "c.pem", tmp_path / "k.pem") is not None


@pytest.mark.parametrize(
    ("remaining", "cap", "expected"),
    [(None, 2.0, 2.0), (0.5, 2.0, 0.5), (30.0, 2.0, 2.0), (-0.1, 2.0, 0.0)],
)
def test_capped_timeout_is_the_smaller_of_deadline_and_cap(
    remaining: float | None, cap: float, expected: float
) -> None:
    assert capped_timeout(remaining, cap) == expected


def test_largest_contract_valid_put_results_fits_the_default_receive_limit() -> None:
    s = "x" * 128
    ts = Timestamp(seconds=4_000_000_000, nanos=999_999_999)
    batch = result_feed_pb2.PutResultsRequest(
        results=[
            types_pb2.Result(
                result_id=s,
                patient_id=s,
                item_code=s,
                institution_id=s,
                reported_at=ts,
                recognition_mark=True,
            )
            for _ in range(10_000)
        ]
    )
    assert batch.ByteSize() < DEFAULT_MAX_RECEIVE_BYTES


# -- limits on a real server ------------------------------------------------------------


class Slow(order_check_pb2_grpc.OrderCheckServiceServicer):
    """Check parks until released; SubmitFeedback parks under a 50 ms deadline cap."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def Check(self, request: Any, context: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return order_check_pb2.CheckResponse()

    async def SubmitFeedback(self, request: Any, context: Any) -> Any:
        try:
            async with deadline_cap(context, 0.05):
                await self.release.wait()
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "server deadline cap reached")
        return order_check_pb2.SubmitFeedbackResponse()


async def start(servicer: Slow, **kwargs: Any) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server(**kwargs)
    order_check_pb2_grpc.add_OrderCheckServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def test_over_the_concurrency_limit_a_call_is_refused_at_once_with_resource_exhausted() -> None:
    async def body() -> grpc.StatusCode:
        servicer = Slow()
        server, channel = await start(servicer, maximum_concurrent_rpcs=1)
        stub = order_check_pb2_grpc.OrderCheckServiceStub(channel)
        try:
            first = asyncio.ensure_future(stub.Check(order_check_pb2.CheckRequest(), timeout=30))
            await servicer.entered.wait()  # the one slot is taken and held
            try:
                await stub.Check(order_check_pb2.CheckRequest(), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                code = err.code()
            servicer.release.set()
            await first  # the admitted call still completes normally
            return code
        finally:
            await channel.close()
            await server.stop(None)

    assert asyncio.run(body()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_message_over_the_receive_limit_is_refused() -> None:
    async def body() -> grpc.StatusCode:
        server, channel = await start(
            Slow(), options=server_options(max_receive_message_bytes=1024)
        )
        try:
            request = order_check_pb2.CheckRequest(request_id="x" * 2048)
            await order_check_pb2_grpc.OrderCheckServiceStub(channel).Check(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            return err.code()
        finally:
            await channel.close()
            await server.stop(None)
        return grpc.StatusCode.OK

    assert asyncio.run(body()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_deadline_cap_ends_a_call_whose_client_set_a_longer_deadline() -> None:
    async def body() -> tuple[grpc.StatusCode, str]:
        server, channel = await start(Slow())
        try:
            await order_check_pb2_grpc.OrderCheckServiceStub(channel).SubmitFeedback(
                order_check_pb2.SubmitFeedbackRequest(), timeout=60
            )
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        finally:
            await channel.close()
            await server.stop(None)
        return grpc.StatusCode.OK, ""

    # The message proves the server's cap fired, not the client's 60 s deadline.
    assert asyncio.run(body()) == (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "server deadline cap reached",
    )
