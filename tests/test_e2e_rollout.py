"""Safe catalogue changes against the real server: wording, silent rules, previews."""

from __future__ import annotations

import copy

import grpc
import pytest

from cds.v1 import catalog_admin_pb2, result_feed_pb2
from tests.support.protos import DAY_US, check_request, item, now_us, result
from tests.support.server import load_test_catalog, running_server

pytestmark = pytest.mark.e2e

V1 = load_test_catalog()


def edition(version: str, **changes) -> dict:
    """The test catalogue under another version, with top-level keys replaced."""
    doc = copy.deepcopy(V1)
    doc["version"] = version
    doc.update(copy.deepcopy(changes))
    return doc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("rollout")) as s:
        yield s


@pytest.fixture
def v1(server):
    server.write_catalog(V1)
    reload(server)
    return server


def reload(server, dry_run=False):
    request = catalog_admin_pb2.ReloadCatalogRequest(dry_run=dry_run)
    return server.admin.ReloadCatalog(request, timeout=30)


def put(server, *results):
    request = result_feed_pb2.PutResultsRequest(results=results)
    assert server.feed.PutResults(request, timeout=5).accepted == len(results)


def refused(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# --------------------------------------------------------------------------- wording


def test_a_reload_rewords_a_message_and_a_bad_template_keeps_the_old_wording(v1):
    patient = f"msg-{now_us()}"
    put(v1, result("R-msg", patient_id=patient, item_code="K", reported_at_us=now_us() - DAY_US))

    def message():
        response = v1.check.Check(check_request(item("1", "K"), patient_id=patient), timeout=5)
        return response.items[0].reasons[0].message

    assert message().startswith("「血清钾」有 1 份可互认的既往结果")
    worded = {"RECOGNIZABLE_RESULT_EXISTS": "{item_name}：{count} 份，最近 {latest_institution}"}
    v1.write_catalog(edition("test-msg", messages=worded))
    reload(v1)
    assert message() == "血清钾：1 份，最近 测试第一医院"

    v1.write_catalog(edition("test-msg-bad", messages={"RECOGNIZABLE_RESULT_EXISTS": "{who}"}))
    code, details = refused(lambda: reload(v1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "$.messages.RECOGNIZABLE_RESULT_EXISTS: unknown placeholder {who}" in details
    assert message() == "血清钾：1 份，最近 测试第一医院"
