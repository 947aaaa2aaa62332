"""Every topic of docs/design.md §3, declared once, and :func:`ensure_topics`, which creates them."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from streams.config import KafkaSettings
from streams.kafka import client_kwargs

__all__ = ["EVENTS", "ITEMS", "DLQ", "SCORE_REQUESTS", "RECOMMENDATIONS", "LONGTAIL_METRICS", "IMPRESSIONS", "TopicSpec",
           "topic_specs", "ensure_topics", "partition_for"]

log = logging.getLogger(__name__)

EVENTS = "events"
ITEMS = "items"
DLQ = "events.dlq"
SCORE_REQUESTS = "score-requests"
RECOMMENDATIONS = "recommendations"
LONGTAIL_METRICS = "longtail-metrics"
IMPRESSIONS = "impressions"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def topic_specs(partitions: int) -> tuple[TopicSpec, ...]:
    """User-keyed topics share one partition count so that a user's records are co-partitioned."""
    return (
        TopicSpec(EVENTS, partitions),
        TopicSpec(ITEMS, 1, compacted=True),
        TopicSpec(DLQ, 1),
        TopicSpec(SCORE_REQUESTS, partitions),
        TopicSpec(RECOMMENDATIONS, partitions),
        TopicSpec(LONGTAIL_METRICS, 1),
        TopicSpec(IMPRESSIONS, partitions),
    )


@functools.lru_cache(maxsize=1 << 16)
def _murmur2(key: bytes) -> int:
    return murmur2(key) & 0x7FFFFFFF


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default (Java, aiokafka, Faust) partitioner gives ``key``: murmur2, pure Python
    in aiokafka, so recent keys' hashes are cached (the worker asks two or three times per event).

    >>> partition_for(b"u1", 4) == (murmur2(b"u1") & 0x7FFFFFFF) % 4
    True
    """
    return _murmur2(key) % partitions


async def ensure_topics(kafka: KafkaSettings) -> dict[str, int]:
    """Create missing topics with explicit partition counts; return each topic's actual partition count."""
    admin = AIOKafkaAdminClient(**client_kwargs(kafka))
    await admin.start()
    try:
        specs = topic_specs(kafka.partitions)
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=kafka.replication,
                            topic_configs={"cleanup.policy": "compact"} if s.compacted else {})
                   for s in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass  # another process created them first
            log.info("created topics %s", ", ".join(f"{s.name}({s.partitions})" for s in missing))
        counts = {}
        for desc in await admin.describe_topics([s.name for s in specs]):
            counts[desc["topic"]] = len(desc["partitions"])
        for spec in specs:
            if counts.get(spec.name, 0) == 0:
                raise RuntimeError(f"topic {spec.name} has no partitions on {kafka.servers}")
        if len({counts[EVENTS], counts[SCORE_REQUESTS], counts[RECOMMENDATIONS], counts[IMPRESSIONS]}) != 1:
            raise RuntimeError(f"user-keyed topics must have equal partition counts, got {counts}")
        return counts
    finally:
        await admin.close()
