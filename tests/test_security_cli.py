"""`cds auth …` and `cds audit …`: the files they write are what the server accepts."""

from __future__ import annotations

import io
import json
import stat

import pytest

from cds.cli import main
from cds.security.auth import Credentials, Role, hash_token
from cds.security.pseudonyms import Pseudonymizer


def run(capsys, monkeypatch, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_new_token_added_to_a_file_is_accepted_by_the_server_side_parser(
    tmp_path, capsys, monkeypatch
):
    path = tmp_path / "auth.json"
    code, out, _ = run(
        capsys,
        monkeypatch,
        "auth",
        "new-token",
        "--name",
        "his-emr-1",
        "--role",
        "emr",
        "--add-to",
        str(path),
    )
    assert code == 0
    token = out.strip()
    code, out, _ = run(
        capsys,
        monkeypatch,
        "auth",
        "new-token",
        "--name",
        "lis-1",
        "--role",
        "feed",
        "--add-to",
        str(path),
    )
    credentials = Credentials.from_file(path)
    assert credentials.role_of_token(token) is Role.EMR
    assert credentials.role_of_token(out.strip()) is Role.FEED
    assert token not in path.read_text()  # only the digest is stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_new_token_refuses_a_duplicate_name_and_leaves_the_file_alone(
    tmp_path, capsys, monkeypatch
):
    path = tmp_path / "auth.json"
    run(
        capsys,
        monkeypatch,
        "auth",
        "new-token",
        "--name",
        "a",
        "--role",
        "emr",
        "--add-to",
        str(path),
    )
    before = path.read_text()
    code, out, err = run(
        capsys,
        monkeypatch,
        "auth",
        "new-token",
        "--name",
        "a",
        "--role",
        "admin",
        "--add-to",
        str(path),
    )
    assert (code, out) == (1, "")
    assert "duplicate name" in err
    assert path.read_text() == before


def test_new_token_without_a_file_prints_the_token_and_its_entry(capsys, monkeypatch):
    code, out, _ = run(capsys, monkeypatch, "auth", "new-token", "--name", "x", "--role", "admin")
    token, entry = out.splitlines()
    assert code == 0
    assert json.loads(entry) == {"name": "x", "role": "admin", "sha256": hash_token(token)}


def test_hash_token_reads_stdin_and_refuses_a_guessable_token(capsys, monkeypatch):
    token = "t" * 40
    assert run(capsys, monkeypatch, "auth", "hash-token", stdin=token + "\n")[:2] == (
        0,
        hash_token(token) + "\n",
    )
    code, out, err = run(capsys, monkeypatch, "auth", "hash-token", stdin="secret\n")
    assert (code, out) == (1, "")
    assert "at least 32" in err


def test_new_key_appended_rotates_and_the_old_key_still_finds_a_patient(
    tmp_path, capsys, monkeypatch
):
    path = tmp_path / "keys"
    assert run(capsys, monkeypatch, "audit", "new-key", "2025-06", "--add-to", str(path))[0] == 0
    old = Pseudonymizer.from_file(path)
    assert run(capsys, monkeypatch, "audit", "new-key", "2025-07", "--add-to", str(path))[0] == 0
    rotated = Pseudonymizer.from_file(path)
    assert rotated.key_id == "2025-07"
    assert rotated.pseudonyms_of(patient_id="P-1")["2025-06"] == old.patient("P-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _, err = run(capsys, monkeypatch, "audit", "new-key", "2025-07", "--add-to", str(path))
    assert code == 1
    assert "already there" in err


@pytest.mark.parametrize(("flag", "kind"), [("--patient", "patient"), ("--clinician", "clinician")])
def test_pseudonyms_gives_each_id_on_stdin_under_every_key(
    tmp_path, capsys, monkeypatch, flag, kind
):
    path = tmp_path / "keys"
    run(capsys, monkeypatch, "audit", "new-key", "k1", "--add-to", str(path))
    run(capsys, monkeypatch, "audit", "new-key", "k2", "--add-to", str(path))
    code, out, _ = run(
        capsys,
        monkeypatch,
        "audit",
        "pseudonyms",
        "--pseudonym-key",
        str(path),
        flag,
        stdin="ID-1\n\nID-2\n",
    )
    p = Pseudonymizer.from_file(path)
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        p.pseudonyms_of(**{f"{kind}_id": "ID-1"}),
        p.pseudonyms_of(**{f"{kind}_id": "ID-2"}),
    ]
