"""The one seam between the service and the durable decision log (``cds.audit``).

The service hands over domain objects (:class:`~cds.decisions.FeedbackRecord`, the
order and its evaluation); what goes into the log, and how patient and clinician are
pseudonymised, is the audit module's business. Without ``--decision-log`` nothing is
recorded, and start-up says so.
"""

from __future__ import annotations

import logging

from cds.decisions import DecisionRecorder, FeedbackRecord
from cds.domain import Evaluation, Order
from cds.metrics import Metrics

log = logging.getLogger(__name__)


class NoRecorder:
    """No decision log configured: decisions and feedback are validated, not kept."""

    def decision(
        self,
        decision_id: str,
        order: Order,
        evaluation: Evaluation,
        catalog_version: str,
        at_us: int,
    ) -> None:
        return None

    async def feedback(self, record: FeedbackRecord) -> None:
        return None

    async def close(self) -> None:
        return None


def open_recorder(
    decision_log: str | None, pseudonym_key: str | None, metrics: Metrics
) -> DecisionRecorder:
    if decision_log is None:
        log.warning("no --decision-log given: decisions and feedback are not recorded")
        return NoRecorder()
    raise NotImplementedError("the decision log (cds.audit) has not landed yet")
