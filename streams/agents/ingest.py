"""The ingest agent: validate each event once, update the user's state, emit score requests.

:class:`IngestProcessor` holds the per-batch logic with no Faust or Kafka types, so it is unit-tested in
memory; :func:`register` wires it to the ``events`` topic, the ``user_state`` table (with changelog) and
the output topics.

Delivery is at-least-once. State updates are idempotent: a user's state remembers, for each partition its
events came from, the offset of the last event it applied, and a redelivered event (offset not above it)
is skipped and counted. An event forwarded from the wrong partition carries its origin (partition,
offset) in ``props["_origin"]``, so a forward repeated after a crash is skipped too. The table is written
once per user per micro-batch, and one score request is emitted per user per batch.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from streams.kafka import send_batched
from streams.records import BadEvent, ScoreRequest, dead_letter, parse_event
from streams.topics import partition_for

log = logging.getLogger("tailcast.ingest")

__all__ = ["RawRecord", "UserState", "BatchResult", "IngestProcessor", "OffsetGaps", "pseudonymize", "register"]


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.4 µs more to build, per event
class RawRecord:
    """What the processor needs of one Kafka record."""

    topic: str
    partition: int
    offset: int
    timestamp: float  # Kafka record time, seconds
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class UserState:
    """A user's state: bounded recent sequence, event count, last event time, and the last applied offset
    of each source partition (the user's own, and those that events forwarded to it came from).

    >>> s = UserState(["a"], 1, 5.0, {2: 7})
    >>> UserState.from_bytes(s.to_bytes()) == s, s.to_bytes()
    (True, b'[["a"],1,5.0,[[2,7]]]')
    >>> UserState.from_bytes(b'[["a"],1,5.0,2,7]') == s  # the 5-field layout written before forwarding was deduplicated
    True
    """

    sequence: list[str] = field(default_factory=list)
    count: int = 0
    last_ts: float = 0.0
    applied: dict[int, int] = field(default_factory=dict)  # source partition -> last applied offset

    def seen(self, partition: int, offset: int) -> bool:
        """Whether the event at ``partition``/``offset`` was applied already."""
        return offset <= self.applied.get(partition, -1)

    def to_bytes(self) -> bytes:
        return orjson.dumps([self.sequence, self.count, self.last_ts, list(self.applied.items())])

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        fields = orjson.loads(raw)
        if len(fields) == 5:
            seq, count, last_ts, partition, offset = fields
            return cls(seq, count, last_ts, {partition: offset} if partition >= 0 else {})
        seq, count, last_ts, applied = fields
        return cls(seq, count, last_ts, {int(p): int(o) for p, o in applied})


@dataclass(slots=True)
class BatchResult:
    states: dict[str, UserState] = field(default_factory=dict)
    requests: list[ScoreRequest] = field(default_factory=list)
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
    """Turn a micro-batch of raw ``events`` records into state updates, score requests and dead letters."""

    def __init__(self, *, partitions: int, history_len: int, max_event_bytes: int,
                 pseudonymize_key: str | None = None) -> None:
        self.partitions = partitions
        self.history_len = history_len
        self.max_event_bytes = max_event_bytes
        self.pseudonymize_key = pseudonymize_key

    def process(self, records: Sequence[RawRecord], get_state: Callable[[str], UserState | None],
                *, now: float | None = None) -> BatchResult:
        now = time.time() if now is None else now
        out = BatchResult()
        new: dict[str, list[tuple[str, float, str]]] = {}
        ingested: dict[str, float] = {}
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
            if target != rec.partition:
                # The producer keyed it otherwise (or not at all): forward it to the partition its user
                # hashes to, so that one worker owns each user's state. Raw ids don't travel further. The
                # origin travels along: if this batch is redelivered after a crash, the repeated forward
                # is recognised as a duplicate where it lands.
                body = {"user_id": user, "item_id": ev.item_id, "event": ev.event, "ts": ev.ts}
                props = dict(ev.props)
                if self.pseudonymize_key:
                    props["_pseudonymized"] = True
                props[ORIGIN] = [rec.partition, rec.offset]
                body["props"] = props
                out.reroutes.append((key, orjson.dumps(body), target))
                continue
            source = _origin(ev.props) or (rec.partition, rec.offset)
            state = out.states.get(user)
            if state is None:
                state = get_state(user) or UserState()
            if state.seen(*source):
                out.duplicates += 1
                continue
            state.sequence.append(ev.item_id)
            if len(state.sequence) > self.history_len:
                del state.sequence[: len(state.sequence) - self.history_len]
            state.count += 1
            state.last_ts = ev.ts
            state.applied[source[0]] = source[1]
            out.states[user] = state
            new.setdefault(user, []).append((ev.item_id, ev.ts, ev.event))
            ingested[user] = min(ingested.get(user, rec.timestamp), rec.timestamp)
            out.applied += 1
        for user, items in new.items():
            state = out.states[user]
            out.requests.append(ScoreRequest(
                user_id=user, sequence=list(state.sequence), new=items, event_count=state.count,
                event_ts=state.last_ts, ingested_at=ingested[user], requested_at=now))
        return out


class OffsetGaps:
    """Offsets skipped between the records the ingest agent received, per partition, in one consumer generation.

    A record lost between the broker and the agent shows up as a jump: the agent got offsets 62 and 64 of
    a partition and never 63. That is how #7's loss looked (faust-streaming emptied a stream queue while
    resuming, then committed past the record), and the consumer lag could not show it. Offsets going back
    (redelivery after a seek) are not gaps, and a new consumer generation starts afresh, since another
    worker may have had the partition in between. A transaction marker takes an offset too, so records
    from transactional producers on ``events`` count here as well; the worker does not count under
    ``exactly_once``, where its own forwards are transactional.

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


def register(app, *, topics, processor: IngestProcessor, metrics, batch: int, batch_wait_s: float,
             request_partitions: int, batched_writes: bool = True, count_gaps: bool = True):
    """Declare the ``user_state`` table and the ingest agent on a Faust app.

    With ``batched_writes`` (at-least-once only: these sends are outside Faust's transactions) a
    micro-batch's changelog records and score requests go out as one record batch per partition and the
    table's store is written directly: ``table[key] = value`` sends each changelog record through Faust's
    per-message buffer, about half the worker's time per event (benchmarks/ingest.py measured the
    worker at 0.47 of a bare Faust agent before, 0.76 after). The records are the ones the table would
    send: raw key and value, on the murmur2 partition of the key. With exactly-once, the table's own
    path keeps every write inside Faust's transaction.
    """
    from streams.topics import DLQ, EVENTS, SCORE_REQUESTS

    user_state = app.Table(
        "user_state", default=None, partitions=processor.partitions,
        key_type=bytes, value_type=bytes,  # Faust picks the "raw" codec for bytes, in changelog and recovery
        # The changelog partition comes from the key (murmur2, like the events topic), not from the
        # "current event": a micro-batch mixes partitions.
        use_partitioner=True,
        help="Per-user state: recent items, event count, last ts, last applied offset",
    )
    producer = app.producer

    def get_state(user: str) -> UserState | None:
        key = user.encode()
        raw = user_state.data.get(key) if batched_writes else user_state.get(key)
        return None if raw is None else UserState.from_bytes(raw)

    async def write(out: BatchResult) -> None:
        if not batched_writes:
            for user, state in out.states.items():
                user_state[user.encode()] = state.to_bytes()
            for request in out.requests:
                await producer.send(SCORE_REQUESTS, request.user_id.encode(), request.to_bytes(), None, None, None)
            return
        aio = producer._ensure_producer()  # faust-streaming 0.15: the app's started aiokafka producer
        store = user_state.data
        changes = []
        for user, state in out.states.items():
            key, value = user.encode(), state.to_bytes()
            store[key] = value
            changes.append((key, value, partition_for(key, processor.partitions)))
        await send_batched(aio, user_state.changelog_topic.get_topic_name(), changes)
        await send_batched(aio, SCORE_REQUESTS, [
            (key, request.to_bytes(), partition_for(key, request_partitions))
            for request in out.requests for key in (request.user_id.encode(),)])

    gaps = OffsetGaps() if count_gaps else None

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
            metrics.events_consumed.inc(len(records))
            metrics.events_valid.inc(out.applied)
            metrics.duplicates_skipped.inc(out.duplicates)
            metrics.rerouted.inc(len(out.reroutes))
            metrics.score_requests.inc(len(out.requests))
            metrics.batch_size.observe(len(records))
            metrics.user_states.set(len(user_state))

    return ingest, user_state
