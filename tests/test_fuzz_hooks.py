"""Any request a client can send the CDS Hooks door gets an answer it can act on.

The gRPC fuzzing (tests/test_fuzz_rpcs.py) never reaches the HTTP door, whose parser
(aiohttp's, then ours in cds/hooks/) is a second way in. One real ``cds serve
--hooks-listen`` per module; every request is written byte for byte onto a fresh TCP
connection, so that what a broken or hostile EMR sends is what arrives: arbitrary
bytes, JSON too deep or too big, CDS Hooks requests and feedback with fields replaced,
dropped or repeated, and odd headers (Content-Type, Content-Encoding, chunked bodies,
a Content-Length shorter than the body).

The properties, for each answer: no 5xx; a complete HTTP response, never a dropped
connection; a 4xx says what is wrong (an OperationOutcome whose diagnostics is
``"<path>: <problem>"`` from our code, a non-empty reason from aiohttp's HTTP parser);
a 200 is the shape the spec asks for. After each test the server still answers a
well-formed order with the right card, and its log has no ERROR, no traceback and none
of the patient ids the fuzzed requests carried (all marked :data:`MARK`).

Deterministic (``derandomize``, no example database) and bounded by
:data:`EXAMPLES`, so the file runs in a few seconds in ``make test``.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.hooks.ids import card_uuid
from tests.support.fuzz import CI_PROFILE
from tests.support.protos import DAY_US, now_us, result
from tests.support.server import RunningServer, running_server
from tests.test_e2e_hooks import hook_request, hooks_catalog, put, service_request

pytestmark = pytest.mark.e2e

SIGN = "/cds-services/cds-order-sign"
SELECT = "/cds-services/cds-order-select"
DISCOVERY = "/cds-services"
# Every patient id a fuzzed request carries starts with this; the log must never show it.
MARK = "PATFZ"
HEALTHY_PATIENT = "healthy-patient-of-the-hooks-fuzz"
TIMEOUT_S = 10.0
# Examples per test: the whole file stays well under 60 s on 2 shared cores.
EXAMPLES = {"raw": 80, "hook": 150, "feedback": 100, "headers": 100, "discovery": 60}
# (endpoint, status) of every fuzzed answer: printed at the end (pytest -s) to show how
# far the examples reach (200s with cards, not only refusals).
STATUSES: Counter[tuple[str, int]] = Counter()
_DIAGNOSTICS = re.compile(r"^(\S.*?): \S", re.DOTALL)


def fuzz_settings(kind: str) -> settings:
    return settings(settings.get_profile(CI_PROFILE), max_examples=EXAMPLES[kind])


# -- one exchange on the wire ------------------------------------------------------------


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Dropped(AssertionError):
    """The server closed the connection or stopped answering without a response."""


def exchange(server: RunningServer, raw: bytes) -> Answer:
    """``raw`` (a whole HTTP/1.1 request, as written) on a new connection; the answer."""
    host, _, port = server.hooks_url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(raw)
        method = raw.partition(b" ")[0].decode("latin-1")
        response = http.client.HTTPResponse(sock, method=method)  # HEAD: no body to read
        try:
            response.begin()
            body = response.read()
        except (http.client.HTTPException, OSError) as e:
            raise Dropped(f"{type(e).__name__} {e} after {raw[:2000]!r}") from None
    return Answer(response.status, response.getheader("Content-Type") or "", body)


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request as bytes; ``Connection: close`` so one answer ends it."""
    fields = {"Host": "127.0.0.1", "Connection": "close", "Content-Type": "application/json"}
    fields.update(headers or {})
    if "Transfer-Encoding" not in fields and (body or method == "POST"):
        fields["Content-Length"] = str(len(body) if content_length is None else content_length)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def post(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    return request("POST", path, body, headers)


# -- what every answer must be -----------------------------------------------------------


def assert_names_the_fault(answer: Answer, *, parser_may_refuse: bool = False) -> None:
    """A 4xx says what is wrong: from us an OperationOutcome, each issue
    ``"<path>: <problem>"`` with ``<path>`` its expression; from aiohttp's parser (a
    request it cannot read as HTTP) a plain-text reason."""
    if parser_may_refuse and answer.content_type.startswith("text/plain"):
        assert answer.body.strip(), answer  # e.g. 400 "Invalid method", 417 "Unknown Expect"
        return
    assert answer.content_type == "application/json", answer
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"], body
    for issue in body["issue"]:
        match = _DIAGNOSTICS.match(issue["diagnostics"])
        assert match is not None, issue
        assert issue["expression"] == [match.group(1)], issue
        assert issue["severity"] == "error" and issue["code"], issue


def assert_allowed(answer: Answer, endpoint: str, *, parser_may_refuse: bool = False) -> None:
    STATUSES[(endpoint, answer.status)] += 1
    if answer.status == 200 and endpoint == "service" and answer.json()["cards"]:
        STATUSES[(endpoint, 0)] += 1  # 0: a 200 with cards
    assert answer.status < 500, answer
    if 400 <= answer.status < 500:
        assert_names_the_fault(answer, parser_may_refuse=parser_may_refuse)
        return
    assert answer.status == 200, answer
    body = answer.json()
    if endpoint == "service":
        assert isinstance(body["cards"], list), body
    elif endpoint == "feedback":
        assert body == {}, body
    else:
        assert {s["id"] for s in body["services"]} == {"cds-order-select", "cds-order-sign"}


def healthy_request() -> dict[str, Any]:
    return hook_request(service_request("sr-healthy", "K"), patient=HEALTHY_PATIENT)


def assert_still_healthy(server: RunningServer) -> None:
    """The door still answers: discovery, and a well-formed order-sign its one card."""
    assert server.process.poll() is None, server.log_text()[-5000:]
    answer = exchange(server, request("GET", DISCOVERY))
    assert_allowed(answer, "discovery")
    answer = exchange(server, post(SIGN, json.dumps(healthy_request()).encode()))
    assert answer.status == 200, answer
    (card,) = answer.json()["cards"]
    assert card["extension"]["cds.decision"]["reason_codes"] == ["RECOGNIZABLE_RESULT_EXISTS"]


def assert_log_clean(server: RunningServer, since: int = 0) -> None:
    """No ERROR, traceback or fuzzed patient id in the log (after character ``since``)."""
    log = server.log_text()[since:]
    bad = [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]
    assert not bad, log[-20_000:]
    assert MARK not in log, [line for line in log.splitlines() if MARK in line][:5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hooks-fuzz")
    args = ["--hooks-listen", "127.0.0.1:0", "--hooks-institution", "H1"]
    with running_server(workdir, hooks_catalog(), extra_args=args) as s:
        put(s, result("R-HEALTHY", HEALTHY_PATIENT, "K", "H2", now_us() - DAY_US))
        assert_still_healthy(s)
        yield s
        assert_still_healthy(s)
        assert_log_clean(s)
    shown = ", ".join(
        f"{e} {'cards' if c == 0 else c}: {n}" for (e, c), n in sorted(STATUSES.items())
    )
    print(f"\nhooks fuzz: {sum(n for (_, c), n in STATUSES.items() if c)} answers; {shown}")


@pytest.fixture(scope="module")
def real_card(server) -> dict[str, Any]:
    """A card the server issued (with an override reason), so feedback reaches the desk."""
    put(server, result("R-FZ-CARD", MARK + "-card", "K", "H2", now_us() - DAY_US))
    request_ = hook_request(service_request("sr-k", "K"), patient=MARK + "-card")
    answer = exchange(server, post(SIGN, json.dumps(request_).encode()))
    (card,) = answer.json()["cards"]
    return card


@pytest.fixture(autouse=True)
def log_start(server) -> Any:
    """Where this test's log lines start; after it, the server is healthy and they clean."""
    since = len(server.log_text())
    yield since
    assert_still_healthy(server)
    assert_log_clean(server, since)


# -- strategies --------------------------------------------------------------------------

_WORDS = (
    "K",
    "HBA1C",
    "EGFR",
    "NTRK",
    "CT",
    "NA",
    "GENE-X",
    "LAB1",
    "LAB-OLD",
    "P-EGFR",
    "C34.1",
    "C50.9",
    "EMER",
    "AMB",
    "H1",
    "H2",
    "GENE_TEST",
    "LAB",
    "urn:cds:item",
    "urn:cds:item-category",
    "urn:cds:price-item",
    "urn:cds:sendout-lab",
    "urn:cds:override-reason",
    "OTHER",
    "Consent/c-1",
    "ServiceRequest",
    "Bundle",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "http://hl7.org/fhir/sid/icd-10",
    "order-sign",
    "order-select",
    "accepted",
    "overridden",
    "",
)
_ODD_STRINGS = st.sampled_from(
    (
        "x" * 129,
        "测" * 129,
        "\x00",
        "\u202e",
        "\U0001f600" * 40,
        "a" * 100_000,
        "%s%n{}",
        "../../etc",
        "\r\n",
        "\ufeff",
    )
)
strings = st.one_of(st.sampled_from(_WORDS), st.text(max_size=40), _ODD_STRINGS)
patient_ids = st.one_of(
    st.just(MARK), (st.text(max_size=40) | _ODD_STRINGS).map(lambda s: MARK + s)
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(strings, inner, max_size=5),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indices)."""
    out = [prefix]
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        out += _paths(child, (*prefix, key))
    return out


@st.composite
def edited(draw: st.DrawFn, document: Any) -> Any:
    """``document`` with one to four values replaced, removed, duplicated or added to."""
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(document) if p]
        if not paths:
            return document
        path = draw(st.sampled_from(paths))
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        action = draw(st.sampled_from(("replace", "delete", "add", "repeat")))
        if action == "replace":
            parent[key] = draw(json_values)
        elif action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent[key], dict):
            parent[key][draw(strings)] = draw(json_values)
        elif action == "add" and isinstance(parent[key], list):
            parent[key].append(draw(json_values))
        elif action == "repeat" and isinstance(parent[key], list) and parent[key]:
            parent[key] = parent[key] * draw(st.integers(2, 120))
    return document


def _resource(draw: st.DrawFn, i: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(("ours", "ours", "foreign-code", "other", "junk")))
    if kind == "junk":
        return draw(st.dictionaries(strings, json_values, max_size=4))
    if kind == "other":
        return {"resourceType": draw(strings), "id": f"o{i}", "status": "draft"}
    system = "urn:cds:item" if kind == "ours" else "http://loinc.org"
    line: dict[str, Any] = {}
    for name in draw(st.sets(st.sampled_from(("category", "price", "lab", "consent")))):
        line[name] = {"category": "GENE_TEST", "consent": True}.get(name, draw(strings))
    return service_request(f"s{i}", draw(strings), system=system, **line)


@st.composite
def hook_requests(draw: st.DrawFn, hook: str) -> dict[str, Any]:
    """A CDS Hooks request that is mostly right, then :func:`edited`."""
    drafts = [_resource(draw, i) for i in range(draw(st.integers(0, 6)))]
    extension = draw(st.none() | st.just({"urn:cds:first-oncology-visit": True}))
    body = hook_request(
        *drafts,
        patient=draw(patient_ids),
        hook=draw(st.sampled_from((hook, hook, "order-sign", "order-select", "patient-view"))),
        diagnoses=tuple(draw(st.lists(st.sampled_from(("C34.1", "C50.9", "X" * 30)), max_size=3))),
        encounter_class=draw(st.none() | st.sampled_from(("EMER", "AMB", "IMP", "zzz"))),
        extension=extension,
    )
    if draw(st.booleans()):
        body["prefetch"] = draw(
            st.dictionaries(
                strings, json_values | st.builds(_odd_prefetch, json_values), max_size=3
            )
        )
    return draw(edited(body)) if draw(st.integers(0, 4)) else body


def _odd_prefetch(value: Any) -> dict[str, Any]:
    """Prefetch resources whose insides are anything: Bundles, Conditions, Encounters."""
    return (
        {"resourceType": "Bundle", "entry": value}
        if not isinstance(value, dict)
        else {
            "resourceType": "Condition",
            "clinicalStatus": value,
            "code": value,
            "class": value,
            "id": value,
        }
    )


@st.composite
def feedback_bodies(draw: st.DrawFn, card: dict[str, Any]) -> dict[str, Any]:
    decision_id = card["extension"]["cds.decision"]["decision_id"]
    prefix = decision_id.partition("-")[0]
    cards = st.one_of(
        st.just(card["uuid"]),
        st.just(card["suggestions"][0]["uuid"]),
        st.builds(
            lambda n, line: card_uuid(f"{prefix}-{n}", line),
            st.integers(1, 2**50 - 1),
            st.integers(0, 127),
        ),
        st.uuids().map(str),
        strings,
    )
    entries = []
    for _ in range(draw(st.integers(1, 3))):
        entry: dict[str, Any] = {
            "card": draw(cards),
            "outcome": draw(st.sampled_from(("accepted", "overridden", "ignored"))),
            "outcomeTimestamp": "2026-01-01T00:00:00Z",
        }
        if draw(st.booleans()):
            entry["overrideReason"] = {
                "reason": {"system": "urn:cds:override-reason", "code": draw(strings)},
                "userComment": draw(strings),
            }
        entries.append(entry)
    body = {"feedback": entries}
    return draw(edited(body)) if draw(st.integers(0, 3)) else body


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


raw_bodies = st.one_of(
    st.binary(max_size=1024),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.builds(_nested, st.integers(1, 5000), st.sampled_from(("array", "object"))),
    st.builds(lambda n: b"[" + b",".join([b'"xxxxxxxx"'] * n) + b"]", st.integers(0, 200_000)),
    st.builds(lambda n: b'{"hook":"' + b"h" * n + b'"}', st.integers(0, 2_000_000)),
    st.sampled_from(
        (b"", b"null", b"[]", b"{}", b"0", b'"x"', b"NaN", b"1e999", b"\xef\xbb\xbf{}")
    ),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` truncated, or with bytes flipped, inserted or deleted."""
    out = bytearray(data)
    if draw(st.booleans()):
        return bytes(out[: draw(st.integers(0, len(out)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(out)))
        action = draw(st.sampled_from(("flip", "insert", "delete")))
        if action == "flip" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif action == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[at : at + draw(st.integers(1, 8))]
    return bytes(out)


# -- the fuzzing -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SIGN, SELECT, SIGN + "/feedback"])
def test_arbitrary_bytes_and_odd_json_get_a_named_refusal(server, path):
    endpoint = "feedback" if path.endswith("/feedback") else "service"
    valid = json.dumps(hook_request(service_request("s", "K"), patient=MARK)).encode()

    @fuzz_settings("raw")
    @given(body=raw_bodies | mutated_bytes(valid))
    def one(body: bytes) -> None:
        assert_allowed(exchange(server, post(path, body)), endpoint)

    one()


@pytest.mark.parametrize(("path", "hook"), [(SIGN, "order-sign"), (SELECT, "order-select")])
def test_mutated_hook_requests_get_cards_or_a_named_refusal(server, path, hook):
    @fuzz_settings("hook")
    @given(body=hook_requests(hook))
    def one(body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        assert_allowed(exchange(server, post(path, data)), "service")

    one()


def test_mutated_feedback_is_recorded_or_refused_by_name(server, real_card):
    @fuzz_settings("feedback")
    @given(body=feedback_bodies(real_card))
    def one(body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        assert_allowed(exchange(server, post(SIGN + "/feedback", data)), "feedback")

    one()


_header_values = st.one_of(
    st.sampled_from(
        (
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            "",
            "*/*",
            "gzip",
            "deflate",
            "br",
            "identity",
            "chunked",
            "x" * 8000,
        )
    ),
    st.text(
        st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
        max_size=60,
    ),
)


def _chunked(body: bytes, sizes: list[int], broken: bool) -> bytes:
    out, at = b"", 0
    for size in sizes:
        part = body[at : at + size]
        at += size
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    if broken:
        return out + b"zz\r\n"
    return out + f"{len(body) - at:x}\r\n".encode() + body[at:] + b"\r\n0\r\n\r\n"


@st.composite
def odd_requests(draw: st.DrawFn, body: bytes) -> bytes:
    """A valid order-sign body sent with headers a client got wrong."""
    headers: dict[str, str] = {}
    for name in draw(
        st.sets(
            st.sampled_from(
                (
                    "Content-Type",
                    "Accept",
                    "Content-Encoding",
                    "Expect",
                    "X-Anything",
                    "Authorization",
                )
            )
        )
    ):
        headers[name] = draw(_header_values)
    encoding = headers.get("Content-Encoding")
    if encoding in ("gzip", "deflate") and draw(st.booleans()):
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    framing = draw(st.sampled_from(("length", "short", "chunked", "broken-chunked")))
    if framing in ("chunked", "broken-chunked"):
        headers["Transfer-Encoding"] = "chunked"
        sizes = draw(st.lists(st.integers(0, 64), max_size=4))
        return request("POST", SIGN, _chunked(body, sizes, framing == "broken-chunked"), headers)
    if framing == "short":  # the rest of the body is read as the next request
        return request("POST", SIGN, body, headers, content_length=draw(st.integers(0, len(body))))
    return request("POST", SIGN, body, headers)


def test_odd_headers_and_framing_get_an_answer_never_a_dropped_connection(server):
    valid = json.dumps(hook_request(service_request("s", "K"), patient=MARK + "-headers"))

    @fuzz_settings("headers")
    @given(raw=odd_requests(valid.encode()))
    def one(raw: bytes) -> None:
        assert_allowed(exchange(server, raw), "service", parser_may_refuse=True)

    one()


_paths_tried = st.one_of(
    st.sampled_from(
        (
            DISCOVERY,
            DISCOVERY + "/",
            DISCOVERY + "?x=1",
            DISCOVERY + "//",
            "/",
            "/cds-services/%zz",
            "/cds-services/a%00b",
            "/CDS-SERVICES",
            SIGN + "/feedback/x",
            "/cds-services/..%2f..",
            "*",
        )
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30).map(
        lambda s: DISCOVERY + "/" + s.replace("#", "%23")
    ),
    st.text(max_size=20).map(
        lambda s: DISCOVERY + "?q=" + "".join(f"%{b:02X}" for b in s.encode("utf-8", "replace"))
    ),
)


def test_discovery_and_unknown_paths_and_methods_get_an_answer(server):
    @fuzz_settings("discovery")
    @given(
        method=st.sampled_from(("GET", "GET", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "POST")),
        path=_paths_tried,
        body=st.sampled_from((b"", b"{}", b"junk")),
    )
    def one(method: str, path: str, body: bytes) -> None:
        answer = exchange(server, request(method, path, body))
        if method == "HEAD":
            assert answer.status < 500, answer
            return
        endpoint = "service" if method == "POST" else "discovery"
        if answer.status == 200 and method == "POST" and path.endswith("/feedback"):
            endpoint = "feedback"
        assert_allowed(answer, endpoint, parser_may_refuse=True)

    one()


# -- what the fuzzing found ----------------------------------------------------------------


def test_a_feedback_outcome_that_is_not_a_string_is_refused_naming_it(server):
    for outcome in ([], {}, ["accepted"]):
        body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": outcome}]}
        answer = exchange(server, post(SIGN + "/feedback", json.dumps(body).encode()))
        assert (answer.status, answer.json()["issue"][0]["diagnostics"]) == (
            400,
            "feedback[0].outcome: must be accepted or overridden",
        )


def test_a_prefetch_bundle_whose_entry_is_not_an_array_is_no_data(server):
    for entry in (1, True, 2.5):
        body = healthy_request()
        body["prefetch"] = {"conditions": {"resourceType": "Bundle", "entry": entry}}
        answer = exchange(server, post(SIGN, json.dumps(body).encode()))
        assert answer.status == 200, answer
        (card,) = answer.json()["cards"]
        assert card["extension"]["cds.decision"]["reason_codes"] == ["RECOGNIZABLE_RESULT_EXISTS"]


def test_a_body_that_does_not_decode_as_its_content_encoding_says_is_a_400(server, log_start):
    for encoding in ("gzip", "deflate"):  # br without Brotli: the parser refuses it
        answer = exchange(server, post(SIGN, b"not compressed", {"Content-Encoding": encoding}))
        assert answer.status == 400, answer
        assert answer.json()["issue"][0]["diagnostics"] == (
            "Content-Encoding: the body does not decode as its Content-Encoding says"
        )
    assert_log_clean(server, log_start)


def test_an_expectation_other_than_100_continue_is_a_417_naming_the_header(server, log_start):
    for value in ("application/json", "\xc6\xc4-not-utf-8"):
        answer = exchange(server, post(SIGN, b"{}", {"Expect": value}))
        assert (answer.status, answer.json()["issue"][0]["diagnostics"]) == (
            417,
            "Expect: only 100-continue is supported",
        )
    answer = exchange(
        server, post(SIGN, json.dumps(healthy_request()).encode(), {"Expect": "100-continue"})
    )
    assert answer.status == 200 and len(answer.json()["cards"]) == 1, answer
    assert_log_clean(server, log_start)


@pytest.mark.parametrize(
    "method, path, unexpected",
    [
        ("POST", "/no-such-endpoint", 404),
        ("POST", DISCOVERY, 405),  # a path we serve, with a method it does not take
        ("DELETE", SIGN, 405),
        ("GET", SIGN + "/feedback/more", 404),
    ],
)
def test_an_odd_expectation_is_a_417_on_any_path_and_method(
    server, log_start, method, path, unexpected
):
    """aiohttp answers the Expect header of a request no route takes with its own
    handler, which failed (a 500 and an ERROR traceback) on a value not UTF-8."""
    for value in ("application/json", "\xc6\xc4-not-utf-8"):
        answer = exchange(server, request(method, path, b"{}", {"Expect": value}))
        assert (answer.status, answer.json()["issue"][0]["diagnostics"]) == (
            417,
            "Expect: only 100-continue is supported",
        ), answer
    answer = exchange(server, request(method, path, b"{}", {"Expect": "100-continue"}))
    assert answer.status == unexpected, answer
    assert_names_the_fault(answer)


def test_a_request_the_http_parser_refuses_logs_none_of_its_bytes(server, log_start):
    """aiohttp's parser quotes the offending bytes in its exception: at ERROR with a
    traceback, a body after a short Content-Length put the patient id in the log."""
    body = json.dumps(hook_request(service_request("s", "K"), patient=MARK + "-parser"))
    answer = exchange(server, request("POST", SIGN, body.encode(), content_length=2))
    assert answer.status == 400 and answer.content_type.startswith("text/plain"), answer
    chunked = request(
        "POST",
        SIGN,
        b"5\r\n" + MARK.encode() + b"\r\nzz" + MARK.encode(),
        {"Transfer-Encoding": "chunked"},
    )
    assert exchange(server, chunked).status == 400
    assert_log_clean(server, log_start)


def test_a_client_hanging_up_in_the_middle_of_its_body_is_not_an_error(server, log_start):
    host, _, port = server.hooks_url.removeprefix("http://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(request("POST", SIGN, b'{"hook":', content_length=1000))
        time.sleep(0.2)
    time.sleep(0.3)  # the server notices the connection is gone
    assert_log_clean(server, log_start)


def test_a_body_that_stops_arriving_gets_408_by_the_deadline_cap_and_frees_its_slot(tmp_path):
    """A client that sends less body than its Content-Length and waits must not hold a
    request slot for ever: with one slot, every other caller would get 503 meanwhile."""
    args = ["--hooks-listen", "127.0.0.1:0", "--hooks-institution", "H1"]
    args += ["--deadline-cap", "0.5", "--max-concurrent-rpcs", "1"]
    with running_server(tmp_path, hooks_catalog(), extra_args=args) as slow_server:
        host, _, port = slow_server.hooks_url.removeprefix("http://").rpartition(":")
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
            sock.sendall(request("POST", SIGN, b'{"hook":', content_length=1000))
            started = time.monotonic()
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            answer = Answer(response.status, response.getheader("Content-Type") or "",
                            response.read())  # fmt: skip
            waited = time.monotonic() - started
        assert answer.status == 408, answer
        assert_names_the_fault(answer)
        assert "--deadline-cap" in answer.json()["issue"][0]["diagnostics"]
        assert 0.4 < waited < 5.0, waited
        # The slot is free again: a well-formed order is answered, not refused as busy.
        assert_allowed(exchange(slow_server, post(SIGN, json.dumps(healthy_request()).encode())),
                       "service")  # fmt: skip
        assert_log_clean(slow_server)
