"""The active-catalogue holder: reload swaps one reference, a bad file changes nothing."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from cds.catalog.load import CatalogError
from cds.metrics import Metrics
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
