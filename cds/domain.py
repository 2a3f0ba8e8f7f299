"""Small immutable value types shared by the engine, the stores and the service layer.

They are NamedTuples rather than dataclasses on purpose: construction is a C-level
tuple build (cheap on the per-request path) and a cached result costs exactly one
tuple in memory (the cache holds a million of them). Enum numbers equal
the proto numbers, so the service layer converts with a plain int, and
``max()`` over decisions gives the most severe one.

Times are integer microseconds since the Unix epoch (UTC): exact comparisons at the
validity boundary, no datetime objects on the hot path.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import NamedTuple

US_PER_SECOND = 1_000_000
US_PER_HOUR = 3600 * US_PER_SECOND
US_PER_DAY = 86_400 * US_PER_SECOND

# How far before the server's clock an explicit ``order_time`` may lie and still be
# judged exactly. Orders are back-entered after an emergency: the national rules for
# medical records (《病历书写基本规范》) let a rescue's orders be entered after it ends
# (records within 6 hours of its end), a rescue can last many hours, and a night's HIS
# downtime is worked through on paper and entered the next morning. A day covers all
# of that; further back, refusing is honest where judging would not be, because the
# stores have let go of results whose windows ended before then.
BACKDATE_LIMIT_US = 24 * US_PER_HOUR
# How much longer than its longest window a result is kept, so that every order_time
# the limit accepts sees it: the limit, and an hour for the clocks of replicas that
# disagree and for a store whose clock reads a little later than the request's.
RETENTION_MARGIN_US = BACKDATE_LIMIT_US + US_PER_HOUR

# What a degraded check lists in ``CheckResponse.degraded``: the results store did not
# answer, so only the catalogue's rules were applied.
RESULTS_UNAVAILABLE = "RESULTS_UNAVAILABLE"

# A NamedTuple built with the C-level ``tuple.__new__`` (same type, same fields): the
# generated constructor is a Python function, several times slower on the per-line path.
new_tuple = tuple.__new__


class Decision(IntEnum):
    UNSPECIFIED = 0
    ALLOW = 1
    WARN = 2
    BLOCK = 3


class EncounterType(IntEnum):
    UNSPECIFIED = 0
    OUTPATIENT = 1
    INPATIENT = 2
    EMERGENCY = 3


class ItemCategory(IntEnum):
    UNSPECIFIED = 0
    LAB = 1
    EXAM = 2
    GENE_TEST = 3


class FeedbackOutcome(IntEnum):
    UNSPECIFIED = 0
    ACCEPTED = 1
    OVERRIDDEN = 2


class ReasonCode(StrEnum):
    """Every reason code of the contract; members are ``str`` so they key dicts directly."""

    RECOGNIZABLE_RESULT_EXISTS = "RECOGNIZABLE_RESULT_EXISTS"
    RECOGNITION_EXEMPT_EMERGENCY = "RECOGNITION_EXEMPT_EMERGENCY"
    DUPLICATE_IN_REQUEST = "DUPLICATE_IN_REQUEST"
    GENE_TEST_NOT_IN_CATALOGUE = "GENE_TEST_NOT_IN_CATALOGUE"
    GENE_TEST_NOT_PRICED = "GENE_TEST_NOT_PRICED"
    PRICE_ITEM_MISMATCH = "PRICE_ITEM_MISMATCH"
    GENE_TEST_INDICATION_MISMATCH = "GENE_TEST_INDICATION_MISMATCH"
    MDT_REQUIRED = "MDT_REQUIRED"
    CONSENT_REQUIRED = "CONSENT_REQUIRED"
    SENDOUT_LAB_NOT_APPROVED = "SENDOUT_LAB_NOT_APPROVED"
    SENDOUT_LAB_QUALIFICATION_EXPIRED = "SENDOUT_LAB_QUALIFICATION_EXPIRED"
    SENDOUT_AVAILABLE_IN_HOUSE = "SENDOUT_AVAILABLE_IN_HOUSE"
    GENE_TEST_REPEATED = "GENE_TEST_REPEATED"


DEFAULT_SEVERITY: dict[ReasonCode, Decision] = {
    ReasonCode.RECOGNIZABLE_RESULT_EXISTS: Decision.WARN,
    ReasonCode.RECOGNITION_EXEMPT_EMERGENCY: Decision.ALLOW,
    ReasonCode.DUPLICATE_IN_REQUEST: Decision.WARN,
    ReasonCode.GENE_TEST_NOT_IN_CATALOGUE: Decision.BLOCK,
    ReasonCode.GENE_TEST_NOT_PRICED: Decision.BLOCK,
    ReasonCode.PRICE_ITEM_MISMATCH: Decision.BLOCK,
    ReasonCode.GENE_TEST_INDICATION_MISMATCH: Decision.WARN,
    ReasonCode.MDT_REQUIRED: Decision.BLOCK,
    ReasonCode.CONSENT_REQUIRED: Decision.BLOCK,
    ReasonCode.SENDOUT_LAB_NOT_APPROVED: Decision.BLOCK,
    ReasonCode.SENDOUT_LAB_QUALIFICATION_EXPIRED: Decision.BLOCK,
    ReasonCode.SENDOUT_AVAILABLE_IN_HOUSE: Decision.WARN,
    ReasonCode.GENE_TEST_REPEATED: Decision.WARN,
}

# Reasons whose prompt offers the catalogue's override reasons (docs/reference.md).
OVERRIDABLE_CODES: frozenset[str] = frozenset(
    {ReasonCode.RECOGNIZABLE_RESULT_EXISTS, ReasonCode.GENE_TEST_REPEATED}
)


class OrderItem(NamedTuple):
    line_id: str
    item_code: str
    category: ItemCategory
    price_item_code: str  # "" = bill the catalogue's price item
    sendout_lab_id: str  # "" = performed in-house
    consent_signed: bool


class Order(NamedTuple):
    request_id: str
    institution_id: str
    department_id: str
    clinician_id: str
    encounter_type: EncounterType
    patient_id: str
    diagnosis_codes: tuple[str, ...]
    first_oncology_visit: bool
    mdt_record_id: str  # "" = no MDT record
    items: tuple[OrderItem, ...]
    order_time_us: int


class StoredResult(NamedTuple):
    """One cached result of one patient (the patient id is the store's key, not repeated here)."""

    result_id: str
    item_code: str
    institution_id: str
    reported_at_us: int
    recognition_mark: bool


class PriorResult(NamedTuple):
    result_id: str
    institution_id: str
    item_code: str
    reported_at_us: int
    valid_until_us: int


class OverrideOption(NamedTuple):
    code: str
    display: str
    requires_comment: bool


class Reason(NamedTuple):
    code: str
    decision: Decision
    message: str
    prior_results: tuple[PriorResult, ...] = ()
    override_options: tuple[OverrideOption, ...] = ()
    source: str = ""
    # A silent rule's reason (SILENT policy, or an entry marked "silent"): evaluated,
    # counted and logged, never answered; ``decision`` is what it would decide if not.
    silent: bool = False
    # Prior results that counted beyond the newest MAX_LISTED_PRIOR_RESULTS listed.
    prior_results_omitted: int = 0


class ItemDecision(NamedTuple):
    line_id: str
    item_code: str
    decision: Decision
    reasons: tuple[Reason, ...]


class SilentReason(NamedTuple):
    """A reason a silent rule found on one line (``line`` indexes ``Evaluation.items``)."""

    line: int
    reason: Reason


class Evaluation(NamedTuple):
    """What the engine decides for one order; the service adds ids, version and degradation.

    ``items`` is the answer; ``silent`` what silent rules found, which changes no line.
    """

    decision: Decision
    items: tuple[ItemDecision, ...]
    silent: tuple[SilentReason, ...] = ()
