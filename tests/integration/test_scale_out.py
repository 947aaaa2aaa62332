"""Scale-out over Kafka partitions (docs/design.md §8): two workers and two scorers split the partitions and give the
same final per-user results as one of each, with nothing lost, one ``"event"`` list per user state, and every
repeat of a state (an empty list scored again, a model swap) marked as one; each scorer's online models learn
every event, its own partitions' and the other scorer's."""

from __future__ import annotations

import asyncio
import collections
import re

import orjson
import pytest

from online.synthetic import generate
from streams.metrics import read_metric
from streams.topics import EVENTS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration


def _assigned(log: str, topic: str) -> set[int]:
    """Partitions of ``topic`` in the latest assignment a Faust worker logged."""
    blocks = re.findall(r"Setting newly assigned partitions (.*?) for group", log)
    if not blocks:
        return set()
    return {int(p) for p in re.findall(rf"TopicPartition\(topic='{re.escape(topic)}', partition=(\d+)\)",
                                        blocks[-1])}


def _learned(pipeline, name: str) -> dict[str, float]:
    """``tailcast_scorer_events_learned_total`` of scorer ``name``, by path."""
    url = pipeline.metrics_url(name)
    return {path: read_metric(url, "tailcast_scorer_events_learned_total", f'path="{path}"')
            for path in ("served", "others")}


def _run(pipeline, kio, wait, events, *, n: int) -> tuple[dict, dict]:
    asyncio.run(ensure_topics(pipeline.settings.kafka))
    for i in range(n):
        pipeline.start("worker", name=f"worker{i}")
        pipeline.start("scorer", name=f"scorer{i}")
    partitions = set(range(pipeline.settings.kafka.partitions))

    def split(role: str, topic: str) -> bool:
        owned = [_assigned(pipeline.log(f"{role}{i}"), topic) for i in range(n)]
        return all(owned) and set().union(*owned) == partitions and sum(map(len, owned)) == len(partitions)

    wait(lambda: split("worker", EVENTS) and split("scorer", "score-requests"), timeout=90,
         message=f"{n} workers and {n} scorers to split the partitions")
    kio.produce(EVENTS, events)
    expected = collections.Counter(k.decode() for k, _ in events)

    wait(lambda: kio.latest_counts() == dict(expected), timeout=120, message="every user's final recommendation")
    # every scorer learned every event once: its own partitions' (served) and the others' (learn_all)
    wait(lambda: all(sum(_learned(pipeline, f"scorer{i}").values()) == len(events) for i in range(n)), timeout=60,
         message=f"each scorer to learn all {len(events)} events: "
                 f"{[_learned(pipeline, f'scorer{i}') for i in range(n)]}")
    assert n == 1 or all(_learned(pipeline, f"scorer{i}")["others"] > 0 for i in range(n))
    recs = [rec for *_, rec in kio.read_all(RECOMMENDATIONS)]
    events = collections.Counter((rec["user_id"], rec["user_event_count"]) for rec in recs
                                 if rec["refresh"] == "event")
    duplicated = {p: c for p, c in events.items() if c > 1}
    assert not duplicated, f"more than one event list for a state: {list(duplicated.items())[:5]}"
    # every list for a state after its event list is a marked repeat, numbered in its list_id
    by_state = collections.defaultdict(list)
    for rec in recs:  # per user, in publication order (one partition per user)
        by_state[rec["user_id"], rec["user_event_count"]].append(rec)
    for (user, count), lists in by_state.items():
        assert [r["list_id"] for r in lists] == [f"{user}:{count}:{n}" for n in range(len(lists))], lists
        assert [r["refresh"] for r in lists[1:]] == ["empty"] * (len(lists) - 1), lists  # no model swap here
        assert lists[0]["refresh"] == "event", lists
    final = {u: (s.count, tuple(s.sequence)) for u, s in kio.user_states().items()}
    latest = collections.defaultdict(int)  # the count each user's newest list reflects
    for user, count in by_state:
        latest[user] = max(latest[user], count)
    return final, dict(latest)


def test_two_workers_two_scorers_match_one_of_each(pipeline_env, kio, wait, broker):
    data = generate(n_users=150, n_items=200, n_events=3000, seed=7)
    events = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]
    final_two, latest_two = _run(pipeline_env, kio, wait, events, n=2)
    # the reference: one worker and one scorer on a fresh broker, same stream
    from streams.broker import EmbeddedBroker, free_port

    pipeline_env.stop_all()
    with EmbeddedBroker(port=free_port(), log_path=pipeline_env.workdir / "broker1.log") as ref_broker:
        pipeline_env.broker = ref_broker
        pipeline_env.env["TAILCAST_KAFKA"] = ref_broker.address
        pipeline_env.env["TAILCAST_STATE_DIR"] = str(pipeline_env.workdir / "state1")
        from streams.config import load_settings

        pipeline_env.settings = load_settings({k: v for k, v in pipeline_env.env.items()
                                               if k.startswith("TAILCAST_")})
        kio.settings = pipeline_env.settings
        final_one, latest_one = _run(pipeline_env, kio, wait, events, n=1)
        pipeline_env.stop_all()
    assert final_two == final_one  # same per-user state: counts and sequences
    assert latest_two == latest_one  # every user's newest list reflects the same number of events


def test_learn_all_skips_the_served_partitions_and_resumes_where_its_models_stopped(broker):
    """``follow_partitions(skip=, resume_at=)``, as a scorer's ``learn_all`` uses it: a partition it serves is not
    fetched at all, and once it no longer serves it, reading goes on from the offset its models learned to."""
    from aiokafka import AIOKafkaProducer

    from streams.agents.catalogue import follow_partitions
    from streams.config import load_settings
    from streams.topics import SCORE_REQUESTS

    kafka = load_settings({"TAILCAST_KAFKA": broker.address, "TAILCAST_PARTITIONS": "2"}).kafka
    got: list[tuple[int, int]] = []
    serving = {0}

    async def handle(records) -> None:
        got.extend((r.partition, r.offset) for r in records)

    async def go() -> None:
        await ensure_topics(kafka)
        producer = AIOKafkaProducer(bootstrap_servers=broker.address)
        await producer.start()

        async def send(partition: int, n: int) -> None:
            for _ in range(n):
                await producer.send_and_wait(SCORE_REQUESTS, b"v", partition=partition)

        async def until(condition, what: str) -> None:
            for _ in range(300):
                if condition():
                    return
                await asyncio.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}: {got}")

        await send(0, 5)
        await send(1, 5)
        follow = asyncio.create_task(follow_partitions(kafka, SCORE_REQUESTS, handle, skip=lambda: set(serving),
                                                       resume_at=lambda p: 6 if p == 0 else None))
        try:
            await until(lambda: len(got) >= 5, "partition 1's records")
            await send(0, 3)  # offsets 5, 6, 7: served, so never fetched here
            await send(1, 2)
            await until(lambda: len(got) >= 7, "partition 1's new records")
            assert all(p == 1 for p, _ in got), got
            serving.clear()  # revoked: read on from offset 6, where this scorer's models stopped
            await send(0, 1)  # offset 8: once it is here, everything before it that will come has come
            await until(lambda: (0, 8) in got, "partition 0 from offset 6")
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            await producer.stop()
        assert sorted(got) == [(0, 6), (0, 7), (0, 8), *((1, o) for o in range(7))], got

    asyncio.run(go())
