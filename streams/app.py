"""Faust applications, one per role, built by :func:`create_app` and run by :func:`faust_worker`; this
module and the agents are the only ones that import Faust (``tests/test_imports.py``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent
from prometheus_client import CollectorRegistry

from streams.agents import api, ingest
from streams.config import WORKER_BATCH, WORKER_BATCH_WAIT_S, KafkaSettings, Settings
from streams.kafka import ssl_context
from streams.metrics import WorkerMetrics
from streams.topics import DLQ, EVENTS, IMPRESSIONS, ITEMS, LONGTAIL_METRICS, RECOMMENDATIONS, SCORE_REQUESTS

__all__ = ["create_app", "Role", "faust_app", "declare_topics", "faust_credentials", "faust_worker",
           "stopped_by_signal"]

log = logging.getLogger(__name__)

#: Longest a worker's or scorer's fetch waits at the broker for new records (see :func:`_fetch_max_wait`).
FETCH_MAX_WAIT_MS = 50


@dataclass(slots=True)
class Role:
    """A built application: the Faust app, its Prometheus registry and the role's live objects."""

    app: faust.App
    registry: CollectorRegistry
    name: str
    parts: dict[str, Any]


def _fetch_max_wait(ms: int) -> None:
    """Make Faust's worker consumers use ``fetch_max_wait_ms=ms``, not faust-streaming 0.15's hard-coded
    1500 ms, which Tansu holds an idle fetch for (docs/results.md)."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls._create_worker_consumer, "__wrapped__", cls._create_worker_consumer)

    def create(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    create.__wrapped__ = original
    cls._create_worker_consumer = create


def _recover_to_fetched_highwaters() -> None:
    """Make Faust's table recovery read each changelog partition to ``ingest.fetch_highwaters``'s end (#20).
    faust-streaming 0.15: ``AIOKafkaConsumerThread._highwaters``; transactions keep their own ends."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls._highwaters, "__wrapped__", cls._highwaters)

    async def highwaters(self, partitions):
        listed = await original(self, partitions)
        if self.consumer.in_transaction:
            return listed
        return await ingest.fetch_highwaters(self._ensure_consumer()._client, listed)

    highwaters.__wrapped__ = original
    cls._highwaters = highwaters


def _seek_uncommitted_to_beginning() -> None:
    """Make Faust's seek to committed offsets send stream partitions without one to their beginning: aiokafka
    seeks only to an offset above 0, so a worker killed before its first commit left a successor that never
    re-fetched what the rebalance dropped (#20). faust-streaming 0.15: ``AIOKafkaConsumerThread.seek_to_committed``."""
    cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls.seek_to_committed, "__wrapped__", cls.seek_to_committed)

    async def seek_to_committed(self):
        committed = await original(self)
        app = self.consumer.app
        changelogs = app.tables.changelog_topics
        fresh = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if fresh and app.conf.consumer_auto_offset_reset == "earliest":
            await self.call_thread(self._ensure_consumer().seek_to_beginning, *fresh)
        return committed

    seek_to_committed.__wrapped__ = original
    cls.seek_to_committed = seek_to_committed


class KeepCurrentGenerationFlowControl(FlowControlEvent):
    """``app.flow_control`` whose ``resume()`` drops only records of an earlier consumer generation: Faust's
    emptied every stream queue, losing records fetched at the end of table recovery (#7, docs/decisions.md)."""

    def __init__(self, app: faust.App) -> None:
        super().__init__(loop=None)  # mode's Event finds the running loop when first awaited
        self._app = app

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()
        generation = self._app.consumer_generation_id
        changelogs = self._app.tables.changelog_topics
        for queue in self._queues:
            # the asyncio.Queue's own deque, which mode's clear() empties too
            records: collections.deque = queue._queue  # type: ignore[attr-defined]
            kept = [item for item in records
                    if (message := getattr(item, "message", None)) is not None
                    and message.generation_id == generation and message.topic not in changelogs]
            freed = len(records) - len(kept)
            records.clear()
            records.extend(kept)
            if kept:
                log.info("Streams resumed: kept %d record(s) of consumer generation %d fetched while resuming "
                         "(Faust would have dropped them)", len(kept), generation)
            errors = getattr(queue, "_errors", None)  # ThrowableQueue: exceptions thrown in before the pause
            if errors is not None:
                errors.clear()
            for _ in range(freed):  # a put waiting for room gets it (asyncio.Queue.get_nowait does the same)
                queue._wakeup_next(queue._putters)  # type: ignore[attr-defined]


def faust_credentials(kafka: KafkaSettings) -> Any:
    """Faust ``broker_credentials`` for the configured security protocol (None for PLAINTEXT)."""
    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_app(settings: Settings, app_id: str, *, web_port: int | None = None) -> faust.App:
    """A :class:`faust.App` with tailcast's broker, commit and flow-control settings and no agents; with
    ``web_port``, Faust's web server on every interface, reached at ``http://<hostname>:<web_port>``."""
    kafka = settings.kafka
    _fetch_max_wait(FETCH_MAX_WAIT_MS)
    _seek_uncommitted_to_beginning()
    web: dict[str, Any] = {"web_enabled": False}
    if web_port is not None:
        web = {"web_enabled": True, "web_port": web_port, "web_bind": "0.0.0.0", "web_tables_enabled": False}
    app = faust.App(
        app_id,
        broker=[f"kafka://{s.strip()}" for s in kafka.servers.split(",")],
        broker_credentials=faust_credentials(kafka),
        store="memory://",
        datadir=str(settings.state_dir / app_id),
        **web,
        autodiscover=False,
        processing_guarantee=kafka.processing_guarantee,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        # First consumer-group join on Tansu takes ~30 s with Faust's defaults, ~3 s with these.
        broker_rebalance_timeout=6.0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        # commit once a second (and every 10,000 messages at most): each commit first waits for the
        # producer to flush; every 1,000 messages meant a dozen flush stalls a second at ingest speed
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        producer_linger=0.005,
        stream_buffer_maxsize=8192,
        table_standby_replicas=0,
        logging_config=None,
    )
    app.flow_control = KeepCurrentGenerationFlowControl(app)  # before any stream queue registers with it
    return app


def declare_topics(app: faust.App, settings: Settings) -> dict[str, Any]:
    """Every topic of docs/design.md §3 on ``app``, keys and values as raw bytes (decoded in the agents)."""
    raw = {"key_serializer": "raw", "value_serializer": "raw", "key_type": bytes, "value_type": bytes}
    n = settings.kafka.partitions
    return {
        EVENTS: app.topic(EVENTS, partitions=n, **raw),
        ITEMS: app.topic(ITEMS, partitions=1, **raw),
        DLQ: app.topic(DLQ, partitions=1, **raw),
        SCORE_REQUESTS: app.topic(SCORE_REQUESTS, partitions=n, **raw),
        RECOMMENDATIONS: app.topic(RECOMMENDATIONS, partitions=n, **raw),
        LONGTAIL_METRICS: app.topic(LONGTAIL_METRICS, partitions=1, **raw),
        IMPRESSIONS: app.topic(IMPRESSIONS, partitions=n, **raw),
    }


def create_app(settings: Settings, *, role: str, partitions: dict[str, int] | None = None) -> Role:
    """Build the Faust app of ``role`` ("worker", "scorer" or "api"); ``partitions``: the topics' real counts."""
    if role not in ("worker", "scorer", "api"):
        raise ValueError(f"unknown role {role!r}: expected 'worker', 'scorer' or 'api'")
    registry = CollectorRegistry()

    def count(topic: str) -> int:
        return (partitions or {}).get(topic, settings.kafka.partitions)

    at_least_once = settings.kafka.processing_guarantee == "at_least_once"
    if role != "scorer":  # the roles with a table
        _recover_to_fetched_highwaters()
    app = faust_app(settings, f"tailcast-{role}", web_port=settings.api_port if role == "api" else None)
    topics = declare_topics(app, settings)
    if role == "worker":
        metrics = WorkerMetrics.create(registry)
        processor = ingest.IngestProcessor(
            partitions=count(EVENTS), history_len=settings.worker.history_len,
            max_event_bytes=settings.worker.max_event_bytes, pseudonymize_key=settings.worker.pseudonymize_key,
            consumed_max=settings.worker.consumed_max, exclude_consumed=settings.worker.exclude_consumed)
        agent, table = ingest.register(app, topics=topics, processor=processor, metrics=metrics,
                                       batch=WORKER_BATCH, batch_wait_s=WORKER_BATCH_WAIT_S,
                                       request_partitions=count(SCORE_REQUESTS), batched_writes=at_least_once,
                                       count_gaps=at_least_once, kafka=settings.kafka)
        parts = {"metrics": metrics, "processor": processor, "table": table, "agent": agent}
    elif role == "scorer":
        from streams.agents import serving  # lazily: it imports torch (seconds), which a worker never needs

        parts = serving.register(app, topics=topics, settings=settings, registry=registry)
    else:
        parts = api.register(app, topic=topics[RECOMMENDATIONS], partitions=count(RECOMMENDATIONS),
                             pseudonymize_key=settings.worker.pseudonymize_key, registry=registry,
                             kafka=settings.kafka, max_item_bytes=settings.worker.max_event_bytes,
                             batched_writes=at_least_once)
    _lag_timer(app, parts["metrics"].consumer_lag)
    return Role(app, registry, role, parts)


def _lag_timer(app: faust.App, gauge) -> None:
    """Export consumer lag (high-water mark minus position) per topic every 5 s."""

    @app.timer(5.0)
    async def consumer_lag() -> None:
        consumer = app.consumer
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - no high-water mark fetched yet for this partition
                continue
            if position is not None and highwater is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, highwater - position)
        for topic, value in lag.items():
            gauge.labels(topic=topic).set(value)


def faust_worker(app: faust.App, settings: Settings, loop: asyncio.AbstractEventLoop, *,
                 shutdown_grace_s: float | None = None) -> faust.Worker:
    """The :class:`faust.Worker` that runs ``app`` on ``loop``, leaving logging and stdout to tailcast; with
    ``shutdown_grace_s``, a stop on SIGTERM/SIGINT takes at most that long (Faust's waits for the broker)."""
    base = faust.Worker
    if shutdown_grace_s is not None:
        base = _bounded_shutdown_worker(base, shutdown_grace_s, settings.kafka.servers)
    return base(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=False,
                loop=loop)


def stopped_by_signal(worker: faust.Worker) -> bool:
    """Whether ``worker`` is stopping because of SIGTERM/SIGINT (mode's Worker records when)."""
    return bool(getattr(worker, "_signal_stop_time", None))


def _bounded_shutdown_worker(base: type, grace_s: float, servers: str) -> type:
    """``base`` (faust.Worker) whose stop on SIGTERM/SIGINT takes at most ``grace_s`` seconds."""

    def force_exit(signum: int) -> None:
        log.error("shutdown after signal %d did not finish in %.0fs (Kafka at %s unreachable?); exiting now",
                  signum, grace_s, servers)
        logging.shutdown()
        os._exit(128 + int(signum))

    class BoundedShutdownWorker(base):
        def _schedule_shutdown(self, signum) -> None:
            if not self._signal_stop_time:
                timer = threading.Timer(grace_s, force_exit, args=(signum,))
                timer.daemon = True
                timer.start()
            super()._schedule_shutdown(signum)

    return BoundedShutdownWorker
