"""Warm restart (#16): a scorer SIGKILLed half-way through a stream, after it wrote a snapshot and served past
it, restarts from the snapshot, replays the log from the snapshot's offsets up to its group's committed
offsets, and lists every user's final state; a corrupt newest snapshot is refused and the previous one used."""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import orjson
import pytest

from online.snapshot import SnapshotStore, read_snapshot
from online.synthetic import generate
from streams.agents.serving import SNAPSHOT_DIR
from streams.metrics import read_metric
from streams.topics import EVENTS, SCORE_REQUESTS

pytestmark = pytest.mark.integration


def _events(n_events: int, seed: int):
    data = generate(n_users=80, n_items=150, n_events=n_events, seed=seed)
    return [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]


def _metric(pipeline, name: str, metric: str, labels: str = "") -> float:
    try:
        return read_metric(pipeline.metrics_url(name), metric, labels, timeout=2)
    except OSError:
        return 0.0


def _committed(pipeline) -> int:
    """The scorer group's committed offsets on score-requests, summed over the partitions."""
    from aiokafka import TopicPartition

    from streams.agents.catalogue import committed_offsets

    async def go():
        found = await committed_offsets(pipeline.settings.kafka, "tailcast-scorer",
                                        [TopicPartition(SCORE_REQUESTS, p)
                                         for p in range(pipeline.settings.kafka.partitions)])
        return sum(o or 0 for o in found.values())

    return asyncio.run(go())


def _snapshotted(store: SnapshotStore) -> int:
    """The newest snapshot's offsets, summed (0: none)."""
    paths = store.paths()
    return sum(read_snapshot(paths[-1]).offsets[SCORE_REQUESTS].values()) if paths else 0


def test_a_scorer_killed_half_way_restarts_from_its_snapshot_and_lists_every_final_state(pipeline, kio, wait):
    events = _events(3000, seed=5)
    expected = collections.Counter(k.decode() for k, _ in events)
    store = SnapshotStore(pipeline.settings.scorer.checkpoint_dir / SNAPSHOT_DIR)
    kio.produce(EVENTS, events[:1200])
    wait(lambda: _metric(pipeline, "scorer", "tailcast_scorer_snapshots_written_total") >= 1, timeout=120,
         message="the scorer's first snapshot")
    kio.produce(EVENTS, events[1200:2000])
    # half-way: the scorer has served and committed past its newest snapshot, and has not snapshotted since
    wait(lambda: _committed(pipeline) > _snapshotted(store), timeout=120,
         message="the scorer to commit past its snapshot")
    os.killpg(pipeline.procs["scorer"].pid, signal.SIGKILL)
    pipeline.procs.pop("scorer").wait()
    snapshot = read_snapshot(store.paths()[-1])
    committed = _committed(pipeline)
    assert committed > sum(snapshot.offsets[SCORE_REQUESTS].values())

    kio.produce(EVENTS, events[2000:2400])  # waiting for the restarted scorer: its first lists
    pipeline.start("scorer", name="scorer2")
    wait(lambda: "restored snapshot " + snapshot.path.name in pipeline.log("scorer2"), timeout=120,
         message=f"the restart to restore {snapshot.path.name}")
    wait(lambda: _metric(pipeline, "scorer2", "tailcast_scorer_first_list_seconds") > 0, timeout=120,
         message="the restarted scorer's first list")
    replayed = _metric(pipeline, "scorer2", "tailcast_scorer_events_learned_total", 'path="replay"')
    assert replayed > 0  # the events between the snapshot and the committed offsets, learned without scoring
    assert _metric(pipeline, "scorer2", "tailcast_scorer_restore_seconds") > 0
    assert _metric(pipeline, "scorer2", "tailcast_scorer_snapshot_failures_total") == 0
    kio.produce(EVENTS, events[2400:])
    latest = wait(lambda: (r := kio.latest_counts()) == dict(expected) and r, timeout=180,
                  message="a recommendation for every user's final state")
    assert latest == dict(expected)
    print(f"restart to first list {_metric(pipeline, 'scorer2', 'tailcast_scorer_first_list_seconds'):.1f} s, "
          f"restore + replay of {replayed:.0f} events "
          f"{_metric(pipeline, 'scorer2', 'tailcast_scorer_restore_seconds'):.2f} s")

    # a corrupt newest snapshot is refused (counted, logged) and the one before it restored
    os.killpg(pipeline.procs["scorer2"].pid, signal.SIGKILL)
    pipeline.procs.pop("scorer2").wait()
    wanted = store.paths()
    newest = wanted[-1]
    newest.write_bytes(newest.read_bytes()[:-100])
    pipeline.start("scorer", name="scorer3")
    log_ok = (f"restored snapshot {wanted[-2].name}" if len(wanted) > 1 else "no valid snapshot")
    wait(lambda: log_ok in pipeline.log("scorer3"), timeout=120, message=log_ok)
    assert f"snapshot {newest.name} refused" in pipeline.log("scorer3")
    assert _metric(pipeline, "scorer3", "tailcast_scorer_snapshot_failures_total", 'stage="load"') == 1


def test_a_snapshot_of_another_log_is_refused_and_the_scorer_starts_cold(pipeline, kio, wait):
    """The embedded broker keeps its log in memory: after it restarts, the snapshots on disk name offsets of a
    log that is gone. The restarted scorer refuses them (counted, logged) and serves from empty models."""
    events = _events(1200, seed=6)
    kio.produce(EVENTS, events[:600])
    wait(lambda: _metric(pipeline, "scorer", "tailcast_scorer_snapshots_written_total") >= 1, timeout=120,
         message="the scorer's first snapshot")
    pipeline.stop_all()
    from streams.broker import EmbeddedBroker, free_port
    from streams.config import load_settings
    from streams.topics import ensure_topics

    with EmbeddedBroker(port=free_port(), log_path=pipeline.workdir / "broker2.log") as broker2:
        pipeline.broker = broker2
        pipeline.env["TAILCAST_KAFKA"] = broker2.address
        pipeline.env["TAILCAST_STATE_DIR"] = str(pipeline.workdir / "state2")
        pipeline.settings = kio.settings = load_settings({k: v for k, v in pipeline.env.items()
                                                          if k.startswith("TAILCAST_")})
        asyncio.run(ensure_topics(pipeline.settings.kafka))
        kio.produce(EVENTS, events)  # a longer log: its ends pass the snapshot's offsets, its records differ
        pipeline.start("worker", name="worker2")
        pipeline.start("scorer", name="scorer2")
        wait(lambda: "a snapshot of another log" in pipeline.log("scorer2"), timeout=120,
             message="the restarted scorer to refuse the old log's snapshot")
        assert _metric(pipeline, "scorer2", "tailcast_scorer_snapshot_failures_total", 'stage="log"') == 1
        expected = collections.Counter(k.decode() for k, _ in events)
        wait(lambda: kio.latest_counts() == dict(expected), timeout=180,
             message="a recommendation for every user's final state on the new log")
        assert _metric(pipeline, "scorer2", "tailcast_scorer_events_learned_total", 'path="replay"') == 0
        pipeline.stop_all()
