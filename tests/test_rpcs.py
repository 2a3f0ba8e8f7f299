"""The RPC table covers exactly the protos' RPCs, and drives what the server registers."""

from __future__ import annotations

from cds.security.auth import Role
from cds.service.rpcs import METHOD_ROLES, RPCS, SERVICE_NAMES
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2


def _proto_methods() -> dict[str, tuple[str, str]]:
    methods = {}
    for module in (order_check_pb2, result_feed_pb2, catalog_admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                methods[f"/{service.full_name}/{m.name}"] = (
                    m.input_type.full_name,
                    m.output_type.full_name,
                )
    return methods


def test_every_proto_rpc_has_exactly_one_row_with_its_messages():
    protos = _proto_methods()
    assert sorted(r.path for r in RPCS) == sorted(protos)
    for rpc in RPCS:
        assert (rpc.request.DESCRIPTOR.full_name, rpc.response.DESCRIPTOR.full_name) == protos[
            rpc.path
        ]


def test_every_rpc_gets_one_role_and_the_roles_split_the_callers():
    assert set(METHOD_ROLES) == {r.path for r in RPCS}
    by_role = {role: sorted(p for p, r in METHOD_ROLES.items() if r is role) for role in Role}
    assert by_role[Role.EMR] == [
        "/cds.v1.OrderCheckService/Check",
        "/cds.v1.OrderCheckService/SubmitFeedback",
    ]
    assert by_role[Role.FEED] == [
        "/cds.v1.ResultFeedService/PutResults",
        "/cds.v1.ResultFeedService/WithdrawResults",
    ]
    assert by_role[Role.ADMIN] == [
        "/cds.v1.CatalogAdminService/GetCatalogStatus",
        "/cds.v1.CatalogAdminService/ReloadCatalog",
    ]


def test_each_handler_is_a_method_of_its_owner():
    for rpc in RPCS:
        assert getattr(rpc.owner, rpc.handler.__name__) is rpc.handler, rpc.path


def test_service_names_come_from_the_table_once_each():
    assert SERVICE_NAMES == (
        "cds.v1.OrderCheckService",
        "cds.v1.ResultFeedService",
        "cds.v1.CatalogAdminService",
    )


def test_a_response_over_the_send_limit_is_counted_as_the_refusal_the_client_gets():
    """Served by a real grpc.aio server: the wrapper serializes, so a response grpc
    would refuse to send is counted RESOURCE_EXHAUSTED, never OK."""
    import asyncio

    import grpc

    from cds.metrics import Metrics
    from cds.service.admission import Admission
    from cds.service.rpc import ClientFaults, instrumented

    limit = 1024

    async def big(request, context):
        return order_check_pb2.CheckResponse(decision_id="x" * (2 * limit))

    async def small(request, context):
        return order_check_pb2.CheckResponse(decision_id="ok")

    async def scenario() -> tuple[list[grpc.StatusCode], float, float]:
        metrics = Metrics()
        m = metrics.rpc("cds.v1.OrderCheckService", "Check")
        server = grpc.aio.server()
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                instrumented(
                    fn,
                    m,
                    Admission(),
                    order_check_pb2.CheckRequest,
                    ClientFaults(),
                    max_response_bytes=limit,
                )
            )
            for name, fn in (("Big", big), ("Small", small))
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.T", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        codes = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                for name in ("Big", "Small"):
                    call = channel.unary_unary(f"/t.T/{name}")
                    try:
                        await call(b"", timeout=5)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as e:
                        codes.append(e.code())
        finally:
            await server.stop(0)
        metrics.fold()

        def handled(code: str) -> float:
            labels = {"grpc_type": "unary", "grpc_service": "cds.v1.OrderCheckService",
                      "grpc_method": "Check", "grpc_code": code}  # fmt: skip
            return metrics.registry.get_sample_value("grpc_server_handled_total", labels) or 0.0

        return codes, handled("RESOURCE_EXHAUSTED"), handled("OK")

    codes, exhausted, ok = asyncio.run(scenario())
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK]
    assert (exhausted, ok) == (1, 1)
