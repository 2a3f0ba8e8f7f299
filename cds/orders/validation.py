"""Every request limit, declared once, with the field named as the proto spells it.

Both doors enforce these tables: gRPC quotes the names as they are, the CDS Hooks door
translates them to the JSON path its caller sent (``context.patientId``), so a limit
is one number whichever way the order came in.

The tables below are the whole of what a request may hold: which strings are required,
how long any string may be, how many items, diagnoses, results or withdrawals a request
may carry. The same tables give both the fast check on the valid path and the wording
of a refusal (``"<field>: <problem>"``, e.g. ``items[3].line_id: required``), so an
integrator can fix the request from the status message alone, and a limit cannot be
enforced with one number and explained with another.

The valid path is cheap by construction: a message's required strings come first in
its table, so "all present and none too long" is one ``all`` over a slice and one
``max(map(len, ...))`` — C-level calls; the wording is worked out only once one fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from cds.domain import BACKDATE_LIMIT_US, US_PER_HOUR, US_PER_SECOND

MAX_STRING = 128
MAX_COMMENT = 1000
MAX_RESULT_ERRORS = 100
# A result may be reported a little after the server's clock (clock skew between the
# LIS and this host), not more.
FUTURE_SKEW_US = 5 * 60 * US_PER_SECOND
_SKEW_MINUTES = FUTURE_SKEW_US // (60 * US_PER_SECOND)
# google.protobuf.Timestamp's own range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z:
# the wire lets any int64 seconds and int32 nanos through, and a time outside it is a
# broken sender, not a result (seconds of -2**63 would otherwise pass as merely old).
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799
TIMESTAMP_MAX_NANOS = 999_999_999


class InvalidRequest(ValueError):
    """The request is refused; the message is ``"<field>: <problem>"``."""


class Field(NamedTuple):
    """One string field: its name as the proto spells it, whether it may be empty, its
    longest allowed length in characters."""

    name: str
    required: bool = False
    max_chars: int = MAX_STRING


class Strings:
    """The string fields of one message, in the order their values are passed.

    ``ok`` is compiled from the fields (as ``dataclasses`` compiles ``__init__``): the
    valid path runs one expression of truth tests and ``len`` comparisons, as fast as
    the hand-written check it replaces, and still cannot disagree with ``error``, which
    names the first missing required field, else the first one that is too long.
    """

    __slots__ = ("fields", "ok")

    def __init__(self, *fields: Field) -> None:
        self.fields = fields
        tests = [f"v[{i}]" for i, f in enumerate(fields) if f.required]
        tests += [f"len(v[{i}]) <= {f.max_chars}" for i, f in enumerate(fields)]
        self.ok: Callable[[Sequence[str]], bool] = eval(f"lambda v: bool({' and '.join(tests)})")

    def error(self, values: Sequence[str], prefix: str = "") -> str | None:
        """``None`` when ``ok``, else ``"<prefix><field>: <problem>"``."""
        if self.ok(values):
            return None
        for f, v in zip(self.fields, values, strict=True):
            if f.required and not v:
                return f"{prefix}{f.name}: required"
        for f, v in zip(self.fields, values, strict=True):
            if len(v) > f.max_chars:
                return f"{prefix}{f.name}: longer than {f.max_chars} characters"
        raise AssertionError("not ok, yet no field is wrong")  # pragma: no cover


class TimeBound(NamedTuple):
    """How far from the server's clock a time field may be: ``before_us`` into the past,
    ``after_us`` into the future (both ends accepted)."""

    field: str
    before_us: int
    after_us: int

    def error(self, at_us: int, now_us: int) -> str | None:
        if at_us < now_us - self.before_us:
            hours = self.before_us // US_PER_HOUR
            return f"{self.field}: more than {hours} hours before the server's clock"
        if at_us > now_us + self.after_us:
            minutes = self.after_us // (60 * US_PER_SECOND)
            return f"{self.field}: more than {minutes} minutes after the server's clock"
        return None


class Count(NamedTuple):
    """How many entries a repeated field may hold."""

    field: str
    what: str  # the entries, plural, as the message names them
    most: int
    least: int = 0

    def ok(self, n: int) -> bool:
        return self.least <= n <= self.most

    def error(self, n: int) -> str | None:
        if n < self.least:
            return f"{self.field}: at least {self.least} required, got {n}"
        if n > self.most:
            return f"{self.field}: at most {self.most} {self.what}, got {n}"
        return None


# -- Check ----------------------------------------------------------------------------

ITEMS = Count("items", "items per request", 100, least=1)
DIAGNOSES = Count("patient.diagnosis_codes", "codes", 50)
ORDER = Strings(
    Field("patient.patient_id", required=True),
    Field("institution_id", required=True),
    Field("request_id"),
    Field("department_id"),
    Field("clinician_id"),
    Field("patient.mdt_record_id"),
)
LINE = Strings(
    Field("line_id", required=True),
    Field("item_code", required=True),
    Field("price_item_code"),
    Field("sendout_lab_id"),
)
# Each diagnosis code is a string of the same limit.
DIAGNOSIS = Field("patient.diagnosis_codes")
# An explicit order time is judged exactly only as far back as the stores keep results
# beyond their windows (cds.domain.BACKDATE_LIMIT_US), and ahead by the usual skew.
ORDER_TIME = TimeBound("order_time", BACKDATE_LIMIT_US, FUTURE_SKEW_US)

# -- SubmitFeedback ---------------------------------------------------------------------

FEEDBACK = Strings(
    Field("decision_id", required=True),
    Field("line_id", required=True),
    Field("override_code"),
    Field("clinician_id"),
    Field("comment", max_chars=MAX_COMMENT),
)

# -- PutResults / WithdrawResults ---------------------------------------------------------

RESULTS = Count("results", "results per request", 10_000)
WITHDRAWALS = Count("results", "withdrawals per request", 10_000)
RESULT = Strings(
    Field("result_id", required=True),
    Field("patient_id", required=True),
    Field("item_code", required=True),
    Field("institution_id", required=True),
)


def counts_error(n_items: int, n_diagnoses: int) -> str | None:
    """Which of a Check's counts is out of bounds, checked before anything is copied."""
    return ITEMS.error(n_items) or DIAGNOSES.error(n_diagnoses)


def diagnoses_error(codes: Sequence[str]) -> str | None:
    if not codes or max(map(len, codes)) <= DIAGNOSIS.max_chars:
        return None
    for i, code in enumerate(codes):
        if len(code) > DIAGNOSIS.max_chars:
            return f"{DIAGNOSIS.name}[{i}]: longer than {DIAGNOSIS.max_chars} characters"
    raise AssertionError("unreachable")  # pragma: no cover


def repeated_line_error(line_ids: Sequence[str]) -> str | None:
    if len(line_ids) < 2 or len(set(line_ids)) == len(line_ids):
        return None
    seen: dict[str, int] = {}
    for i, line_id in enumerate(line_ids):
        first = seen.setdefault(line_id, i)
        if first != i:
            return f"items[{i}].line_id: repeats items[{first}].line_id"
    raise AssertionError("unreachable")  # pragma: no cover


def timestamp_error(field: str, seconds: int, nanos: int) -> str | None:
    """Why a Timestamp is malformed, or ``None``; the range is the type's own."""
    if not TIMESTAMP_MIN_SECONDS <= seconds <= TIMESTAMP_MAX_SECONDS:
        return f"{field}: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z"
    if not 0 <= nanos <= TIMESTAMP_MAX_NANOS:
        return f"{field}: nanos outside 0..{TIMESTAMP_MAX_NANOS}"
    return None


def result_error(
    result_id: str,
    patient_id: str,
    item_code: str,
    institution_id: str,
    reported_at: tuple[int, int] | None,
    now_us: int,
) -> str | None:
    """Why one PutResults row is refused (``"<field>: <problem>"``), or ``None``.

    ``reported_at`` is the Timestamp's (seconds, nanos) as sent, so a malformed one is
    named as such rather than by the time it would convert to."""
    error = RESULT.error((result_id, patient_id, item_code, institution_id))
    if error is not None:
        return error
    if reported_at is None:
        return "reported_at: required"
    seconds, nanos = reported_at
    error = timestamp_error("reported_at", seconds, nanos)
    if error is not None:
        return error
    reported_at_us = seconds * US_PER_SECOND + nanos // 1000
    if reported_at_us > now_us + FUTURE_SKEW_US:
        return f"reported_at: more than {_SKEW_MINUTES} minutes after the server's clock"
    return None
