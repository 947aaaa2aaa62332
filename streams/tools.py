"""Producer and consumer tools: ``tailcast replay`` and ``tailcast tail``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from online.synthetic import generate
from streams.config import KafkaSettings
from streams.datasets import Event, load_dataset
from streams.kafka import client_kwargs
from streams.topics import EVENTS, ITEMS

__all__ = ["ReplaySource", "events_source", "dataset_source", "synthetic_source", "source_from_args", "replay", "tail",
           "format_recommendation"]


@dataclass(slots=True)
class ReplaySource:
    """What ``replay`` publishes: item records (key item_id) then events (key user_id), time-ordered."""

    name: str
    items: list[dict]
    events: list[dict]


def events_source(name: str, events: Iterable[Event], item_text: Mapping[str, str]) -> ReplaySource:
    """Dataset events and item texts as ``replay`` publishes them (an item's title: its text up to ". ")."""
    items = [{"item_id": item, "title": text.split(". ")[0], "text": text} for item, text in sorted(item_text.items())]
    return ReplaySource(name, items, [{"user_id": e.user, "item_id": e.item, "event": e.event, "ts": e.ts}
                                      for e in events])


def dataset_source(path: str | Path, *, limit: int | None = None) -> ReplaySource:
    ds = load_dataset(path, limit=limit)
    return events_source(ds.name, ds.events, ds.item_text)


def synthetic_source(*, n_users: int = 2000, n_items: int = 1000, n_events: int = 50_000, seed: int = 0,
                     limit: int | None = None) -> ReplaySource:
    data = generate(n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)
    items = [{"item_id": it.item_id, "title": it.title, "tags": list(it.tags)} for it in data.items.values()]
    events = [{"user_id": u, "item_id": i, "event": ev, "ts": ts} for ts, u, i, ev in data.events]
    return ReplaySource(f"synthetic-{seed}", items, events[:limit] if limit else events)


def source_from_args(args: argparse.Namespace) -> ReplaySource:
    """The stream ``tailcast replay`` and ``tailcast demo`` publish: ``--dataset`` if given, else the synthetic
    one sized by ``--users``, ``--items``, ``--events``, ``--seed``; the first ``--limit`` events."""
    if args.dataset:
        return dataset_source(args.dataset, limit=args.limit)
    return synthetic_source(n_users=args.users, n_items=args.items, n_events=args.events, seed=args.seed,
                            limit=args.limit)


async def replay(kafka: KafkaSettings, source: ReplaySource, *, rate: float = 0.0,
                 progress: Callable[[int, float], None] | None = None, stop: asyncio.Event | None = None) -> int:
    """Publish ``source``: items first, then events at ``rate`` events/s (0 = as fast as possible)."""
    producer = AIOKafkaProducer(**client_kwargs(kafka), linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    sent = 0
    try:
        for item in source.items:
            await producer.send(ITEMS, orjson.dumps(item), key=item["item_id"].encode())
        started = time.monotonic()
        last_report = started
        for event in source.events:
            if stop is not None and stop.is_set():
                break
            await producer.send(EVENTS, orjson.dumps(event), key=str(event["user_id"]).encode())
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    await asyncio.sleep(ahead)  # pacing the producer to the requested rate
            if progress is not None and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(sent, last_report - started)
        await producer.flush()
        if progress is not None:
            progress(sent, time.monotonic() - started)
    finally:
        await producer.stop()
    return sent


def format_recommendation(rec: dict, *, width: int = 3) -> str:
    items = ", ".join(
        f"{i['item_id']} ({i['source']}{': ' + i['reason'] if i.get('reason') else ''})"
        for i in rec["items"][:width])
    more = f" +{len(rec['items']) - width}" if len(rec["items"]) > width else ""
    return (f"{rec['user_id']} after {rec['user_event_count']} events [{rec['arm']}, {rec['model_version']}]: "
            f"{items}{more}")


async def iterate_topic(kafka: KafkaSettings, topic: str, *, from_beginning: bool,
                        stop: asyncio.Event | None = None, idle_timeout: float | None = None) -> AsyncIterator[dict]:
    """Yield every record of ``topic`` (all partitions, no consumer group) as decoded JSON plus metadata; a
    tombstone as ``{"tombstone": true, "key": ...}``."""
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest" if from_beginning else "latest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer.stop()
            raise SystemExit(f"topic {topic!r} does not exist on {kafka.servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        idle_since = time.monotonic()
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                    return
                continue
            idle_since = time.monotonic()
            for records in batch.values():
                for r in records:
                    if r.value is None:  # a tombstone (an erased user's lists, a deleted item)
                        value = {"tombstone": True, "key": (r.key or b"").decode("utf-8", "replace")}
                    else:
                        try:
                            value = orjson.loads(r.value)
                        except orjson.JSONDecodeError:
                            value = {"undecodable": r.value.decode("utf-8", "replace")}
                    yield {"_partition": r.partition, "_offset": r.offset, "_timestamp": r.timestamp / 1000.0,
                           **value}
    finally:
        await consumer.stop()


async def tail(kafka: KafkaSettings, topic: str, *, from_beginning: bool, max_records: int | None,
               idle_timeout: float | None, raw: bool, out: TextIO = sys.stdout) -> int:
    n = 0
    async for record in iterate_topic(kafka, topic, from_beginning=from_beginning, idle_timeout=idle_timeout):
        if raw or "items" not in record:
            clean = {k: v for k, v in record.items() if not k.startswith("_")}
            out.write(orjson.dumps(clean).decode() + "\n")
        else:
            out.write(format_recommendation(record, width=10) + "\n")
        out.flush()
        n += 1
        if max_records is not None and n >= max_records:
            break
    return n

