"""The CDS Hooks 2.0 HTTP door, on the event loop the gRPC server runs on.

Three endpoints, as the spec names them:

* ``GET /cds-services``: discovery of ``cds-order-select`` (hook ``order-select``) and
  ``cds-order-sign`` (hook ``order-sign``), with the prefetch templates we read
  (active Conditions for the gene tests' indications, the Encounter for the emergency
  exemption: both optional);
* ``POST /cds-services/{id}``: the draft orders checked exactly as a gRPC ``Check``
  (:mod:`cds.orders.checker`: same catalogue, store, decision memory, log, metrics);
  the answer is ``{"cards": [...]}``;
* ``POST /cds-services/{id}/feedback``: onto the same feedback desk as
  ``SubmitFeedback``.

Errors carry an ``OperationOutcome`` whose issue names the JSON path at fault: 400 a
malformed request, 404 an unknown service or card, 412 required context missing
(``patientId``, ``draftOrders``, an institution), 401 a missing or refused JWT
(when ``--hooks-jwt-issuers`` is set), 413 a body over 8 MiB, 417 an ``Expect`` other
than ``100-continue``, 422 feedback the line's reasons do not allow, 503 beyond
``--max-concurrent-rpcs`` requests in progress or when the decisions store or log
cannot take feedback (retry). A request that is not valid HTTP is aiohttp's to refuse
(a plain-text 400 naming the fault). Nothing of a request is logged, and the token
never is.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any, NamedTuple

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from cds.config import ServeConfig, split_host_port
from cds.decisions.memory import DecisionMemory
from cds.hooks.cards import CardMaker
from cds.hooks.feedback import FeedbackDoor
from cds.hooks.fhir import HookError, malformed, read_call
from cds.metrics import Metrics
from cds.orders.checker import OrderChecker
from cds.orders.feedback import FeedbackDesk
from cds.rollout.state import CatalogState
from cds.security.hooks_jwt import Caller, JwtRefused, JwtVerifier
from cds.security.transport import DEFAULT_MAX_RECEIVE_BYTES

log = logging.getLogger(__name__)

JSON = "application/json"
DISCOVERY = "/cds-services"


class Service(NamedTuple):
    id: str
    hook: str
    title: str
    description: str


SERVICES = {
    s.id: s
    for s in (
        Service(
            "cds-order-select",
            "order-select",
            "检查检验结果互认与肿瘤基因检测（选择医嘱时）",
            "Mutual recognition of lab and exam results and tumour gene-test rules, checked "
            "on every ServiceRequest of the unsigned order session when an order is selected.",
        ),
        Service(
            "cds-order-sign",
            "order-sign",
            "检查检验结果互认与肿瘤基因检测（签署医嘱时）",
            "Mutual recognition of lab and exam results and tumour gene-test rules, checked "
            "on every ServiceRequest of the orders being signed.",
        ),
    )
}
PREFETCH = {
    "conditions": "Condition?patient={{context.patientId}}",
    "encounter": "Encounter/{{context.encounterId}}",
}
_DISCOVERY_BODY = orjson.dumps(
    {
        "services": [
            {
                "hook": s.hook,
                "title": s.title,
                "description": s.description,
                "id": s.id,
                "prefetch": PREFETCH,
            }
            for s in SERVICES.values()
        ]
    }
)
_HTTP_REFUSALS = {
    404: "no such endpoint: GET /cds-services, POST /cds-services/{id}[/feedback]",
    405: "method not allowed: GET /cds-services, POST /cds-services/{id}[/feedback]",
    413: "the body is larger than 8 MiB",
}
_NO_CARDS = b'{"cards":[]}'
_OK = b"{}"


class _HttpLayerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's log of the requests its parser refused, without their bytes.

    Its exceptions quote what they could not parse (a body after a short
    Content-Length, a broken chunk), which can hold a patient id, and it logged them
    at ERROR with a traceback though the fault is the client's. They are one line (INFO
    at most) naming the kind of fault; anything else aiohttp logs is passed on as it was.
    """

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, RequestPayloadError):  # a body we refused, drained by aiohttp
            exc = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
        if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
            self.logger.log(  # DEBUG stays DEBUG (aiohttp's level for non-HTTP traffic)
                min(level, logging.INFO),
                "CDS Hooks: refused a request that is not valid HTTP (%s)",
                type(exc).__name__,
            )
            return
        super().log(level, msg, *args, **kwargs)


def outcome(error: HookError) -> web.Response:
    """The OperationOutcome of a refusal (CDS Hooks best practice for 4xx/5xx bodies)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": error.code,
                "diagnostics": error.message,
                "expression": [error.expression],
            }
        ],
    }
    headers = {"WWW-Authenticate": 'Bearer realm="cds-services"'} if error.status == 401 else None
    if error.status == 503:
        headers = {"Retry-After": "1"}
    return web.Response(
        status=error.status, body=orjson.dumps(body), content_type=JSON, headers=headers
    )


def _outcomes(errors: list[HookError]) -> web.Response:
    response = outcome(errors[0])
    if len(errors) > 1:
        body = orjson.loads(response.body)  # type: ignore[arg-type]
        body["issue"] += [
            {"severity": "error", "code": e.code, "diagnostics": e.message,
             "expression": [e.expression]}
            for e in errors[1:]
        ]  # fmt: skip
        response.body = orjson.dumps(body)
    return response


_UNROUTED = "unrouted"  # the route of every request no endpoint takes


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """A request no endpoint takes: 405 where one has the path, 404 otherwise.

    Why a route, not aiohttp's own refusal: for a request it cannot route aiohttp
    answers an ``Expect`` header with its default handler, before any middleware, and a
    value not UTF-8 made that fail (a 500 and an ERROR traceback). Routed here, every
    request passes :func:`_expect`."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name != _UNROUTED:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def _expect(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` as aiohttp answers it; any other expectation a 417 that
    names the header. aiohttp's own 417 quotes the value, and a value that is not
    UTF-8 made it fail building that answer: a 500 and a traceback."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return outcome(HookError(417, "Expect: only 100-continue is supported", "not-supported"))
    if request.version == (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
    return None


def _endpoint(request: web.Request) -> tuple[str, str]:
    """(endpoint, service) for metrics and the JWT audience: our names only."""
    route = request.match_info.route.resource
    if route is None or route.name == _UNROUTED:
        return "other", ""
    canonical = route.canonical
    service = request.match_info.get("service", "")
    if service not in SERVICES:
        service = ""
    if canonical == DISCOVERY:
        return "discovery", ""
    if canonical.endswith("/feedback"):
        return "feedback", service
    if canonical:
        return "service", service
    return "other", ""


class HooksDoor:
    """The CDS Hooks HTTP server of one process: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        config: ServeConfig,
        state: CatalogState,
        checker: OrderChecker,
        desk: FeedbackDesk,
        memory: DecisionMemory,
        metrics: Metrics,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        assert config.hooks_listen is not None
        self._config = config
        self._state = state
        self._checker = checker
        self._feedback = FeedbackDoor(desk, memory)
        self._metrics = metrics
        self._ssl = ssl_context
        self._reuse_port = reuse_port
        self._institution = config.hooks_institution
        self.verifier = JwtVerifier(config.hooks_jwt_issuers) if config.hooks_jwt_issuers else None
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.base_url = ""

    def _app(self) -> web.Application:
        app = web.Application(
            client_max_size=DEFAULT_MAX_RECEIVE_BYTES, middlewares=[self._middleware]
        )
        app.router.add_get(DISCOVERY, self._discovery, expect_handler=_expect)
        app.router.add_post(DISCOVERY + "/{service}", self._call, expect_handler=_expect)
        app.router.add_post(
            DISCOVERY + "/{service}/feedback", self._submit_feedback, expect_handler=_expect
        )
        # last: aiohttp tries the longest path prefixes first, and this one is "/"
        app.router.add_route("*", "/{path:.*}", _unrouted, name=_UNROUTED, expect_handler=_expect)
        return app

    async def start(self) -> None:
        assert self._config.hooks_listen is not None
        host, port = split_host_port(self._config.hooks_listen, flag="--hooks-listen")
        # No access log: request lines are harmless, but nothing of a request is logged.
        self._runner = web.AppRunner(
            self._app(),
            access_log=None,
            logger=_HttpLayerLog(logging.getLogger("aiohttp.server")),
            handle_signals=False,
            shutdown_timeout=self._config.grace,
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, host or None, port, ssl_context=self._ssl, reuse_port=self._reuse_port
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        scheme = "https" if self._ssl is not None else "http"
        shown = f"[{host}]" if ":" in host else host
        self.base_url = (self._config.hooks_base_url or f"{scheme}://{shown}:{self.port}").rstrip(
            "/"
        )

    async def stop(self) -> None:
        """Stop listening, let requests in progress finish (``--grace``), close."""
        if self._runner is not None:
            await self._runner.cleanup()

    def reload_credentials(self) -> None:
        if self.verifier is not None:
            try:
                self.verifier.reload()
            except ValueError as e:
                log.warning("CDS Hooks issuers not reloaded, the old ones stay: %s", e)

    @property
    def url(self) -> str:
        return self.base_url + DISCOVERY

    # -- every request ------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        t0 = perf_counter()
        endpoint, service = _endpoint(request)
        response: web.StreamResponse
        if self._in_flight >= self._config.max_concurrent_rpcs:
            response = outcome(HookError(503, "$: too many requests in progress; retry", "busy"))
        else:
            self._in_flight += 1
            try:
                response = await self._answer(request, handler, endpoint, service)
            finally:
                self._in_flight -= 1
        self._metrics.hooks_answered(endpoint, service, response.status, perf_counter() - t0)
        return response

    async def _answer(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        endpoint: str,
        service: str,
    ) -> web.StreamResponse:
        try:
            if self.verifier is not None:
                request["caller"] = self._verify(request, endpoint, service)
            return await handler(request)
        except HookError as refused:
            return outcome(refused)
        except web.HTTPException as e:  # no route (404), wrong method (405), too large (413)
            return outcome(HookError(e.status, f"$: {_HTTP_REFUSALS.get(e.status, e.reason)}",
                                     "not-supported"))  # fmt: skip
        except Exception:
            log.exception("unexpected error answering CDS Hooks %s", endpoint)
            return outcome(HookError(500, "$: internal error", "exception"))

    def _verify(self, request: web.Request, endpoint: str, service: str) -> Caller:
        assert self.verifier is not None
        # The URL the client meant to call, as --hooks-base-url names it (a proxy in
        # front may have rewritten the path we see).
        if endpoint == "discovery":
            path = DISCOVERY
        elif service:
            path = f"{DISCOVERY}/{service}" + ("/feedback" if endpoint == "feedback" else "")
        else:
            path = request.path
        try:
            return self.verifier.verify(request.headers.get("Authorization"), self.base_url + path)
        except JwtRefused as refused:
            self._metrics.hooks_jwt_refused.labels(refused.kind).inc()
            raise HookError(401, f"Authorization: {refused.message}", "security") from None

    async def _json(self, request: web.Request) -> Any:
        # A body that stops arriving would hold its request slot (--max-concurrent-rpcs)
        # until the client hung up: a few such clients and every other caller gets 503.
        # --deadline-cap bounds it, as it bounds every other wait of a call.
        cap = self._config.deadline_cap
        try:
            async with asyncio.timeout(cap):
                data = await request.read()
        except TimeoutError:
            raise HookError(
                408, f"$: the body did not arrive within --deadline-cap ({cap:g} s)", "timeout"
            ) from None
        except RequestPayloadError as e:  # its message may quote the body: not echoed
            if isinstance(e.__cause__, ContentEncodingError):
                raise malformed(
                    "Content-Encoding: the body does not decode as its Content-Encoding says"
                ) from None
            raise malformed("$: the body is not framed as its headers say") from None
        except ConnectionResetError:  # the client hung up mid-body: its fault, no error
            raise malformed("$: the connection closed before the body was complete") from None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise malformed("$: the body is not a JSON document") from None

    def _service(self, request: web.Request) -> Service:
        service = SERVICES.get(request.match_info["service"])
        if service is None:
            raise HookError(
                404, "service: no such CDS service (GET /cds-services lists them)", "not-found"
            )
        return service

    # -- the endpoints -------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.Response(body=_DISCOVERY_BODY, content_type=JSON)

    async def _call(self, request: web.Request) -> web.Response:
        service = self._service(request)
        body = await self._json(request)
        caller: Caller | None = request.get("caller")
        institution = caller.tenant if caller is not None and caller.tenant else None
        active = self._state.active  # one catalogue for the reading and the cards
        now_us = time.time_ns() // 1000
        call = read_call(
            body, service.hook, active.snapshot.code_system, institution or self._institution,
            now_us,
        )  # fmt: skip
        if call.order is None:
            return web.Response(body=_NO_CARDS, content_type=JSON)
        checked = await self._checker.check(call.order, now_us)
        snapshot = active.snapshot
        if checked.catalog_version != active.version:  # a reload in between: the decider's
            snapshot = self._state.active.snapshot
        cards = CardMaker(snapshot).cards(checked, call.drafts)
        if not cards:
            return web.Response(body=_NO_CARDS, content_type=JSON)
        return web.Response(body=orjson.dumps({"cards": cards}), content_type=JSON)

    async def _submit_feedback(self, request: web.Request) -> web.Response:
        self._service(request)
        body = await self._json(request)
        refusals = await self._feedback.submit(body, self._config.deadline_cap)
        if refusals:
            return _outcomes(refusals)
        return web.Response(body=_OK, content_type=JSON)
