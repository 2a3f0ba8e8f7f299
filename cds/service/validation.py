"""Request checks with the exact field names of the contract (§1 Semantics).

Each check returns ``None`` or a message ``"<field>: <problem>"`` naming the field the
way the contract and the proto spell it (``patient.patient_id``, ``items[3].line_id``),
so an integrator can fix the request from the status message alone. String formatting
happens only once something is wrong: the valid path is comparisons and ``len``.

The Check request is checked while it is converted (``cds.service.convert.checked_order``):
counts first (:func:`shape_error`, so a huge request is refused before it is copied),
then each string as it is read out of the proto, once. The valid path only compares
lengths; the functions here find and word the first problem, in the order the
contract lists the fields, once there is one.
"""

from __future__ import annotations

from cds.domain import US_PER_SECOND, Order, OrderItem

MAX_ITEMS = 100
MAX_DIAGNOSES = 50
MAX_STRING = 128
MAX_RESULTS = 10_000
MAX_WITHDRAWALS = 10_000
MAX_RESULT_ERRORS = 100
FUTURE_SKEW_US = 5 * 60 * US_PER_SECOND

_TOO_LONG = f": longer than {MAX_STRING} characters"


class InvalidRequest(ValueError):
    """The request is refused; the message is ``"<field>: <problem>"``."""


def shape_error(n_items: int, n_diagnoses: int) -> str:
    """Which count is out of bounds (called once one is); counts are checked before
    anything is copied, so a huge request costs nothing."""
    if n_items == 0:
        return "items: at least one item is required"
    if n_items > MAX_ITEMS:
        return f"items: at most {MAX_ITEMS} items per request, got {n_items}"
    if n_diagnoses > MAX_DIAGNOSES:
        return f"patient.diagnosis_codes: at most {MAX_DIAGNOSES} codes, got {n_diagnoses}"
    raise AssertionError("called without a bad count")  # pragma: no cover


def order_string_error(order: Order) -> str:
    """Which of the order's own strings is missing or too long (called once one is)."""
    if not order.patient_id:
        return "patient.patient_id: required"
    if not order.institution_id:
        return "institution_id: required"
    for field, value in (
        ("patient.patient_id", order.patient_id),
        ("institution_id", order.institution_id),
        ("request_id", order.request_id),
        ("department_id", order.department_id),
        ("clinician_id", order.clinician_id),
        ("patient.mdt_record_id", order.mdt_record_id),
    ):
        if len(value) > MAX_STRING:
            return field + _TOO_LONG
    for i, code in enumerate(order.diagnosis_codes):
        if len(code) > MAX_STRING:
            return f"patient.diagnosis_codes[{i}]" + _TOO_LONG
    raise AssertionError("called without a bad string")  # pragma: no cover


def item_error(i: int, item: OrderItem) -> str:
    """What is wrong with line ``i`` (called once something is)."""
    if not item.line_id:
        return f"items[{i}].line_id: required"
    if not item.item_code:
        return f"items[{i}].item_code: required"
    for field in ("line_id", "item_code", "price_item_code", "sendout_lab_id"):
        if len(getattr(item, field)) > MAX_STRING:
            return f"items[{i}].{field}" + _TOO_LONG
    raise AssertionError("called without a bad line")  # pragma: no cover


def repeated_line_error(items: tuple[OrderItem, ...]) -> str:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        first = seen.setdefault(item.line_id, i)
        if first != i:
            return f"items[{i}].line_id: repeats items[{first}].line_id"
    raise AssertionError("called without a repeat")  # pragma: no cover


def result_error(
    result_id: str,
    patient_id: str,
    item_code: str,
    institution_id: str,
    reported_at_us: int | None,
    now_us: int,
) -> str | None:
    """Why one PutResults row is refused (``"<field>: <problem>"``), or ``None``."""
    for field, value in (
        ("result_id", result_id),
        ("patient_id", patient_id),
        ("item_code", item_code),
        ("institution_id", institution_id),
    ):
        if not value:
            return field + ": required"
        if len(value) > MAX_STRING:
            return field + _TOO_LONG
    if reported_at_us is None:
        return "reported_at: required"
    if reported_at_us > now_us + FUTURE_SKEW_US:
        return "reported_at: more than 5 minutes after the server's clock"
    return None
