"""The active-catalogue holder: reload swaps one reference, a bad file changes nothing."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from cds.catalog.load import CatalogError
from cds.metrics import Metrics
from cds.rollout.impact import Impact
from cds.rollout.state import CatalogState, errors_message
from tests.support.server import load_test_catalog

V1 = load_test_catalog()


def _write(path, catalog):
    path.write_text(json.dumps(catalog, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def state(tmp_path):
    path = tmp_path / "catalog.json"
    _write(path, V1)
    return CatalogState.load(str(path), metrics=Metrics())


def _v2():
    v2 = copy.deepcopy(V1)
    v2["version"] = "test-2"
    return v2


def test_errors_message_lists_every_error_when_they_fit():
    message = errors_message(["$.a: bad", "$.b: worse"])
    assert message.splitlines() == ["catalogue refused, 2 error(s):", "$.a: bad", "$.b: worse"]


def test_errors_message_is_cut_at_4_kb_with_a_count_of_the_rest():
    errors = [f"$.recognition_items[{i}].validity_days: 必须大于 0" for i in range(1000)]
    message = errors_message(errors)
    assert len(message.encode()) <= 4096
    shown = message.splitlines()[1:-1]
    assert shown == errors[: len(shown)]
    assert message.splitlines()[-1] == f"... and {1000 - len(shown)} more error(s)"


def test_a_missing_file_is_refused_at_start():
    with pytest.raises(CatalogError) as info:
        CatalogState.load("/nonexistent/catalog.json")
    assert info.value.errors


def test_reload_swaps_in_a_new_snapshot_and_engine(state, tmp_path):
    old = state.active
    _write(tmp_path / "catalog.json", _v2())
    outcome = asyncio.run(state.reload())
    assert (outcome.activated, outcome.version, outcome.previous_version) == (
        True,
        "test-2",
        "test-1",
    )
    assert state.active.version == "test-2"
    assert state.active.engine.snapshot is state.active.snapshot
    assert old.version == "test-1"  # the old reference is untouched for calls holding it


def test_a_refused_reload_keeps_the_active_catalogue_and_records_the_error(state, tmp_path):
    old = state.active
    bad = _v2()
    bad["surprise"] = True
    _write(tmp_path / "catalog.json", bad)
    with pytest.raises(CatalogError) as info:
        asyncio.run(state.reload())
    assert any("surprise" in e for e in info.value.errors)
    assert state.active is old
    assert "surprise" in state.last_error
    assert state.last_error_at_us > 0


def test_a_successful_reload_clears_the_last_error(state, tmp_path):
    _write(tmp_path / "catalog.json", {"version": 1})
    with pytest.raises(CatalogError):
        asyncio.run(state.reload())
    _write(tmp_path / "catalog.json", _v2())
    asyncio.run(state.reload())
    assert (state.last_error, state.last_error_at_us) == ("", 0)


def test_a_dry_run_activates_nothing_and_records_nothing(state, tmp_path):
    old = state.active
    _write(tmp_path / "catalog.json", _v2())
    outcome = asyncio.run(state.reload(dry_run=True))
    assert (outcome.activated, outcome.version) == (False, "test-2")
    assert outcome.changes
    assert state.active is old
    _write(tmp_path / "catalog.json", {"version": 1})
    with pytest.raises(CatalogError):
        asyncio.run(state.reload(dry_run=True))
    assert (state.active, state.last_error) == (old, "")


def test_a_file_reusing_the_active_version_for_other_content_is_refused(state, tmp_path):
    old = state.active
    same_version = copy.deepcopy(V1)
    same_version["recognition_items"][0]["validity_days"] = 14
    _write(tmp_path / "catalog.json", same_version)
    for dry_run in (True, False):
        with pytest.raises(CatalogError) as info:
            asyncio.run(state.reload(dry_run=dry_run))
        (error,) = info.value.errors
        assert error.startswith("$.version: 'test-1' is the active version, whose file differs")
        assert "give this edition a new version" in error
    assert state.active is old
    assert state.last_error.splitlines()[1] == error


def test_the_very_same_file_reloads_and_so_does_a_new_version(state, tmp_path):
    assert asyncio.run(state.reload()).activated  # the file it started on, unchanged
    _write(tmp_path / "catalog.json", _v2())
    assert asyncio.run(state.reload()).version == "test-2"


def test_a_candidate_dry_run_is_named_and_never_activated(state):
    candidate = json.dumps(_v2(), ensure_ascii=False).encode()
    outcome = asyncio.run(state.reload(dry_run=True, content=candidate, source="candidate"))
    assert (outcome.activated, outcome.version, state.active.version) == (False, "test-2", "test-1")
    bad = b'{"version": "x", "surprise": 1}'
    with pytest.raises(CatalogError) as info:
        asyncio.run(state.reload(dry_run=True, content=bad, source="candidate"))
    assert info.value.source == "candidate"
    assert state.last_error == ""  # a dry run records nothing


def test_a_refused_dry_run_logs_one_info_line_and_a_refused_reload_a_warning(
    state, tmp_path, caplog
):
    # A dry run is an administrator's preview: its errors go back to the caller, so a
    # candidate being iterated on must not put a multi-line WARNING in the log per try.
    bad = b'{"version": "x", "surprise": 1, "also": 2}'
    with caplog.at_level("INFO", logger="cds.rollout.state"):
        for _ in range(3):
            with pytest.raises(CatalogError):
                asyncio.run(state.reload(dry_run=True, content=bad, source="candidate"))
    dry = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(dry) == 3
    for r in dry:
        assert r.levelname == "INFO"
        message = r.getMessage()
        assert "\n" not in message
        assert "candidate refused (dry run)" in message and "test-1 keeps serving" in message
        assert "errors returned to the caller" in message
    caplog.clear()
    _write(tmp_path / "catalog.json", {"version": 1})
    with caplog.at_level("INFO", logger="cds.rollout.state"), pytest.raises(CatalogError):
        asyncio.run(state.reload())
    (real,) = [r for r in caplog.records if "refused" in r.getMessage()]
    assert real.levelname == "WARNING"
    assert "version" in real.getMessage().split("\n", 1)[1]  # the errors, for on-call


def test_every_reload_replays_the_recent_orders_against_both_engines(state, tmp_path):
    seen = []

    async def replayer(before, after):
        seen.append((before.snapshot.version, after.snapshot.version))
        return Impact(7, 1, ())

    state.replayer = replayer
    _write(tmp_path / "catalog.json", _v2())
    assert asyncio.run(state.reload(dry_run=True)).impact == Impact(7, 1, ())
    assert asyncio.run(state.reload()).impact.orders_replayed == 7
    assert seen == [("test-1", "test-2"), ("test-1", "test-2")]


def test_a_failing_replay_does_not_undo_a_reload(state, tmp_path):
    async def broken(before, after):
        raise RuntimeError("bug")

    state.replayer = broken
    _write(tmp_path / "catalog.json", _v2())
    outcome = asyncio.run(state.reload())
    assert (outcome.activated, outcome.impact.orders_replayed) == (True, 0)
    assert state.active.version == "test-2"
