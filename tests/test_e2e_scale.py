"""Scale out end to end: `--workers 2` on one port and two replicas, on a real redis-server.

Which worker answered is visible in the decision id: its prefix is a random per-process
token. SO_REUSEPORT spreads *connections*, so each probe opens a fresh channel on a
private subchannel pool (a new TCP connection) and asks a Check first to learn which
worker it reached, then asks its question on that same connection.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from cds.v1 import (
    catalog_admin_pb2,
    catalog_admin_pb2_grpc,
    order_check_pb2,
    order_check_pb2_grpc,
    result_feed_pb2,
    result_feed_pb2_grpc,
    types_pb2,
)
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.redis_server import (  # noqa: F401
    RedisServer,
    redis_module_fixture,
    redis_server_fixture,
)
from tests.support.server import (
    RunningServer,
    cds_command,
    load_test_catalog,
    running_server,
    server_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

T = TypeVar("T")
PROBES = 16  # fresh connections: all on one of two workers has odds 2 * 2**-16
WARN = types_pb2.DECISION_WARN
ALLOW = types_pb2.DECISION_ALLOW


class Probe:
    """One fresh connection and the worker behind it."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.check = order_check_pb2_grpc.OrderCheckServiceStub(self.channel)
        self.feed = result_feed_pb2_grpc.ResultFeedServiceStub(self.channel)
        self.admin = catalog_admin_pb2_grpc.CatalogAdminServiceStub(self.channel)
        answer = self.check.Check(check_request(item("1", "K"), patient_id="whoami"), timeout=5)
        self.worker = worker_of(answer)

    def status(self) -> catalog_admin_pb2.GetCatalogStatusResponse:
        return self.admin.GetCatalogStatus(catalog_admin_pb2.GetCatalogStatusRequest(), timeout=5)

    def close(self) -> None:
        self.channel.close()


def worker_of(answer: order_check_pb2.CheckResponse) -> str:
    return answer.decision_id.rpartition("-")[0]


def probes(server: RunningServer, n: int = PROBES) -> Iterator[Probe]:
    for _ in range(n):
        probe = Probe(server.address)
        try:
            yield probe
        finally:
            probe.close()


def put(stub: Any, *results: types_pb2.Result) -> result_feed_pb2.PutResultsResponse:
    return stub.PutResults(result_feed_pb2.PutResultsRequest(results=results), timeout=5)


def withdraw(stub: Any, patient_id: str, result_id: str) -> int:
    ref = types_pb2.ResultRef(patient_id=patient_id, result_id=result_id)
    request = result_feed_pb2.WithdrawResultsRequest(results=[ref])
    return stub.WithdrawResults(request, timeout=5).withdrawn


def priors(answer: order_check_pb2.CheckResponse) -> set[str]:
    return {p.result_id for r in answer.items[0].reasons for p in r.prior_results}


def metric(server: RunningServer, name: str) -> float:
    pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    match = pattern.search(server.metrics_text())
    assert match, f"{name} not exported"
    return float(match.group(1))


def eventually(check: Callable[[], T], timeout_s: float = 5.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout_s}s")
        time.sleep(0.02)


def version_of(server: RunningServer) -> str:
    request = catalog_admin_pb2.GetCatalogStatusRequest()
    return str(server.admin.GetCatalogStatus(request, timeout=5).version)


def catalog(version: str) -> dict[str, Any]:
    data = copy.deepcopy(load_test_catalog())
    data["version"] = version
    return data


CHECK_OK = (
    'grpc_server_handled_total{grpc_code="OK",grpc_method="Check",'
    'grpc_service="cds.v1.OrderCheckService",grpc_type="unary"}'
)
DEGRADED = 'cds_checks_degraded_total{what="RESULTS_UNAVAILABLE"}'


# -- several workers on one port ---------------------------------------------------------


def test_more_than_one_worker_with_the_in_process_store_is_refused(tmp_path):
    command = cds_command("serve", "--catalog", "catalog.json", "--workers", "2")
    done = subprocess.run(
        command, env=server_env(), capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 2
    assert "--workers 2 needs a shared results store (--results redis://" in done.stderr


def test_the_listen_policy_is_checked_once_for_all_workers(tmp_path, redis_module):
    """The parent checks protected mode; workers trust it (once, not N + 1 times)."""
    import socket

    name = socket.gethostname()
    if not all(i[4][0].startswith("127.") or i[4][0] == "::1" for i in socket.getaddrinfo(name, 0)):
        pytest.skip("the host name resolves beyond loopback here")
    args = ("--workers", "2", "--results", redis_module.url, "--metrics-listen", f"{name}:0")
    with running_server(tmp_path, catalog("p-1"), args) as server:
        pass
    log = server.log_text()
    assert log.count("metrics are served without authentication") == 1, log


@pytest.fixture(scope="module")
def workers(tmp_path_factory, redis_module) -> Iterator[RunningServer]:
    args = ("--workers", "2", "--results", redis_module.url)
    args += ("--hooks-listen", "127.0.0.1:0", "--hooks-institution", "H1")
    with running_server(tmp_path_factory.mktemp("workers"), catalog("w-1"), args) as server:
        yield server


def test_two_workers_serve_one_port_and_each_sees_results_put_through_either(workers):
    patient = "two-workers"
    put_by: dict[str, list[str]] = {}
    for i, probe in enumerate(probes(workers)):
        result_id = f"R{i}"
        put(probe.feed, result(result_id, patient_id=patient, reported_at_us=now_us() - DAY_US))
        put_by.setdefault(probe.worker, []).append(result_id)
    assert len(put_by) == 2, f"puts reached only {list(put_by)}"
    every = {r for ids in put_by.values() for r in ids}
    seen_by: dict[str, tuple[set[str], int]] = {}
    for probe in probes(workers):
        answer = probe.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
        assert answer.decision == WARN
        (reason,) = answer.items[0].reasons
        seen_by[probe.worker] = (priors(answer), reason.prior_results_omitted)
    assert set(seen_by) == set(put_by)  # both workers answered, each saw every result:
    # the newest ten listed (the same ten), the rest counted.
    listed = {frozenset(seen) for seen, _ in seen_by.values()}
    assert len(listed) == 1 and next(iter(listed)) <= every, seen_by
    assert all(len(seen) + omitted == len(every) for seen, omitted in seen_by.values()), seen_by


def test_feedback_is_accepted_by_a_worker_other_than_the_one_that_decided(workers):
    first = Probe(workers.address)
    answer = first.check.Check(check_request(item("1", "K"), patient_id="two-workers"), timeout=5)
    assert answer.decision == WARN
    first.close()
    feedback = order_check_pb2.SubmitFeedbackRequest(
        decision_id=answer.decision_id,
        line_id="1",
        outcome=types_pb2.FEEDBACK_OUTCOME_ACCEPTED,
    )
    other = Probe(workers.address)
    for _ in range(PROBES):
        if other.worker != worker_of(answer):
            break
        other.close()
        other = Probe(workers.address)
    assert other.worker != worker_of(answer), "no connection reached the other worker"
    try:
        other.check.SubmitFeedback(feedback, timeout=5)
    finally:
        other.close()


def test_every_worker_serves_cds_hooks_on_the_one_port_and_takes_the_others_feedback(workers):
    """urllib opens a connection per request: the kernel spreads them over the workers."""
    workers.feed.PutResults(
        result_feed_pb2.PutResultsRequest(
            results=[result("R-HOOKS", "hooks-workers", "K", "H1", now_us() - DAY_US)]
        ),
        timeout=5,
    )
    request = {
        "hook": "order-sign",
        "hookInstance": "w",
        "context": {
            "patientId": "hooks-workers",
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": "sr",
                            "code": {"coding": [{"system": "urn:cds:item", "code": "K"}]},
                        }
                    }
                ],
            },
        },
    }
    cards = []
    for _ in range(PROBES):
        status, body = workers.hooks("/cds-services/cds-order-sign", request)
        assert status == 200, body
        cards += body["cards"]
    prefixes = {c["extension"]["cds.decision"]["decision_id"].split("-")[0] for c in cards}
    assert len(prefixes) == 2  # both workers answered
    for card in cards:  # many of these reach the worker that did not decide
        entry = {"card": card["uuid"], "outcome": "accepted"}
        assert workers.hooks("/cds-services/cds-order-sign/feedback", {"feedback": [entry]}) == (
            200,
            {},
        )


def test_a_reload_by_rpc_or_sighup_reaches_every_worker(workers):
    workers.write_catalog(catalog("w-2"))
    response = workers.admin.ReloadCatalog(catalog_admin_pb2.ReloadCatalogRequest(), timeout=30)
    assert (response.activated, response.version, response.previous_version) == (
        True,
        "w-2",
        "w-1",
    )
    versions = {(p.worker, p.status().version) for p in probes(workers)}
    assert {v for _, v in versions} == {"w-2"}
    assert len({w for w, _ in versions}) == 2

    workers.write_catalog(catalog("w-3"))
    workers.signal(signal.SIGHUP)
    eventually(lambda: version_of(workers) == "w-3")
    versions = {(p.worker, p.status().version) for p in probes(workers)}
    assert {v for _, v in versions} == {"w-3"}
    assert len({w for w, _ in versions}) == 2


def test_a_refused_reload_is_refused_by_every_worker_and_shows_in_each_status(workers):
    before = workers.admin.GetCatalogStatus(catalog_admin_pb2.GetCatalogStatusRequest(), timeout=5)
    workers.write_catalog({"version": "broken", "surprise": True})
    with pytest.raises(grpc.RpcError) as info:
        workers.admin.ReloadCatalog(catalog_admin_pb2.ReloadCatalogRequest(), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    statuses = [(p.worker, p.status()) for p in probes(workers)]
    assert len({w for w, _ in statuses}) == 2
    assert {s.version for _, s in statuses} == {before.version}
    assert all("surprise" in s.last_error for _, s in statuses)


def test_a_dry_run_sums_the_impact_of_the_orders_each_worker_checked(workers):
    patient = f"impact-{now_us()}"
    put(
        workers.feed,
        result("R-new", patient_id=patient, item_code="NEW", reported_at_us=now_us() - DAY_US),
    )
    quota: dict[str, int] = {}  # the first worker reached checks 3 orders, the other 2
    sent: dict[str, int] = {}
    for probe in probes(workers, 4 * PROBES):
        wanted = quota.setdefault(probe.worker, 3 if not quota else 2)
        if sent.get(probe.worker, 0) < wanted:
            probe.check.Check(check_request(item("1", "NEW"), patient_id=patient), timeout=5)
            sent[probe.worker] = sent.get(probe.worker, 0) + 1
    assert sorted(sent.values()) == [2, 3], "the probes did not reach both workers"
    candidate = catalog("w-preview")
    candidate["recognition_items"].append(
        {"code": "NEW", "name": "新项目", "category": "LAB", "validity_days": 7}
    )
    request = catalog_admin_pb2.ReloadCatalogRequest(
        dry_run=True, candidate=json.dumps(candidate).encode()
    )
    response = workers.admin.ReloadCatalog(request, timeout=30)
    assert not response.activated
    (row,) = [r for r in response.impact.rows if r.item_code == "NEW"]
    assert (row.before, row.after, row.lines) == (ALLOW, WARN, 5)
    assert list(row.reasons_added) == ["RECOGNIZABLE_RESULT_EXISTS"]
    assert {p.status().version for p in probes(workers, 4)} != {"w-preview"}


def test_metrics_add_up_across_workers(workers):
    before = metric(workers, CHECK_OK)
    reached = {p.worker for p in probes(workers)}  # one Check per probe
    assert len(reached) == 2
    assert metric(workers, CHECK_OK) == before + PROBES
    assert metric(workers, "cds_workers") == 2


def test_the_parents_metrics_endpoint_serves_only_get_metrics(workers):
    assert workers.metrics_status() == 200
    assert workers.metrics_status("/other") == 404
    assert workers.metrics_status(method="OPTIONS") == 405


def test_a_killed_worker_is_restarted_and_serves_again(workers):
    pids = re.search(r"pids (\d+),(\d+);", workers.log_text())
    assert pids
    victim = int(pids.group(1))
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: "serving again" in workers.log_text(), timeout_s=30)
    assert f"(pid {victim}) exited with code -9: restarting it" in workers.log_text()
    assert metric(workers, "cds_worker_restarts_total") == 1
    # the new worker runs the catalogue in force (w-3), not the broken file on disk
    versions = {(p.worker, p.status().version) for p in probes(workers)}
    assert {v for _, v in versions} == {"w-3"}
    assert len({w for w, _ in versions}) == 2


def test_sigterm_drains_every_worker_and_the_parent_exits_0(workers):
    text = workers.log_text()
    pids = [int(p) for p in re.search(r"pids ([\d,]+);", text).group(1).split(",")]
    pids += [int(p) for p in re.findall(r"\(pid (\d+)\) serving again", text)]
    assert workers.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    log = workers.log_text()
    assert log.count("stopping: health NOT_SERVING") == 2  # each live worker drained
    assert log.rstrip().endswith("cds.runtime.supervisor: stopped")


# -- replicas on one Redis ---------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_module) -> Iterator[tuple[RunningServer, RunningServer]]:
    args = ("--results", redis_module.url)
    with (
        running_server(tmp_path_factory.mktemp("replica-a"), catalog("r-1"), args) as a,
        running_server(tmp_path_factory.mktemp("replica-b"), catalog("r-1"), args) as b,
    ):
        yield a, b


def test_a_result_put_through_one_replica_is_seen_by_the_other_and_a_withdrawal_promptly(
    replicas,
):
    a, b = replicas
    request = check_request(item("1", "K"), patient_id="replicated")
    assert put(a.feed, result("R1", patient_id="replicated", reported_at_us=now_us() - DAY_US))
    assert priors(b.check.Check(request, timeout=5)) == {"R1"}
    assert priors(b.check.Check(request, timeout=5)) == {"R1"}  # now in b's near-cache
    assert withdraw(a.feed, "replicated", "R1") == 1
    # well inside b's 10 s near-cache TTL: only the invalidation can make this pass
    eventually(lambda: b.check.Check(request, timeout=5).decision == ALLOW, timeout_s=1.0)


def test_feedback_on_one_replica_finds_the_decision_of_the_other(replicas):
    a, b = replicas
    put(a.feed, result("R2", patient_id="fb-replicated", reported_at_us=now_us() - DAY_US))
    answer = a.check.Check(check_request(item("1", "K"), patient_id="fb-replicated"), timeout=5)
    assert answer.decision == WARN
    b.check.SubmitFeedback(
        order_check_pb2.SubmitFeedbackRequest(
            decision_id=answer.decision_id,
            line_id="1",
            outcome=types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN,
            override_code=_overridable_code(answer),
            comment="condition changed",
        ),
        timeout=5,
    )
    assert "OVERRIDDEN" in b.decision_log_path.read_text()


def _overridable_code(answer: order_check_pb2.CheckResponse) -> str:
    return answer.items[0].reasons[0].override_options[0].code


def test_replicas_each_reload_their_own_copy_of_the_new_catalogue(replicas):
    for replica in replicas:  # what the rollout does, one replica after the other
        replica.write_catalog(catalog("r-2"))
        replica.signal(signal.SIGHUP)
    for replica in replicas:
        eventually(lambda r=replica: version_of(r) == "r-2")


# -- Redis faults --------------------------------------------------------------------------


@pytest.fixture
def faulty(tmp_path, redis_server) -> Iterator[tuple[RunningServer, RedisServer]]:
    args = ("--workers", "2", "--results", redis_server.url)
    with running_server(tmp_path / "faults", catalog("f-1"), args) as server:
        yield server, redis_server


def degraded_check(server: RunningServer, patient: str) -> order_check_pb2.CheckResponse:
    """A Check whose answer must come well inside an EMR's deadline (0.5 s here)."""
    request = check_request(item("1", "K"), item("2", "K"), patient_id=patient)
    return server.check.Check(request, timeout=0.5)


def test_a_hung_redis_degrades_checks_in_time_and_keeps_what_it_acknowledged(faulty):
    server, redis = faulty
    assert put(server.feed, result("H1", patient_id="hung", reported_at_us=now_us() - DAY_US))
    before = metric(server, DEGRADED)
    redis.pause()
    try:
        for i in range(3):
            answer = degraded_check(server, f"never-read-{i}")  # not in any near-cache
            assert list(answer.degraded) == ["RESULTS_UNAVAILABLE"]
            # the catalogue rules still apply: the repeated line is warned
            assert [line.decision for line in answer.items] == [ALLOW, WARN]
    finally:
        redis.resume()
    assert metric(server, DEGRADED) == before + 3
    answer = server.check.Check(check_request(item("1", "K"), patient_id="hung"), timeout=5)
    assert (list(answer.degraded), priors(answer)) == ([], {"H1"})


def test_a_killed_redis_degrades_checks_refuses_writes_and_is_rejoined_by_itself(faulty):
    """Persistence is off in the test's Redis: a restart comes back empty, so this test
    proves recovery, not durability across a Redis restart (that is Redis's AOF)."""
    server, redis = faulty
    before = metric(server, DEGRADED)
    redis.stop()
    answer = degraded_check(server, "killed")
    assert list(answer.degraded) == ["RESULTS_UNAVAILABLE"]
    for call in (
        lambda: put(server.feed, result("K1", patient_id="killed", reported_at_us=now_us())),
        lambda: withdraw(server.feed, "killed", "K1"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert metric(server, DEGRADED) == before + 1
    redis.start()  # same port
    eventually(lambda: not degraded_check(server, "killed").degraded)
    assert put(server.feed, result("K2", patient_id="killed", reported_at_us=now_us() - DAY_US))
    request = check_request(item("1", "K"), patient_id="killed")
    seen = {
        (p.worker, frozenset(priors(p.check.Check(request, timeout=5)))) for p in probes(server)
    }
    assert {s for _, s in seen} == {frozenset({"K2"})}
    assert len({w for w, _ in seen}) == 2
