"""OrderCheckService end to end: the real server process, called over gRPC."""

from __future__ import annotations

import json
import subprocess

import grpc
import pytest

from cds.v1 import order_check_pb2, result_feed_pb2, types_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import cds_command, running_server, server_env

pytestmark = pytest.mark.e2e

ALLOW = types_pb2.DECISION_ALLOW
WARN = types_pb2.DECISION_WARN
BLOCK = types_pb2.DECISION_BLOCK
ACCEPTED = types_pb2.FEEDBACK_OUTCOME_ACCEPTED
OVERRIDDEN = types_pb2.FEEDBACK_OUTCOME_OVERRIDDEN


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("check")) as s:
        yield s


def put(server, *results):
    return server.feed.PutResults(result_feed_pb2.PutResultsRequest(results=results), timeout=5)


def withdraw(server, patient_id, result_id):
    request = result_feed_pb2.WithdrawResultsRequest(
        results=[types_pb2.ResultRef(patient_id=patient_id, result_id=result_id)]
    )
    return server.feed.WithdrawResults(request, timeout=5)


def code_of(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_an_unremarkable_order_is_allowed_with_a_decision_id_and_version(server):
    response = server.check.Check(check_request(item("1", "K"), patient_id="clean"), timeout=5)
    assert response.decision == ALLOW
    assert response.catalog_version == "test-1"
    assert response.decision_id
    assert [(i.line_id, i.item_code, i.decision) for i in response.items] == [("1", "K", ALLOW)]
    assert list(response.degraded) == []


def test_decision_ids_are_unique_per_check(server):
    ids = {server.check.Check(check_request(), timeout=5).decision_id for _ in range(50)}
    assert len(ids) == 50


def test_recognition_end_to_end_put_warns_with_prior_and_withdraw_allows(server):
    reported = now_us() - DAY_US
    accepted = put(
        server, result("R-e2e", patient_id="rec-1", item_code="K", reported_at_us=reported)
    )
    assert accepted.accepted == 1

    response = server.check.Check(check_request(item("1", "K"), patient_id="rec-1"), timeout=5)
    assert response.decision == WARN
    (reason,) = response.items[0].reasons
    assert reason.code == "RECOGNIZABLE_RESULT_EXISTS"
    assert [p.result_id for p in reason.prior_results] == ["R-e2e"]
    prior = reason.prior_results[0]
    assert prior.reported_at.seconds == reported // 1_000_000
    assert prior.valid_until.seconds == (reported + 7 * DAY_US) // 1_000_000
    assert "CONDITION_CHANGED" in [o.code for o in reason.override_options]

    assert withdraw(server, "rec-1", "R-e2e").withdrawn == 1
    after = server.check.Check(check_request(item("1", "K"), patient_id="rec-1"), timeout=5)
    assert after.decision == ALLOW


def test_an_explicit_order_time_is_used_instead_of_the_clock(server):
    reported = now_us() - 3_600_000_000
    put(server, result("R-ot", patient_id="ot-1", item_code="K", reported_at_us=reported))
    before_it = reported - 1_000_000
    response = server.check.Check(
        check_request(item("1", "K"), patient_id="ot-1", order_time_us=before_it), timeout=5
    )
    assert response.decision == ALLOW
    now = server.check.Check(check_request(item("1", "K"), patient_id="ot-1"), timeout=5)
    assert now.decision == WARN


def test_a_back_dated_order_sees_a_result_whose_window_has_ended_since(server):
    # K is valid 7 days; this result's window ended two hours ago, but the order was
    # placed (and is entered late) three hours ago, inside the window.
    reported = now_us() - 7 * DAY_US - 2 * 3_600_000_000
    put(server, result("R-late", patient_id="ot-2", item_code="K", reported_at_us=reported))
    placed = now_us() - 3 * 3_600_000_000
    response = server.check.Check(
        check_request(item("1", "K"), patient_id="ot-2", order_time_us=placed), timeout=5
    )
    assert response.decision == WARN
    assert [p.result_id for p in response.items[0].reasons[0].prior_results] == ["R-late"]


@pytest.mark.parametrize(
    ("offset_us", "words"),
    [(-DAY_US - 60_000_000, "before"), (6 * 60_000_000, "after")],
    ids=["a day and a minute back", "six minutes ahead"],
)
def test_an_order_time_outside_the_bound_is_invalid_argument_naming_it(server, offset_us, words):
    request = check_request(item("1", "K"), order_time_us=now_us() + offset_us)
    code, details = code_of(lambda: server.check.Check(request, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("order_time: more than")
    assert f"{words} the server's clock" in details


def test_gene_test_rules_reach_the_response(server):
    response = server.check.Check(
        check_request(
            item("1", "NTRK", category=types_pb2.ITEM_CATEGORY_GENE_TEST, consent_signed=True),
            item("2", "UNKNOWN_GENE", category=types_pb2.ITEM_CATEGORY_GENE_TEST),
            patient_id="gene-1",
        ),
        timeout=5,
    )
    assert response.decision == BLOCK
    codes = {i.line_id: [r.code for r in i.reasons] for i in response.items}
    assert codes["1"] == ["GENE_TEST_NOT_PRICED"]
    assert codes["2"] == ["GENE_TEST_NOT_IN_CATALOGUE"]


INVALID = [
    ("patient.patient_id", check_request(patient_id="")),
    ("institution_id", check_request(institution_id="")),
    ("items", order_check_pb2.CheckRequest(institution_id="H1", patient={"patient_id": "P"})),
    ("items", check_request(*(item(str(i)) for i in range(101)))),
    ("items[0].line_id", check_request(item(""))),
    ("items[1].line_id", check_request(item("1"), item("1"))),
    ("items[0].item_code", check_request(item("1", ""))),
    ("request_id", check_request(request_id="r" * 129)),
    ("patient.diagnosis_codes", check_request(diagnosis_codes=("C34",) * 51)),
]


@pytest.mark.parametrize(("field", "request_"), INVALID, ids=[f for f, _ in INVALID])
def test_a_bad_check_is_invalid_argument_naming_the_field(server, field, request_):
    code, details = code_of(lambda: server.check.Check(request_, timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":")


def test_garbage_bytes_get_an_error_and_the_server_keeps_serving(server):
    raw = server.channel.unary_unary(
        "/cds.v1.OrderCheckService/Check",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xfe\x00garbage\x07\x08\x09", timeout=5)
    assert info.value.code() != grpc.StatusCode.OK
    assert server.check.Check(check_request(), timeout=5).decision == ALLOW


# --- feedback -------------------------------------------------------------------


@pytest.fixture
def warned(server):
    """A decision whose line 1 warns (overridable) and line 2 is allowed."""
    pid = f"fb-{now_us()}"
    put(server, result("R-fb", patient_id=pid, item_code="K", reported_at_us=now_us() - DAY_US))
    response = server.check.Check(
        check_request(item("1", "K"), item("2", "HBA1C"), patient_id=pid), timeout=5
    )
    assert [i.decision for i in response.items] == [WARN, ALLOW]
    return response.decision_id


def feedback(server, decision_id, line_id="1", outcome=OVERRIDDEN, **fields):
    request = order_check_pb2.SubmitFeedbackRequest(
        decision_id=decision_id, line_id=line_id, outcome=outcome, clinician_id="dr-1", **fields
    )
    return server.check.SubmitFeedback(request, timeout=5)


def test_accepted_feedback_needs_no_code(server, warned):
    feedback(server, warned, outcome=ACCEPTED)


def test_override_with_an_offered_reason_is_recorded_and_repeating_it_is_harmless(server, warned):
    feedback(server, warned, override_code="CONDITION_CHANGED")
    feedback(server, warned, override_code="CONDITION_CHANGED")


def test_override_without_a_code_is_invalid_argument(server, warned):
    code, details = code_of(lambda: feedback(server, warned))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("override_code:")


def test_override_with_a_code_not_in_the_catalogue_is_invalid_argument(server, warned):
    code, details = code_of(lambda: feedback(server, warned, override_code="BORED"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("override_code:")


def test_override_reason_requiring_a_comment_without_one_is_invalid_argument(server, warned):
    code, details = code_of(lambda: feedback(server, warned, override_code="OTHER"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("comment:")
    feedback(server, warned, override_code="OTHER", comment="患者要求复查")


def test_feedback_without_an_outcome_is_invalid_argument(server, warned):
    code, details = code_of(lambda: feedback(server, warned, outcome=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("outcome:")


def test_feedback_on_an_unknown_decision_is_not_found(server):
    code, details = code_of(lambda: feedback(server, "no-such-decision", outcome=ACCEPTED))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("decision_id:")


def test_feedback_on_an_unknown_line_is_not_found(server, warned):
    code, details = code_of(lambda: feedback(server, warned, line_id="9", outcome=ACCEPTED))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("line_id:")


def test_override_on_a_line_without_override_options_is_failed_precondition(server, warned):
    code, details = code_of(lambda: feedback(server, warned, line_id="2", override_code="OTHER"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("line_id:")


def test_accepting_a_line_that_showed_no_reason_is_failed_precondition(server, warned):
    code, details = code_of(lambda: feedback(server, warned, line_id="2", outcome=ACCEPTED))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("line_id:")


def test_a_warning_without_override_options_is_overridden_with_a_comment_alone(server):
    response = server.check.Check(check_request(item("1", "NA"), item("2", "NA")), timeout=5)
    assert [i.decision for i in response.items] == [ALLOW, WARN]  # DUPLICATE_IN_REQUEST
    code, details = code_of(lambda: feedback(server, response.decision_id, line_id="2"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("comment:")
    feedback(server, response.decision_id, line_id="2", comment="两次采血：空腹与餐后")


def test_override_on_a_fixed_block_is_failed_precondition(server):
    response = server.check.Check(
        check_request(item("1", "NTRK", category=types_pb2.ITEM_CATEGORY_GENE_TEST)), timeout=5
    )
    assert response.decision == BLOCK
    code, _ = code_of(
        lambda: feedback(server, response.decision_id, override_code="CONDITION_CHANGED")
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION


# --- the command line against the server -----------------------------------------------


def test_cds_check_sends_a_json_request_and_prints_the_answer(server, tmp_path):
    request = {
        "institution_id": "H1",
        "patient": {"patient_id": "cli-1"},
        "items": [{"line_id": "1", "item_code": "NTRK", "category": "ITEM_CATEGORY_GENE_TEST"}],
    }
    done = subprocess.run(
        cds_command("check", "--server", server.address, "-"),
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["decision"] == "DECISION_BLOCK"
    assert answer["catalog_version"] == "test-1"
    assert answer["items"][0]["reasons"][0]["code"] == "GENE_TEST_NOT_PRICED"


def test_cds_check_reports_a_refused_request_and_exits_1(server):
    done = subprocess.run(
        cds_command("check", "--server", server.address, "-"),
        input=json.dumps({"institution_id": "H1", "items": [{"line_id": "1", "item_code": "K"}]}),
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=30,
    )
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr
    assert "patient.patient_id" in done.stderr
