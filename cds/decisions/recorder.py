"""The one seam between the service and the durable decision log (:mod:`cds.decisions.log`).

The service hands over domain objects (the order and its evaluation, or a
:class:`FeedbackRecord`); what goes into the log, and how patient and clinician are
pseudonymised, is the log's business. ``--no-decision-log``
(or ``decision_log=None``) turns recording off, and start-up says so.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Protocol

from cds.config import DEFAULT_DECISION_LOG_BACKUPS, DEFAULT_DECISION_LOG_MAX_BYTES
from cds.decisions.log import CountsEntry, DecisionEntry, DecisionLog
from cds.decisions.memory import Remembered
from cds.domain import FeedbackOutcome, ItemDecision
from cds.metrics import Metrics
from cds.security.pseudonyms import Pseudonymizer

log = logging.getLogger(__name__)


class FeedbackRecord(NamedTuple):
    """One feedback, with what the log needs from the decision it answers."""

    decision_id: str
    line_id: str
    outcome: FeedbackOutcome
    override_code: str
    comment: str
    clinician_id: str
    at_us: int
    remembered: Remembered
    line: ItemDecision


class DecisionRecorder(Protocol):
    """Where decisions and feedback go for supervision (the durable decision log).

    ``decision`` is called on the Check path for every Check supervision reads and must
    not block; ``counts`` takes an interval's line and order counts (a minute's); neither
    waits. ``feedback`` returns only once the record is durable, because the
    clinician's override is acknowledged on that promise.
    """

    def decision(self, entry: DecisionEntry) -> None:
        """Exactly :meth:`cds.decisions.log.DecisionLog.log_decision`, so the audit recorder
        hands the Check path that method itself rather than a forwarder."""
        ...

    def counts(self, entry: CountsEntry) -> None: ...

    async def feedback(self, record: FeedbackRecord) -> None: ...

    def reload_keys(self, pseudonym_key: str) -> None:
        """Re-read the pseudonym key file (rotation); raise and keep the old keys on error."""
        ...

    async def close(self) -> None: ...


class NoRecorder:
    """No decision log configured: decisions and feedback are validated, not kept."""

    def decision(self, entry: DecisionEntry) -> None:
        return None

    def counts(self, entry: CountsEntry) -> None:
        return None

    async def feedback(self, record: FeedbackRecord) -> None:
        return None

    def reload_keys(self, pseudonym_key: str) -> None:
        return None

    async def close(self) -> None:
        return None


class AuditRecorder:
    """Decisions and feedback into a started :class:`~cds.decisions.log.DecisionLog`."""

    def __init__(self, decision_log: DecisionLog) -> None:
        self._log = decision_log
        # The Check path calls the log's own enqueue: one call per WARN/BLOCK, no forwarder.
        self.decision = decision_log.log_decision
        self.counts = decision_log.log_counts

    async def feedback(self, record: FeedbackRecord) -> None:
        remembered = record.remembered
        line = record.line
        await self._log.log_feedback(
            decision_id=record.decision_id,
            line_id=record.line_id,
            outcome=record.outcome,
            override_code=record.override_code,
            comment=record.comment,
            clinician_id=record.clinician_id,
            patient_id=remembered.patient_id,
            institution_id=remembered.institution_id,
            department_id=remembered.department_id,
            item_code=line.item_code,
            reason_codes=[r.code for r in line.reasons],
            prior_result_ids=[p.result_id for r in line.reasons for p in r.prior_results],
            catalog_version=remembered.catalog_version,
            at_us=record.at_us,
        )

    def reload_keys(self, pseudonym_key: str) -> None:
        pseudonymizer = Pseudonymizer.from_file(pseudonym_key)
        self._log.set_pseudonymizer(pseudonymizer)
        log.info(
            "pseudonym keys reloaded: new records are signed with key %s", pseudonymizer.key_id
        )

    async def close(self) -> None:
        await self._log.close()


def open_recorder(
    decision_log: str | None,
    pseudonym_key: str | None,
    metrics: Metrics,
    *,
    max_bytes: int = DEFAULT_DECISION_LOG_MAX_BYTES,
    backups: int = DEFAULT_DECISION_LOG_BACKUPS,
    pseudonymizer: Pseudonymizer | None = None,
) -> DecisionRecorder:
    """The configured recorder, started; raises OSError/ValueError on a bad path or key.

    ``max_bytes``/``backups``: size rotation, ``path`` -> ``path.1`` … ``path.<backups>``.
    ``pseudonymizer`` (used without a key file) lets the workers of one ``cds serve
    --workers N`` share the parent's random key, so their pseudonyms link.
    """
    if decision_log is None:
        log.warning("decision log disabled: decisions and feedback are not recorded")
        return NoRecorder()
    if pseudonymizer is None or pseudonym_key is not None:
        pseudonymizer = Pseudonymizer.from_config(pseudonym_key)
    decision_log_ = DecisionLog(
        decision_log,
        pseudonymizer,
        max_bytes=max_bytes,
        backups=backups,
        on_drop=metrics.decision_log_dropped.inc,
    )
    decision_log_.start()
    log.info("decision log: %s", decision_log)
    return AuditRecorder(decision_log_)
