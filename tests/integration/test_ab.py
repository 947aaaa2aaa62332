"""Per-arm CTR from impressions (#17) equals a computation from the raw topics, with independent clients:
confluent-kafka produces the events and a client's impressions (the list each user was last sent, read off
``recommendations``), and the figures are read back from the scorer's /metrics page and its
``longtail-metrics`` records; the reference reads ``impressions``, ``events`` and ``recommendations`` raw and
applies the contract's rule itself (last touch within 30 minutes, one click a slot)."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from online.synthetic import generate
from streams.topics import DLQ, EVENTS, IMPRESSIONS, LONGTAIL_METRICS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")

WINDOW_S = 1800.0  # the contract's attribution window (impressions.schema.json)


def _produce(pipeline, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": pipeline.broker.address, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _ab_counters(url: str) -> dict[tuple[str, str], float]:
    """{(family, arm[/segment]): value} of the tailcast_ab_* counters on a /metrics page."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[tuple[str, str], float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("tailcast_ab_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[(sample.name, sample.labels.get("arm", sample.labels.get("reason", "")))] += sample.value
    return out


def _reference(kio) -> dict[str, dict[str, int]]:
    """Per arm: impressions, slots and clicks, computed from the raw topics alone."""
    arm_of = {rec["user_id"]: rec["arm"] for _p, _o, _k, rec in kio.read_all(RECOMMENDATIONS) if rec}
    shown = collections.defaultdict(list)  # user -> [(ts, n, items)]
    counts = collections.defaultdict(lambda: {"impressions": 0, "slots": 0, "clicks": 0})
    for n, (_p, _o, _k, imp) in enumerate(kio.read_all(IMPRESSIONS)):
        if not isinstance(imp, dict) or "list_id" not in imp:
            continue  # the broken one: it went to the DLQ
        items = {slot["item_id"] for slot in imp["items"]}
        shown[imp["user_id"]].append((imp["ts"], n, items))
        c = counts[arm_of[imp["user_id"]]]
        c["impressions"] += 1
        c["slots"] += len(items)
    clicked = set()
    # the producers' events (a worker's forwarded copy carries props._origin), in time order
    events = sorted((e["ts"], e["user_id"], e["item_id"]) for _p, _o, _k, e in kio.read_all(EVENTS)
                    if "_origin" not in (e.get("props") or {}))
    for ts, user, item in events:
        before = [s for s in shown[user] if s[0] <= ts <= s[0] + WINDOW_S and item in s[2]]
        if before:
            _ts, n, _items = max(before, key=lambda s: (s[0], s[1]))
            if (n, item) not in clicked:
                clicked.add((n, item))
                counts[arm_of[user]]["clicks"] += 1
    return dict(counts)


def test_per_arm_ctr_from_impressions_equals_the_raw_topics(pipeline_env, kio, wait):
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    pipeline_env.start("worker")
    pipeline_env.start("scorer", TAILCAST_ARMS="control:0.5:0.0,tail:0.5:0.5")
    metrics = pipeline_env.metrics_url("scorer")

    # 1. a history, so that every user has a list to display
    data = generate(n_users=60, n_items=150, n_events=1500, seed=11)
    now = time.time()
    history = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": now - 900 + n * 0.1}))
               for n, (_ts, u, i, _e) in enumerate(data.events)]
    _produce(pipeline_env, EVENTS, history)
    per_user = collections.Counter(u for _ts, u, _i, _e in data.events)
    wait(lambda: kio.latest_counts() == dict(per_user), timeout=180,
         message="a list reflecting every event of every user")

    # 2. the client displays each user's last list (its first 8 items), and sends one broken record
    latest = {}
    for _p, _o, _k, rec in kio.read_all(RECOMMENDATIONS):
        if rec and rec["items"]:
            latest[rec["user_id"]] = rec
    assert len(latest) == len(per_user)
    t_imp = time.time()
    displayed = {u: [i["item_id"] for i in rec["items"][:8]] for u, rec in latest.items()}
    _produce(pipeline_env, IMPRESSIONS, [
        (u.encode(), orjson.dumps({"user_id": u, "list_id": latest[u]["list_id"], "ts": t_imp,
                                   "items": [{"item_id": i, "position": p} for p, i in enumerate(items)]}))
        for u, items in sorted(displayed.items())] + [(b"u0", b'{"user_id": "u0", "items": "i1"}')])
    wait(lambda: sum(v for (name, _), v in _ab_counters(metrics).items()
                     if name == "tailcast_ab_impressions_total") == len(displayed), timeout=60,
         message="the scorer to count every impression")

    # 3. clicks: displayed items, one clicked twice, items not displayed, one after the window
    clicks = []
    for n, (u, items) in enumerate(sorted(displayed.items())):
        kind = n % 4
        if kind == 0:
            clicks.append((u, items[n % len(items)], t_imp + 5))
        elif kind == 1:
            clicks += [(u, items[0], t_imp + 5), (u, items[0], t_imp + 6), (u, items[-1], t_imp + 7)]
        elif kind == 2:
            clicks.append((u, next(i for i in sorted(data.items) if i not in items), t_imp + 5))
        else:
            clicks.append((u, items[0], t_imp + WINDOW_S + 60))
    _produce(pipeline_env, EVENTS, [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts}))
                                    for u, i, ts in clicks])

    expected = _reference(kio)
    # 1, 2 (1 when the list has one item), 0 and 0 clicks in each group of four users
    assert len(displayed) // 2 <= sum(c["clicks"] for c in expected.values()) <= 3 * len(displayed) // 4 + 3

    def as_metrics() -> dict[str, dict[str, int]]:
        got = _ab_counters(metrics)
        out = {}
        for arm in expected:
            out[arm] = {"impressions": int(got[("tailcast_ab_impressions_total", arm)]),
                        "slots": int(got[("tailcast_ab_slots_total", arm)]),
                        "clicks": int(got[("tailcast_ab_clicks_total", arm)])}
        return out

    wait(lambda: as_metrics() == expected, timeout=120,
         message=f"the scorer's A/B counters to equal the raw topics' {expected}")
    assert len(expected) == 2 and _ab_counters(metrics)[("tailcast_ab_impressions_rejected_total", "missing_field")] == 1
    assert any(rec["source"]["topic"] == IMPRESSIONS for _p, _o, _k, rec in kio.read_all(DLQ))

    # the longtail-metrics records carry the same counts, and the CTR with its interval
    def last_records() -> dict[str, dict]:
        return {rec["arm"]: rec for _p, _o, _k, rec in kio.read_all(LONGTAIL_METRICS) if "ab" in rec}

    wait(lambda: {arm: {k: r["ab"][k] for k in ("impressions", "slots", "clicks")}
                  for arm, r in last_records().items()} == expected, timeout=30,
         message="a longtail-metrics record per arm with the final counts")
    for arm, rec in last_records().items():
        ctr = rec["ab"]["ctr"]
        assert ctr["value"] == pytest.approx(expected[arm]["clicks"] / expected[arm]["slots"], rel=1e-12)
        assert ctr["low"] <= ctr["value"] <= ctr["high"]
