"""Keyed pseudonyms of patient and clinician ids, and the key file they come from.

Hospital ids are a small, guessable space, so a plain hash would be reversed by hashing
every possible id: the decision log and the supervision report only ever see a keyed
hash (HMAC-SHA256) of them. Keys rotate by appending; every record names the key that
made it, and an authorised investigator can still find one person's records under every
key (``cds audit pseudonyms``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from collections.abc import Sequence
from pathlib import Path

_LOG = logging.getLogger(__name__)

# 128 bits of HMAC-SHA256 output. Safe because (1) guessing a pseudonym without the key
# is a 2**-128 event per guess — the secrecy of the key, not the length, is what stops a
# dictionary attack over the small space of hospital ids; (2) by the birthday bound the
# chance that two of n ids share a pseudonym is about n**2 / 2**129: for 10**9 ids that
# is ~1.5e-21, so records never merge two people. Half the hex keeps lines short.
PSEUDONYM_HEX_CHARS = 32
MIN_KEY_BYTES = 32
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")

# Separate namespaces: the same string used as a patient id and as a clinician id
# gets unrelated pseudonyms, so the two populations cannot be joined through the log.
_PATIENT = b"patient\x00"
_CLINICIAN = b"clinician\x00"


# Ids whose pseudonym under the active key is remembered (a few hundred KB at most).
PSEUDONYM_MEMO_MAX = 8192


class PseudonymKeyError(ValueError):
    """The pseudonym key file is missing, unreadable or malformed (message says which)."""


def new_key_line(key_id: str) -> str:
    """A fresh line for the key file (256 random bits, hex); append it to rotate.

    Shell equivalent:
    ``python -c 'import secrets; print("2025-06", secrets.token_hex(32))' >> KEYFILE``
    """
    if not _KEY_ID_RE.match(key_id):
        raise ValueError(f"key id {key_id!r} must match {_KEY_ID_RE.pattern}")
    return f"{key_id} {secrets.token_hex(MIN_KEY_BYTES)}"


class Pseudonymizer:
    """Keyed hash (HMAC-SHA256) of patient and clinician ids, with rotatable keys.

    Why keyed: hospital ids are a small, guessable space, so a plain hash would be
    reversed by hashing every possible id. Why several keys: rotation appends a new key;
    the newest (last) signs new records, each record names its ``key_id``, and the older
    keys stay in the file so an investigator holding a patient id can still find that
    patient's older records (``pseudonyms_of``).
    """

    __slots__ = ("_active", "_keys", "_memo", "key_id")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise PseudonymKeyError("no pseudonym key given")
        seen: set[str] = set()
        for key_id, key in keys:
            if not _KEY_ID_RE.match(key_id):
                raise PseudonymKeyError(f"key id {key_id!r} must match {_KEY_ID_RE.pattern}")
            if key_id in seen:
                raise PseudonymKeyError(f"key id {key_id!r} appears twice")
            if len(key) < MIN_KEY_BYTES:
                raise PseudonymKeyError(
                    f"key {key_id!r} has {len(key)} bytes; at least {MIN_KEY_BYTES} are required"
                )
            seen.add(key_id)
        # A prepared HMAC per key; .copy() per id skips re-deriving the padded key blocks.
        self._keys = {key_id: hmac.new(key, digestmod=hashlib.sha256) for key_id, key in keys}
        self.key_id: str = keys[-1][0]
        self._active = self._keys[self.key_id]
        # (namespace, raw id) -> pseudonym under the active key. The decision log's
        # writer hashes two ids a record, on a thread that shares the interpreter with
        # the event loop; clinicians (and a patient's repeated orders) recur all day, so
        # most of those HMACs are repeats. Bounded; a new key is a new Pseudonymizer,
        # so rotation starts it empty. Memory only, like the ids it is computed from.
        self._memo: dict[tuple[bytes, str], str] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Pseudonymizer:
        """Read ``KEY_ID HEXKEY`` lines (``#`` comments allowed); the last key signs.

        Refuses a missing file, a malformed line or a key under 256 bits, naming the line,
        so a server never starts writing records it could not later link.
        """
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            mode = p.stat().st_mode
        except OSError as exc:
            raise PseudonymKeyError(f"cannot read pseudonym key file {p}: {exc.strerror}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            _LOG.warning("pseudonym key file %s is accessible by group/others; chmod 600 it", p)
        keys: list[tuple[str, bytes]] = []
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise PseudonymKeyError(f"{p}:{lineno}: expected 'KEY_ID HEXKEY'")
            try:
                key = bytes.fromhex(parts[1])
            except ValueError:
                raise PseudonymKeyError(f"{p}:{lineno}: key is not hexadecimal") from None
            if len(key) < MIN_KEY_BYTES:
                raise PseudonymKeyError(
                    f"{p}:{lineno}: key has {len(key)} bytes; at least {MIN_KEY_BYTES} are "
                    f"required (generate one with `cds audit new-key`)"
                )
            keys.append((parts[0], key))
        if not keys:
            raise PseudonymKeyError(f"pseudonym key file {p} holds no key")
        return cls(keys)

    @classmethod
    def ephemeral(cls) -> Pseudonymizer:
        """A random key that lives only in this process.

        Used when no key file is configured, so raw ids are still never written. The
        trade-off: pseudonyms do not link across restarts (or across worker processes),
        so supervision cannot follow one patient over time. Configure a key file for that.
        """
        return cls([(f"ephemeral-{secrets.token_hex(4)}", secrets.token_bytes(MIN_KEY_BYTES))])

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None) -> Pseudonymizer:
        """The server's choice: the key file if given, else an ephemeral key and a warning."""
        if path is not None:
            return cls.from_file(path)
        _LOG.warning(
            "no --pseudonym-key configured: audit pseudonyms use a per-process random key "
            "and will not link across restarts"
        )
        return cls.ephemeral()

    def _hash(self, mac: hmac.HMAC, namespace: bytes, raw: str) -> str:
        if not raw:
            return ""  # an absent id stays absent; hashing "" would invent a shared person
        h = mac.copy()
        h.update(namespace)
        h.update(raw.encode("utf-8"))
        return h.hexdigest()[:PSEUDONYM_HEX_CHARS]

    def _active_hash(self, namespace: bytes, raw: str) -> str:
        memo = self._memo
        key = (namespace, raw)
        found = memo.get(key)
        if found is None:
            if len(memo) >= PSEUDONYM_MEMO_MAX:
                memo.clear()
            found = memo[key] = self._hash(self._active, namespace, raw)
        return found

    def patient(self, patient_id: str) -> str:
        return self._active_hash(_PATIENT, patient_id)

    def clinician(self, clinician_id: str) -> str:
        return self._active_hash(_CLINICIAN, clinician_id)

    def pseudonyms_of(self, *, patient_id: str = "", clinician_id: str = "") -> dict[str, str]:
        """``{key_id: pseudonym}`` under every key: how to find one person's records."""
        if bool(patient_id) == bool(clinician_id):
            raise ValueError("give exactly one of patient_id or clinician_id")
        ns, raw = (_PATIENT, patient_id) if patient_id else (_CLINICIAN, clinician_id)
        return {key_id: self._hash(mac, ns, raw) for key_id, mac in self._keys.items()}
