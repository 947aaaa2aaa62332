"""End to end with a Kafka client we did not write: confluent-kafka (librdkafka) produces and consumes.

librdkafka's default partitioner (consistent_random, CRC32) differs from Kafka's Java/aiokafka murmur2,
so many of these events arrive on a partition their user does not hash to: the worker must forward them
to the right one and still count each event exactly once.
"""

from __future__ import annotations

import collections
import json
import time

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _consume_all(servers: str, topics: list[str], *, until, timeout: float) -> dict[str, list]:
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": servers, "group.id": f"e2e-{time.time_ns()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(topics)
    got: dict[str, list] = collections.defaultdict(list)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                if until(got):
                    return got
                continue
            if msg.error():
                continue
            got[msg.topic()].append((msg.key(), json.loads(msg.value())))
            if until(got):
                return got
    finally:
        consumer.close()
    raise AssertionError(f"timed out; got { {t: len(v) for t, v in got.items()} }")


def test_confluent_client_round_trip(pipeline):
    servers = pipeline.broker.address
    producer = confluent_kafka.Producer({"bootstrap.servers": servers, "linger.ms": 5})
    events = []
    for n in range(200):
        user, item = f"user-{n % 23}", f"item-{(n * 7) % 41}"
        events.append((user, item))
        producer.produce("events", key=user, value=json.dumps(
            {"user_id": user, "item_id": item, "event": "click", "ts": 1_700_000_000 + n}).encode())
    producer.produce("events", key="bad", value=b"{not json")
    producer.produce("events", key="bad", value=json.dumps({"user_id": "u", "item_id": 3.5}).encode())
    assert producer.flush(30) == 0
    expected = collections.Counter(u for u, _ in events)

    def done(got) -> bool:
        latest = collections.defaultdict(int)
        for _k, rec in got["recommendations"]:
            latest[rec["user_id"]] = max(latest[rec["user_id"]], rec["user_event_count"])
        return dict(latest) == dict(expected) and len(got["events.dlq"]) >= 2

    got = _consume_all(servers, ["recommendations", "events.dlq"], until=done, timeout=90)

    for key, rec in got["recommendations"]:
        assert key.decode() == rec["user_id"]
        assert set(rec) >= {"user_id", "items", "user_event_count", "model_version", "arm", "event_ts",
                            "generated_at"}
        assert isinstance(rec["user_id"], str) and rec["user_id"] in expected
        assert isinstance(rec["user_event_count"], int) and 1 <= rec["user_event_count"] <= expected[rec["user_id"]]
        assert isinstance(rec["model_version"], str) and rec["model_version"]
        assert rec["arm"] in {"control", "tail"}
        assert isinstance(rec["event_ts"], float | int) and rec["event_ts"] >= 1_700_000_000
        assert isinstance(rec["generated_at"], float) and rec["generated_at"] >= rec["ingested_at"]
        # a list can only be empty while the scorer knows no item the user has not already touched
        # (the very first events of a stream); every user's final list below is non-empty
        assert len(rec["items"]) <= 10
        seen = set()
        for item in rec["items"]:
            assert set(item) >= {"item_id", "score", "source"}
            assert isinstance(item["item_id"], str) and item["item_id"] not in seen
            assert isinstance(item["score"], float | int) and isinstance(item["source"], str) and item["source"]
            assert isinstance(item["reason"], str) and item["reason"]
            seen.add(item["item_id"])
    # a user's lists never go back in time
    per_user = collections.defaultdict(list)
    for _k, rec in got["recommendations"]:
        per_user[rec["user_id"]].append(rec["user_event_count"])
    assert all(counts == sorted(counts) for counts in per_user.values())
    final = {}
    for _k, rec in got["recommendations"]:
        if rec["user_event_count"] == expected[rec["user_id"]]:
            final[rec["user_id"]] = rec
    assert set(final) == set(expected) and all(rec["items"] for rec in final.values())

    reasons = sorted(rec["reason"] for _k, rec in got["events.dlq"])
    assert reasons == ["not_json", "wrong_type"]
    for _k, rec in got["events.dlq"]:
        assert rec["source"]["topic"] == "events" and rec["error"] and rec["value"]
