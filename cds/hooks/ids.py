"""Card and suggestion uuids that name (decision_id, line) by themselves.

Feedback on a card names only its ``uuid``. Rather than a table from uuids to
decisions — one more thing to bound, expire and, with several workers or replicas,
share — the uuid *is* the decision id and the line's position, packed into an RFC 9562
version-8 (custom) UUID. Feedback decodes it and asks the decision memory (shared
through Redis with ``--results``), so it works whichever process receives it.

The hooks door makes its own decision ids (:class:`~cds.decisions.memory.DecisionIds`
with a prefix of 16 hex digits it chose, then ``-`` and a counter), so the format
packed here is this module's own, whatever the gRPC door's ids look like.

Payload (122 bits): prefix (64) · counter (50) · line index (7) · kind (1: card or
suggestion). A version-8 UUID keeps 4 bits for the version and 2 for the variant.
"""

from __future__ import annotations

import secrets
import uuid
from typing import NamedTuple

from cds.decisions.memory import DecisionIds
from cds.orders.validation import ITEMS

_PREFIX_BITS = 64
_COUNTER_BITS = 50
_LINE_BITS = 7
_KIND_BITS = 1
_PAYLOAD_BITS = _PREFIX_BITS + _COUNTER_BITS + _LINE_BITS + _KIND_BITS  # 122
assert ITEMS.most < 1 << _LINE_BITS
CARD = 0
SUGGESTION = 1


class CardRef(NamedTuple):
    decision_id: str
    line_index: int  # position of the line in the decision (the order's items)
    kind: int  # CARD or SUGGESTION


def new_decision_ids() -> DecisionIds:
    """Decision ids of the hooks door: ``<16 hex>-<counter>``, as :func:`card_uuid` packs."""
    return DecisionIds(prefix=secrets.token_hex(_PREFIX_BITS // 8))


def card_uuid(decision_id: str, line_index: int, kind: int = CARD) -> str:
    prefix, _, counter = decision_id.partition("-")
    payload = (
        (int(prefix, 16) << (_COUNTER_BITS + _LINE_BITS + _KIND_BITS))
        | (int(counter) << (_LINE_BITS + _KIND_BITS))
        | (line_index << _KIND_BITS)
        | kind
    )
    if len(prefix) != _PREFIX_BITS // 4 or payload >> _PAYLOAD_BITS:
        raise ValueError(f"not a decision id of the hooks door: {decision_id!r}")
    value = (
        ((payload >> 74) << 80)  # 48 bits
        | (0x8 << 76)  # version 8
        | (((payload >> 62) & 0xFFF) << 64)  # 12 bits
        | (0b10 << 62)  # the RFC variant
        | (payload & ((1 << 62) - 1))  # 62 bits
    )
    return str(uuid.UUID(int=value))


def card_ref(card: str) -> CardRef | None:
    """What a uuid from :func:`card_uuid` names; None for any other string."""
    try:
        value = uuid.UUID(card).int
    except (ValueError, TypeError, AttributeError):
        return None
    if (value >> 76) & 0xF != 0x8 or (value >> 62) & 0b11 != 0b10:
        return None
    payload = ((value >> 80) << 74) | (((value >> 64) & 0xFFF) << 62) | (value & ((1 << 62) - 1))
    kind = payload & 1
    line_index = (payload >> _KIND_BITS) & ((1 << _LINE_BITS) - 1)
    counter = (payload >> (_LINE_BITS + _KIND_BITS)) & ((1 << _COUNTER_BITS) - 1)
    prefix = payload >> (_COUNTER_BITS + _LINE_BITS + _KIND_BITS)
    if counter == 0:
        return None  # DecisionIds counts from 1
    return CardRef(f"{prefix:016x}-{counter}", line_index, kind)
