"""The backbone on the embedded broker: N valid and M malformed events through a real worker and scorer; every
message they write is checked against its topic's schema (streams/schemas)."""

from __future__ import annotations

import collections

import orjson
import pytest

from online.synthetic import generate
from streams import schemas
from streams.metrics import read_metric
from streams.records import DLQ_REASONS
from streams.topics import DLQ, EVENTS, LONGTAIL_METRICS, RECOMMENDATIONS, SCORE_REQUESTS

pytestmark = pytest.mark.integration

MALFORMED: list[tuple[bytes | None, bytes | None, str]] = [
    (b"u1", b"not json at all", "not_json"),
    (b"u1", b"\xff\xfe\xfa{bad utf8", "invalid_utf8"),
    (b"u1", b'["a", "list"]', "not_object"),
    (b"u1", b'{"item_id": "i1"}', "missing_field"),
    (b"u1", b'{"user_id": "u1", "item_id": "  "}', "empty_id"),
    (b"u1", b'{"user_id": ["u1"], "item_id": "i1"}', "wrong_type"),
    (b"u1", b'{"user_id": "u1", "item_id": "i1", "ts": -5}', "bad_timestamp"),
    (b"u1", b'{"user_id": "u1", "item_id": "i1", "pad": "' + b"x" * 70_000 + b'"}', "oversized"),
    (b"u1", None, "empty_payload"),
]


def test_valid_and_malformed_events_end_to_end(pipeline, kio, wait):
    data = [(user, item) for _ts, user, item, _ev in generate(n_users=80, n_items=120, n_events=600).events]
    expected = collections.Counter(user for user, _ in data)
    records = [(user.encode(), orjson.dumps({"user_id": user, "item_id": item, "event": "click"}))
               for user, item in data]
    bad = [(k, v) for k, v, _ in MALFORMED]
    # interleave the malformed records with the valid ones
    mixed = []
    for n, rec in enumerate(records):
        mixed.append(rec)
        if n % 60 == 0 and bad:
            mixed.append(bad.pop())
    mixed.extend(bad)
    kio.produce(EVENTS, mixed)

    # every user gets a recommendation whose user_event_count equals their number of events
    def all_served():
        latest = kio.latest_counts()
        return all(latest.get(u) == n for u, n in expected.items()) and latest
    latest = wait(all_served, timeout=90, message="a recommendation for every user's final state")
    assert set(latest) == set(expected)

    # exactly N events reflected in user state: read the table's changelog, latest value per user
    def states():
        by_user = kio.user_states()
        return by_user if sum(s.count for s in by_user.values()) == len(records) else None
    by_user = wait(states, timeout=30, message="user state changelog to reflect all events")
    assert {u: s.count for u, s in by_user.items()} == dict(expected)
    assert all(len(s.sequence) <= 50 for s in by_user.values())

    # M dead letters, each with its reason and source coordinates
    dlq = wait(lambda: (r := kio.read_all(DLQ)) and len(r) >= len(MALFORMED) and r,
               timeout=30, message="dead letters")
    assert len(dlq) == len(MALFORMED)
    reasons = collections.Counter(rec["reason"] for *_, rec in dlq)
    assert reasons == collections.Counter(reason for *_, reason in MALFORMED)
    for *_, rec in dlq:
        assert rec["reason"] in DLQ_REASONS and rec["error"]
        assert rec["source"]["topic"] == EVENTS and rec["source"]["offset"] >= 0
    oversized = next(rec for *_, rec in dlq if rec["reason"] == "oversized")
    assert oversized["value_truncated"] and oversized["value_bytes"] > 70_000
    binary = next(rec for *_, rec in dlq if rec["reason"] == "invalid_utf8")
    assert binary["value_encoding"] == "base64"

    # every message the pipeline wrote, on every topic it writes, meets that topic's schema (streams/schemas)
    written = {DLQ: dlq, LONGTAIL_METRICS: wait(lambda: kio.read_all(LONGTAIL_METRICS), timeout=15,
                                                message="a longtail-metrics record"),
               **{topic: kio.read_all(topic) for topic in (SCORE_REQUESTS, RECOMMENDATIONS)}}
    for topic, messages in written.items():
        assert messages, topic
        broken = [(p, o, problem) for p, o, _k, value in messages for problem in schemas.errors(topic, value)]
        assert not broken, f"{len(broken)} schema violations on {topic} (partition, offset, problem): {broken[:5]}"

    # the worker counted them and kept running
    url = pipeline.metrics_url("worker")
    assert read_metric(url, "tailcast_worker_events_valid_total") == len(records)
    for reason, n in reasons.items():
        assert read_metric(url, "tailcast_worker_dlq_records_total", f'reason="{reason}"') == n
    assert pipeline.procs["worker"].poll() is None
    scorer = pipeline.metrics_url("scorer")
    assert read_metric(scorer, "tailcast_scorer_event_to_recommendation_latency_seconds_count", 'arm="control"') > 0
