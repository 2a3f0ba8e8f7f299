"""The clinician's answer to a warning or block: checked against the decision as it was
shown, recorded durably, and only then acknowledged.

The checks are the contract's (docs/reference.md, Feedback) and independent of the
door the feedback came in by: a refusal is a :class:`FeedbackRefused` whose ``kind``
each front door maps to its own status (gRPC codes, HTTP statuses) and whose message
names the field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum
from typing import NamedTuple

from cds.decisions.memory import (
    DecisionMemory,
    FeedbackKey,
    Remembered,
    find_line,
    offered_overrides,
)
from cds.decisions.recorder import DecisionRecorder, FeedbackRecord
from cds.domain import Decision, FeedbackOutcome, ItemDecision, ReasonCode
from cds.metrics import Metrics
from cds.results.base import ResultsUnavailable

log = logging.getLogger(__name__)


class Refusal(Enum):
    INVALID = "invalid"  # the feedback itself is wrong: fix it
    NOT_FOUND = "not_found"  # no such decision or line (or forgotten)
    NOT_APPLICABLE = "not_applicable"  # the line's reasons do not allow it
    UNAVAILABLE = "unavailable"  # could not be looked up or recorded now: retry


class FeedbackRefused(Exception):
    def __init__(self, kind: Refusal, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Feedback(NamedTuple):
    decision_id: str
    line_id: str
    outcome: int  # FeedbackOutcome's number; an unknown one from a newer client is refused
    override_code: str
    comment: str
    clinician_id: str  # "" = the ordering clinician


def _check_override(line: ItemDecision, override_code: str, comment: str) -> None:
    """An override the line allows, or FeedbackRefused.

    Reasons that offer override options take one of them (and its comment). A warning
    without options (an indication mismatch, an in-house test sent out, a duplicate
    line) still lets the clinician proceed: the override is then the comment alone,
    which is what supervision reads. A block without options is fixed at its cause
    (price item, consent, MDT, lab) and cannot be overridden at all.
    """
    options = offered_overrides(line)
    if not options:
        if line.decision >= Decision.BLOCK:
            raise FeedbackRefused(
                Refusal.NOT_APPLICABLE,
                "line_id: none of this line's reasons can be overridden "
                "(a block is fixed at its cause)",
            )
        if override_code:
            raise FeedbackRefused(
                Refusal.INVALID,
                "override_code: this line offers no override reasons; "
                "leave it empty and give the reason in comment",
            )
        if not comment.strip():
            raise FeedbackRefused(
                Refusal.INVALID,
                "comment: required to override a warning that offers no override reasons",
            )
        return
    if not override_code:
        raise FeedbackRefused(Refusal.INVALID, "override_code: required when outcome is OVERRIDDEN")
    option = options.get(override_code)
    if option is None:
        raise FeedbackRefused(
            Refusal.INVALID,
            "override_code: not one of the offered override reasons (" + ", ".join(options) + ")",
        )
    if option.requires_comment and not comment.strip():
        raise FeedbackRefused(
            Refusal.INVALID, f"comment: required for override reason {option.code}"
        )


class FeedbackDesk:
    """Takes feedback for the decisions ``memory`` remembers and records it."""

    def __init__(
        self, memory: DecisionMemory, metrics: Metrics, recorder: DecisionRecorder
    ) -> None:
        self._memory = memory
        self._metrics = metrics
        self._recorder = recorder
        # (decision_id, line_id) -> the write in progress for that line. A second
        # feedback for the line waits for it: a duplicate may be acknowledged only once
        # the first copy is on disk, and a change of mind must know what it replaces.
        self._writing: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def submit(self, feedback: Feedback, timeout_s: float) -> None:
        """Return once the feedback is recorded (or was already); raise FeedbackRefused.

        ``timeout_s`` bounds the wait for the decision log.
        """
        decision_id, line_id, outcome, override_code, comment, clinician_id = feedback
        try:
            remembered = await self._memory.lookup(decision_id)
        except ResultsUnavailable as e:
            raise FeedbackRefused(Refusal.UNAVAILABLE, "decisions store unavailable; retry") from e
        if remembered is None:
            raise FeedbackRefused(Refusal.NOT_FOUND, "decision_id: unknown or no longer remembered")
        line = find_line(remembered, line_id)
        if line is None:
            raise FeedbackRefused(Refusal.NOT_FOUND, "line_id: not a line of this decision")
        if not line.reasons:
            # Nothing was shown: an "accepted" here would count a recognition that
            # never was, and an override would answer a prompt nobody saw.
            raise FeedbackRefused(
                Refusal.NOT_APPLICABLE,
                "line_id: this line showed no reason: there is nothing to accept or override",
            )
        if outcome == FeedbackOutcome.OVERRIDDEN:
            _check_override(line, override_code, comment)
        elif outcome != FeedbackOutcome.ACCEPTED:
            raise FeedbackRefused(Refusal.INVALID, "outcome: must be ACCEPTED or OVERRIDDEN")
        key = FeedbackKey(outcome, override_code, comment, clinician_id)
        try:
            async with asyncio.timeout(timeout_s):
                written, previous = await self._write_once(feedback, key, remembered, line)
        except TimeoutError as e:
            log.warning("feedback not recorded within its deadline")
            raise _unrecorded() from e
        if not written:
            return  # a retry of a feedback already on disk
        if outcome == FeedbackOutcome.ACCEPTED:
            self._metrics.feedback_accepted.inc()
        else:
            self._metrics.feedback_overridden.inc()
        if any(r.code == ReasonCode.RECOGNIZABLE_RESULT_EXISTS for r in line.reasons):
            self._count_recognition(remembered.institution_id, key, previous)

    async def _write_once(
        self, feedback: Feedback, key: FeedbackKey, remembered: Remembered, line: ItemDecision
    ) -> tuple[bool, FeedbackKey | None]:
        """Write the feedback unless exactly it is on disk already: (written, what it
        replaces). One write per line at a time; the line is marked recorded only after
        its write returned, so a duplicate arriving meanwhile waits and then finds it
        (or, if that write failed, tries its own)."""
        line_key = (feedback.decision_id, feedback.line_id)
        while (writing := self._writing.get(line_key)) is not None:
            # shield: this caller's deadline must not cancel the other caller's write.
            await asyncio.shield(writing)
        previous = self._memory.last_recorded(*line_key)
        if previous == key:
            return False, previous
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing[line_key] = done
        try:
            await self._recorder.feedback(_record(feedback, remembered, line))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("feedback not recorded: %s: %s", type(e).__name__, e)
            raise _unrecorded() from e
        else:
            self._memory.mark_recorded(*line_key, key)
        finally:
            del self._writing[line_key]
            done.set_result(None)  # waiters re-read what is recorded, whatever happened
        return True, previous

    def _count_recognition(
        self, institution: str, key: FeedbackKey, previous: FeedbackKey | None
    ) -> None:
        """The live counterpart of the report's "latest feedback counts": this one is
        counted, and the one it replaces (known to this process) is counted as replaced."""
        metrics = self._metrics
        metrics.recognition_feedback(institution, *_labels(key)).inc()
        if previous is not None:
            metrics.recognition_feedback(institution, *_labels(previous), replaced=True).inc()


def _record(feedback: Feedback, remembered: Remembered, line: ItemDecision) -> FeedbackRecord:
    return FeedbackRecord(
        feedback.decision_id,
        feedback.line_id,
        FeedbackOutcome(feedback.outcome),
        feedback.override_code,
        feedback.comment,
        # Without a clinician on the feedback, it is the ordering clinician's.
        feedback.clinician_id or remembered.clinician_id,
        time.time_ns() // 1000,
        remembered,
        line,
    )


def _unrecorded() -> FeedbackRefused:
    return FeedbackRefused(Refusal.UNAVAILABLE, "feedback could not be recorded; retry")


def _labels(key: FeedbackKey) -> tuple[str, str]:
    if key.outcome == FeedbackOutcome.ACCEPTED:
        return "accepted", ""
    return "overridden", key.override_code
