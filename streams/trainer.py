"""``tailcast trainer``: follows ``score-requests`` and ``items``, keeps the newest :data:`EVENTS_KEPT`
events (erased users' dropped, #17) and, every ``TAILCAST_TRAIN_INTERVAL_S`` or once the log has doubled,
trains an encoder and a Mult-VAE (``models.refresh``) and publishes a versioned checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from models.checkpoint import CheckpointRegistry
from models.refresh import RefreshConfig, fit_refresh
from streams.agents.catalogue import Catalogue, CatalogueChange
from streams.agents.serving import TextVectors
from streams.config import TRAIN_EPOCHS, TRAIN_MIN_EVENTS, Settings
from streams.datasets import load_dataset
from streams.kafka import client_kwargs
from streams.metrics import TrainerMetrics, serve_metrics
from streams.records import Forget, ScoreRequest, read_request
from streams.topics import ITEMS, SCORE_REQUESTS

__all__ = ["run_trainer", "EventLog", "refresh_config", "refresh_once", "update_texts"]

log = logging.getLogger(__name__)

#: The most recent events the trainer keeps and trains on.
EVENTS_KEPT = 1_000_000


class EventLog:
    """The most recent events, each applied once (a per-user high-water mark drops redelivered ones).

    :meth:`forget` (#17) marks a user's events kept so far; :meth:`erase` drops those of every user marked
    since, in one pass, before the user's later events are added. A returning user is a new user.

    >>> log = EventLog(10)
    >>> for user, n in (("u1", 2), ("u2", 1)):
    ...     _ = log.add_request(ScoreRequest(user, [], [(f"i{k}", 1.0, "click") for k in range(n)], n, 1.0, 1.0, 1.0))
    >>> log.forget("u1"); log.erase(), [e[0] for e in log.events], log.erased_since_refresh
    (2, ['u2'], 2)
    """

    def __init__(self, max_events: int) -> None:
        self.events: deque[tuple[str, str, float]] = deque(maxlen=max_events)
        self._seen: dict[str, int] = {}
        self._forgotten: set[str] = set()  # users whose events are still to be dropped (erase)
        self.new_since_refresh = 0
        self.erased_since_refresh = 0  # events dropped by erasure since the last refresh

    def forget(self, user: str) -> None:
        """Drop ``user``'s events kept so far (at the next :meth:`erase`); their next request starts afresh."""
        self._seen.pop(user, None)
        self._forgotten.add(user)

    def erase(self) -> int:
        """Drop the events of the users forgotten since the last call; returns how many went."""
        if not self._forgotten:
            return 0
        gone, self._forgotten = self._forgotten, set()
        kept = [e for e in self.events if e[0] not in gone]
        erased = len(self.events) - len(kept)
        self.events = deque(kept, maxlen=self.events.maxlen)
        self.erased_since_refresh += erased
        return erased

    def add_request(self, request: ScoreRequest) -> int:
        if self._forgotten and request.user_id in self._forgotten:
            self.erase()  # the user's events before the marker go, these (after it) stay
        first = request.event_count - len(request.new) + 1
        done = self._seen.get(request.user_id, 0)
        added = 0
        for i, (item, ts, _event) in enumerate(request.new):
            if first + i > done:
                self.events.append((request.user_id, item, float(ts)))
                added += 1
        self._seen[request.user_id] = max(done, request.event_count)
        self.new_since_refresh += added
        return added


def update_texts(texts: dict[str, str], change: CatalogueChange) -> None:
    """Keep ``texts`` (item -> the text the encoder reads) up to date with one ``items`` record: a deleted
    item's text goes; a hidden item keeps its text (the scorer bans it, a restore brings it back).

    >>> from streams.agents.catalogue import Catalogue, CatalogueChange
    >>> texts, c = {}, Catalogue(max_bytes=1000)
    >>> update_texts(texts, c.apply(b"i1", b'{"item_id": "i1", "title": "Jazz", "hidden": true}')); texts
    {'i1': 'Jazz'}
    >>> update_texts(texts, c.apply(b"i1", None)); update_texts(texts, c.apply(b"i2", b"{")); texts
    {}
    """
    if change.kind == "invalid":
        return
    if change.record is None:
        texts.pop(change.item_id, None)
    else:
        texts[change.item_id] = change.record.content()


def _text_vectors(settings: Settings, texts: Mapping[str, str]) -> dict[str, np.ndarray]:
    if not texts:
        return {}
    encoder = TextVectors(settings.scorer.text_encoder, settings.scorer.device)
    items = sorted(texts)
    matrix = encoder.encode([texts[i] for i in items])
    return dict(zip(items, matrix))


def refresh_config(settings: Settings) -> RefreshConfig:
    """The refresh the settings ask for: item text always ``"auto"`` (``RefreshConfig``'s default, the
    measured choice), a Mult-VAE unless its budget is 0."""
    return RefreshConfig(device=settings.scorer.device, max_len=settings.worker.history_len, epochs=TRAIN_EPOCHS,
                         max_seconds=settings.trainer.max_seconds, vae=settings.trainer.vae,
                         vae_max_seconds=settings.trainer.vae_max_seconds)


def refresh_once(settings: Settings, events: list[tuple[str, str, float]], texts: Mapping[str, str], *,
                 metrics: TrainerMetrics, config: RefreshConfig | None = None):
    """Train on ``events`` and publish a checkpoint; returns the published checkpoint."""
    started = time.time()
    config = config or refresh_config(settings)
    # item texts feed only an encoder variant with text: with text "off", encoding them would only delay it
    vectors = _text_vectors(settings, texts) if config.text != "off" else {}
    result = fit_refresh(events, text_vectors=vectors, config=config)
    ckpt = CheckpointRegistry(settings.scorer.checkpoint_dir).publish(
        model=result.model, vocab=result.vocab, step=result.train.steps, metrics=result.metrics, vae=result.vae)
    duration = time.time() - started
    metrics.refreshes.inc()
    metrics.refresh_duration.observe(duration)
    metrics.last_refresh.set(time.time())
    metrics.valid_ndcg.labels(model="transformer").set(result.metrics["valid_ndcg"])
    if "vae_valid_ndcg" in result.metrics:
        metrics.valid_ndcg.labels(model="vae").set(result.metrics["vae_valid_ndcg"])
    log.info("published %s: %d events, %d users, %d items, %s encoder (valid NDCG@10 %s), Mult-VAE %s, %.1fs",
             ckpt.version, result.n_events, result.n_users, len(result.vocab), result.variant,
             ", ".join(f"{k} {v:.4f}" for k, v in result.variants_valid_ndcg.items()),
             f"{result.metrics['vae_valid_ndcg']:.4f}" if result.vae is not None else "off", duration)
    return ckpt


async def _follow(settings: Settings, event_log: EventLog, texts: dict[str, str], *, caught_up: asyncio.Event,
                  stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    catalogue = Catalogue(max_bytes=settings.worker.max_event_bytes)
    try:
        tps = [TopicPartition(topic, p) for topic in (SCORE_REQUESTS, ITEMS)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            forgotten, erased_before = 0, event_log.erased_since_refresh
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == ITEMS:
                        change = catalogue.apply(r.key, r.value)
                        if change.kind == "invalid":
                            log.warning("skipping bad item at offset %d: %s", r.offset, change.error)
                        update_texts(texts, change)
                    elif isinstance(request := read_request(r.value), Forget):
                        event_log.forget(request.user_id)
                        forgotten += 1
                    else:
                        event_log.add_request(request)
            if forgotten:
                event_log.erase()
                log.info("trainer: %d user(s) forgotten (erasure): %d of their events dropped; no refresh from "
                         "now on trains on them", forgotten, event_log.erased_since_refresh - erased_before)
            if not caught_up.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= end[tp] for pos, tp in zip(positions, tps)):
                    caught_up.set()
    finally:
        await consumer.stop()


async def _run(settings: Settings, metrics: TrainerMetrics, *, once: bool) -> None:
    event_log = EventLog(EVENTS_KEPT)
    texts: dict[str, str] = {}
    stop, caught_up = asyncio.Event(), asyncio.Event()
    follower = asyncio.create_task(_follow(settings, event_log, texts, caught_up=caught_up, stop=stop))
    loop = asyncio.get_running_loop()
    last = time.monotonic()
    trained_on = 0  # events in the last refresh
    try:
        await caught_up.wait()
        log.info("trainer caught up with the event log: %d events, %d items with text", len(event_log.events),
                 len(texts))
        while True:
            metrics.events_buffered.set(len(event_log.events))
            changed = event_log.new_since_refresh > 0 or event_log.erased_since_refresh > 0
            due = time.monotonic() - last >= settings.trainer.interval_s and changed
            enough = event_log.new_since_refresh >= max(TRAIN_MIN_EVENTS, trained_on)
            if once or due or enough:
                event_log.erase()
                events, snapshot = list(event_log.events), dict(texts)
                event_log.new_since_refresh, event_log.erased_since_refresh, trained_on = 0, 0, len(events)
                if len({u for u, _, _ in events}) >= 2:
                    await loop.run_in_executor(None, lambda: refresh_once(settings, events, snapshot,
                                                                          metrics=metrics))
                else:
                    log.warning("not enough events to train on yet (%d)", len(events))
                last = time.monotonic()
                if once:
                    return
            await asyncio.sleep(1.0)  # the refresh schedule's tick, not a wait for data
            if follower.done():
                follower.result()  # surface a crashed follower
    finally:
        stop.set()
        await asyncio.gather(follower, return_exceptions=True)


def run_trainer(settings: Settings, *, once: bool = False, dataset: str | None = None) -> int:
    registry = CollectorRegistry()
    metrics = TrainerMetrics.create(registry)
    metrics.refresh_interval.set(settings.trainer.interval_s)  # the stale-model alerts are twice it
    serve_metrics(registry, settings.metrics_port_for("trainer"))
    if dataset:
        ds = load_dataset(dataset)
        events = [(e.user, e.item, e.ts) for e in ds.events][-EVENTS_KEPT:]
        refresh_once(settings, events, ds.item_text, metrics=metrics)
        return 0
    try:
        asyncio.run(_run(settings, metrics, once=once))
    except KeyboardInterrupt:
        pass
    return 0
