"""Any body a client can send to any RPC gets an answer the contract allows, never a crash.

One real server per module; every body goes as raw bytes, exactly as a broken or
hostile client would send it (tests/support/fuzz.py builds them, and says why
hypothesis rather than atheris). Whatever arrives, the answer is OK or a status the
client can act on, within the timeout; the server lives on; its log has no traceback
and no ERROR; and the catalogue in force is still the one it started with and still
answers a plain Check. ReloadCatalog takes no path: it rereads the server's own
``--catalog`` file (in this module's tmp dir, never rewritten here) or, with
``dry_run``, previews the candidate bytes in the request, which are never activated.

``make test`` runs the deterministic slice (profile ``cds-ci``: the same 150 examples per
RPC every run, in four kinds). ``make fuzz`` sets ``CDS_FUZZ_SECONDS`` and runs only
:func:`test_fuzz_campaign`: rounds of fresh random examples over every RPC until the
time is up, then the number of calls and the count per status code.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import pytest
from hypothesis import given, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from cds.service.rpcs import RPCS, Rpc
from tests.support.fuzz import (
    CI_EXAMPLES,
    CI_PROFILE,
    FUZZ_PROFILE,
    Campaign,
    bodies,
    decision_words,
)
from tests.support.redis_server import RedisServer
from tests.support.server import REPO_ROOT, running_server

pytestmark = pytest.mark.e2e

FUZZ_SECONDS = float(os.environ.get("CDS_FUZZ_SECONDS") or 0)
# make fuzz FUZZ_STORE=redis: the server keeps results in a redis-server of its own.
FUZZ_STORE = os.environ.get("CDS_FUZZ_STORE") or "memory"
# Where `make fuzz` keeps the failures it found, replayed first on the next run.
FUZZ_DB = REPO_ROOT / ".hypothesis" / "fuzz"


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz")
    with ExitStack() as stack:
        extra: tuple[str, ...] = ()
        if FUZZ_STORE == "redis":
            (workdir / "redis").mkdir()
            redis = RedisServer(workdir / "redis")
            redis.start()
            stack.callback(redis.stop)
            extra = ("--results", redis.url)
        server = stack.enter_context(running_server(workdir / "server", extra_args=extra))
        fuzz = Campaign.start(server)
        fuzz.words = decision_words(server)
        yield fuzz
        fuzz.assert_still_serving()
        print("\n" + fuzz.report())
        fuzz.assert_log_clean()


def _fuzz(
    campaign: Campaign, rpc: Rpc, kind: str, chosen: settings, until: float = float("inf")
) -> None:
    if chosen.database is not None:  # one per RPC and kind: one test function serves all
        where = FUZZ_DB / rpc.method / kind
        chosen = settings(chosen, database=DirectoryBasedExampleDatabase(where))

    @settings(chosen)
    @given(body=bodies(rpc, kind, campaign.words))
    def one_body(body: bytes) -> None:
        if time.monotonic() < until:
            campaign.call(rpc, body)

    one_body()


@pytest.mark.skipif(FUZZ_SECONDS > 0, reason="make fuzz runs the campaign instead")
@pytest.mark.parametrize("kind", CI_EXAMPLES)
@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.method)
def test_fuzzed_bodies_get_an_allowed_status_and_the_server_stays_well(campaign, rpc, kind):
    profile = settings.get_profile(CI_PROFILE)
    _fuzz(campaign, rpc, kind, settings(profile, max_examples=CI_EXAMPLES[kind]))
    campaign.assert_still_serving()


@pytest.mark.skipif(not FUZZ_SECONDS, reason="make fuzz (CDS_FUZZ_SECONDS) only")
def test_fuzz_campaign(campaign):
    until = time.monotonic() + FUZZ_SECONDS
    while time.monotonic() < until:
        for rpc in RPCS:
            for kind in CI_EXAMPLES:
                _fuzz(campaign, rpc, kind, settings.get_profile(FUZZ_PROFILE), until)
        campaign.assert_still_serving()
        campaign.assert_log_clean()
