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
