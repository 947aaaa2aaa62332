"""Shared fixtures: an embedded broker per test, and a running worker + scorer pipeline.

Tests wait on conditions (poll with a deadline), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from streams import processes
from streams.broker import EmbeddedBroker, free_port
from streams.config import Settings, load_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tailcast evaluate caches encoded item texts under $XDG_CACHE_HOME: tests (and the processes they start)
# use a fresh folder of their own, never the user's cache
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="tailcast-test-cache-")


#: Poll a condition until truthy; fail the test (AssertionError) after the timeout.
wait_until = functools.partial(processes.wait_until, interval=0.2, error=AssertionError)


@pytest.fixture()
def wait() -> Callable[..., object]:
    """``wait(condition, timeout=..., message=...)``: poll until truthy, fail after the timeout."""
    return wait_until


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log") as b:
        yield b


@dataclass
class Pipeline:
    """Worker and scorer processes (``tailcast worker`` / ``tailcast scorer``) on one broker."""

    broker: EmbeddedBroker
    workdir: Path
    env: dict[str, str]
    settings: Settings
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, role: str, name: str | None = None, **extra_env: str) -> subprocess.Popen:
        name = name or role
        port = free_port()
        env = {**self.env, "TAILCAST_METRICS_PORT": str(port), **extra_env}
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", role], env=env, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name], self.ports[name] = proc, port
        return proc

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/metrics"

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            proc.kill() if kill else proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture()
def pipeline_env(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Pipeline]:
    """A broker and the environment for tailcast processes; start roles with ``pipeline.start(...)``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILCAST_")}
    env.update({
        "TAILCAST_KAFKA": broker.address,
        "TAILCAST_STATE_DIR": str(tmp_path / "state"),
        "TAILCAST_TEXT_ENCODER": "hashing",
        "TAILCAST_METRICS_INTERVAL_S": "1",
        "TAILCAST_PARTITIONS": "4",
        "TAILCAST_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "HF_HUB_OFFLINE": "1",
    })
    settings = load_settings({k: v for k, v in env.items() if k.startswith("TAILCAST_")})
    p = Pipeline(broker=broker, workdir=tmp_path, env=env, settings=settings)
    try:
        yield p
    finally:
        p.stop_all()


@pytest.fixture()
def pipeline(pipeline_env: Pipeline) -> Pipeline:
    """A broker with one worker and one scorer running."""
    from streams.topics import ensure_topics

    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    return pipeline_env



class KafkaIO:
    """Small synchronous produce/consume helpers over aiokafka for tests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def produce(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        from aiokafka import AIOKafkaProducer

        from streams.kafka import client_kwargs

        async def go() -> None:
            producer = AIOKafkaProducer(**client_kwargs(self.settings.kafka), linger_ms=5)
            await producer.start()
            try:
                for key, value in records:
                    await producer.send(topic, value, key=key)
                await producer.flush()
            finally:
                await producer.stop()

        asyncio.run(go())

    def read_all(self, topic: str, *, decode: bool = True) -> list:
        """Every record currently in ``topic`` (all partitions), as (partition, offset, key, value)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.kafka import client_kwargs
        from streams.records import loads

        async def go() -> list:
            consumer = AIOKafkaConsumer(**client_kwargs(self.settings.kafka), enable_auto_commit=False)
            await consumer.start()
            try:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    return []
                tps = [TopicPartition(topic, p) for p in parts]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                end = await consumer.end_offsets(tps)
                out = []
                async def behind() -> bool:
                    return any([(await consumer.position(tp)) < end[tp] for tp in tps])

                while await behind():
                    batch = await consumer.getmany(timeout_ms=500)
                    for recs in batch.values():
                        for r in recs:
                            value = loads(r.value) if decode and r.value is not None else r.value
                            out.append((r.partition, r.offset, r.key, value))
                return out
            finally:
                await consumer.stop()

        return asyncio.run(go())

    def latest_counts(self) -> dict[str, int]:
        """Each user's highest ``user_event_count`` among the lists in ``recommendations`` so far (since the
        user's last tombstone, the erasure of #17: a user erased and not back has none)."""
        from streams.topics import RECOMMENDATIONS

        latest: dict[str, int] = {}
        for _p, _o, key, rec in self.read_all(RECOMMENDATIONS):  # a user's records are in order: one partition
            if rec is None:
                latest.pop(key.decode(), None)
            else:
                latest[rec["user_id"]] = max(latest.get(rec["user_id"], 0), rec["user_event_count"])
        return latest

    def user_states(self) -> dict:
        """The worker's user_state table as its changelog holds it: each user's newest ``UserState`` (a user
        whose last record is a tombstone, erased, has none)."""
        from streams.agents.ingest import UserState

        states = {}
        for _p, _o, key, value in self.read_all("tailcast-worker-user_state-changelog", decode=False):
            if value is None:
                states.pop(key.decode(), None)
            else:
                states[key.decode()] = UserState.from_bytes(value)
        return states


@pytest.fixture()
def kio(pipeline_env: Pipeline) -> KafkaIO:
    return KafkaIO(pipeline_env.settings)
