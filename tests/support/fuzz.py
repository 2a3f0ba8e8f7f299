"""Fuzzing every RPC of :data:`cds.service.rpcs.RPCS` as raw bytes against a real server.

Why hypothesis and not atheris: the service is pure Python behind grpc's C core, and
what can go wrong is Python raising where it should answer (an ``UNKNOWN`` or
``INTERNAL``, a traceback in the log). hypothesis runs in-process under pytest, builds
structured, protobuf-shaped inputs from the message descriptors, shrinks a failure to a
small input and replays it from its example database; atheris needs a clang/libFuzzer
build and steers by C-level coverage, which says little about a pure-Python service.

Three kinds of body per RPC (:func:`bodies`):

* a random message built from the request's descriptor (:func:`messages`): strings
  empty, near and over the 128-character limits, unicode, NUL; integers at their
  boundaries; enums with unknown numbers; repeated fields of 0..N; nested messages;
  timestamps with absurd seconds and nanos. Strings are drawn partly from a small
  vocabulary of the test catalogue's real codes and ids, so that results put by one
  call can be met by a later Check, and feedback can name a real decision;
* such a message serialized and then mutated (bytes flipped, inserted, deleted, a
  slice repeated) or truncated;
* random bytes.

Each kind is fuzzed on its own (:data:`CI_EXAMPLES`), so every run sends all four.

:class:`Campaign` sends each body, checks the answer's status against what the service
may say (:data:`ALLOWED`), and counts the statuses. The profiles (:data:`CI_PROFILE`,
:data:`FUZZ_PROFILE`) are registered here and applied explicitly by the tests, so
loading this module changes no other test's settings.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cds.security.transport import DEFAULT_MAX_RECEIVE_BYTES
from cds.service.rpcs import RPCS, Rpc
from cds.v1 import catalog_admin_pb2, order_check_pb2, result_feed_pb2, types_pb2
from tests.support.server import TEST_CATALOG, RunningServer

CI_PROFILE = "cds-ci"
FUZZ_PROFILE = "cds-fuzz"
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
# The slice in `make test`: the same examples every run, nothing kept between runs.
settings.register_profile(
    CI_PROFILE,  # max_examples per kind of body: CI_EXAMPLES
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)
# `make fuzz`: fresh random examples each round; a failure is kept in the example
# database (.hypothesis/) and replayed first next time. Rounds are short so that the
# campaign's time budget is overrun by one round at most (hypothesis has no time budget).
FUZZ_ROUND_EXAMPLES = 25  # per RPC and kind of body
settings.register_profile(
    FUZZ_PROFILE,
    max_examples=FUZZ_ROUND_EXAMPLES,
    derandomize=False,
    deadline=None,
    suppress_health_check=_HEALTH,
    print_blob=True,
)

CALL_TIMEOUT_S = 5.0
Code = grpc.StatusCode
# What the service may answer a body of its own choosing. No credentials are configured
# on the fuzzed server, so neither UNAUTHENTICATED nor PERMISSION_DENIED can be earned;
# RESOURCE_EXHAUSTED only for a body over the receive limit (see Campaign.call).
ALLOWED = frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION})

# Real codes and ids of tests/data/catalog_v1.json, and the shapes requests carry, so
# that a random message is sometimes a valid one and reaches past validation.
VOCABULARY: tuple[str, ...] = (
    "",
    "P1",
    "P2",
    "H1",
    "H2",
    "H3",
    "G1",
    "K",
    "HBA1C",
    "CT_CHEST",
    "EGFR",
    "NTRK",
    "P-EGFR",
    "C34",
    "C34.1",
    "1",
    "2",
    "R1",
    "dr-1",
    "CONDITION_CHANGED",
    "CLINICALLY_NECESSARY",
    "x" * 128,
    "x" * 129,
    "测" * 128,
    "测" * 129,
)
# Never drawn, so no fuzzed PutResults can give this patient a prior result: a plain
# Check for them stays ALLOW however long the campaign ran.
SENTINEL_PATIENT = "fuzz-sentinel-patient-\u2603"

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_NOW_S = 1_750_000_000
# Seconds a Timestamp may carry on the wire (any int64), the sane range around now, and
# the edges of what datetime or microsecond arithmetic can hold.
_ABSURD_SECONDS = (
    0,
    -1,
    1,
    INT64[0],
    INT64[1],
    INT64[0] // 1_000_000,
    INT64[1] // 1_000_000,
    INT64[1] // 1_000_000 + 1,
    -62_135_596_800,  # 0001-01-01
    253_402_300_799,  # 9999-12-31
    253_402_300_800,
    _NOW_S,
)
_ABSURD_NANOS = (0, -1, 999_999_999, 1_000_000_000, INT32[0], INT32[1])


def strings(extra: Sequence[str] = ()) -> st.SearchStrategy[str]:
    words = tuple(dict.fromkeys((*VOCABULARY, *extra)))
    return st.one_of(
        st.sampled_from(words),
        st.text(max_size=12),
        st.text(min_size=120, max_size=200),
        st.text(alphabet=st.sampled_from("\x00a测\U0001f9ec\u202e\ufeff"), max_size=40),
        # any code point UTF-8 can carry (no lone surrogates: protobuf refuses to send them)
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40),
    )


def _integers(bits: int, *, unsigned: bool = False) -> st.SearchStrategy[int]:
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    edges = sorted({lo, hi, 0, 1, -1 if lo < 0 else 0, hi // 2, lo // 2})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(-3, 200))


def timestamps() -> st.SearchStrategy[Message]:
    seconds = st.one_of(
        st.sampled_from(_ABSURD_SECONDS),
        st.integers(_NOW_S - 400 * 86_400, _NOW_S + 86_400),
        st.integers(*INT64),
    )
    nanos = st.one_of(st.sampled_from(_ABSURD_NANOS), st.integers(*INT32))
    return st.builds(Timestamp, seconds=seconds, nanos=nanos)


def _recent_timestamps() -> st.SearchStrategy[Message]:
    """Within the last day (Check's order_time backdate limit), so a tame order passes."""
    now_s = int(time.time())
    return st.builds(
        Timestamp, seconds=st.integers(now_s - 86_000, now_s), nanos=st.integers(0, 999_999_999)
    )


_SCALARS: dict[int, Callable[[], st.SearchStrategy[Any]]] = {
    FieldDescriptor.TYPE_INT32: lambda: _integers(32),
    FieldDescriptor.TYPE_SINT32: lambda: _integers(32),
    FieldDescriptor.TYPE_SFIXED32: lambda: _integers(32),
    FieldDescriptor.TYPE_INT64: lambda: _integers(64),
    FieldDescriptor.TYPE_SINT64: lambda: _integers(64),
    FieldDescriptor.TYPE_SFIXED64: lambda: _integers(64),
    FieldDescriptor.TYPE_UINT32: lambda: _integers(32, unsigned=True),
    FieldDescriptor.TYPE_FIXED32: lambda: _integers(32, unsigned=True),
    FieldDescriptor.TYPE_UINT64: lambda: _integers(64, unsigned=True),
    FieldDescriptor.TYPE_FIXED64: lambda: _integers(64, unsigned=True),
    FieldDescriptor.TYPE_BOOL: st.booleans,
    FieldDescriptor.TYPE_DOUBLE: lambda: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: lambda: st.floats(width=32, allow_nan=True),
    FieldDescriptor.TYPE_BYTES: lambda: st.binary(max_size=64),
}


@dataclass(frozen=True)
class Knobs:
    """What :func:`messages` draws for a field it has no generic rule for."""

    words: tuple[str, ...] = ()
    # Tame: only the vocabulary's usable words, known enum numbers, small integers and
    # mostly times of the last day, to overlay on a valid request (:func:`tame_requests`).
    tame: bool = False
    max_repeated: int = 5
    max_depth: int = 4
    # full field name -> its strategy (e.g. ReloadCatalogRequest.candidate)
    overrides: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)


def _value(f: FieldDescriptor, knobs: Knobs, depth: int) -> st.SearchStrategy[Any]:
    override = knobs.overrides.get(f.full_name)
    if override is not None:
        return override
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if knobs.tame and f.message_type.full_name == "google.protobuf.Timestamp":
            # Now and then absurd, beside strings that are all valid: a row or an order
            # that passes every other check carries it into the stores and the rules.
            return st.one_of(_recent_timestamps(), _recent_timestamps(), timestamps())
        return messages(f.message_type, knobs, depth + 1)
    if f.type == FieldDescriptor.TYPE_STRING:
        if knobs.tame:
            return st.sampled_from(
                [w for w in dict.fromkeys((*VOCABULARY, *knobs.words)) if 0 < len(w) <= 128]
            )
        return strings(knobs.words)
    if f.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in f.enum_type.values]
        if knobs.tame:
            return st.sampled_from(known)
        # proto3 enums are open: a newer client's unknown number parses and must be read.
        return st.one_of(st.sampled_from(known), _integers(32))
    if knobs.tame and f.type != FieldDescriptor.TYPE_BOOL:
        return st.integers(0, 3)
    return _SCALARS[f.type]()


def messages(descriptor: Descriptor, knobs: Knobs, depth: int = 0) -> st.SearchStrategy[Any]:
    """A message of ``descriptor``'s type, each field set or left unset at random."""
    cls = message_factory.GetMessageClass(descriptor)
    if descriptor.full_name == "google.protobuf.Timestamp":
        return timestamps()
    if depth > knobs.max_depth:
        return st.just(cls())

    fields = [(f, _value(f, knobs, depth)) for f in descriptor.fields]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for f, value in fields:
            if not draw(st.booleans()):
                continue
            if f.is_repeated:
                getattr(message, f.name).extend(draw(st.lists(value, max_size=knobs.max_repeated)))
            elif f.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(message, f.name).CopyFrom(draw(value))
            else:
                setattr(message, f.name, draw(value))
        return message

    return build()


# -- ReloadCatalog candidates: the catalogue file's bytes, mostly almost right ------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(*INT64) | st.floats() | strings(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(strings(), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def _edited_catalog(draw: st.DrawFn) -> bytes:
    """The test catalogue with a few values replaced, removed or added anywhere in it:
    past the JSON parser, into the schema and the cross-checks."""
    catalog = json.loads(TEST_CATALOG.read_text(encoding="utf-8"))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(catalog)))
        if not path:
            continue
        *parents, last = path
        node = catalog
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(("replace", "delete", "add")))
        if action == "delete":
            del node[last]
        elif action == "add" and isinstance(node, dict):
            node[draw(strings())] = draw(_JSON)
        else:
            node[last] = draw(_JSON)
    return json.dumps(catalog, ensure_ascii=draw(st.booleans())).encode()


def catalog_candidates() -> st.SearchStrategy[bytes]:
    raw = TEST_CATALOG.read_bytes()
    return st.one_of(
        st.just(b""),
        st.just(raw),
        _edited_catalog(),
        mutated(st.just(raw)),
        st.binary(max_size=256),
        _JSON.map(lambda v: json.dumps(v).encode()),
    )


# -- bodies -----------------------------------------------------------------------------


@st.composite
def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "repeat", "truncate", "set")))
        at = draw(st.integers(0, len(buf)))
        if op == "flip" and buf:
            i = min(at, len(buf) - 1)
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[min(at, len(buf) - 1)] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0xFF)))
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 16))]
        elif op == "repeat":
            buf[at:at] = buf[at : at + draw(st.integers(1, 32))]
        else:
            del buf[at:]
    return bytes(buf)


def mutated(source: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return source.flatmap(_mutate)


def request_messages(rpc: Rpc, words: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    overrides: dict[str, st.SearchStrategy[Any]] = {}
    if rpc.request is catalog_admin_pb2.ReloadCatalogRequest:
        overrides["cds.v1.ReloadCatalogRequest.candidate"] = catalog_candidates()
    return messages(rpc.request.DESCRIPTOR, Knobs(tuple(words), overrides=overrides))


def _seed(rpc: Rpc, words: Sequence[str]) -> Message:
    """A request of ``rpc`` that the service accepts (with the test catalogue)."""
    if rpc.request is order_check_pb2.CheckRequest:
        return order_check_pb2.CheckRequest(
            institution_id="H1",
            patient=types_pb2.Patient(patient_id="P1", diagnosis_codes=["C34"]),
            items=[types_pb2.OrderItem(line_id="1", item_code="K")],
        )
    if rpc.request is order_check_pb2.SubmitFeedbackRequest:
        return order_check_pb2.SubmitFeedbackRequest(
            decision_id=words[0] if words else "d",
            line_id="1",
            outcome=types_pb2.FEEDBACK_OUTCOME_ACCEPTED,
        )
    if rpc.request is result_feed_pb2.PutResultsRequest:
        result = types_pb2.Result(
            result_id="R1", patient_id="P1", item_code="K", institution_id="H2"
        )
        result.reported_at.FromSeconds(int(time.time()) - 3600)
        return result_feed_pb2.PutResultsRequest(results=[result])
    if rpc.request is result_feed_pb2.WithdrawResultsRequest:
        return result_feed_pb2.WithdrawResultsRequest(
            results=[types_pb2.ResultRef(patient_id="P1", result_id="R1")]
        )
    if rpc.request is catalog_admin_pb2.ReloadCatalogRequest:
        return catalog_admin_pb2.ReloadCatalogRequest(
            dry_run=True, candidate=TEST_CATALOG.read_bytes()
        )
    return rpc.request()


def tame_requests(rpc: Rpc, words: Sequence[str] = ()) -> st.SearchStrategy[Any]:
    """A valid request with plausible values merged over it: mostly still valid, so the
    rules, the stores and the feedback desk are fuzzed, not only the validation."""
    seed = _seed(rpc, words)
    overrides: dict[str, st.SearchStrategy[Any]] = {}
    if rpc.request is catalog_admin_pb2.ReloadCatalogRequest:
        overrides["cds.v1.ReloadCatalogRequest.candidate"] = catalog_candidates()
    knobs = Knobs(tuple(words), tame=True, max_repeated=3, overrides=overrides)

    def merged(overlay: Message) -> Message:
        request = rpc.request()
        request.CopyFrom(seed)
        request.MergeFrom(overlay)
        return request

    return messages(rpc.request.DESCRIPTOR, knobs).map(merged)


# Kinds of body, and how many of each the `make test` slice sends per RPC (150 in all).
# Each kind is its own hypothesis test: mixed in one ``one_of`` the share of each
# swings with the seed (one seed gave 5 valid Checks in 150), so the slice would not
# reliably reach past validation.
CI_EXAMPLES: dict[str, int] = {"tame": 60, "wild": 40, "mutated": 30, "random": 20}


def bodies(rpc: Rpc, kind: str, words: Sequence[str] = ()) -> st.SearchStrategy[bytes]:
    """Raw request bodies for ``rpc`` of one kind (:data:`CI_EXAMPLES`): ``tame``
    (mostly valid), ``wild`` (any field any value), ``mutated`` (either, serialized,
    then flipped, spliced or truncated) or ``random`` bytes."""
    wild = request_messages(rpc, words).map(lambda m: m.SerializeToString())
    tame = tame_requests(rpc, words).map(lambda m: m.SerializeToString())
    kinds = {
        "tame": tame,
        "wild": wild,
        "mutated": mutated(st.one_of(tame, wild)),
        "random": st.binary(max_size=512),
    }
    return kinds[kind]


# -- the property -----------------------------------------------------------------------


class Misbehaved(AssertionError):
    """The server answered a fuzzed body in a way it never should."""


@dataclass
class Campaign:
    """Sends fuzzed bodies to one server and holds what it must still be after each.

    ``version`` is the catalogue version at the start: no fuzzed ReloadCatalog may
    change it (the server's --catalog file is not touched, a candidate is only ever
    previewed) and the catalogue must keep answering a plain Check ALLOW.
    """

    server: RunningServer
    version: str
    words: list[str] = field(default_factory=list)  # drawn among the vocabulary
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    calls: int = 0
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, server: RunningServer) -> Campaign:
        status = server.admin.GetCatalogStatus(
            catalog_admin_pb2.GetCatalogStatusRequest(), timeout=CALL_TIMEOUT_S
        )
        campaign = cls(server, status.version)
        campaign.assert_still_serving()
        return campaign

    def call(self, rpc: Rpc, body: bytes) -> Code:
        raw = self.server.channel.unary_unary(
            rpc.path, request_serializer=None, response_deserializer=None
        )
        try:
            raw(body, timeout=CALL_TIMEOUT_S)
            code = Code.OK
            details = ""
        except grpc.RpcError as failed:
            code = failed.code()
            details = failed.details() or ""
        self.calls += 1
        self.counts[(rpc.method, code.name)] += 1
        allowed = code in ALLOWED or (
            code is Code.RESOURCE_EXHAUSTED and len(body) > DEFAULT_MAX_RECEIVE_BYTES
        )
        if not allowed:
            raise Misbehaved(f"{rpc.method} answered {code.name} ({details!r}) to {body!r}")
        if self.server.process.poll() is not None:
            raise Misbehaved(f"server exited {self.server.process.returncode} after {body!r}")
        if rpc.request is catalog_admin_pb2.ReloadCatalogRequest:
            self.assert_still_serving()
        return code

    def assert_still_serving(self) -> None:
        status = self.server.admin.GetCatalogStatus(
            catalog_admin_pb2.GetCatalogStatusRequest(), timeout=CALL_TIMEOUT_S
        )
        if status.version != self.version:
            raise Misbehaved(f"catalogue version {self.version!r} became {status.version!r}")
        request = order_check_pb2.CheckRequest(
            institution_id="H1",
            patient=types_pb2.Patient(patient_id=SENTINEL_PATIENT),
            items=[types_pb2.OrderItem(line_id="1", item_code="K")],
        )
        answer = self.server.check.Check(request, timeout=CALL_TIMEOUT_S)
        if answer.decision != types_pb2.DECISION_ALLOW:
            raise Misbehaved(f"a plain Check answered {answer.decision} after a reload")

    def assert_log_clean(self) -> None:
        log = self.server.log_text()
        bad = [line for line in log.splitlines() if "Traceback" in line or "ERROR" in line]
        if bad:
            raise Misbehaved("server log:\n" + log[-20_000:])

    def report(self) -> str:
        """What the campaign sent and what came back, per RPC and status code."""
        elapsed = time.monotonic() - self.started
        lines = [f"fuzz: {self.calls} calls in {elapsed:.0f} s"]
        totals: Counter[str] = Counter()
        for rpc in RPCS:
            per = {c: n for (m, c), n in sorted(self.counts.items()) if m == rpc.method}
            totals.update(per)
            shown = ", ".join(f"{c} {n}" for c, n in per.items())
            lines.append(f"  {rpc.method:<18} {sum(per.values()):>7}  {shown}")
        lines.append("  by status: " + ", ".join(f"{c} {n}" for c, n in totals.most_common()))
        return "\n".join(lines)


def decision_words(server: RunningServer) -> list[str]:
    """A real decision id with a line that warns, so SubmitFeedback is fuzzed past
    NOT_FOUND too (the id is drawn from the vocabulary like any other string)."""
    words = []
    for item_code in ("EGFR", "K"):
        request = order_check_pb2.CheckRequest(
            institution_id="H1",
            patient=types_pb2.Patient(patient_id="P1", diagnosis_codes=["C34"]),
            items=[types_pb2.OrderItem(line_id="1", item_code=item_code)],
        )
        answer = server.check.Check(request, timeout=CALL_TIMEOUT_S)
        words.append(answer.decision_id)
    return words
