"""Every RPC the service serves, in one table: service, method, role, messages, handler.

Registration (:func:`generic_handlers`), the per-RPC metrics and the role each caller
needs (:data:`METHOD_ROLES`, enforced by :class:`cds.security.auth.AuthInterceptor`)
are all read from :data:`RPCS`, so adding an RPC is the proto, the handler method and
one row here. A method missing from the table is not served and, with credentials
configured, is refused like a protected one (fail closed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple

import grpc

from cds.metrics import Metrics
from cds.security.auth import Role
from cds.service.admin import CatalogAdmin
from cds.service.admission import Admission
from cds.service.check import OrderCheck
from cds.service.feed import ResultFeed
from cds.service.rpc import ClientFaults, instrumented
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2


def _service(module: Any, name: str) -> str:
    full_name: str = module.DESCRIPTOR.services_by_name[name].full_name
    return full_name


ORDER_CHECK = _service(order_check_pb2, "OrderCheckService")
RESULT_FEED = _service(result_feed_pb2, "ResultFeedService")
CATALOG_ADMIN = _service(catalog_admin_pb2, "CatalogAdminService")


class Rpc(NamedTuple):
    service: str  # full name, e.g. "cds.v1.OrderCheckService"
    method: str
    role: Role
    request: Any  # the request message class: what the body is parsed as
    response: Any  # the response message class
    owner: type  # the adapter class whose method answers it
    handler: Callable[..., Awaitable[Any]]  # that method, unbound: (owner, request, context)

    @property
    def path(self) -> str:
        """The method as gRPC names it on the wire, ``/<service>/<method>``."""
        return f"/{self.service}/{self.method}"


RPCS: tuple[Rpc, ...] = (
    Rpc(
        ORDER_CHECK,
        "Check",
        Role.EMR,
        order_check_pb2.CheckRequest,
        order_check_pb2.CheckResponse,
        OrderCheck,
        OrderCheck.check,
    ),
    Rpc(
        ORDER_CHECK,
        "SubmitFeedback",
        Role.EMR,
        order_check_pb2.SubmitFeedbackRequest,
        order_check_pb2.SubmitFeedbackResponse,
        OrderCheck,
        OrderCheck.submit_feedback,
    ),
    Rpc(
        RESULT_FEED,
        "PutResults",
        Role.FEED,
        result_feed_pb2.PutResultsRequest,
        result_feed_pb2.PutResultsResponse,
        ResultFeed,
        ResultFeed.put_results,
    ),
    Rpc(
        RESULT_FEED,
        "WithdrawResults",
        Role.FEED,
        result_feed_pb2.WithdrawResultsRequest,
        result_feed_pb2.WithdrawResultsResponse,
        ResultFeed,
        ResultFeed.withdraw_results,
    ),
    Rpc(
        CATALOG_ADMIN,
        "ReloadCatalog",
        Role.ADMIN,
        catalog_admin_pb2.ReloadCatalogRequest,
        catalog_admin_pb2.ReloadCatalogResponse,
        CatalogAdmin,
        CatalogAdmin.reload_catalog,
    ),
    Rpc(
        CATALOG_ADMIN,
        "GetCatalogStatus",
        Role.ADMIN,
        catalog_admin_pb2.GetCatalogStatusRequest,
        catalog_admin_pb2.GetCatalogStatusResponse,
        CatalogAdmin,
        CatalogAdmin.get_catalog_status,
    ),
)

# The services, in table order (for health and reflection).
SERVICE_NAMES: tuple[str, ...] = tuple(dict.fromkeys(r.service for r in RPCS))

# ``/<service>/<method>`` -> the one role allowed to call it.
METHOD_ROLES: Mapping[str, Role] = {r.path: r.role for r in RPCS}


def register(
    server: grpc.aio.Server, adapters: Iterable[object], metrics: Metrics, admission: Admission
) -> None:
    """Serve every RPC of the table on ``server``, each instrumented (admission, counts,
    latency, failures to status). ``adapters`` holds one instance of each ``owner`` class.

    As the generated ``add_*Servicer_to_server`` does: a generic handler per service
    and the same methods registered by name, which spares grpc.aio the generic look-up
    on every call.
    """
    by_class = {type(a): a for a in adapters}
    faults = ClientFaults()
    per_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for rpc in RPCS:
        bound = rpc.handler.__get__(by_class[rpc.owner], rpc.owner)
        per_service.setdefault(rpc.service, {})[rpc.method] = grpc.unary_unary_rpc_method_handler(
            instrumented(
                bound, metrics.rpc(rpc.service, rpc.method), admission, rpc.request, faults
            ),
            # Bytes both ways: instrumented() parses (and answers bad bodies) and
            # serializes (and counts a response over the send limit as refused).
            request_deserializer=None,
            response_serializer=None,
        )
    for service, methods in per_service.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
        server.add_registered_method_handlers(service, methods)
