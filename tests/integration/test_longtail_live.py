"""The live exposure agent's ``longtail-metrics`` records equal the library's figures on the same stream.

A real worker and scorer on the embedded broker serve a synthetic stream. Afterwards the published
lists (read back from ``recommendations``) and the events are replayed, in a different interleaving,
through a fresh :class:`online.prequential.ArmMetrics`. Pairing is by ``user_event_count``, so the
prequential figures cannot depend on the interleaving: HR@10, NDCG@10 and HR@10 per user-activity
bucket must be equal per arm. The same goes for catalogue coverage (distinct recommended items over
active items) once both windows hold the whole stream. Tail share is not compared: a slot's head/tail
status is read when its list is observed, so it depends on the interleaving by definition.
"""

from __future__ import annotations

import asyncio
import collections
import math

import orjson
import pytest

from online.prequential import ArmMetrics
from online.synthetic import generate
from streams.topics import EVENTS, LONGTAIL_METRICS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration

K = 10


def _close(a: float | None, b: float | None) -> bool:
    """Equal up to float rounding; NaN (JSON null in a record: an empty bucket) equals NaN."""
    a, b = (math.nan if x is None else float(x) for x in (a, b))
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def test_live_longtail_records_equal_the_library_on_the_same_stream(pipeline_env, kio, wait):
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    env = {"TAILCAST_METRICS_INTERVAL_S": "1", "TAILCAST_TEXT_ENCODER": "hashing"}
    pipeline_env.start("worker", **env)
    pipeline_env.start("scorer", **env)
    data = generate(n_users=80, n_items=150, n_events=1200, seed=5)
    kio.produce(EVENTS, [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts}))
                         for ts, u, i, _ in data.events])
    per_user = collections.defaultdict(list)
    for _ts, u, i, _e in data.events:
        per_user[u].append(i)

    wait(lambda: kio.latest_counts() == {u: len(items) for u, items in per_user.items()}, timeout=90,
         message="every user's final list")
    lists = [rec for *_, rec in kio.read_all(RECOMMENDATIONS)]

    # the library, fed lists first and then each user's events: another interleaving than the agent's
    library = ArmMetrics(k=K, window_events=100_000)
    for rec in sorted(lists, key=lambda r: (r["user_id"], r["user_event_count"])):
        library.observe_recommendation(rec["user_id"], rec["user_event_count"],
                                       [i["item_id"] for i in rec["items"]], rec["arm"])
    for user, items in per_user.items():
        for n, item in enumerate(items, start=1):
            library.observe_event(user, item, n)
    library.flush()
    expected = {arm: library.record(arm, 0.0) for arm in library.arms()}
    assert set(expected) == {"control", "tail"}

    def matches():
        latest = {}
        for *_, rec in kio.read_all(LONGTAIL_METRICS):
            latest[rec["arm"]] = rec
        if set(latest) != set(expected):
            return False
        for arm, want in expected.items():
            got = latest[arm]
            keys = ("hr", "ndcg", "coverage")
            if not all(_close(got[key], want[key]) for key in keys):
                return False
            if not all(_close(got["hr_by_bucket"][b], want["hr_by_bucket"][b]) for b in want["hr_by_bucket"]):
                return False
        return latest

    try:
        latest = wait(matches, timeout=30, message="the live records to equal the library's")
    except AssertionError:
        latest = {rec["arm"]: rec for *_, rec in kio.read_all(LONGTAIL_METRICS)}
        raise AssertionError(f"live {latest}\nlibrary {expected}") from None
    # not a vacuous equality: every event was scored in some arm, and both arms exposed items
    assert sum(library.quality(arm).get()["evaluated"] for arm in expected) == len(data.events)
    for arm, rec in latest.items():
        assert rec["k"] == K and rec["coverage"] > 0.0 and 0.0 <= rec["hr"] <= 1.0
