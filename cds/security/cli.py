"""``cds auth …`` and ``cds audit …``: the operator's side of tokens and pseudonym keys.

Secrets are made here rather than by hand so they have the strength the server's
design assumes (256 random bits: a fast hash then suffices for tokens, and pseudonyms
cannot be reversed by hashing every hospital id). Files are written atomically with
mode 0600, so a half-written tokens file is never what a SIGHUP reads. Identifiers
for ``audit pseudonyms`` come on stdin, not the command line, which other local
users can see in the process list and the shell keeps in its history.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from cds.security.auth import AuthConfigError, Credentials, Role, hash_token, new_token, token_entry
from cds.security.pseudonyms import Pseudonymizer, PseudonymKeyError, new_key_line


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auth = sub.add_parser("auth", help="bearer tokens for --auth-tokens").add_subparsers(
        dest="auth_command", required=True
    )
    new = auth.add_parser(
        "new-token",
        help="make a token; print it and the entry for the tokens file (or add the entry)",
    )
    new.add_argument("--name", required=True, help="who holds it, e.g. his-emr-1 (logged)")
    new.add_argument("--role", required=True, choices=[r.value for r in Role])
    new.add_argument(
        "--add-to",
        metavar="TOKENS_FILE",
        help="add the entry to this file (created if missing) and print only the token",
    )
    new.set_defaults(func=_new_token)
    hashed = auth.add_parser(
        "hash-token", help="the sha256 for the tokens file of a token read from stdin"
    )
    hashed.set_defaults(func=_hash_token)

    audit = sub.add_parser("audit", help="pseudonym keys of the decision log").add_subparsers(
        dest="audit_command", required=True
    )
    key = audit.add_parser("new-key", help="a new KEY_ID HEXKEY line; append it to rotate")
    key.add_argument("key_id", help="names the key in every record it signs, e.g. 2025-06")
    key.add_argument(
        "--add-to", metavar="KEY_FILE", help="append to this file (created 0600 if missing)"
    )
    key.set_defaults(func=_new_key)
    pseudonyms = audit.add_parser(
        "pseudonyms",
        help="for each id on stdin, its pseudonym under every key (to find its records)",
    )
    pseudonyms.add_argument("--pseudonym-key", required=True, metavar="KEY_FILE")
    kind = pseudonyms.add_mutually_exclusive_group(required=True)
    kind.add_argument("--patient", action="store_true", help="the ids are patient ids")
    kind.add_argument("--clinician", action="store_true", help="the ids are clinician ids")
    pseudonyms.set_defaults(func=_pseudonyms)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file holding ``text``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_token(args: argparse.Namespace) -> int:
    token = new_token()
    entry = token_entry(args.name, args.role, token)
    if args.add_to is None:
        print(token)
        print(json.dumps(entry))
        return 0
    path = Path(args.add_to)
    try:
        document = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(document, dict):
            raise AuthConfigError(f"{path}: $: expected an object")
        document.setdefault("tokens", [])
        if isinstance(document["tokens"], list):
            document["tokens"].append(entry)
        Credentials.parse(document, str(path))  # refuse to write what the server would refuse
        _write_private(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    except (OSError, ValueError) as e:
        print(f"cds: {e}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _hash_token(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip()
    try:
        print(hash_token(token))
    except ValueError as e:
        print(f"cds: {e}", file=sys.stderr)
        return 1
    return 0


def _new_key(args: argparse.Namespace) -> int:
    try:
        line = new_key_line(args.key_id)
        if args.add_to is None:
            print(line)
            return 0
        path = Path(args.add_to)
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        if before and not before.endswith("\n"):
            before += "\n"
        if before:
            Pseudonymizer.from_file(path)  # never append to a file the server would refuse
            # The server refuses a duplicate key id at the next SIGHUP; refuse it now.
            if any(part.split()[:1] == [args.key_id] for part in before.splitlines()):
                raise PseudonymKeyError(f"{path}: key id {args.key_id!r} is already there")
        _write_private(path, before + line + "\n")
    except (OSError, ValueError) as e:
        print(f"cds: {e}", file=sys.stderr)
        return 1
    print(f"added key {args.key_id} to {path}: the last key signs (SIGHUP a running server)")
    return 0


def _pseudonyms(args: argparse.Namespace) -> int:
    try:
        pseudonymizer = Pseudonymizer.from_file(args.pseudonym_key)
    except PseudonymKeyError as e:
        print(f"cds: {e}", file=sys.stderr)
        return 1
    for line in sys.stdin:
        raw = line.strip()
        if not raw:
            continue
        if args.patient:
            found = pseudonymizer.pseudonyms_of(patient_id=raw)
        else:
            found = pseudonymizer.pseudonyms_of(clinician_id=raw)
        print(json.dumps(found))
    return 0
