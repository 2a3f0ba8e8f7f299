"""proto <-> domain, and nothing else.

Each proto string field is read once (upb builds a new ``str`` on every attribute
access), times become integer microseconds, enum numbers map to the domain enums
through a dict (an unknown number from a newer client becomes ``UNSPECIFIED`` instead
of an exception). On the way out, Reason protos without prior results are the same
for every order that earns them, so they are built once and reused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from cds.domain import (
    US_PER_SECOND,
    EncounterType,
    Evaluation,
    ItemCategory,
    Order,
    OrderItem,
    OverrideOption,
    PriorResult,
    Reason,
    StoredResult,
    new_tuple,
)
from cds.orders.validation import (
    DIAGNOSES,
    DIAGNOSIS,
    FUTURE_SKEW_US,
    ITEMS,
    LINE,
    MAX_RESULT_ERRORS,
    ORDER,
    ORDER_TIME,
    RESULT,
    TIMESTAMP_MAX_NANOS,
    TIMESTAMP_MIN_SECONDS,
    InvalidRequest,
    counts_error,
    diagnoses_error,
    repeated_line_error,
    result_error,
)
from cds.results.base import StoredRow
from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2

_CATEGORY: dict[int, ItemCategory] = {c.value: c for c in ItemCategory}
_ENCOUNTER: dict[int, EncounterType] = {e.value: e for e in EncounterType}
_UNSPECIFIED_CATEGORY = ItemCategory.UNSPECIFIED
_UNSPECIFIED_ENCOUNTER = EncounterType.UNSPECIFIED
_NS_PER_US = 1000

# ``order_time`` bounds as distances behind the clock: one subtraction of two large ints
# per check instead of two.
_MOST_BEHIND_US = ORDER_TIME.before_us
_MOST_AHEAD_US = -ORDER_TIME.after_us

# Reason protos are cached by value; a catalogue with dynamic messages could grow the
# cache without bound, so it is simply emptied when it reaches this size.
REASON_CACHE_MAX = 4096


def timestamp_us(ts: Timestamp) -> int:
    return ts.seconds * US_PER_SECOND + ts.nanos // _NS_PER_US


def us_timestamp(us: int) -> Timestamp:
    seconds, rest = divmod(us, US_PER_SECOND)
    return Timestamp(seconds=seconds, nanos=rest * _NS_PER_US)


def checked_order(request: order_check_pb2.CheckRequest, now_us: int) -> Order:
    """The domain order, or :class:`InvalidRequest` naming the first bad field.

    One pass: each string is read out of the proto once (upb builds a new ``str`` per
    access) and checked against :mod:`cds.orders.validation`'s tables as it is read;
    counts first, so a huge request is refused before anything is copied. An unset
    ``order_time`` means ``now_us``; a set one must lie within ``ORDER_TIME`` of it.
    """
    request_items = request.items
    patient = request.patient
    diagnoses = patient.diagnosis_codes
    n_items = len(request_items)
    if not ITEMS.least <= n_items <= ITEMS.most or len(diagnoses) > DIAGNOSES.most:
        raise InvalidRequest(counts_error(n_items, len(diagnoses)))
    strings = (
        patient.patient_id,
        request.institution_id,
        request.request_id,
        request.department_id,
        request.clinician_id,
        patient.mdt_record_id,
    )
    if not ORDER.ok(strings):
        raise InvalidRequest(ORDER.error(strings))
    diagnosis_codes = tuple(diagnoses)
    if diagnosis_codes and max(map(len, diagnosis_codes)) > DIAGNOSIS.max_chars:
        raise InvalidRequest(diagnoses_error(diagnosis_codes))
    if request.HasField("order_time"):
        ts = request.order_time
        if not 0 <= ts.nanos <= TIMESTAMP_MAX_NANOS:  # would shift the time, not refuse it
            raise InvalidRequest(f"order_time: nanos outside 0..{TIMESTAMP_MAX_NANOS}")
        order_time_us = timestamp_us(ts)
        if not _MOST_AHEAD_US <= now_us - order_time_us <= _MOST_BEHIND_US:
            raise InvalidRequest(ORDER_TIME.error(order_time_us, now_us))
    else:
        order_time_us = now_us
    category = _CATEGORY.get
    unspecified = _UNSPECIFIED_CATEGORY
    line_ok = LINE.ok
    items: list[OrderItem] = []
    append = items.append
    for i in request_items:
        line = (i.line_id, i.item_code, i.price_item_code, i.sendout_lab_id)
        if not line_ok(line):
            raise InvalidRequest(LINE.error(line, f"items[{len(items)}]."))
        line_id, item_code, price_item_code, sendout_lab_id = line
        append(
            new_tuple(
                OrderItem,
                (
                    line_id,
                    item_code,
                    category(i.category, unspecified),
                    price_item_code,
                    sendout_lab_id,
                    i.consent_signed,
                ),
            )
        )
    if n_items > 1 and len({item[0] for item in items}) != n_items:
        raise InvalidRequest(repeated_line_error([item[0] for item in items]))
    patient_id, institution_id, request_id, department_id, clinician_id, mdt_record_id = strings
    return new_tuple(
        Order,
        (
            request_id,
            institution_id,
            department_id,
            clinician_id,
            _ENCOUNTER.get(request.encounter_type, _UNSPECIFIED_ENCOUNTER),
            patient_id,
            diagnosis_codes,
            patient.first_oncology_visit,
            mdt_record_id,
            tuple(items),
            order_time_us,
        ),
    )


def prior_result_proto(p: PriorResult) -> types_pb2.PriorResult:
    return types_pb2.PriorResult(
        result_id=p.result_id,
        institution_id=p.institution_id,
        item_code=p.item_code,
        reported_at=us_timestamp(p.reported_at_us),
        valid_until=us_timestamp(p.valid_until_us),
    )


def override_option_proto(o: OverrideOption) -> types_pb2.OverrideOption:
    return types_pb2.OverrideOption(
        code=o.code, display=o.display, requires_comment=o.requires_comment
    )


def reason_proto(r: Reason) -> types_pb2.Reason:
    return types_pb2.Reason(
        code=r.code,
        decision=r.decision,  # type: ignore[arg-type]  # domain enums carry the proto numbers
        message=r.message,
        prior_results=[prior_result_proto(p) for p in r.prior_results],
        override_options=[override_option_proto(o) for o in r.override_options],
        source=r.source,
        prior_results_omitted=r.prior_results_omitted,
    )


class ResponseBuilder:
    """Builds CheckResponses from prebuilt pieces.

    A reason without prior results is the same proto for every order that earns it:
    built once, copied in. A reason with prior results differs only in its message and
    its prior results: it is copied from a template with the rest (code, decision,
    source, the catalogue's override options) and those two are filled in place.
    """

    __slots__ = ("_reasons", "_templates")

    def __init__(self) -> None:
        self._reasons: dict[Reason, types_pb2.Reason] = {}
        # (code, decision, source, id(override_options)) -> (override_options, template)
        self._templates: dict[
            tuple[str, int, str, int], tuple[tuple[OverrideOption, ...], types_pb2.Reason]
        ] = {}

    def reason(self, r: Reason) -> types_pb2.Reason:
        """The proto of ``r``: shared for a reason without prior results, else new."""
        if r.prior_results:
            msg = types_pb2.Reason()
            self._fill(msg, r)
            return msg
        cached = self._reasons.get(r)
        if cached is None:
            if len(self._reasons) >= REASON_CACHE_MAX:
                self._reasons.clear()
            cached = self._reasons[r] = reason_proto(r)
        return cached

    def _fill(self, msg: types_pb2.Reason, r: Reason) -> None:
        options = r.override_options
        key = (r.code, r.decision, r.source, id(options))
        entry = self._templates.get(key)
        if entry is None or entry[0] is not options:
            if len(self._templates) >= REASON_CACHE_MAX:
                self._templates.clear()
            template = types_pb2.Reason(
                code=r.code,
                decision=r.decision,  # type: ignore[arg-type]  # the proto's number
                override_options=[override_option_proto(o) for o in options],
                source=r.source,
            )
            entry = self._templates[key] = (options, template)  # keeps ``options`` alive
        msg.CopyFrom(entry[1])
        msg.message = r.message
        if r.prior_results_omitted:
            msg.prior_results_omitted = r.prior_results_omitted
        add = msg.prior_results.add
        for p in r.prior_results:
            prior = add(
                result_id=p.result_id, institution_id=p.institution_id, item_code=p.item_code
            )
            seconds, us = divmod(p.reported_at_us, US_PER_SECOND)
            ts = prior.reported_at
            ts.seconds = seconds
            ts.nanos = us * _NS_PER_US
            seconds, us = divmod(p.valid_until_us, US_PER_SECOND)
            ts = prior.valid_until
            ts.seconds = seconds
            ts.nanos = us * _NS_PER_US

    def response(
        self,
        decision_id: str,
        catalog_version: str,
        evaluation: Evaluation,
        degraded: Sequence[str],
    ) -> order_check_pb2.CheckResponse:
        # items.add() builds each line in place; a list of ItemDecision kwargs-built
        # messages would be copied into the field a second time.
        response = order_check_pb2.CheckResponse(
            decision_id=decision_id,
            decision=evaluation.decision,  # type: ignore[arg-type]  # the proto's number
            catalog_version=catalog_version,
        )
        add = response.items.add
        for i in evaluation.items:
            line = add(line_id=i.line_id, item_code=i.item_code, decision=i.decision)
            if i.reasons:
                protos = line.reasons
                for r in i.reasons:
                    if r.prior_results:
                        self._fill(protos.add(), r)
                    else:
                        protos.append(self.reason(r))
        if degraded:
            response.degraded.extend(degraded)
        return response


class ResultRows(NamedTuple):
    rows: list[StoredRow]  # every valid row, the expired ones included (see below)
    errors: list[str]  # the first ``MAX_RESULT_ERRORS``, ``results[i].<field>: ...``
    rejected: int  # invalid rows, not in ``rows``
    expired: int  # rows in ``rows`` already past their expiry at ``now_us``


def rows_from_results(
    results: Iterable[types_pb2.Result],
    now_us: int,
    retention_us: Callable[[str], int],
) -> ResultRows:
    """The valid rows to store and the invalid ones counted and explained.

    Each row expires when the longest window that can use its code ends, per the
    active snapshot (``retention_us``). A row already past that is still handed to the
    store, which keeps nothing of it but drops a stored row with the same key (an
    upsert by nothing); it is counted in ``expired`` so the feed is not told it was
    stored. ``reported_at`` must lie in the Timestamp range with ``nanos`` in
    [0, 10^9): checked on the seconds and nanos as sent, since the microseconds they
    convert to cannot tell ``nanos=-1`` from a valid time a microsecond earlier.
    """
    rows: list[StoredRow] = []
    append = rows.append
    errors: list[str] = []
    rejected = expired = 0
    earliest = TIMESTAMP_MIN_SECONDS * US_PER_SECOND
    latest = now_us + FUTURE_SKEW_US
    max_nanos = TIMESTAMP_MAX_NANOS
    retention: dict[str, int] = {}  # per code, for this batch
    index = -1
    result_ok = RESULT.ok
    for r in results:
        index += 1
        strings = (r.result_id, r.patient_id, r.item_code, r.institution_id)
        if r.HasField("reported_at"):
            reported_at = r.reported_at
            nanos = reported_at.nanos
            reported_at_us = reported_at.seconds * US_PER_SECOND + nanos // _NS_PER_US
            # With nanos in range, reported_at_us >= earliest iff seconds is in range;
            # the top of the range is far past ``latest``.
            ok = earliest <= reported_at_us <= latest and 0 <= nanos <= max_nanos
        else:
            ok = False
        if not ok or not result_ok(strings):
            rejected += 1
            if len(errors) < MAX_RESULT_ERRORS:
                parts = (
                    (r.reported_at.seconds, r.reported_at.nanos)
                    if r.HasField("reported_at")
                    else None
                )
                errors.append(f"results[{index}].{result_error(*strings, parts, now_us)}")
            continue
        result_id, patient_id, item_code, institution_id = strings
        keep_us = retention.get(item_code)
        if keep_us is None:
            keep_us = retention[item_code] = retention_us(item_code)
        expires_at_us = reported_at_us + keep_us
        if expires_at_us <= now_us:
            expired += 1
        append(
            new_tuple(
                StoredRow,
                (
                    patient_id,
                    new_tuple(
                        StoredResult,
                        (result_id, item_code, institution_id, reported_at_us, r.recognition_mark),
                    ),
                    expires_at_us,
                ),
            )
        )
    return ResultRows(rows, errors, rejected, expired)


def refs_from_withdraw(request: result_feed_pb2.WithdrawResultsRequest) -> list[tuple[str, str]]:
    """(patient_id, result_id) pairs; a pair with an empty part cannot name a stored result."""
    refs = []
    for ref in request.results:
        patient_id = ref.patient_id
        result_id = ref.result_id
        if patient_id and result_id:
            refs.append((patient_id, result_id))
    return refs
