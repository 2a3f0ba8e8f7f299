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
