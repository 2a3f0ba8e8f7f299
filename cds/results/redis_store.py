"""The shared result store on Redis (or Redis Cluster), for several workers and replicas.

Layout. One hash per patient, ``<prefix>r:{<patient_id>}``, field ``result_id`` ->
a packed row (``_pack``: expiry second, ``reported_at`` µs, the HR mark, item and
institution codes; a 14-byte header plus the codes). A check reads exactly one key with
``HGETALL`` (one round trip), upsert by result id is ``HSET`` of the field whatever
its item code, and the hash tag puts everything of one patient in one Cluster slot,
so the Lua scripts below are legal on Cluster.

Expiry. Redis 7.0 (Debian bookworm's redis-server) has no per-field ``HEXPIRE``
(7.4+), so: the key's TTL is the latest expiry of the rows ever written to it
(``EXPIREAT NX`` then ``GT``: Redis >= 7.0), which frees a patient nobody writes to
once all rows are useless; a read never returns a row past its expiry (filtered
client-side), and expired fields are deleted by the write script of any later write
to that patient and by a background prune of patients a read found expired rows in.
Row expiries are stored to the second, rounded up: a row may outlive its
``expires_at_us`` by under a second, which the ``StoredRow`` contract allows.

Writes. ``put_many`` sends each chunk (``chunk_rows``, default 1,000) as one
pipeline: one ``EVALSHA`` per group of up to 64 patients (per hash slot on Cluster)
that, atomically per patient, prunes expired fields, ``HSET``s and extends the TTL;
then the invalidation ``PUBLISH``. Grouping patients matters: redis-py packs commands
in Python, so fewer, larger commands cost less client CPU; the cap keeps one script
from blocking Redis (and everyone's checks) for long. ``put_many`` returns only after
Redis has replied to every command: an acknowledged write is in Redis. Any error
raises ``ResultsUnavailable`` and the feed retries; replays are idempotent. A result
repeated within a chunk is sent once, its last copy (as the in-process store keeps it),
and a ref repeated in a withdrawal once, so each is counted once.

Bound per item. A patient keeps at most ``max_results_per_item`` results per item code
(``--max-results-per-item``), the newest by ``reported_at`` (ties: the greater result
id), because a check walks every kept result of each ordered item. The put script
trims, atomically with the write: when the hash holds more fields than the bound, each
item code the write touched keeps its newest, the rest are ``HDEL``ed (and reported, so
the count drops them). An older result than those kept is therefore dropped as it
arrives; withdrawing a kept result does not bring a dropped one back. Reads keep the
newest per item too, so a hash written before the bound existed (trimmed only when its
item is next written) still costs a check at most the bound per item.

Near-cache and its guarantee. Each store instance keeps a small bounded TTL cache of
decoded patients (``near_cache_size`` patients, ``near_cache_ttl_s``) so a patient's
repeated checks in one ordering session cost one round trip. It stays correct when
any worker or replica adds or withdraws a result because:

1. the writing instance drops the patients from its own near-cache when it writes;
2. every write pipeline ends with a ``PUBLISH`` of the batch's patient ids on
   ``<prefix>inv``, executed by Redis after the writes; every instance subscribes and
   drops those patients;
3. a read only fills the near-cache if no invalidation arrived while it was in flight
   (an epoch counter), so a stale reply racing an invalidation is never cached;
4. the near-cache is used only while the subscription is confirmed: when it drops it
   is cleared and bypassed, and cleared again on resubscribing (messages may have been
   missed in between);
5. the subscription is heartbeaten: a ``PING`` on the subscribed connection every
   ``heartbeat_s`` (default half the read timeout) while checks use the near-cache,
   once a second while none does. Redis answers a connection in order, so its
   ``pong`` proves that every invalidation published before that PING has been
   delivered; the near-cache is served from only while a PING sent within the last
   ``read_timeout_s`` has been answered. A frozen Redis (SIGSTOP, a hung host, a
   black-holed network) keeps the socket open and silent, which no error reveals:
   without the heartbeat the near-cache answered checks, as not degraded, for its
   whole TTL. Now within the read timeout checks stop using it, read Redis, time out
   and report ``RESULTS_UNAVAILABLE``; a PING left unanswered that long also clears
   it (logged), and the next fresh pong flushes it once more and trusts it again. A
   subscription with a PING unanswered for ``max(1 s, 20 x read timeout)`` is closed
   and opened afresh. Cost: 40 PINGs a second per process while checks use the
   near-cache, one a second while idle;
6. the TTL bounds staleness if all of that somehow fails.

So another instance sees a write as soon as it has processed the invalidation
message, shortly after ``put_many`` returns, not atomically with it. Checks tolerate
that: the engine reads results as of "now".

Reads. A check's ``HGETALL`` goes through one pipelined connection shared by every
concurrent check (:mod:`cds.results.redis_wire`: no pool, no timer per call, one
write per event-loop tick), not through redis-py, whose per-command overhead was most
of a Redis-backed check's extra CPU; writes, scripts and pub/sub stay on redis-py. On
Cluster or with TLS (``rediss://``) reads use redis-py too. Which client serves which
URL and the retry policy are :mod:`cds.results.redis_connection`'s; the store only says
how long it waits. A reply is decoded whole when it fills the near-cache (the patient's
next checks order other codes); otherwise only the rows of the codes the check asked
for become ``StoredResult`` tuples.

Faults. Reads time out fast (``read_timeout_s``, default 50 ms; connect
``connect_timeout_s``, 50 ms) so a check still answers in time without results; writes
allow longer (``write_timeout_s``, 1 s). One immediate retry on a lost connection
(Redis closed it on restart) and none on a timeout. Every Redis failure surfaces as
``ResultsUnavailable``; both clients reconnect on the next call, so the store
recovers by itself when Redis returns.

``cached_count`` is approximate: a hash ``<prefix>n`` counts rows per expiry day
(incremented by writes, decremented for replaced and withdrawn rows), refreshed in the
background every ``count_refresh_s``; rows count until the end of their expiry day (UTC).

Cluster. ``redis+cluster://host:port`` (any node; or ``cluster=True``) uses
``redis.asyncio.cluster.RedisCluster``: script calls group patients by hash slot, the
counter hash is one ordinary key, and the ``PUBLISH`` is sent after the pipeline
(whose per-node parts run in parallel) so it still follows the writes. Classic pub/sub
reaches subscribers on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, cast

import orjson
from cachetools import TTLCache
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from cds.config import DEFAULT_MAX_RESULTS_PER_ITEM
from cds.domain import US_PER_SECOND, StoredResult
from cds.results.base import EMPTY_RESULTS, PatientResults, ResultsUnavailable, StoredRow
from cds.results.redis_connection import RedisConnection

log = logging.getLogger(__name__)

_S_PER_DAY = 86_400

# expiry second (u32, rounded up), reported_at µs (i64), item length | HR mark << 15 (u16)
_HEADER = struct.Struct("<IqH")
_MARK_BIT = 0x8000

# Several patients per call (one hash slot's worth on Cluster, at most
# ``_PATIENTS_PER_SCRIPT``: one call blocks Redis, so it stays well under a millisecond).
# For each patient KEYS[k]: drop its expired fields, upsert the given ones, extend the
# key's TTL, trim each item code written to its newest ARGV[2] fields. ARGV[1] now (s),
# ARGV[2] the bound per item; then per key: expire-at (s), n pairs, n deletes, the
# field/value pairs, the fields to delete (upserts that are already expired).
# Returns, per key, {the previous values of the set and deleted fields (nil where
# absent), the values of the fields trimmed}.
# A value (see _pack) holds reported_at µs as an i64 at byte 5 (Lua counts from 1) and
# the item code's length (low 15 bits of a u16 at byte 13) before the code at byte 15.
# µs since the epoch are exact in Lua's doubles (below 2^53).
_PUT_LUA = """
local now = tonumber(ARGV[1])
local per_item = tonumber(ARGV[2])
local pos = 3
local out = {}
local function item_of(value)
  return string.sub(value, 15, 14 + struct.unpack('<I2', value, 13) % 32768)
end
-- The reads' order: later reported_at first, then the greater result id compared by
-- bytes (UTF-8 keeps the code point order Python compares by; Lua's < on strings is
-- strcoll, which follows the locale).
local function newer(a, b)
  if a[1] ~= b[1] then return a[1] > b[1] end
  local x, y = a[2], b[2]
  for i = 1, math.min(#x, #y) do
    local bx, by = string.byte(x, i), string.byte(y, i)
    if bx ~= by then return bx > by end
  end
  return #x > #y
end
for k = 1, #KEYS do
  local key = KEYS[k]
  local expire_at = ARGV[pos]
  local set_from = pos + 3
  local set_to = set_from + 2 * tonumber(ARGV[pos + 1]) - 1
  local del_to = set_to + tonumber(ARGV[pos + 2])
  pos = del_to + 1
  local current = redis.call('HGETALL', key)
  local old_by_field = {}
  local dead = {}
  for i = 1, #current, 2 do
    old_by_field[current[i]] = current[i + 1]
    if struct.unpack('<I4', current[i + 1]) <= now then dead[#dead + 1] = current[i] end
  end
  local old = {}
  for i = set_from, set_to, 2 do old[#old + 1] = old_by_field[ARGV[i]] or false end
  for i = set_to + 1, del_to do old[#old + 1] = old_by_field[ARGV[i]] or false end
  if #dead > 0 then redis.call('HDEL', key, unpack(dead)) end
  if del_to > set_to then redis.call('HDEL', key, unpack(ARGV, set_to + 1, del_to)) end
  local trimmed = {}
  if set_to > set_from then
    redis.call('HSET', key, unpack(ARGV, set_from, set_to))
    redis.call('EXPIREAT', key, expire_at, 'NX')
    redis.call('EXPIREAT', key, expire_at, 'GT')
    -- old_by_field becomes the hash as it now is
    for i = 1, #dead do old_by_field[dead[i]] = nil end
    for i = set_to + 1, del_to do old_by_field[ARGV[i]] = nil end
    for i = set_from, set_to, 2 do old_by_field[ARGV[i]] = ARGV[i + 1] end
    local fields = 0
    for _ in pairs(old_by_field) do fields = fields + 1 end
    if fields > per_item then
      -- only items this write added to can have grown past the bound
      local touched = {}
      for i = set_from + 1, set_to, 2 do touched[item_of(ARGV[i])] = {} end
      for field, value in pairs(old_by_field) do
        local group = touched[item_of(value)]
        if group then
          local reported = struct.unpack('<i8', value, 5)
          group[#group + 1] = {reported, field, value}
        end
      end
      local drop = {}
      for _, group in pairs(touched) do
        if #group > per_item then
          table.sort(group, newer)
          for j = per_item + 1, #group do
            drop[#drop + 1] = group[j][2]
            trimmed[#trimmed + 1] = group[j][3]
          end
        end
      end
      for i = 1, #drop, 1000 do
        redis.call('HDEL', key, unpack(drop, i, math.min(i + 999, #drop)))
      end
    end
  end
  out[k] = {old, trimmed}
end
return out
"""

# Per patient KEYS[k]: ARGV holds n, then n result ids. Returns, per key, their previous
# values (nil where absent).
_WITHDRAW_LUA = """
local pos = 1
local out = {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  local ids = {unpack(ARGV, pos + 1, pos + n)}
  pos = pos + n + 1
  out[k] = redis.call('HMGET', KEYS[k], unpack(ids))
  redis.call('HDEL', KEYS[k], unpack(ids))
end
return out
"""

_PATIENTS_PER_SCRIPT = 64
_HEARTBEAT = b"cds-hb:"  # + the monotonic time the PING was sent; comes back in its pong
_NEVER = 1 << 62


def _pack(result: StoredResult, expires_at_us: int) -> bytes:
    item = result.item_code.encode()
    meta = len(item) | (_MARK_BIT if result.recognition_mark else 0)
    expires_s = -(-expires_at_us // US_PER_SECOND)
    return (
        _HEADER.pack(expires_s, result.reported_at_us, meta) + item + result.institution_id.encode()
    )


def _expiry_s(packed: bytes) -> int:
    expires_s: int = _HEADER.unpack_from(packed)[0]
    return expires_s


def _newest_first(result: StoredResult) -> tuple[int, str]:
    return (result.reported_at_us, result.result_id)


def _decode(
    raw: dict[bytes, bytes], now_us: int, per_item: int, codes: Collection[str] | None = None
) -> tuple[PatientResults, int, bool]:
    """The live rows grouped by item code, newest first, at most ``per_item`` of each
    (a hash from before the bound may hold more); their earliest expiry (µs); whether
    any row had already expired. With ``codes``, only those codes' rows are built (the
    expiry and the expired flag still cover every row)."""
    if not raw:
        return EMPTY_RESULTS, _NEVER, False
    intern = sys.intern
    offset = _HEADER.size
    expired = False
    earliest_s = _NEVER
    grouped: dict[str, list[StoredResult]] = {}
    for result_id, packed in raw.items():
        expires_s, reported_at_us, meta = _HEADER.unpack_from(packed)
        if expires_s * US_PER_SECOND <= now_us:
            expired = True
            continue
        earliest_s = min(earliest_s, expires_s)
        end = offset + (meta & ~_MARK_BIT)
        item_code = packed[offset:end].decode()
        if codes is not None and item_code not in codes:
            continue
        item_code = intern(item_code)
        result = StoredResult(
            result_id.decode(),
            item_code,
            intern(packed[end:].decode()),
            reported_at_us,
            bool(meta & _MARK_BIT),
        )
        group = grouped.get(item_code)
        if group is None:
            grouped[item_code] = [result]
        else:
            group.append(result)
    if not grouped:
        return EMPTY_RESULTS, _NEVER, expired
    by_item: dict[str, tuple[StoredResult, ...]] = {}
    for item_code, group in grouped.items():
        if len(group) > 1:
            group.sort(key=_newest_first, reverse=True)
            if len(group) > per_item:
                del group[per_item:]
        by_item[item_code] = tuple(group)
    return by_item, earliest_s * US_PER_SECOND, expired


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


class RedisResultStore:
    """``ResultStore`` on Redis shared by every worker and replica; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool | None = None,
        key_prefix: str = "cds:",
        clock: Callable[[], float] = time.time,
        connect_timeout_s: float = 0.05,
        read_timeout_s: float = 0.05,
        write_timeout_s: float = 1.0,
        near_cache_size: int = 10_000,
        near_cache_ttl_s: float = 10.0,
        chunk_rows: int = 1_000,
        count_refresh_s: float = 5.0,
        maintenance_interval_s: float = 1.0,
        heartbeat_s: float | None = None,
        max_results_per_item: int = DEFAULT_MAX_RESULTS_PER_ITEM,
    ) -> None:
        if max_results_per_item < 1:
            raise ValueError("max_results_per_item must be at least 1")
        self._per_item = max_results_per_item
        # Checks read with the read timeouts (through the pipelined link where it serves
        # the URL); writes, scripts and pub/sub go through redis-py with the longer ones.
        self._reads = RedisConnection(
            url,
            cluster=bool(cluster),
            connect_timeout_s=connect_timeout_s,
            timeout_s=read_timeout_s,
        )
        self._writes = RedisConnection(
            url,
            cluster=bool(cluster),
            connect_timeout_s=max(connect_timeout_s, 0.5),
            timeout_s=write_timeout_s,
        )
        self._cluster = self._writes.cluster
        self._prefix = key_prefix
        self._channel = f"{key_prefix}inv"
        self._count_key = f"{key_prefix}n"
        self._clock = clock
        self._chunk_rows = chunk_rows
        self._count_refresh_s = count_refresh_s
        self._maintenance_interval_s = maintenance_interval_s
        self._pipe = self._reads.pipe
        self._writer = self._writes.client
        self._put_sha = ""
        self._withdraw_sha = ""
        # patient -> (results, earliest row expiry µs)
        self._near: TTLCache[str, tuple[PatientResults, int]] | None = (
            TTLCache(near_cache_size, near_cache_ttl_s) if near_cache_size > 0 else None
        )
        self._near_live = False  # only while the invalidation subscription is confirmed
        # The heartbeat (see the module docstring): the near-cache is served from while the
        # newest PING answered on the subscription was sent at most _trust_s ago.
        self._trust_s = read_timeout_s
        self._heartbeat_s = read_timeout_s / 2 if heartbeat_s is None else heartbeat_s
        self._stall_s = max(1.0, 20 * read_timeout_s)
        self._heard_at = -1e9  # time.monotonic() at which that PING was sent
        self._used_at = -1e9  # the last read that wanted the near-cache
        self._active_s = max(near_cache_ttl_s, 1.0)  # then PINGs at _heartbeat_s, else 1/s
        # How often Redis left a PING unanswered past _trust_s (near-cache suspended): tests.
        self.heartbeat_lapses = 0
        self._suspended_at = 0.0  # when the current suspension began; 0 while none
        self._lapse_logged_at = -1e9
        self._lapses_unlogged = 0
        self._subscribed = asyncio.Event()
        self._epoch = 0
        # How many times the invalidation subscription was (re)confirmed: for health and tests.
        self.subscriptions_confirmed = 0
        self._to_prune: set[str] = set()
        self._count = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._backoff = 0.05  # between attempts to (re)subscribe

    def _key(self, patient_id: str) -> str:
        return f"{self._prefix}r:{{{patient_id}}}"

    # -- lifecycle ----------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if not self._tasks and not self._closed:
            asyncio.get_running_loop()  # RuntimeError outside a loop, before any task exists
            self._tasks = [
                asyncio.create_task(self._follow_invalidations(), name="cds-redis-invalidations"),
                asyncio.create_task(self._maintain(), name="cds-redis-maintenance"),
            ]

    async def start(self, timeout_s: float = 2.0) -> bool:
        """Start the background tasks and wait (bounded) until invalidations are followed.

        Optional: every method starts them lazily. Returns whether the near-cache is live.
        """
        self._ensure_started()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        return self._near_live

    async def close(self) -> None:
        # The loops also watch _closed: redis-py can turn a cancellation that races a
        # read timeout into a TimeoutError, which the loops treat as a lost connection.
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3.0)
        self._tasks = []
        await self._reads.close()
        await self._writes.close()

    # -- near-cache -----------------------------------------------------------------------

    def _invalidate(self, patient_ids: Iterable[str]) -> None:
        self._epoch += 1
        near = self._near
        if near is not None:
            for patient_id in patient_ids:
                near.pop(patient_id, None)

    def _set_near_live(self, live: bool) -> None:
        self._epoch += 1
        if self._near is not None:
            self._near.clear()
        self._near_live = live and self._near is not None
        if live:
            self._subscribed.set()
        else:
            self._subscribed.clear()

    def _suspend(self, now: float, waited_s: float) -> None:
        """Redis left a PING unanswered past the trust window: clear the near-cache and
        bypass it until a fresh PING is answered. Logged at most once per 10 s, with how
        many suspensions that covers (a flapping link must not flood the log)."""
        self._set_near_live(False)
        self.heartbeat_lapses += 1
        self._suspended_at = now
        self._lapses_unlogged += 1
        if now - self._lapse_logged_at >= 10.0:
            log.warning(
                "results near-cache suspended: Redis has not answered a heartbeat for %d ms "
                "(%d suspension(s) since the last such line)",
                waited_s * 1000,
                self._lapses_unlogged,
            )
            self._lapse_logged_at = now
            self._lapses_unlogged = 0

    def _resume(self, now: float) -> None:
        if self._suspended_at:
            log.info("results near-cache resumed, flushed, after %.1f s", now - self._suspended_at)
            self._suspended_at = 0.0
        self._set_near_live(True)  # clears it once more: trusted from empty

    async def _follow_invalidations(self) -> None:
        self._backoff = 0.05
        while not self._closed:
            try:
                if self._cluster:
                    await self._writer.initialize()  # its pubsub needs the slot map
                pubsub = self._writer.pubsub()
            except Exception as exc:
                log.warning("results invalidation subscription failed: %s", type(exc).__name__)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 1.0)
                continue
            try:
                await self._follow(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: stop trusting the near-cache
                log.warning("results invalidation subscription lost: %s", type(exc).__name__)
            finally:
                self._set_near_live(False)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, 1.0)

    async def _follow(self, pubsub: Any) -> None:
        """Subscribe, heartbeat and apply invalidations until the subscription fails.

        ``pending`` holds the send times of the commands not answered yet (the SUBSCRIBE,
        then PINGs), oldest first: Redis answers them in order. PINGs go out every
        ``_heartbeat_s`` while reads use the near-cache (within ``_active_s`` of one),
        else once a second, which still notices a frozen Redis while the server idles
        (each PING costs a wakeup or two; the first reads after an idle spell go to Redis
        until the fast rate resumes).
        """
        self._heard_at = -1e9
        now = time.monotonic()
        pending: deque[float] = deque([now])
        await pubsub.subscribe(self._channel)
        subscribed = False
        next_ping = now
        while not self._closed:
            now = time.monotonic()
            active = now - self._used_at < self._active_s
            if now >= next_ping:
                pending.append(now)
                await pubsub.ping(_HEARTBEAT + repr(now).encode())
                next_ping = now + (self._heartbeat_s if active else 1.0)
            if pending:
                waited = now - pending[0]
                if waited > self._stall_s:
                    raise TimeoutError("redis answered no heartbeat")
                if waited > self._trust_s and self._near_live:
                    self._suspend(now, waited)
            message = await pubsub.get_message(timeout=max(next_ping - now, 0.001))
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                self._invalidate(orjson.loads(message["data"]))
            elif kind == "pong":
                data = message["data"]
                if not (isinstance(data, bytes) and data.startswith(_HEARTBEAT)):
                    continue
                sent_at = float(data[len(_HEARTBEAT) :])
                while pending and pending[0] <= sent_at:
                    pending.popleft()
                self._heard_at = max(self._heard_at, sent_at)
                now = time.monotonic()
                if subscribed and not self._subscribed.is_set() and now - sent_at <= self._trust_s:
                    self._resume(now)
            elif kind == "subscribe":
                # A new subscription (also redis-py's own resubscribe after a reconnect):
                # anything published before it may have been missed, so start from empty,
                # trusted once a later PING is answered.
                self._set_near_live(False)
                pending.clear()
                subscribed = True
                next_ping = time.monotonic()
                self.subscriptions_confirmed += 1
                self._backoff = 0.05

    async def _maintain(self) -> None:
        """Prune patients a read found expired rows in; refresh the approximate count."""
        next_count = 0.0
        while not self._closed:
            if self._to_prune:
                patients, self._to_prune = self._to_prune, set()
                with contextlib.suppress(RedisError, OSError, ResultsUnavailable):
                    keys = [self._key(p) for p in patients]
                    head = [int(self._clock()), self._per_item]
                    await self._run_scripts("put", keys, [[0, 0, 0]] * len(keys), head)
            if time.monotonic() >= next_count:
                with contextlib.suppress(RedisError, OSError):
                    await self._refresh_count()
                next_count = time.monotonic() + self._count_refresh_s
            await asyncio.sleep(self._maintenance_interval_s)

    async def _refresh_count(self) -> None:
        buckets = await self._writer.hgetall(self._count_key)
        today = int(self._clock()) // _S_PER_DAY
        past = [day for day in buckets if int(day) < today]
        self._count = max(0, sum(int(n) for day, n in buckets.items() if int(day) >= today))
        if past:
            await self._writer.hdel(self._count_key, *past)

    # -- scripts and pipelines ----------------------------------------------------------

    async def _load_scripts(self) -> None:
        self._put_sha = await self._writer.script_load(_PUT_LUA)
        self._withdraw_sha = await self._writer.script_load(_WITHDRAW_LUA)

    def _groups(self, keys: list[str]) -> list[list[int]]:
        """Indexes of ``keys`` per script call: one hash slot each on Cluster, bounded size."""
        if self._cluster:
            by_slot: dict[int, list[int]] = {}
            for i, key in enumerate(keys):
                by_slot.setdefault(key_slot(key.encode()), []).append(i)
            slots = list(by_slot.values())
        else:
            slots = [list(range(len(keys)))]
        return [
            slot[start : start + _PATIENTS_PER_SCRIPT]
            for slot in slots
            for start in range(0, len(slot), _PATIENTS_PER_SCRIPT)
        ]

    async def _run_scripts(
        self,
        script: str,
        keys: list[str],
        args: list[list[Any]],
        head: list[Any],
        publish: list[str] | None = None,
    ) -> list[list[Any]]:
        """Run a script over many patients in one pipeline (one round trip); per-key replies.

        ``args[i]`` are key ``i``'s arguments, ``head`` goes first in every call. Reloads
        the scripts once if Redis lost them (a restart empties its script cache).
        """
        groups = self._groups(keys)
        for attempt in (1, 2):
            if not self._put_sha:
                await self._load_scripts()
            sha = self._put_sha if script == "put" else self._withdraw_sha
            pipe = self._writer.pipeline(transaction=False)
            for group in groups:
                argv = list(head)
                for i in group:
                    argv += args[i]
                # execute_command: redis-py blocks the evalsha() helper on cluster pipelines,
                # but routes a raw EVALSHA by its keys (all in one slot here).
                pipe.execute_command("EVALSHA", sha, len(group), *[keys[i] for i in group], *argv)
            if publish and not self._cluster:
                pipe.publish(self._channel, orjson.dumps(publish))
            replies = await pipe.execute(raise_on_error=False)
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors and attempt == 1 and all(isinstance(e, NoScriptError) for e in errors):
                self._put_sha = ""
                continue
            if errors:
                raise ResultsUnavailable(f"redis script failed: {errors[0]}")
            if publish and self._cluster:
                # cluster pipelines run per node in parallel: publish once all are applied
                await self._writer.publish(self._channel, orjson.dumps(publish))
            per_key: list[list[Any]] = [[] for _ in keys]
            for group, reply in zip(groups, replies, strict=False):
                for i, old_values in zip(group, reply, strict=True):
                    per_key[i] = old_values
            return per_key
        raise AssertionError("unreachable")

    async def _adjust_counts(self, deltas: dict[int, int]) -> None:
        """Best effort: the count is approximate, the rows are already written."""
        deltas = {day: n for day, n in deltas.items() if n}
        if not deltas:
            return
        with contextlib.suppress(RedisError, OSError):
            pipe = self._writer.pipeline(transaction=False)
            for day, n in deltas.items():
                pipe.hincrby(self._count_key, str(day), n)
            await pipe.execute()

    # -- the ResultStore interface ------------------------------------------------------

    async def get_patient(
        self, patient_id: str, codes: Collection[str] | None = None
    ) -> PatientResults:
        self._ensure_started()
        near = self._near
        if near is not None:
            now = time.monotonic()
            self._used_at = now  # keeps the heartbeat at its fast rate
            # only while Redis answered a heartbeat lately (a frozen Redis is silent)
            if self._near_live and now - self._heard_at <= self._trust_s:
                cached = near.get(patient_id)
                # a cached patient whose earliest row has since expired is read afresh
                if cached is not None and cached[1] > self._clock() * US_PER_SECOND:
                    return cached[0]
        epoch = self._epoch
        pipe = self._pipe
        if pipe is not None:  # raises ResultsUnavailable itself
            raw = await pipe.hgetall(self._key(patient_id))
        else:
            try:
                # bytes, as the pipe's: the clients leave replies undecoded
                reply = await self._reads.client.hgetall(self._key(patient_id))
                raw = cast("dict[bytes, bytes]", reply)
            except (RedisError, OSError) as exc:
                raise ResultsUnavailable(f"redis read failed: {type(exc).__name__}") from exc
        now_us = int(self._clock() * US_PER_SECOND)
        if self._near_live and near is not None and self._epoch == epoch:
            # Cached for the patient's next checks, whose codes differ: every code.
            results, earliest_us, expired = _decode(raw, now_us, self._per_item)
            near[patient_id] = (results, earliest_us)
        else:
            results, earliest_us, expired = _decode(raw, now_us, self._per_item, codes)
        if expired:
            self._to_prune.add(patient_id)
        return results

    async def put_many(self, rows: Sequence[StoredRow]) -> None:
        self._ensure_started()
        for chunk in _chunks(rows, self._chunk_rows):
            await self._put_chunk(chunk)

    async def _put_chunk(self, rows: Sequence[StoredRow]) -> None:
        now_us = int(self._clock() * US_PER_SECOND)
        # patient -> result id -> packed row, None if already expired. One entry per
        # result: a later copy in the batch replaces an earlier one, as in the in-process
        # store. Sent twice, a result would be counted twice but stored once, and a live
        # copy would win over a later expired one (the script deletes before it sets).
        by_patient: dict[str, dict[str, bytes | None]] = {}
        for patient_id, result, expires_at_us in rows:
            fields = by_patient.get(patient_id)
            if fields is None:
                fields = by_patient[patient_id] = {}
            fields[result.result_id] = (
                _pack(result, expires_at_us) if expires_at_us > now_us else None
            )
        added: dict[int, int] = {}
        args: list[list[Any]] = []
        for fields in by_patient.values():
            pairs: list[Any] = []
            deletes: list[str] = []
            expire_at = 0
            for result_id, packed in fields.items():
                if packed is None:
                    deletes.append(result_id)
                    continue
                pairs.append(result_id)
                pairs.append(packed)
                expires_s = _expiry_s(packed)
                expire_at = max(expire_at, expires_s)
                day = expires_s // _S_PER_DAY
                added[day] = added.get(day, 0) + 1
            args.append([expire_at, len(pairs) // 2, len(deletes), *pairs, *deletes])
        keys = [self._key(p) for p in by_patient]
        try:
            replies = await self._run_scripts(
                "put",
                keys,
                args,
                [now_us // US_PER_SECOND, self._per_item],
                publish=list(by_patient),
            )
        except (RedisError, OSError) as exc:
            raise ResultsUnavailable(f"redis write failed: {type(exc).__name__}") from exc
        finally:
            self._invalidate(by_patient)
        # replaced or deleted rows (previous values), then rows the bound per item trimmed
        for old_values, trimmed in replies:
            for old in (*old_values, *trimmed):
                if old is not None:
                    day = _expiry_s(old) // _S_PER_DAY
                    added[day] = added.get(day, 0) - 1
        await self._adjust_counts(added)

    async def withdraw_many(self, refs: Sequence[tuple[str, str]]) -> int:
        self._ensure_started()
        withdrawn = 0
        for chunk in _chunks(refs, self._chunk_rows):
            # each result once: named twice, HMGET would return its row twice, so it
            # would be reported and uncounted twice
            by_patient: dict[str, dict[str, None]] = {}
            for patient_id, result_id in chunk:
                by_patient.setdefault(patient_id, {})[result_id] = None
            keys = [self._key(p) for p in by_patient]
            args = [[len(ids), *ids] for ids in by_patient.values()]
            try:
                replies = await self._run_scripts(
                    "withdraw", keys, args, [], publish=list(by_patient)
                )
            except (RedisError, OSError) as exc:
                raise ResultsUnavailable(f"redis write failed: {type(exc).__name__}") from exc
            finally:
                self._invalidate(by_patient)
            now_us = int(self._clock() * US_PER_SECOND)
            removed: dict[int, int] = {}
            for old_values in replies:
                for old in old_values:
                    if old is None:
                        continue
                    expires_s = _expiry_s(old)
                    if expires_s * US_PER_SECOND > now_us:
                        withdrawn += 1
                    day = expires_s // _S_PER_DAY
                    removed[day] = removed.get(day, 0) - 1
            await self._adjust_counts(removed)
        return withdrawn

    def cached_count(self) -> int:
        """Approximate: rows per expiry day, refreshed every ``count_refresh_s``."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to start
            self._ensure_started()
        return self._count
