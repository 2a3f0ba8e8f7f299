"""ResultFeedService end to end: partial rejection, expiry, limits, withdrawal, the CLI feed."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from cds.v1 import result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import cds_command, running_server, server_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("feed")) as s:
        yield s


def put(server, results):
    return server.feed.PutResults(result_feed_pb2.PutResultsRequest(results=results), timeout=10)


def test_bad_rows_are_rejected_and_good_rows_kept(server):
    yesterday = now_us() - DAY_US
    response = put(
        server,
        [
            result("R1", patient_id="pr-1", reported_at_us=yesterday),
            result("", patient_id="pr-1", reported_at_us=yesterday),
            result("R3", patient_id="pr-1", reported_at_us=None),
            result("R4", patient_id="pr-1", reported_at_us=now_us() + 3600 * 1_000_000),
            result("R5", patient_id="pr-1", item_code="K" * 129, reported_at_us=yesterday),
        ],
    )
    assert (response.accepted, response.rejected) == (1, 4)
    assert list(response.errors) == [
        "results[1].result_id: required",
        "results[2].reported_at: required",
        "results[3].reported_at: more than 5 minutes after the server's clock",
        "results[4].item_code: longer than 128 characters",
    ]
    check = server.check.Check(check_request(item("1", "K"), patient_id="pr-1"), timeout=5)
    assert [p.result_id for p in check.items[0].reasons[0].prior_results] == ["R1"]


def _metric(server, name: str) -> float:
    for line in server.metrics_text().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def test_rows_already_past_their_window_are_counted_expired_not_accepted(server):
    now = now_us()
    fresh = [now - DAY_US - i * 3_600_000_000 for i in range(3)]
    stale = now - 30 * DAY_US  # K's window is 7 days (+ 25 hours' margin)
    ingested = _metric(server, "cds_results_ingested_total")
    expired = _metric(server, "cds_results_expired_total")
    response = put(
        server,
        [
            result("E1", patient_id="exp-1", reported_at_us=fresh[0]),
            result("E2", patient_id="exp-1", reported_at_us=stale),
            result("E3", patient_id="exp-1", reported_at_us=fresh[1]),
            result("E4", patient_id="exp-1", reported_at_us=stale - DAY_US),
            result("E5", patient_id="exp-1", reported_at_us=fresh[2]),
        ],
    )
    assert (response.accepted, response.rejected, response.expired) == (3, 0, 2)
    assert list(response.errors) == []  # expired rows are no error: nothing to retry
    check = server.check.Check(check_request(item("1", "K"), patient_id="exp-1"), timeout=5)
    stored = [p.result_id for p in check.items[0].reasons[0].prior_results]
    assert stored == ["E1", "E3", "E5"]
    assert _metric(server, "cds_results_ingested_total") - ingested == 3
    assert _metric(server, "cds_results_expired_total") - expired == 2


def test_malformed_timestamps_are_rejected_per_row_naming_the_field(server):
    yesterday = now_us() - DAY_US
    good = yesterday // 1_000_000
    rows = [result(f"M{i}", patient_id="mal-1", reported_at_us=yesterday) for i in range(6)]
    rows[1].reported_at.seconds = -(2**63)
    rows[2].reported_at.nanos = -1
    rows[3].reported_at.nanos = 10**9
    rows[4].reported_at.seconds = -62_135_596_801  # a second before 0001-01-01
    rows[5].reported_at.seconds = 253_402_300_800  # 10000-01-01
    response = put(server, rows)
    assert (response.accepted, response.rejected, response.expired) == (1, 5, 0)
    assert list(response.errors) == [
        "results[1].reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
        "results[2].reported_at: nanos outside 0..999999999",
        "results[3].reported_at: nanos outside 0..999999999",
        "results[4].reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
        "results[5].reported_at: seconds outside 0001-01-01T00:00:00Z..9999-12-31T23:59:59Z",
    ]
    check = server.check.Check(check_request(item("1", "K"), patient_id="mal-1"), timeout=5)
    (prior,) = check.items[0].reasons[0].prior_results
    assert (prior.result_id, prior.reported_at.seconds) == ("M0", good)


def test_more_than_ten_thousand_results_is_invalid_argument(server):
    rows = [result(f"R{i}", patient_id="big") for i in range(10_001)]
    with pytest.raises(grpc.RpcError) as info:
        put(server, rows)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("results:")


def test_ten_thousand_results_are_accepted(server):
    yesterday = now_us() - DAY_US
    rows = [
        result(f"R{i}", patient_id=f"bulk-{i % 500}", reported_at_us=yesterday)
        for i in range(10_000)
    ]
    assert put(server, rows).accepted == 10_000


def test_putting_the_same_key_again_replaces_the_result(server):
    put(server, [result("R1", patient_id="rep-1", reported_at_us=now_us() - 3 * DAY_US)])
    newer = now_us() - DAY_US
    put(server, [result("R1", patient_id="rep-1", reported_at_us=newer)])
    check = server.check.Check(check_request(item("1", "K"), patient_id="rep-1"), timeout=5)
    (prior,) = check.items[0].reasons[0].prior_results
    assert prior.reported_at.seconds == newer // 1_000_000


def test_withdraw_returns_how_many_results_were_present(server):
    yesterday = now_us() - DAY_US
    put(server, [result(f"W{i}", patient_id="wd-1", reported_at_us=yesterday) for i in range(3)])
    request = result_feed_pb2.WithdrawResultsRequest(
        results=[
            types_pb2.ResultRef(patient_id="wd-1", result_id="W0"),
            types_pb2.ResultRef(patient_id="wd-1", result_id="W2"),
            types_pb2.ResultRef(patient_id="wd-1", result_id="missing"),
            types_pb2.ResultRef(patient_id="someone-else", result_id="W1"),
        ]
    )
    assert server.feed.WithdrawResults(request, timeout=5).withdrawn == 2
    check = server.check.Check(check_request(item("1", "K"), patient_id="wd-1"), timeout=5)
    assert [p.result_id for p in check.items[0].reasons[0].prior_results] == ["W1"]


def test_cds_results_put_feeds_a_json_lines_file(server, tmp_path):
    reported = now_us() - DAY_US
    stamp = f"{reported // 1_000_000}"
    lines = [
        {
            "result_id": "CLI-1",
            "patient_id": "cli-feed",
            "item_code": "K",
            "institution_id": "H2",
            "reported_at": _rfc3339(int(stamp)),
            "recognition_mark": True,
        },
        {"result_id": "CLI-2", "patient_id": "cli-feed", "item_code": "K"},
        {
            "result_id": "CLI-3",
            "patient_id": "cli-feed",
            "item_code": "K",
            "institution_id": "H2",
            "reported_at": _rfc3339(int(stamp) - 30 * 86_400),
        },
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    done = subprocess.run(
        cds_command("results", "put", "--server", server.address, str(path)),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["accepted"], answer["rejected"], answer["expired"]) == (1, 1, 1)
    assert answer["errors"] == ["results[1].institution_id: required"]
    check = server.check.Check(check_request(item("1", "K"), patient_id="cli-feed"), timeout=5)
    assert check.decision == types_pb2.DECISION_WARN


def _rfc3339(seconds: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
