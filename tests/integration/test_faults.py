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


def _committed(pipeline) -> dict[int, int | None]:
    """The worker group's committed offset of each ``events`` partition, read without joining the group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka import client_kwargs

    async def go():
        consumer = AIOKafkaConsumer(**client_kwargs(pipeline.settings.kafka), group_id="tailcast-worker",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(EVENTS, p) for p in sorted(consumer.partitions_for_topic(EVENTS) or ())]
            return {tp.partition: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()

    return asyncio.run(go())


def _log_ends(kio) -> dict[int, int]:
    """One past the last offset of each ``events`` partition, from the records themselves (the embedded
    broker's ListOffsets answers less, #20)."""
    ends: dict[int, int] = {}
    for p, o, _k, _v in kio.read_all(EVENTS, decode=False):
        ends[p] = max(ends.get(p, 0), o + 1)
    return ends


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


def _count_mismatch(kio, pipeline, expected: collections.Counter, worker: str = "worker2") -> str:
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
    try:
        lines.append(f"committed offsets: {_committed(pipeline)}")
    except Exception as exc:  # a diagnostic only
        lines.append(f"committed offsets: {exc!r}")
    log = pipeline.log(worker)
    if "Highwater - Active" in log:  # what the restarted worker's recovery saw of the changelog
        rows = [row.split("|") for row in log[log.rindex("Highwater - Active"):].splitlines()[1:12]]
        highwater = {int(r[2]): int(r[3]) for r in rows if len(r) > 3 and r[2].strip().isdigit()
                     and r[3].strip().lstrip("-").isdigit()}
        lines.append(f"restarted worker's recovery saw changelog highwaters {highwater}")
    lines.append(f"restarted worker ({worker}): " + ", ".join(
        f"{m} {_metric(pipeline, worker, 'tailcast_worker_' + m + '_total'):.0f}"
        for m in ("events_consumed", "events_valid", "duplicates_skipped", "offsets_skipped"))
        + ", consumer lag " + ", ".join(f"{t} {_metric(pipeline, worker, m):.0f}" for t, m in (
            (t, f'tailcast_worker_consumer_lag_messages{{topic="{t}"}}')
            for t in ("events", "tailcast-worker-user_state-changelog"))))
    return "\n".join(lines)


# How the test producer keys events: "murmur2" is Kafka's Java/aiokafka default partitioner, the one the
# worker routes by, so every event lands on its user's partition; "librdkafka" is confluent-kafka's default
# (consistent_random: CRC32), so about three events in four land elsewhere and the worker forwards them
# with their origin in props["_origin"] (#20).
PARTITIONERS = ("murmur2", "librdkafka")


def _produce(pipeline, kio, records: list[tuple[bytes, bytes]], partitioner: str) -> None:
    if partitioner == "murmur2":
        kio.produce(EVENTS, records)
        return
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": pipeline.broker.address, "linger.ms": 5})
    for key, value in records:
        producer.produce(EVENTS, key=key, value=value)
        producer.poll(0)
    assert producer.flush(30) == 0


def _kill(pipeline, name: str) -> None:
    """SIGKILL process ``name`` and its whole process group."""
    os.killpg(pipeline.procs[name].pid, signal.SIGKILL)
    pipeline.procs.pop(name).wait()


def _forwarded_share(kio, partitions: int) -> float:
    """The share of the events as produced (no ``_origin``) that sit on a partition their user does not hash to."""
    from streams.topics import partition_for

    produced = [(p, key) for p, _o, key, value in kio.read_all(EVENTS, decode=False)
                if value.startswith(b"{") and b'"_origin"' not in value]
    return sum(p != partition_for(key, partitions) for p, key in produced) / max(1, len(produced))


@pytest.mark.parametrize("partitioner", PARTITIONERS)
@pytest.mark.parametrize("kills", ["mid-stream", "caught-up", "caught-up+after-restart"])
def test_worker_killed_mid_stream_recovers_state_and_loses_nothing(pipeline_env, kio, wait, partitioner, kills):
    """kill -9 the worker, start another at once and produce the second half of the events before it
    has joined. ``mid-stream``: killed part-way through the first half. ``caught-up``: killed once it
    has applied and committed the whole first half, so every user state it wrote must come back from
    the changelog (#20 lost the states in the changelog's last record batch, and with them events that
    are not read again). ``+after-restart``: its replacement is killed too, as soon as it has read its
    first records, and a third worker finishes. Every user's state and newest list reflect each of its
    events exactly once, whichever partitioner the producer used."""
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    first, second = _events(1500, seed=1), _events(1500, seed=2)
    expected = collections.Counter(k.decode() for k, _ in first + second)
    # the user with the most events right after the kill
    hot = collections.Counter(k.decode() for k, _ in second[:50]).most_common(1)[0][0]
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    if kills == "mid-stream":
        _produce(pipeline_env, kio, first, partitioner)
        wait(lambda: _metric(pipeline_env, "worker", "tailcast_worker_events_valid_total") >= 300, timeout=60,
             message="the worker to start applying events")
    else:
        # the last 100 events of the first half come once the rest is applied, so that the worker's last
        # micro-batch updates many users: their states share the changelog's last record batches
        _produce(pipeline_env, kio, first[:-100], partitioner)
        wait(lambda: _metric(pipeline_env, "worker", "tailcast_worker_events_valid_total") >= len(first) - 100,
             timeout=60, message="the worker to apply the first 1400 events")
        _produce(pipeline_env, kio, first[-100:], partitioner)
        wait(lambda: _metric(pipeline_env, "worker", "tailcast_worker_events_valid_total") >= len(first)
             and _committed(pipeline_env) == _log_ends(kio), timeout=90,
             message="the worker to apply and commit the first half")
    _kill(pipeline_env, "worker")
    last = "worker2"
    if kills == "mid-stream":  # as before #20: the second half is there when the new worker starts
        _produce(pipeline_env, kio, second, partitioner)
        pipeline_env.start("worker", name=last)
    else:  # at once, as in #20: the killed one is still a member of the group
        pipeline_env.start("worker", name=last)
        _produce(pipeline_env, kio, second, partitioner)
    if kills.endswith("after-restart"):
        wait(lambda: _metric(pipeline_env, last, "tailcast_worker_events_consumed_total") >= 1, timeout=90,
             message="the restarted worker to read its first records")
        _kill(pipeline_env, last)
        last = "worker3"
        pipeline_env.start("worker", name=last)
    # its table recovery, checked against the changelog's ends, is done before its states are read (else a
    # worker killed after it had applied every event could leave the last one unchecked: CI, stop 15)
    checks = [f'tailcast_worker_recovery_checks_total{{outcome="{o}"}}' for o in ("whole", "short", "unchecked")]
    wait(lambda: sum(_metric(pipeline_env, last, c) for c in checks) >= 1, timeout=90,
         message=f"{last} to restore its user states and check them against the changelog")

    def settled():
        states = kio.user_states()
        return states if {u: s.count for u, s in states.items()} == dict(expected) else None

    try:
        states = wait(settled, timeout=120, message="recovered worker to reflect every event exactly once")
    except AssertionError as exc:  # say which way it is off (lost events, or applied twice), and where
        got = kio.user_states().get(hot)
        raise AssertionError(f"{exc}\n{hot} (most events right after the kill): {expected[hot]} published, state "
                             f"{got and got.count}\n{_count_mismatch(kio, pipeline_env, expected, last)}") from None
    assert states[hot].count == expected[hot]
    assert sum(s.count for s in states.values()) == len(first) + len(second)
    # every record reached the restarted worker's agent, also those its predecessor had applied (#7: a
    # record Faust dropped while resuming was invisible in the counts when worker1 had applied it), and
    # its table recovery read every changelog record (#20)
    assert _metric(pipeline_env, last, "tailcast_worker_offsets_skipped_total", required=True) == 0
    assert _metric(pipeline_env, last, checks[0], required=True) >= 1, "no table recovery of it came out whole"
    # 120 s: the scorer shares the two cores with the workers, and with whatever else runs beside the test
    latest = wait(lambda: (r := kio.latest_counts()) == dict(expected) and r, timeout=120,
                  message="a recommendation for every user's final state")
    assert latest[hot] == expected[hot], f"{hot}'s newest list is at {latest[hot]} of {expected[hot]} events"
    assert latest == dict(expected)
    if partitioner == "librdkafka":  # the forwarding path was the one exercised
        assert _forwarded_share(kio, pipeline_env.settings.kafka.partitions) > 0.5


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_scorer_killed_resumes_from_committed_offsets(pipeline, kio, wait, partitioner):
    events = _events(2000, seed=3)
    expected = collections.Counter(k.decode() for k, _ in events)
    _produce(pipeline, kio, events[:1000], partitioner)
    wait(lambda: _metric(pipeline, "scorer", 'tailcast_scorer_recommendations_published_total{arm="control"}') > 0,
         timeout=60, message="the scorer to publish")
    _kill(pipeline, "scorer")
    _produce(pipeline, kio, events[1000:], partitioner)
    pipeline.start("scorer", name="scorer2")
    latest = wait(lambda: (r := kio.latest_counts()) == dict(expected) and r, timeout=120,
                  message="every user to end with a recommendation for their latest state")
    assert latest == dict(expected)


def test_end_offsets_reach_the_last_record_of_the_last_batch(broker):
    """The end offsets table recovery reads to (#20): ListOffsets on the embedded broker stops inside the
    last record batch; :func:`fetch_highwaters` gives the log end."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from streams.agents.ingest import fetch_highwaters

    async def go():
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
        await admin.start()
        await admin.create_topics([NewTopic("t", 2, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=broker.address)
        await producer.start()
        for size in (10, 7):  # two record batches on partition 0, none on 1
            batch = producer.create_batch()
            for _ in range(size):
                batch.append(key=b"k", value=b"v", timestamp=None)
            await (await producer.send_batch(batch, "t", partition=0))
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.address, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition("t", 0), TopicPartition("t", 1)]
            listed = await consumer.end_offsets(tps)
            return listed, await fetch_highwaters(consumer._client, listed)
        finally:
            await consumer.stop()

    listed, ends = asyncio.run(go())
    assert list(ends.values()) == [17, 0], f"listed {listed}, corrected {ends}"


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


@pytest.mark.alone
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
