"""Faults lose nothing: killed worker, killed scorer, broker absent at start."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from online.synthetic import generate
from streams.agents.ingest import UserState
from streams.broker import free_port
from streams.topics import EVENTS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration


def _events(n_events: int, seed: int):
    data = generate(n_users=60, n_items=100, n_events=n_events, seed=seed)
    return [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]


def _final_states(kio) -> dict[str, UserState]:
    out = {}
    for _p, _o, key, value in kio.read_all("tailcast-worker-user_state-changelog", decode=False):
        out[key.decode()] = UserState.from_bytes(value)
    return out


def _latest_recs(kio) -> dict[str, int]:
    latest: dict[str, int] = collections.defaultdict(int)
    for _p, _o, _k, rec in kio.read_all(RECOMMENDATIONS):
        latest[rec["user_id"]] = max(latest[rec["user_id"]], rec["user_event_count"])
    return latest


def _metric(pipeline, name: str, metric: str, *, required: bool = False) -> float:
    """``metric``'s value on process ``name``'s /metrics; 0 when unreachable or absent, unless ``required``."""
    import urllib.request

    try:
        body = urllib.request.urlopen(pipeline.metrics_url(name), timeout=2).read().decode()
    except OSError:
        if required:
            raise
        return 0.0
    for line in body.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[-1])
    assert not required, f"{name} does not export {metric}"
    return 0.0


def _count_mismatch(kio, pipeline, expected: collections.Counter) -> str:
    """For a failed count check: which users are off and which way, each one's events (partition, offset)
    against its changelog records (count, applied offsets), the group's committed offsets and the
    restarted worker's counters."""
    events = collections.defaultdict(list)
    for p, o, key, _v in kio.read_all(EVENTS, decode=False):
        events[key.decode()].append((p, o))
    changelog = collections.defaultdict(list)
    last_read: dict[int, int] = {}
    for p, o, key, value in kio.read_all("tailcast-worker-user_state-changelog", decode=False):
        state = UserState.from_bytes(value)
        changelog[key.decode()].append((o, state.count, state.applied))
        last_read[p] = max(last_read.get(p, -1), o)
    got = {u: records[-1][1] for u, records in changelog.items()}
    off = [u for u in expected.keys() | got.keys() if got.get(u, 0) != expected.get(u, 0)]
    lines = [f"{sum(got.get(u, 0) < expected[u] for u in off)} users below their published count, "
             f"{sum(got.get(u, 0) > expected.get(u, 0) for u in off)} above; changelog offsets read up to "
             f"{dict(sorted(last_read.items()))}"]
    for u in off[:3]:
        lines.append(f"  {u}: published {expected.get(u, 0)} at {events[u][:2]}..{events[u][-2:]}, state {got.get(u)}; "
                     f"changelog (offset, count, applied) {changelog[u][-4:]}")
    async def committed():  # read the group's offsets without joining it
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from streams.kafka import client_kwargs

        consumer = AIOKafkaConsumer(**client_kwargs(pipeline.settings.kafka), group_id="tailcast-worker",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(EVENTS, p) for p in sorted(consumer.partitions_for_topic(EVENTS) or ())]
            return {tp.partition: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()
    try:
        lines.append(f"committed offsets: {asyncio.run(committed())}")
    except Exception as exc:  # a diagnostic only
        lines.append(f"committed offsets: {exc!r}")
    log = pipeline.log("worker2")
    if "Highwater - Active" in log:  # what the restarted worker's recovery saw of the changelog
        rows = [row.split("|") for row in log[log.rindex("Highwater - Active"):].splitlines()[1:12]]
        highwater = {int(r[2]): int(r[3]) for r in rows if len(r) > 3 and r[2].strip().isdigit()
                     and r[3].strip().lstrip("-").isdigit()}
        lines.append(f"restarted worker's recovery saw changelog highwaters {highwater}")
    lines.append("restarted worker: " + ", ".join(
        f"{m} {_metric(pipeline, 'worker2', 'tailcast_worker_' + m + '_total'):.0f}"
        for m in ("events_consumed", "events_valid", "duplicates_skipped", "offsets_skipped")))
    return "\n".join(lines)


def test_worker_killed_mid_stream_recovers_state_and_loses_nothing(pipeline_env, kio, wait):
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    first, second = _events(1500, seed=1), _events(1500, seed=2)
    expected = collections.Counter(k.decode() for k, _ in first + second)
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    kio.produce(EVENTS, first)
    # kill -9 while it is part-way through the first half
    wait(lambda: _metric(pipeline_env, "worker", "tailcast_worker_events_valid_total") >= 300, timeout=60,
         message="the worker to start applying events")
    os.killpg(pipeline_env.procs["worker"].pid, signal.SIGKILL)
    pipeline_env.procs.pop("worker").wait()
    kio.produce(EVENTS, second)
    pipeline_env.start("worker", name="worker2")

    def settled():
        states = _final_states(kio)
        return states if {u: s.count for u, s in states.items()} == dict(expected) else None

    try:
        states = wait(settled, timeout=120, message="recovered worker to reflect every event exactly once")
    except AssertionError as exc:  # say which way it is off (lost events, or applied twice), and where
        raise AssertionError(f"{exc}\n{_count_mismatch(kio, pipeline_env, expected)}") from None
    assert sum(s.count for s in states.values()) == len(first) + len(second)
    # every record reached the restarted worker's agent, also those its predecessor had applied (#7: a
    # record Faust dropped while resuming was invisible in the counts when worker1 had applied it)
    assert _metric(pipeline_env, "worker2", "tailcast_worker_offsets_skipped_total", required=True) == 0
    latest = wait(lambda: (r := _latest_recs(kio)) == dict(expected) and r, timeout=60,
                  message="a recommendation for every user's final state")
    assert latest == dict(expected)


def test_scorer_killed_resumes_from_committed_offsets(pipeline, kio, wait):
    events = _events(2000, seed=3)
    expected = collections.Counter(k.decode() for k, _ in events)
    kio.produce(EVENTS, events[:1000])
    wait(lambda: _metric(pipeline, "scorer", 'tailcast_scorer_recommendations_published_total{arm="control"}') > 0,
         timeout=60, message="the scorer to publish")
    os.killpg(pipeline.procs["scorer"].pid, signal.SIGKILL)
    pipeline.procs.pop("scorer").wait()
    kio.produce(EVENTS, events[1000:])
    pipeline.start("scorer", name="scorer2")
    latest = wait(lambda: (r := _latest_recs(kio)) == dict(expected) and r, timeout=120,
                  message="every user to end with a recommendation for their latest state")
    assert latest == dict(expected)


def test_broker_unavailable_at_start_gives_a_clear_error_after_backoff(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILCAST_")}
    env.update(TAILCAST_KAFKA=f"127.0.0.1:{port}", TAILCAST_STATE_DIR=str(tmp_path))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "--connect-timeout", "3"], env=env,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert f"127.0.0.1:{port}" in proc.stderr and "no Kafka broker answered" in proc.stderr
    assert elapsed >= 3  # it retried for the whole connect timeout instead of failing at once


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_broker_gone_mid_run_no_busy_loop_and_the_address_is_named(pipeline, kio, wait):
    """The broker dies under a running worker and scorer: they stay up, wait with backoff (little CPU), say
    which address they cannot reach, and serve again when a broker is back at that address."""
    events = _events(300, seed=4)
    kio.produce(EVENTS, events)
    wait(lambda: _metric(pipeline, "worker", "tailcast_worker_events_valid_total") >= 300, timeout=60,
         message="the worker to apply the events")
    pids = {name: p.pid for name, p in pipeline.procs.items()}
    pipeline.broker.stop()
    before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    outage = 10.0
    deadline = time.monotonic() + outage
    while time.monotonic() < deadline:  # observe the processes through the outage
        assert all(p.poll() is None for p in pipeline.procs.values())
        time.sleep(0.5)
    used = {name: _cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    assert all(cpu < 0.5 * outage for cpu in used.values()), f"CPU seconds during a {outage:.0f}s outage: {used}"
    address = pipeline.broker.address
    for name in pipeline.procs:
        log = pipeline.log(name)
        assert f"Kafka at {address} is unreachable" in log, f"{name} never named {address}"
    # a broker comes back at the same address (the embedded one is memory-only: it comes back empty)
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(port=pipeline.broker.port, log_path=pipeline.workdir / "broker2.log"):
        asyncio.run(ensure_topics(pipeline.settings.kafka))
        later = [(b"after", orjson.dumps({"user_id": "after", "item_id": "i1"}))]
        kio.produce(EVENTS, later)
        try:
            # 180 s: a Faust consumer thread may crash on its way out of the outage after the broker is back
            # (once in CI, 50 s later); the process then restarts, reloads its models and rejoins its group
            wait(lambda: any(rec["user_id"] == "after" for *_, rec in kio.read_all(RECOMMENDATIONS)), timeout=180,
                 message="a recommendation after the broker came back")
        except AssertionError as exc:
            logs = "\n".join(f"--- {name} ---\n{pipeline.log(name)[-4000:]}" for name in pipeline.procs)
            raise AssertionError(f"{exc}\n{logs}") from None
        assert all(p.poll() is None for p in pipeline.procs.values())

    # the broker is gone again: SIGTERM must still end both processes, within the shutdown grace period
    started = time.monotonic()
    for proc in pipeline.procs.values():
        proc.terminate()
    grace = float(pipeline.env.get("TAILCAST_SHUTDOWN_GRACE_S", "15"))
    for name, proc in pipeline.procs.items():
        proc.wait(timeout=grace + 15)
        log = pipeline.log(name)
        if "exiting now" in log:  # the graceful stop waited for the broker: bounded, and it says why
            assert pipeline.broker.address in log[log.rindex("did not finish"):]
    assert time.monotonic() - started < grace + 15
