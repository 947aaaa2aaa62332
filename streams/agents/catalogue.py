"""Catalogue control (#17): which items may be recommended, folded from the ``items`` topic in order.

An item's state is its last record: ``"hidden": true`` hides it (its text is still encoded), a visible
record is an ``upsert`` (a ``restore`` after a hide or delete), a tombstone deletes it. Hidden and deleted
items are :attr:`Catalogue.banned`; every scorer and ``api`` instance follows the whole topic and holds its
own (docs/decisions.md, "Catalogue control").

>>> c = Catalogue(max_bytes=1000)
>>> c.apply(b"i1", b'{"item_id": "i1", "title": "Jazz", "hidden": true}').kind, sorted(c.banned)
('hide', ['i1'])
>>> c.apply(b"i1", b'{"item_id": "i1", "title": "Jazz"}').kind, sorted(c.banned)
('restore', [])
>>> c.apply(b"i1", None).kind, sorted(c.banned)
('delete', ['i1'])
>>> c.apply(None, None).kind, c.apply(b"i2", b"{oops").kind
('invalid', 'invalid')
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.agents.ingest import fetch_log_ends
from streams.config import KafkaSettings
from streams.kafka import client_kwargs
from streams.records import BadEvent, ItemRecord, parse_item, parse_item_key

__all__ = ["CatalogueChange", "Catalogue", "committed_offsets", "follow_partitions"]

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class CatalogueChange:
    """One ``items`` record as applied: its ``kind`` (``streams.records.CATALOG_CHANGES``), the item, the
    record unless deleted or invalid, and ``error``, why an ``invalid`` record was skipped."""

    kind: str
    item_id: str | None
    record: ItemRecord | None = None
    error: str = ""


class Catalogue:
    """The banned items (hidden or deleted) after the ``items`` records applied so far, in topic order."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        #: Items no list may hold: hidden or deleted. A live set: holders see each change at once.
        self.banned: set[str] = set()

    def apply(self, key: bytes | None, value: bytes | None) -> CatalogueChange:
        """Apply one ``items`` record (a null ``value`` is a tombstone); never raises on bad input."""
        try:
            if value is None:
                item_id = parse_item_key(key)
                self.banned.add(item_id)
                return CatalogueChange("delete", item_id)
            record = parse_item(value, max_bytes=self.max_bytes)
        except BadEvent as exc:
            return CatalogueChange("invalid", None, error=str(exc))
        item_id = record.item_id
        if record.hidden:
            self.banned.add(item_id)
            return CatalogueChange("hide", item_id, record)
        if item_id in self.banned:
            self.banned.discard(item_id)
            return CatalogueChange("restore", item_id, record)
        return CatalogueChange("upsert", item_id, record)

    def apply_many(self, records: Sequence[Any]) -> list[CatalogueChange]:
        """:meth:`apply` each of ``records`` (objects with ``key`` and ``value``, as aiokafka's), in order."""
        return [self.apply(r.key, r.value) for r in records]


async def committed_offsets(kafka: KafkaSettings, group_id: str, tps: Sequence[TopicPartition]) -> dict:
    """``group_id``'s committed offset of each of ``tps`` (None where it has none), read with an admin
    client: a consumer given the group's id would be a second group client beside the member's own."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group_id, partitions=list(tps))
    finally:
        await admin.close()
    return {tp: (found[tp].offset if tp in found and found[tp].offset >= 0 else None) for tp in tps}


async def follow_partitions(kafka: KafkaSettings, topic: str, handle: Callable[[list[Any]], Awaitable[None]], *,
                            group_id: str | None = None, caught_up: asyncio.Event | None = None,
                            max_records: int = 1000, skip: Callable[[], Collection[int]] | None = None,
                            resume_at: Callable[[int], int | None] | None = None) -> None:
    """Follow every partition of ``topic`` without a group, handing each fetched batch of records to
    ``handle`` until cancelled; from ``group_id``'s committed offsets, else the beginning. ``caught_up`` is set
    once ``handle`` has had every record the topic held when this started.

    ``skip()``, asked before each fetch (at least once a second), names partitions not to fetch now: they are
    paused, and when one leaves the set it is fetched again from ``resume_at(partition)`` (None: where it was
    paused). A scorer skips the partitions it serves, which its score agent reads (#16)."""
    consumer = AIOKafkaConsumer(**client_kwargs(kafka), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        committed = await committed_offsets(kafka, group_id, tps) if group_id is not None else {}
        for tp in tps:
            if committed.get(tp) is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed[tp])
        ends = {}
        if caught_up is not None:
            listed = await consumer.end_offsets(tps)
            try:  # the log's real ends: the embedded broker's ListOffsets answers short (streams.agents.ingest, #20)
                ends = await fetch_log_ends(kafka, listed)
            except Exception as exc:  # noqa: BLE001 - the listed ends stand, at worst short of the last batch
                log.warning("could not fetch the log ends of %s (%r); reading to the listed ends", topic, exc)
                ends = dict(listed)
        paused: set[TopicPartition] = set()
        while True:
            if skip is not None:
                now = set(skip())
                for tp in tps:
                    if tp.partition in now and tp not in paused:
                        consumer.pause(tp)
                        paused.add(tp)
                    elif tp.partition not in now and tp in paused:
                        at = resume_at(tp.partition) if resume_at is not None else None
                        if at is not None:
                            consumer.seek(tp, at)
                        consumer.resume(tp)
                        paused.discard(tp)
            if caught_up is not None and not caught_up.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps if tp not in paused):
                    log.info("%s read to its end (offsets %s)", topic, {tp.partition: end for tp, end in ends.items()})
                    caught_up.set()
            batch = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            records = [r for tp in sorted(batch, key=lambda tp: tp.partition) for r in batch[tp]]
            if records:
                await handle(records)
    finally:
        await consumer.stop()
