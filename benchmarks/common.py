"""What the benchmarks share: a fresh embedded broker, the environment of tailcast processes, the
synthetic stream as Kafka records, a fast publisher, small statistics helpers, a real dataset's events, and
the printing and writing of a report.

Every benchmark that compares rates runs the competitors on ONE broker, in one process tree, back to
back (the machine is shared: absolute rates drift between runs, ratios measured together do not).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams.broker import EmbeddedBroker, free_port
from streams.config import Settings, load_settings
from streams.processes import wait_until

__all__ = [
    "Records",
    "bench_env",
    "ensure_topics",
    "fresh_broker",
    "load_events",
    "median",
    "percentile",
    "publish",
    "python",
    "rss_bytes",
    "settings_from_env",
    "show_report",
    "synthetic_records",
    "wait_until",
    "workdir",
]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class Records:
    """The synthetic stream as Kafka records: items (key item_id) and events (key user_id), time-ordered."""

    items: list[tuple[bytes, bytes]]
    events: list[tuple[bytes, bytes]]
    users: int


def synthetic_records(*, n_events: int, n_users: int, n_items: int, seed: int = 0) -> Records:
    """``online.synthetic.generate`` as ``(key, value)`` byte pairs in the ``events`` contract (docs/design.md §3)."""
    from online.synthetic import generate

    data = generate(n_users=n_users, n_items=n_items, n_events=n_events, seed=seed)
    events = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "event": ev, "ts": ts}))
              for ts, u, i, ev in data.events]
    items = [(it.item_id.encode(), orjson.dumps({"item_id": it.item_id, "title": it.title, "tags": list(it.tags)}))
             for it in data.items.values()]
    return Records(items=items, events=events, users=len({e[1] for e in data.events}))


@contextmanager
def fresh_broker(workdir: Path) -> Iterator[EmbeddedBroker]:
    """A new Tansu broker (memory storage) on a free port, stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log") as broker:
        yield broker


def bench_env(broker: EmbeddedBroker, workdir: Path, **extra: str) -> dict[str, str]:
    """Environment for tailcast processes on ``broker``: no inherited ``TAILCAST_*``, state under ``workdir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILCAST_")}
    env.update({
        "TAILCAST_KAFKA": broker.address,
        "TAILCAST_STATE_DIR": str(workdir / "state"),
        "TAILCAST_CHECKPOINT_DIR": str(workdir / "checkpoints"),
        "TAILCAST_PARTITIONS": "4",
        "TAILCAST_LOG_LEVEL": "warn",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    })
    env.update(extra)
    return env


def settings_from_env(env: dict[str, str]) -> Settings:
    return load_settings({k: v for k, v in env.items() if k.startswith("TAILCAST_")})


async def publish(settings: Settings, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> float:
    """Publish ``records`` as fast as the producer goes (default murmur2 partitioner); return seconds taken.

    Sends are not awaited one by one (only their enqueueing is), so batches fill; ``flush`` waits for all.
    """
    from aiokafka import AIOKafkaProducer

    from streams.kafka import client_kwargs

    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value, key=key))
        await producer.flush()
        for fut in futures:
            fut.result()  # raise if any record failed
        return time.perf_counter() - started
    finally:
        await producer.stop()


def ensure_topics(settings: Settings) -> dict[str, int]:
    from streams.topics import ensure_topics as ensure

    return asyncio.run(ensure(settings.kafka))


def pipeline_setup(broker: EmbeddedBroker, workdir: Path, items: Sequence[dict]) -> tuple[dict[str, str], Settings]:
    """A worker/scorer pipeline's environment on ``broker`` (the hashing text encoder, warnings only), its
    topics created and ``items`` (``items`` records) published; returns the environment and its settings."""
    from streams.topics import ITEMS

    env = bench_env(broker, workdir, TAILCAST_TEXT_ENCODER="hashing", TAILCAST_LOG_LEVEL="warn")
    settings = settings_from_env(env)
    ensure_topics(settings)
    asyncio.run(publish(settings, ITEMS, [(it["item_id"].encode(), orjson.dumps(it)) for it in items]))
    return env, settings


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) from /proc, 0 where unavailable."""
    try:
        text = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank on the sorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return float(ordered[rank])


def load_events(path: str) -> tuple[list[tuple[str, str, float]], dict[str, str], str]:
    """The dataset at ``path`` (``streams.datasets``): its (user, item, ts) events, item texts and name."""
    from streams.datasets import load_dataset

    ds = load_dataset(path)
    return [(e.user, e.item, e.ts) for e in ds.events], dict(ds.item_text), ds.name


def show_report(report: dict, text: str, out: Path | None, **dumps_kwargs) -> dict:
    """Print ``text`` (the report as markdown), write ``report`` as JSON to ``out`` when given; return ``report``."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, **dumps_kwargs))
    return report


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"tailcast-bench-{prefix}-"))


def python() -> str:
    return sys.executable
