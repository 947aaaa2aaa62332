"""The ingest agent: validate each event once, update the user's state, emit score requests.

:class:`IngestProcessor` is the per-batch logic, without Faust types; :func:`register` wires it to ``events``
and the ``user_state`` table. Delivery is at-least-once, state updates idempotent (each state keeps the last
applied offset per source partition), one score request per user per micro-batch. An erasure record (#17)
deletes the state after the user's earlier requests and puts a :class:`~streams.records.Forget` marker out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from binascii import a2b_base64, b2a_base64
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import orjson

from online.base import item_hash
from streams.kafka import client_kwargs, send_batched
from streams.records import FORGET, BadEvent, Forget, ScoreRequest, dead_letter, parse_event
from streams.topics import partition_for

log = logging.getLogger("tailcast.ingest")

__all__ = ["RawRecord", "UserState", "BatchResult", "IngestProcessor", "OffsetGaps", "compact_consumed",
           "consumed_of", "fetch_highwaters", "pseudonymize", "register", "send_records", "unrestored",
           "write_table"]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.4 µs more to build, per event
class RawRecord:
    """What the processor needs of one Kafka record."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # Kafka record time, seconds
    key: bytes | None
    value: bytes | None


_HASH = struct.Struct("<I")  # one consumed item: its item_hash, uint32 little-endian


def consumed_of(items: Iterable[str]) -> bytearray:
    """The consumed set of a sequence of items: the hash of each distinct item, least recently consumed first.

    >>> consumed_of(["a", "b", "a"]) == _HASH.pack(item_hash("b")) + _HASH.pack(item_hash("a"))
    True
    """
    last: dict[int, None] = {}
    for item in items:
        h = item_hash(item)
        last.pop(h, None)
        last[h] = None
    return bytearray(struct.pack(f"<{len(last)}I", *last))


def compact_consumed(consumed: bytes | bytearray, max_items: int) -> bytearray:
    """``consumed`` with each hash kept once, at its last (most recent) position, and only the
    ``max_items`` most recent of them.

    >>> hashes = lambda raw: struct.unpack(f"<{len(raw) // 4}I", raw)
    >>> hashes(compact_consumed(struct.pack("<5I", 1, 2, 1, 3, 2), 2))
    (3, 2)
    >>> hashes(compact_consumed(struct.pack("<3I", 1, 2, 1), 5))
    (2, 1)
    """
    hashes = np.frombuffer(consumed, dtype="<u4")
    _, first_from_end = np.unique(hashes[::-1], return_index=True)
    keep = np.sort(len(hashes) - 1 - first_from_end)[-max_items:]
    return bytearray(hashes[keep].tobytes())


@dataclass(slots=True)
class UserState:
    """A user's state: bounded recent sequence, event count, last event time, the last applied offset of
    each source partition, and the items consumed over the whole history.

    ``consumed``: ``online.base.item_hash`` of each consumed item, uint32 LE, least recent first. Appended
    per event (not for a repeat of the item just before) and compacted past ``consumed_max * 9/8`` entries,
    so the ``consumed_max`` most recent distinct items are always there (an item may be there twice between
    compactions). Stored as base64; an older layout without it gets it rebuilt from ``sequence``.

    >>> s = UserState(["a"], 1, 5.0, {2: 7}, consumed_of(["a"]))
    >>> UserState.from_bytes(s.to_bytes()) == s, s.to_bytes()
    (True, b'[["a"],1,5.0,[[2,7]],"Q7636A=="]')
    >>> UserState.from_bytes(b'[["a"],1,5.0,[[2,7]]]') == s  # the 4-field layout written before consumed
    True
    >>> UserState.from_bytes(b'[["a"],1,5.0,2,7]') == s  # the 5-field layout written before forwarding was deduplicated
    True
    """

    sequence: list[str] = field(default_factory=list)
    count: int = 0
    last_ts: float = 0.0
    applied: dict[int, int] = field(default_factory=dict)  # source partition -> last applied offset
    consumed: bytearray = field(default_factory=bytearray)  # item hashes, uint32 LE, least recent first

    def seen(self, partition: int, offset: int) -> bool:
        """Whether the event at ``partition``/``offset`` was applied already."""
        return offset <= self.applied.get(partition, -1)

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.sequence, self.count, self.last_ts, list(self.applied.items()),
                             b2a_base64(self.consumed, newline=False).decode("ascii")])

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        fields = orjson.loads(raw)
        if len(fields) == 5:
            seq, count, last_ts, applied, consumed = fields
            if isinstance(consumed, str):
                return cls(seq, count, last_ts, {int(p): int(o) for p, o in applied},
                           bytearray(a2b_base64(consumed)))
            partition, offset = applied, consumed  # [seq, count, last_ts, partition, offset]
            return cls(seq, count, last_ts, {partition: offset} if partition >= 0 else {}, consumed_of(seq))
        seq, count, last_ts, applied = fields
        return cls(seq, count, last_ts, {int(p): int(o) for p, o in applied}, consumed_of(seq))


@dataclass(slots=True)
class BatchResult:
    """What one micro-batch does: states to write, score requests and erasure markers in order, dead letters,
    forwards, and ``forgotten`` (user -> events of the deleted state)."""

    states: dict[str, UserState] = field(default_factory=dict)
    requests: list[ScoreRequest | Forget] = field(default_factory=list)
    forgotten: dict[str, int] = field(default_factory=dict)
    dead_letters: list[tuple[str, bytes]] = field(default_factory=list)  # (reason, dlq record)
    reroutes: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (key, value, partition)
    applied: int = 0
    duplicates: int = 0


ORIGIN = "_origin"  # props key of a forwarded event: [partition, offset] of the record it was forwarded from


def _origin(props: dict) -> tuple[int, int] | None:
    """The (partition, offset) a forwarded event came from, or None for an event as produced."""
    origin = props.get(ORIGIN)
    if (isinstance(origin, list) and len(origin) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in origin)):
        return origin[0], origin[1]
    return None


def pseudonymize(user_id: str, key: str) -> str:
    """Keyed BLAKE2b hash of a user id (hex, 32 chars): stable, not reversible without the key."""
    return hashlib.blake2b(user_id.encode(), key=key.encode()[:64], digest_size=16).hexdigest()


class IngestProcessor:
    """Turn a micro-batch of raw ``events`` records into state updates, score requests and dead letters.

    ``exclude_consumed="recent"``: the score requests carry no consumed items (the states keep them)."""

    def __init__(self, *, partitions: int, history_len: int, max_event_bytes: int,
                 pseudonymize_key: str | None = None, consumed_max: int = 2000,
                 exclude_consumed: str = "all") -> None:
        self.partitions = partitions
        self.history_len = history_len
        self.max_event_bytes = max_event_bytes
        self.pseudonymize_key = pseudonymize_key
        if consumed_max < 1:
            raise ValueError(f"consumed_max must be >= 1, got {consumed_max}")
        self.consumed_max = consumed_max
        # compact once past the cap by an eighth: amortised, each compaction is paid by >= cap/8 appends
        self._compact_above = _HASH.size * (consumed_max + consumed_max // 8)
        if exclude_consumed not in ("all", "recent"):
            raise ValueError(f"exclude_consumed must be 'all' or 'recent', got {exclude_consumed!r}")
        self.exclude_consumed = exclude_consumed

    def process(self, records: Sequence[RawRecord], get_state: Callable[[str], UserState | None],
                *, now: float | None = None) -> BatchResult:
        now = time.time() if now is None else now
        pack, compact_above, send_consumed = _HASH.pack, self._compact_above, self.exclude_consumed == "all"
        out = BatchResult()
        forgotten = out.forgotten
        new: dict[str, list[tuple[str, float, str]]] = {}
        # user -> (state, its redelivered events): a redelivery asks again for the state's list, which a worker
        # killed between writing the state and sending its request never sent (#20)
        redelivered: dict[str, tuple[UserState, list[tuple[str, float, str]]]] = {}
        ingested: dict[str, float] = {}

        def request(user: str) -> None:
            """The score request for ``user``'s events of this batch so far (new or redelivered)."""
            state = out.states.get(user) or redelivered[user][0]
            items = new.pop(user, [])
            again = redelivered.pop(user, None)
            if again is not None:
                # the redelivered events travel too when they are the newest of the state (before this batch's
                # new ones): the scorer may never have learned them
                both = again[1] + items
                if len(both) <= len(state.sequence) and [e[0] for e in both] == state.sequence[-len(both):]:
                    items = both
            out.requests.append(ScoreRequest(
                user_id=user, sequence=list(state.sequence), new=items, event_count=state.count,
                event_ts=state.last_ts, ingested_at=ingested.pop(user), requested_at=now,
                consumed=bytes(state.consumed) if send_consumed else b""))

        for rec in records:
            try:
                ev = parse_event(rec.value, max_bytes=self.max_event_bytes, default_ts=rec.timestamp)
            except BadEvent as exc:
                out.dead_letters.append((exc.reason, dead_letter(
                    reason=exc.reason, error=exc.detail, topic=rec.topic, partition=rec.partition,
                    offset=rec.offset, timestamp=rec.timestamp, key=rec.key, value=rec.value)))
                continue
            user = ev.user_id
            pseudonymized = bool(ev.props.get("_pseudonymized"))
            if self.pseudonymize_key and not pseudonymized:
                user = pseudonymize(user, self.pseudonymize_key)
            key = user.encode()
            target = partition_for(key, self.partitions)
            forget = type(ev) is Forget
            if target != rec.partition:
                # keyed otherwise by the producer: forward it to its user's partition (one worker owns each
                # state), pseudonymised, with its origin so that a repeated forward is a duplicate there
                body = ({"user_id": user, "control": FORGET, "ts": ev.requested_at} if forget else
                        {"user_id": user, "item_id": ev.item_id, "event": ev.event, "ts": ev.ts})
                props = dict(ev.props)
                if self.pseudonymize_key:
                    props["_pseudonymized"] = True
                props[ORIGIN] = [rec.partition, rec.offset]
                body["props"] = props
                out.reroutes.append((key, orjson.dumps(body), target))
                continue
            if forget:
                # erasure (#17): the request for the user's earlier events, then the marker; the state goes
                if user in new or user in redelivered:
                    request(user)
                state = out.states.pop(user, None)
                if state is None and user not in forgotten:
                    state = get_state(user)
                forgotten[user] = forgotten.get(user, 0) + (state.count if state is not None else 0)
                out.requests.append(Forget(user, now))
                continue
            source = _origin(ev.props) or (rec.partition, rec.offset)
            state = out.states.get(user)
            if state is None:
                state = (get_state(user) if user not in forgotten else None) or UserState()
            if state.seen(*source):
                out.duplicates += 1
                redelivered.setdefault(user, (state, []))[1].append((ev.item_id, ev.ts, ev.event))
                ingested[user] = min(ingested.get(user, rec.timestamp), rec.timestamp)
                continue
            seq = state.sequence
            if not seq or seq[-1] != ev.item_id:
                # entries stay in order of last consumption (the item just before is the newest already)
                state.consumed += pack(item_hash(ev.item_id))
                if len(state.consumed) > compact_above:
                    state.consumed = compact_consumed(state.consumed, self.consumed_max)
            seq.append(ev.item_id)
            if len(seq) > self.history_len:
                del seq[: len(seq) - self.history_len]
            state.count += 1
            state.last_ts = ev.ts
            state.applied[source[0]] = source[1]
            out.states[user] = state
            new.setdefault(user, []).append((ev.item_id, ev.ts, ev.event))
            ingested[user] = min(ingested.get(user, rec.timestamp), rec.timestamp)
            out.applied += 1
        for user in dict.fromkeys([*redelivered, *new]):  # users in order of their first event or redelivery
            request(user)
        return out


class OffsetGaps:
    """Offsets skipped between the records the ingest agent received, per partition, in one consumer generation.

    A record lost before the agent shows up as a jump (offsets 62 and 64, never 63: #7's loss). Offsets going
    back (redelivery) are no gap, and a new generation starts afresh. Transaction markers take offsets too,
    so the worker does not count under ``exactly_once``.

    >>> from types import SimpleNamespace as M
    >>> gaps = OffsetGaps()
    >>> gaps.observe([M(partition=3, offset=o, generation_id=1) for o in (61, 62, 64, 62, 65)])
    1
    >>> gaps.observe([M(partition=3, offset=90, generation_id=2), M(partition=3, offset=91, generation_id=2)])
    0
    """

    __slots__ = ("generation", "last")

    def __init__(self) -> None:
        self.generation: int | None = None
        self.last: dict[int, int] = {}

    def observe(self, messages) -> int:
        """Account for ``messages`` (each with ``partition``, ``offset``, ``generation_id``), in the order
        received; return how many offsets they skipped."""
        skipped = 0
        last = self.last
        for m in messages:
            if m.generation_id != self.generation:
                self.generation = m.generation_id
                last.clear()
            partition, offset = m.partition, m.offset
            prev = last.get(partition)
            if prev is None:
                last[partition] = offset
            elif offset > prev:
                skipped += offset - prev - 1
                last[partition] = offset
        return skipped


async def fetch_highwaters(client, listed: Mapping) -> dict:
    """The end offset of each partition in ``listed`` (from ListOffsets), raised to a Fetch's high
    watermark where further (a failed Fetch keeps it): Tansu lists one past the last batch's first offset, and
    Faust's table recovery stopped there (#20)."""
    from aiokafka.protocol.fetch import FetchRequest

    ends = dict(listed)
    by_leader: dict[int, dict[str, list[tuple[int, int, int]]]] = {}
    for tp, end in listed.items():
        leader = client.cluster.leader_for_partition(tp)
        if not end or leader is None or leader < 0:  # an empty partition: nothing to correct
            continue
        by_leader.setdefault(leader, {}).setdefault(tp.topic, []).append((tp.partition, max(end - 1, 0), 1 << 16))
    for leader, topics in by_leader.items():
        try:
            # min_bytes 1: Tansu answers min_bytes 0 with no partitions; the listed end - 1 holds a record,
            # so the answer comes at once (the 500 ms wait bounds a broker that answers otherwise)
            response = await client.send(leader, FetchRequest(500, 1, 1 << 20, 0, list(topics.items())))
        except Exception as exc:  # the listed ends stand; recovery is then checked by unrestored()
            log.warning("ingest: could not fetch the high watermarks of %s from broker %s: %r", topics, leader, exc)
            continue
        for topic, partitions in response.topics:
            for partition, error_code, highwater, *_ in partitions:
                for tp in listed:
                    if tp.topic == topic and tp.partition == partition and error_code == 0:
                        ends[tp] = max(ends[tp], highwater)
    return ends


async def fetch_log_ends(kafka, listed: Mapping, *, timeout_s: float = 10.0) -> dict:
    """:func:`fetch_highwaters` through a client of its own (``kafka``: the ``KafkaSettings``), bounded by
    ``timeout_s``: usable on the event loop while Faust's consumer thread is busy with a rebalance."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(**client_kwargs(kafka), request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await client.bootstrap()
            return await fetch_highwaters(client, listed)
    finally:
        await client.close()


def unrestored(restored: Mapping, highwaters: Mapping) -> dict:
    """Per changelog partition, the records table recovery left unread: from one past ``restored`` (the
    last offset it applied, None for none) to the high watermark (None: unknown, not counted).

    >>> unrestored({0: 24, 1: None, 2: 19, 3: None}, {0: 25, 1: 0, 2: 26, 3: None})
    {2: 6}
    """
    missing = {}
    for tp, offset in restored.items():
        highwater = highwaters.get(tp)
        if highwater is not None and (n := highwater - (-1 if offset is None else offset) - 1) > 0:
            missing[tp] = n
    return missing


async def write_table(table, changes: Mapping[bytes, bytes | None], *, partitions: int, batched: bool,
                      producer) -> None:
    """Write ``changes`` (key -> value; None deletes, a changelog tombstone) to a Faust table: ``batched``
    (at-least-once only), into its store and as one record batch per partition on ``producer``, past Faust's
    per-message buffer (docs/results.md); else through the table, inside Faust's transaction."""
    if not batched:
        for key, value in changes.items():
            if value is not None:
                table[key] = value
            elif key in table:
                del table[key]  # the table sends the changelog's tombstone
        return
    store = table.data
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value
    await send_records(producer, table.changelog_topic.get_topic_name(), list(changes.items()), batched=True,
                       partitions=partitions)


async def send_records(producer, topic: str, records: Sequence[tuple[bytes, bytes | None]], *, batched: bool,
                       partitions: int | None = None) -> None:
    """Send ``(key, value)`` records in order on Faust's ``producer``: one Faust send each (inside its
    transaction), or when ``batched`` one record batch per murmur2 partition of the keys (``partitions``: the
    topic's count, asked of the broker when None)."""
    if not batched:
        for key, value in records:
            await producer.send(topic, key, value, None, None, None)
        return
    aio = producer._ensure_producer()  # faust-streaming 0.15: the app's started aiokafka producer
    n = partitions or len(await aio.partitions_for(topic))
    await send_batched(aio, topic, [(key, value, partition_for(key, n)) for key, value in records])


def register(app, *, topics, processor: IngestProcessor, metrics, batch: int, batch_wait_s: float,
             request_partitions: int, batched_writes: bool = True, count_gaps: bool = True, kafka=None):
    """Declare the ``user_state`` table and the ingest agent on a Faust app (``batched_writes``: see
    :func:`write_table`; ``count_gaps``: count skipped offsets and what recovery left unread)."""
    from streams.topics import DLQ, EVENTS, SCORE_REQUESTS

    user_state = app.Table(
        "user_state", default=None, partitions=processor.partitions,
        key_type=bytes, value_type=bytes,  # Faust picks the "raw" codec for bytes, in changelog and recovery
        # the changelog partition from the key (murmur2), not the "current event": a batch mixes partitions
        use_partitioner=True,
        help="Per-user state: recent items, event count, last ts, last applied offsets, consumed item hashes",
    )
    producer = app.producer

    def get_state(user: str) -> UserState | None:
        key = user.encode()
        raw = user_state.data.get(key) if batched_writes else user_state.get(key)
        return None if raw is None else UserState.from_bytes(raw)

    async def write(out: BatchResult) -> None:
        # erasure (#17): a tombstone, so compaction drops the user's states
        changes = {user.encode(): None for user in out.forgotten if user not in out.states}
        changes.update((user.encode(), state.to_bytes()) for user, state in out.states.items())
        await write_table(user_state, changes, partitions=processor.partitions, batched=batched_writes,
                          producer=producer)
        await send_records(producer, SCORE_REQUESTS, [(r.user_id.encode(), r.to_bytes()) for r in out.requests],
                           batched=batched_writes, partitions=request_partitions)

    gaps = OffsetGaps() if count_gaps else None

    if count_gaps and kafka is not None:
        checked: list = [None]  # the last recovery checked: (consumer generation, restored offsets)

        @app.on_rebalance_complete.connect
        async def check_recovery(sender, **kwargs) -> None:
            """Count the changelog records recovery left unread as skipped offsets. Awaited before Faust resumes
            the streams (later, the worker's own writes would count), with a client of its own (#20)."""
            recovery = app.tables.recovery
            changelog = user_state.changelog_topic.get_topic_name()
            restored = {tp: recovery.active_offsets.get(tp) for tp in recovery.active_tps if tp.topic == changelog}
            if not restored:
                return
            # Faust sends on_rebalance_complete twice at the end of a recovery: check each recovery once
            key = (app.consumer_generation_id, tuple(sorted((tp.partition, o) for tp, o in restored.items())))
            if key == checked[0]:
                return
            checked[0] = key
            # the ends recovery read to (it stores end - 1), checked against a Fetch of its own
            listed = {tp: recovery.active_highwaters.get(tp, -1) + 1 for tp in restored}
            try:
                highwaters = await fetch_log_ends(kafka, listed)
            except Exception as exc:  # noqa: BLE001 - a check only: say so, and do not stop the worker
                log.warning("ingest: could not check the table recovery against the changelog's ends: %r", exc)
                metrics.recovery_checks.labels(outcome="unchecked").inc()
                return
            missing = unrestored(restored, highwaters)
            metrics.recovery_checks.labels(outcome="short" if missing else "whole").inc()
            if missing:
                metrics.offsets_skipped.inc(sum(missing.values()))
                log.warning("ingest: table recovery left %d changelog record(s) unread (partition: count %s); "
                            "the user states in them came back older and their events will not be applied "
                            "again", sum(missing.values()), {tp.partition: n for tp, n in missing.items()})

    @app.agent(topics[EVENTS], name="ingest")
    async def ingest(stream):
        async for events in stream.take_events(batch, within=batch_wait_s):
            messages = [e.message for e in events]
            records = [RawRecord(EVENTS, m.partition, m.offset, m.timestamp, m.key, m.value) for m in messages]
            if gaps is not None and (skipped := gaps.observe(messages)):
                metrics.offsets_skipped.inc(skipped)
                log.warning("ingest: %d offset(s) of events never reached the agent (records lost before it, "
                            "or transaction markers); partitions/offsets now %s", skipped, dict(gaps.last))
            out = processor.process(records, get_state)
            await write(out)
            for reason, record in out.dead_letters:
                await producer.send(DLQ, None, record, None, None, None)
                metrics.dlq_records.labels(reason=reason).inc()
            for key, value, partition in out.reroutes:
                await producer.send(EVENTS, key, value, partition, None, None)
            for user, count in out.forgotten.items():
                log.info("ingest: forgot user %s (erasure): a state of %d event(s) deleted, a tombstone on the "
                         "changelog and a forget marker on %s", user, count, SCORE_REQUESTS)
            metrics.events_consumed.inc(len(records))
            metrics.events_valid.inc(out.applied)
            metrics.duplicates_skipped.inc(out.duplicates)
            metrics.rerouted.inc(len(out.reroutes))
            markers = sum(type(r) is Forget for r in out.requests) if out.forgotten else 0
            metrics.users_forgotten.inc(markers)
            metrics.score_requests.inc(len(out.requests) - markers)
            metrics.batch_size.observe(len(records))
            metrics.user_states.set(len(user_state))

    return ingest, user_state
