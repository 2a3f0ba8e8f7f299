"""CatalogAdminService, SIGHUP and reload under load, against the real server."""

from __future__ import annotations

import copy
import signal
import threading
import time

import grpc
import pytest

from cds.v1 import catalog_admin_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import TEST_CATALOG, load_test_catalog, running_server

pytestmark = pytest.mark.e2e

V1 = load_test_catalog()


def catalog_v2() -> dict:
    """Same content, another version, and a recognisable result now blocks."""
    v2 = copy.deepcopy(V1)
    v2["version"] = "test-2"
    v2["policy"] = {"severity": {"RECOGNIZABLE_RESULT_EXISTS": "BLOCK"}}
    return v2


def bad_catalog() -> dict:
    bad = copy.deepcopy(V1)
    bad["version"] = "test-bad"
    bad["surprise"] = True
    bad["recognition_items"][0]["validity_days"] = 0
    bad["recognition_items"].append(copy.deepcopy(bad["recognition_items"][1]))
    bad["sendout_labs"][0]["approved"][0]["institution_id"] = "NOWHERE"
    return bad


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("admin")) as s:
        s.feed.PutResults(
            result_feed_pb2.PutResultsRequest(
                results=[result("R1", patient_id="adm", reported_at_us=now_us() - DAY_US)]
            ),
            timeout=5,
        )
        yield s


@pytest.fixture
def v1(server):
    """Every test starts from catalogue test-1 active and no recorded error."""
    server.write_catalog(TEST_CATALOG)  # the very bytes it started on
    reload(server)
    assert status(server).version == "test-1"
    return server


def reload(server, dry_run=False):
    request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=dry_run)
    return server.admin.ReloadCatalog(request, timeout=10)


def status(server):
    return server.admin.GetCatalogStatus(catalog_admin_pb2.GetCatalogStatusRequest(), timeout=5)


def decision(server):
    response = server.check.Check(check_request(item("1", "K"), patient_id="adm"), timeout=5)
    return response.catalog_version, response.decision


def test_status_describes_the_active_catalogue(v1):
    st = status(v1)
    assert st.version == "test-1"
    assert st.source.endswith("catalog.json")
    assert st.effective_date == "2025-01-01"
    assert (st.recognition_items, st.gene_tests) == (3, 2)
    assert abs(st.loaded_at.seconds - time.time()) < 60
    assert st.last_error == ""
    assert not st.HasField("last_error_at")


def test_reload_activates_the_new_catalogue(v1):
    v1.write_catalog(catalog_v2())
    response = reload(v1)
    assert response.activated
    assert (response.version, response.previous_version) == ("test-2", "test-1")
    assert list(response.changes)
    assert decision(v1) == ("test-2", types_pb2.DECISION_BLOCK)
    assert status(v1).version == "test-2"


def test_dry_run_reports_changes_and_activates_nothing(v1):
    v1.write_catalog(catalog_v2())
    response = reload(v1, dry_run=True)
    assert not response.activated
    assert (response.version, response.previous_version) == ("test-2", "test-1")
    assert list(response.changes)
    assert decision(v1) == ("test-1", types_pb2.DECISION_WARN)
    assert status(v1).version == "test-1"


def test_a_bad_catalogue_is_refused_whole_and_the_old_one_keeps_serving(v1):
    before = v1.metrics_text()
    v1.write_catalog(bad_catalog())
    with pytest.raises(grpc.RpcError) as info:
        reload(v1)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = info.value.details()
    assert "surprise" in details
    assert "validity_days" in details
    assert "NOWHERE" in details or "institution_id" in details
    assert decision(v1) == ("test-1", types_pb2.DECISION_WARN)
    st = status(v1)
    assert st.version == "test-1"
    assert "surprise" in st.last_error
    assert abs(st.last_error_at.seconds - time.time()) < 60
    assert _counter(v1.metrics_text(), "failure") == _counter(before, "failure") + 1


def test_a_failing_dry_run_changes_nothing(v1):
    v1.write_catalog(bad_catalog())
    with pytest.raises(grpc.RpcError) as info:
        reload(v1, dry_run=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    st = status(v1)
    assert (st.version, st.last_error) == ("test-1", "")


def test_the_error_message_is_cut_at_4_kb_with_a_count_of_the_rest(v1):
    many = copy.deepcopy(V1)
    many["recognition_items"] = [
        {"code": f"X{i}", "name": "x", "category": "LAB", "validity_days": 0} for i in range(500)
    ]
    v1.write_catalog(many)
    with pytest.raises(grpc.RpcError) as info:
        reload(v1)
    details = info.value.details()
    assert len(details.encode()) <= 4096
    assert "more error(s)" in details


def test_sighup_reloads_the_catalogue(v1):
    v1.write_catalog(catalog_v2())
    v1.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while status(v1).version != "test-2":
        assert time.monotonic() < deadline, "SIGHUP did not reload"
        time.sleep(0.05)
    assert decision(v1) == ("test-2", types_pb2.DECISION_BLOCK)


def test_reload_under_eight_concurrent_callers_fails_nothing_and_mixes_no_versions(v1):
    expected = {"test-1": types_pb2.DECISION_WARN, "test-2": types_pb2.DECISION_BLOCK}
    stop = threading.Event()
    seen: list[tuple[str, int]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def caller():
        local = []
        try:
            while not stop.is_set():
                local.append(decision(v1))
        except BaseException as e:  # any failed call fails the test
            failures.append(e)
        with lock:
            seen.extend(local)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            time.sleep(0.15)
            v1.write_catalog(catalog_v2() if i % 2 == 0 else TEST_CATALOG)
            reload(v1)
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    assert len(seen) > 100
    mixed = [(v, d) for v, d in seen if expected.get(v) != d]
    assert mixed == []
    assert {v for v, _ in seen} == {"test-1", "test-2"}


def _counter(metrics: str, result_label: str) -> float:
    prefix = f'cds_catalog_reloads_total{{result="{result_label}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no {prefix!r} in metrics")
