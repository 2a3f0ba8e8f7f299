"""``POST /cds-services/{id}/feedback`` -> :class:`~cds.orders.feedback.FeedbackDesk`.

Each entry of ``feedback`` becomes one ``SubmitFeedback``: ``card`` (a uuid of
:mod:`cds.hooks.ids`) names the decision and the line, ``outcome`` ``accepted`` or
``overridden``, ``overrideReason.reason.code`` the override code (its ``system``, when
given, must be ``urn:cds:override-reason``: a reason the client made up cannot be
recorded as one of ours), ``overrideReason.userComment`` the comment. The clinician
is the ordering one; ``acceptedSuggestions`` and ``outcomeTimestamp`` are not needed
(the desk records its own time) and not read.

Entries are checked for shape first, all of them (a malformed one refuses the whole
request, nothing recorded), then submitted in order; each refusal (an unknown card, a
reason the card did not offer, what the desk refuses) is reported with the entry's
index, and the answer's status is the first refusal's.
Entries already recorded are harmless to send again (the desk is idempotent).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cds.decisions.memory import DecisionMemory
from cds.domain import FeedbackOutcome
from cds.hooks.cards import OVERRIDE_REASON_SYSTEM
from cds.hooks.fhir import HookError, malformed, translated
from cds.hooks.ids import card_ref
from cds.orders.feedback import Feedback, FeedbackDesk, FeedbackRefused, Refusal
from cds.orders.validation import FEEDBACK
from cds.results.base import ResultsUnavailable

_OUTCOMES = {"accepted": FeedbackOutcome.ACCEPTED, "overridden": FeedbackOutcome.OVERRIDDEN}
STATUS = {
    Refusal.INVALID: (400, "invalid"),
    Refusal.NOT_FOUND: (404, "not-found"),
    Refusal.NOT_APPLICABLE: (422, "business-rule"),
    Refusal.UNAVAILABLE: (503, "transient"),
}


class _Entry(NamedTuple):
    card: str
    outcome: int
    override_code: str
    comment: str
    system: Any  # of the override reason's Coding


def _fields(i: int) -> dict[str, str]:
    at = f"feedback[{i}]."
    return {
        "decision_id": at + "card",
        "line_id": at + "card",
        "override_code": at + "overrideReason.reason.code",
        "comment": at + "overrideReason.userComment",
        "clinician_id": at + "clinician",
        "outcome": at + "outcome",
    }


def _entries(body: Any) -> list[_Entry]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise malformed('feedback: required, an array ({"feedback": [...]})')
    if not body["feedback"]:
        raise malformed("feedback: at least one entry is required")
    out = []
    for i, entry in enumerate(body["feedback"]):
        at = f"feedback[{i}]"
        if not isinstance(entry, dict):
            raise malformed(f"{at}: expected a JSON object")
        card = entry.get("card")
        if not isinstance(card, str) or not card:
            raise malformed(f"{at}.card: required, the card's uuid")
        named = entry.get("outcome")  # any JSON value: a list or object is no dict key
        outcome = _OUTCOMES.get(named) if isinstance(named, str) else None
        if outcome is None:
            raise malformed(f"{at}.outcome: must be accepted or overridden")
        reason = entry.get("overrideReason") or {}
        if not isinstance(reason, dict):
            raise malformed(f"{at}.overrideReason: expected a JSON object")
        coding = reason.get("reason") or {}
        if not isinstance(coding, dict):
            raise malformed(f"{at}.overrideReason.reason: expected a Coding")
        code, system = coding.get("code", ""), coding.get("system", OVERRIDE_REASON_SYSTEM)
        comment = reason.get("userComment", "")
        if not isinstance(code, str) or not isinstance(comment, str):
            raise malformed(f"{at}.overrideReason: code and userComment are strings")
        out.append(_Entry(card, outcome, code, comment, system))
    return out


class FeedbackDoor:
    def __init__(self, desk: FeedbackDesk, memory: DecisionMemory) -> None:
        self._desk = desk
        self._memory = memory

    async def submit(self, body: Any, timeout_s: float) -> list[HookError]:
        """Record every entry; the refusals (empty when all were recorded)."""
        refusals = []
        for i, entry in enumerate(_entries(body)):
            try:
                await self._submit(i, entry, timeout_s)
            except HookError as refused:
                refusals.append(refused)
        return refusals

    async def _submit(self, i: int, entry: _Entry, timeout_s: float) -> None:
        names = _fields(i)
        if entry.override_code and entry.system != OVERRIDE_REASON_SYSTEM:
            # The spec lets a client add reasons of its own; they are not ours to record.
            raise malformed(
                f"feedback[{i}].overrideReason.reason.system: only the reasons the card "
                f"offered ({OVERRIDE_REASON_SYSTEM}) can be recorded"
            )
        ref = card_ref(entry.card)
        if ref is None:
            raise HookError(404, f"feedback[{i}].card: not a card of this service", "not-found")
        try:
            remembered = await self._memory.lookup(ref.decision_id)
        except ResultsUnavailable:
            raise HookError(503, f"feedback[{i}].card: decisions store unavailable; retry",
                            "transient") from None  # fmt: skip
        items = remembered.evaluation.items if remembered is not None else ()
        if ref.line_index >= len(items):
            raise HookError(
                404, f"feedback[{i}].card: unknown or no longer remembered", "not-found"
            )
        line_id = items[ref.line_index].line_id
        strings = (ref.decision_id, line_id, entry.override_code, "", entry.comment)
        error = FEEDBACK.error(strings)
        if error is not None:
            raise malformed(translated(error, names))
        feedback = Feedback(
            ref.decision_id, line_id, entry.outcome, entry.override_code, entry.comment, ""
        )
        try:
            await self._desk.submit(feedback, timeout_s)
        except FeedbackRefused as refused:
            status, code = STATUS[refused.kind]
            raise HookError(status, translated(refused.message, names), code) from None
