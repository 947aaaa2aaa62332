"""The scorer's impressions agent (#17): what clients displayed and the clicks that followed, per A/B arm
(``online.ab``'s attribution), into ``ABMetrics`` and ``longtail-metrics``; bad records go to ``events.dlq``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from online.ab import Credit, Impression, ImpressionLedger
from online.arms import ArmAssigner
from streams.agents.ingest import pseudonymize
from streams.agents.scorer import LearnedEvent
from streams.metrics import ABMetrics
from streams.records import BadEvent, dead_letter, parse_impression
from streams.topics import DLQ, IMPRESSIONS

__all__ = ["Impressions", "register"]

log = logging.getLogger(__name__)


class Impressions:
    """The impression ledger of one scorer, with its metrics (no Kafka types: unit-tested in memory)."""

    def __init__(self, *, arms: ArmAssigner, is_tail: Callable[[str], bool], metrics: ABMetrics,
                 max_bytes: int, pseudonymize_key: str | None = None) -> None:
        self.arms = arms
        self.ledger = ImpressionLedger(is_tail=is_tail)
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.pseudonymize_key = pseudonymize_key

    def read(self, raw: bytes | None, *, default_ts: float) -> Impression:
        """One ``impressions`` value as the ledger takes it; :class:`BadEvent` when it breaks the contract."""
        imp = parse_impression(raw, max_bytes=self.max_bytes, default_ts=default_ts)
        user = pseudonymize(imp.user, self.pseudonymize_key) if self.pseudonymize_key else imp.user
        return replace(imp, user=user, arm=self.arms.assign(user))

    def add(self, imp: Impression) -> None:
        before = self.ledger.counts.get(imp.arm)
        slots, tail = (before.slots, before.tail_slots) if before else (0, 0)
        credits = self.ledger.impression(imp)
        after = self.ledger.counts[imp.arm]
        slots, tail = after.slots - slots, after.tail_slots - tail
        m = self.metrics
        m.impressions.labels(arm=imp.arm).inc()
        m.slots.labels(arm=imp.arm, segment="tail").inc(tail)
        m.slots.labels(arm=imp.arm, segment="head").inc(slots - tail)
        self._count(credits)

    def _count(self, credits: Iterable[Credit]) -> None:
        for c in credits:
            self.metrics.clicks.labels(arm=c.arm, segment="tail" if c.tail else "head").inc()

    def clicks(self, events: Iterable[LearnedEvent]) -> None:
        """The events a micro-batch applied, in order: each may click a displayed slot."""
        click = self.ledger.click
        self._count(c for c in (click(ev.user, ev.item, ev.ts) for ev in events) if c is not None)

    def forget(self, user: str) -> None:
        self.ledger.forget(user)

    def record(self, arm: str) -> dict | None:
        """The ``ab`` object of ``arm``'s ``longtail-metrics`` record; ``None`` before its first impression."""
        counts = self.ledger.counts.get(arm)
        return None if counts is None else counts.record()


def register(app, *, topic, impressions: Impressions, producer) -> Any:
    """The agent on ``impressions``: each record into the ledger, or to ``events.dlq`` with its reason."""

    @app.agent(topic, name="impressions")
    async def read_impressions(stream):
        async for events in stream.take_events(1000, within=0.05):
            for e in events:
                msg = e.message
                ts = msg.timestamp if msg.timestamp else time.time()
                try:
                    imp = impressions.read(msg.value, default_ts=ts)
                except BadEvent as exc:
                    impressions.metrics.rejected.labels(reason=exc.reason).inc()
                    log.warning("bad impression at %s[%d]@%d to %s: %s", IMPRESSIONS, msg.partition, msg.offset,
                                DLQ, exc)
                    await producer.send(DLQ, msg.key, dead_letter(
                        reason=exc.reason, error=exc.detail, topic=IMPRESSIONS, partition=msg.partition,
                        offset=msg.offset, timestamp=ts, key=msg.key, value=msg.value), None, None, None)
                    continue
                impressions.add(imp)

    return read_impressions
