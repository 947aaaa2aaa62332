"""The topic schemas (streams/schemas/*.schema.json): valid draft 2020-12, in step with the code's constants,
met by the messages the project's own code builds, and strict enough to reject broken ones."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest
from jsonschema import Draft202012Validator

from online.arms import ArmAssigner, parse_arms
from online.base import SOURCES
from online.prequential import DEFAULT_BUCKETS, ArmMetrics
from online.recommender import OnlineRecommender
from streams import schemas
from streams.agents.ingest import IngestProcessor, RawRecord, pseudonymize
from streams.agents.scorer import ScorerCore
from online.ab import ArmCounts
from streams.records import (DLQ_REASONS, BadEvent, Forget, Recommendation, RecommendedItem, ScoreRequest,
                             dead_letter, parse_event, parse_impression, parse_item)
from streams.tools import synthetic_source
from streams.topics import (DLQ, EVENTS, IMPRESSIONS, ITEMS, LONGTAIL_METRICS, RECOMMENDATIONS, SCORE_REQUESTS,
                            partition_for, topic_specs)

FOLDER = Path(schemas.__file__).parent
OUTPUTS = (DLQ, SCORE_REQUESTS, RECOMMENDATIONS, LONGTAIL_METRICS)  # written by tailcast: closed
INPUTS = (EVENTS, ITEMS, IMPRESSIONS)  # written by producers: unknown fields allowed
P = 4
NOW = 1_700_000_000.0


def valid(topic: str, message) -> None:
    """``message`` (bytes as sent on the topic, or a dict) conforms to ``topic``'s schema; all errors shown."""
    decoded = orjson.loads(message) if isinstance(message, bytes) else message
    problems = schemas.errors(topic, decoded)
    assert not problems, f"{topic}: {decoded!r:.300}\n" + "\n".join(problems)


# --- the schemas themselves ------------------------------------------------------------------------------

def test_one_schema_file_per_topic():
    assert set(schemas.TOPICS) == {spec.name for spec in topic_specs(P)}
    assert sorted(p.name for p in FOLDER.glob("*.json")) == sorted(f"{t}.schema.json" for t in schemas.TOPICS)


@pytest.mark.parametrize("topic", schemas.TOPICS)
def test_each_schema_is_a_valid_draft_2020_12_schema_with_its_metadata(topic):
    s = json.loads((FOLDER / f"{topic}.schema.json").read_text())
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] == f"urn:tailcast:topic:{topic}" and s["title"] == topic and s["description"]
    assert s["type"] == "object" and s["required"] and set(s["required"]) <= set(s["properties"])
    assert s["additionalProperties"] is (topic in INPUTS)
    assert schemas.schema(topic) == s


def test_the_enums_are_the_codes_constants():
    assert schemas.schema(DLQ)["properties"]["reason"]["enum"] == list(DLQ_REASONS)
    item = schemas.schema(RECOMMENDATIONS)["$defs"]["item"]
    assert item["properties"]["source"]["enum"] == list(SOURCES)
    assert schemas.schema(RECOMMENDATIONS)["properties"]["refresh"]["enum"] == list(Recommendation.REFRESHES)
    buckets = schemas.schema(LONGTAIL_METRICS)["properties"]["hr_by_bucket"]
    assert buckets["required"] == [label for *_, label in DEFAULT_BUCKETS]


def test_the_outputs_required_fields_are_what_the_code_writes():
    rec = Recommendation("u", [RecommendedItem("i", 1.0, "mf", "r")], 1, "online", "control", 1.0, 2.0, 1.5,
                         list_id="u:1:0")
    recs = schemas.schema(RECOMMENDATIONS)
    assert recs["required"] == list(rec.to_dict())
    assert recs["$defs"]["item"]["required"] == list(rec.to_dict()["items"][0])
    req = ScoreRequest("u", ["a"], [("a", 1.0, "click")], 1, 1.0, 1.0, 2.0)
    requests = schemas.schema(SCORE_REQUESTS)
    assert requests["else"]["required"] == list(orjson.loads(req.to_bytes()))
    marker = list(orjson.loads(Forget("u", 2.0).to_bytes()))
    assert requests["then"]["propertyNames"]["enum"] == marker and set(requests["required"]) <= set(marker)
    dlq = orjson.loads(dead_letter(reason="not_json", error="e", topic=EVENTS, partition=0, offset=0,
                                   timestamp=1.0, key=None, value=b"x"))
    assert schemas.schema(DLQ)["required"] == list(dlq)
    assert schemas.schema(DLQ)["properties"]["source"]["required"] == list(dlq["source"])
    assert schemas.schema(LONGTAIL_METRICS)["required"] == list(_lt())


def test_the_loader():
    with pytest.raises(KeyError, match="no schema for topic 'nope'"):
        schemas.schema("nope")
    schemas.validate(ITEMS, {"item_id": "i1", "title": "t"})
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(ITEMS, {"item_id": "i1"})
    assert schemas.errors(ITEMS, {"item_id": True, "title": 3}) == [
        "$.item_id: True is not valid under any of the given schemas", "$.title: 3 is not of type 'string'"]
    assert schemas.validator(ITEMS) is schemas.validator(ITEMS)


# --- messages the project's code builds -------------------------------------------------------------------

def _raw(value: bytes | None, offset: int, *, user: str = "u1", partition: int | None = None,
         key: bytes | None = None) -> RawRecord:
    part = partition_for(user.encode(), P) if partition is None else partition
    return RawRecord(EVENTS, part, offset, NOW, user.encode() if key is None else key, value)


def test_what_the_replay_tool_produces_meets_the_input_contracts():
    source = synthetic_source(n_users=20, n_items=30, n_events=200, seed=3)
    for item in source.items:
        valid(ITEMS, orjson.dumps(item))
        parse_item(orjson.dumps(item), max_bytes=10_000)
    for event in source.events:
        valid(EVENTS, orjson.dumps(event))


@pytest.mark.parametrize("key", [None, "secret"])
def test_forwarded_events_meet_the_events_contract(key):
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=10_000, pseudonymize_key=key)
    body = orjson.dumps({"user_id": 7, "item_id": " i1 ", "event": "VIEW", "ts": NOW * 1000, "color": "red"})
    routed = pseudonymize("7", key) if key else "7"  # the worker routes by the id it keeps
    wrong = (partition_for(routed.encode(), P) + 1) % P
    out = proc.process([_raw(body, 40, user="7", partition=wrong, key=b"other")], {}.get)
    ((_key, value, _partition),) = out.reroutes
    forwarded = orjson.loads(value)
    assert forwarded["props"]["_origin"] == [wrong, 40] and forwarded["props"]["color"] == "red"
    assert ("_pseudonymized" in forwarded["props"]) is (key is not None)
    valid(EVENTS, value)


#: One events record per DLQ reason, as the worker's parser sees it.
REJECTED = {
    "empty_payload": None,
    "oversized": b'{"user_id": "u1", "item_id": "i1", "pad": "' + b"x" * 2_000 + b'"}',
    "invalid_utf8": b"\xff\xfe{bad",
    "not_json": b"not json",
    "not_object": b"[1, 2]",
    "missing_field": b'{"item_id": "i1"}',
    "empty_id": b'{"user_id": "  ", "item_id": "i1"}',
    "id_too_long": b'{"user_id": "' + b"u" * 300 + b'", "item_id": "i1"}',
    "wrong_type": b'{"user_id": ["u1"], "item_id": "i1"}',
    "bad_timestamp": b'{"user_id": "u1", "item_id": "i1", "ts": -5}',
    "unknown_control": b'{"user_id": "u1", "control": "erase"}',
}


def test_the_dead_letter_of_every_reason_meets_the_dlq_contract():
    assert set(REJECTED) == set(DLQ_REASONS)
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1_000)
    out = proc.process([_raw(value, n) for n, value in enumerate(REJECTED.values())], {}.get)
    assert [reason for reason, _ in out.dead_letters] == list(REJECTED)
    for _reason, record in out.dead_letters:
        valid(DLQ, record)
    # the other shapes dead_letter writes: no key, a binary key, a truncated value
    for key, value in [(None, b"x"), (b"\xff\x00", b"\xfe" * 100), (b"k", b"y" * 100)]:
        valid(DLQ, dead_letter(reason="not_json", error="e", topic=EVENTS, partition=3, offset=9, timestamp=None,
                               key=key, value=value, keep_bytes=50))


def _stream(proc: IngestProcessor, n_users: int = 12, n_events: int = 120):
    """Score requests for a small stream, as the worker builds them, in batches of 20 events."""
    data = synthetic_source(n_users=n_users, n_items=40, n_events=n_events, seed=1)
    store: dict = {}
    records = [_raw(orjson.dumps(e), n, user=e["user_id"]) for n, e in enumerate(data.events)]
    for start in range(0, len(records), 20):
        out = proc.process(records[start:start + 20], store.get, now=NOW)
        store.update(out.states)
        yield from out.requests


def test_score_requests_recommendations_and_longtail_metrics_of_a_stream_meet_their_contracts():
    arms = parse_arms("control:0.5:0.0,tail:0.5:0.5")
    core = ScorerCore(recommender=OnlineRecommender.create(arms=arms, content_dim=16),
                      arms=ArmAssigner.from_configs(arms), k=5)
    metrics = ArmMetrics(k=5, window_events=1_000)
    requests = list(_stream(IngestProcessor(partitions=P, history_len=5, max_event_bytes=10_000)))
    assert any(r.consumed for r in requests) and any(len(r.new) > 1 for r in requests)
    lists = []
    for request in requests:
        valid(SCORE_REQUESTS, request.to_bytes())
        out = core.process([request], now=NOW)
        for event in out.events:
            metrics.observe_event(event.user, event.item, event.index)
        for rec in out.recommendations:
            valid(RECOMMENDATIONS, rec.to_bytes())
            metrics.observe_recommendation(rec.user_id, rec.user_event_count, [i.item_id for i in rec.items],
                                           rec.arm)
            lists.append(rec)
    assert lists and any(rec.items for rec in lists)
    for arm in metrics.arms():
        valid(LONGTAIL_METRICS, orjson.dumps(metrics.record(arm, NOW)))
        # with the A/B figures (#17): nothing counted yet, and some
        valid(LONGTAIL_METRICS, {**metrics.record(arm, NOW), "ab": ArmCounts().record()})
        valid(LONGTAIL_METRICS, {**metrics.record(arm, NOW), "ab": ArmCounts(3, 30, 12, 4, 1).record()})
    assert metrics.arms()
    # the other shapes: no consumed items (TAILCAST_EXCLUDE_CONSUMED=recent), an empty list repeated
    recent = IngestProcessor(partitions=P, history_len=5, max_event_bytes=10_000, exclude_consumed="recent")
    for request in _stream(recent, n_users=3, n_events=10):
        assert request.consumed == b""
        valid(SCORE_REQUESTS, request.to_bytes())
    empty = Recommendation("u7", [], 3, "online", "control", 1.0, 2.0, 1.5,
                           list_id=Recommendation.make_list_id("u7", 3, 1), refresh="empty")
    valid(RECOMMENDATIONS, empty.to_dict())


# --- what the schemas reject -----------------------------------------------------------------------------

def _rec(**change):
    rec = Recommendation("u1", [RecommendedItem("i1", 0.5, "covisit", "co-visited with i0")], 2, "online",
                         "control", 1.0, 2.0, 1.5, list_id="u1:2:0").to_dict()
    return {**rec, **change}


def _dlq(**change):
    return {**orjson.loads(dead_letter(reason="not_json", error="e", topic=EVENTS, partition=0, offset=1,
                                       timestamp=1.0, key=b"u1", value=b"nope")), **change}


def _req(**change):
    return {**orjson.loads(ScoreRequest("u1", ["a"], [("a", 1.0, "click")], 1, 1.0, 1.0, 2.0,
                                        consumed=b"\x01\x02\x03\x04").to_bytes()), **change}


def _lt(**change):
    metrics = ArmMetrics(k=5, window_events=10)
    metrics.observe_recommendation("u1", 1, ["a"], "control")
    return {**metrics.record("control", NOW), **change}


EVENT = {"user_id": "u1", "item_id": "i1"}
IMPRESSION = {"user_id": "u1", "list_id": "u1:2:0", "items": [{"item_id": "i1", "position": 0}], "ts": NOW}

BAD = [
    (RECOMMENDATIONS, _rec(items=[{"item_id": "i1", "score": 0.5, "source": "magic", "reason": ""}]), "magic"),
    (RECOMMENDATIONS, _rec(refresh="manual"), "manual"),
    (RECOMMENDATIONS, _rec(extra=1), "Additional properties"),
    (RECOMMENDATIONS, {k: v for k, v in _rec().items() if k != "list_id"}, "'list_id' is a required property"),
    (RECOMMENDATIONS, _rec(user_event_count=0), "minimum"),
    (RECOMMENDATIONS, _rec(list_id="u1"), "does not match"),
    (RECOMMENDATIONS, _rec(items=[{"item_id": "i1", "score": None, "source": "mf", "reason": ""}]), "None"),
    (DLQ, _dlq(reason="too_big"), "too_big"),
    (DLQ, _dlq(source={"topic": EVENTS, "partition": 0, "offset": -1, "timestamp": None}), "minimum"),
    (DLQ, _dlq(value_encoding="none"), "is not of type 'null'"),
    (DLQ, _dlq(value_truncated="no"), "'boolean'"),
    (DLQ, _dlq(note="x"), "Additional properties"),
    (SCORE_REQUESTS, _req(new=[["a", 1.0]]), "too short"),
    (SCORE_REQUESTS, _req(new=[["a", 1.0, "click", "x"]]), "Expected at most 3"),
    (SCORE_REQUESTS, _req(consumed="not base64!"), "does not match"),
    (SCORE_REQUESTS, _req(sequence="a"), "'array'"),
    (LONGTAIL_METRICS, _lt(hr=1.5), "maximum"),
    (LONGTAIL_METRICS, _lt(hr_by_bucket={"<=5": 0.0, "6-20": 0.0}), "'>20' is a required property"),
    (LONGTAIL_METRICS, _lt(k=0), "minimum"),
    (LONGTAIL_METRICS, _lt(gini=None), "None"),
    (LONGTAIL_METRICS, _lt(ab={**ArmCounts().record(), "ctr": {"value": 0.1, "low": 0.0}}), "'high' is a required"),
    (LONGTAIL_METRICS, _lt(ab={**ArmCounts().record(), "clicks": -1}), "minimum"),
    (IMPRESSIONS, {k: v for k, v in IMPRESSION.items() if k != "list_id"}, "'list_id' is a required property"),
    (IMPRESSIONS, {**IMPRESSION, "items": [{"item_id": "i1"}]}, "'position' is a required property"),
    (IMPRESSIONS, {**IMPRESSION, "items": [{"item_id": "i1", "position": -1}]}, "minimum"),
    (IMPRESSIONS, {**IMPRESSION, "items": [{"item_id": "i1", "position": 0.5}]}, "not of type 'integer'"),
    (IMPRESSIONS, {**IMPRESSION, "items": [{"item_id": " ", "position": 0}]}, "not valid under any"),
    (IMPRESSIONS, {**IMPRESSION, "items": "i1"}, "not of type 'array'"),
    (IMPRESSIONS, {**IMPRESSION, "ts": "now"}, "not of type"),
    (ITEMS, {"item_id": "i1", "title": "t", "tags": ["a", 1]}, "1 is not of type 'string'"),
    (ITEMS, {"item_id": "i1"}, "'title' is a required property"),
    (ITEMS, {"item_id": "i1", "title": "t", "hidden": "yes"}, "is not of type 'boolean', 'null'"),
    (ITEMS, {"item_id": "i1", "title": "t", "hidden": 1}, "is not of type 'boolean', 'null'"),
    (EVENTS, {"item_id": "i1"}, "'user_id' is a required property"),
    (EVENTS, {**EVENT, "user_id": True}, "not valid under any"),
    (EVENTS, {**EVENT, "user_id": 1.5}, "not valid under any"),
    (EVENTS, {**EVENT, "item_id": " \t"}, "not valid under any"),
    (EVENTS, {**EVENT, "item_id": "i" * 257}, "not valid under any"),
    (EVENTS, {**EVENT, "event": 3}, "not of type"),
    (EVENTS, {**EVENT, "event": " "}, "does not match"),
    (EVENTS, {**EVENT, "ts": -1}, "minimum"),
    (EVENTS, {**EVENT, "ts": "yesterday"}, "not of type"),
    (EVENTS, {**EVENT, "props": [1]}, "not of type"),
    (EVENTS, {**EVENT, "props": {"_origin": [1]}}, "too short"),
    (EVENTS, {**EVENT, "props": {"_pseudonymized": "yes"}}, "'boolean'"),
    (EVENTS, {"user_id": "u1"}, "'item_id' is a required property"),
    (EVENTS, {"user_id": "u1", "control": None}, "'item_id' is a required property"),
    (EVENTS, {"user_id": "u1", "control": "erase"}, "'forget' was expected"),
    (EVENTS, {"user_id": "u1", "control": 1}, "not of type"),
    (SCORE_REQUESTS, {"user_id": "u1", "control": "forget"}, "'requested_at' is a required property"),
    (SCORE_REQUESTS, {"user_id": "u1", "control": "erase", "requested_at": 1.0}, "'forget' was expected"),
    (SCORE_REQUESTS, {**_req(), "control": "forget"}, "'sequence' is not one of"),
]


@pytest.mark.parametrize("topic,message,why", BAD, ids=[f"{t}-{n}" for n, (t, *_) in enumerate(BAD)])
def test_broken_messages_are_rejected(topic, message, why):
    problems = schemas.errors(topic, message)
    assert problems and any(why in p for p in problems), problems
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(topic, message)


@pytest.mark.parametrize("topic,message,why", [b for b in BAD if b[0] == EVENTS and "_origin" not in str(b[1])
                                               and "_pseudonymized" not in str(b[1])])
def test_the_worker_rejects_the_events_the_schema_rejects(topic, message, why):
    with pytest.raises(BadEvent):
        parse_event(orjson.dumps(message), max_bytes=10_000, default_ts=NOW)


@pytest.mark.parametrize("event", [
    {"user_id": 42, "item_id": 7}, {**EVENT, "event": None, "ts": None, "props": None},
    {**EVENT, "event": "Purchase", "ts": NOW * 1000, "props": {"a": [1]}, "campaign": "x"},
])
def test_the_worker_and_the_schema_accept_the_same_edge_cases(event):
    valid(EVENTS, event)
    parse_event(orjson.dumps(event), max_bytes=10_000, default_ts=NOW)


@pytest.mark.parametrize("key", [None, "secret"])
def test_erasure_records_meet_their_contracts(key):
    """The control record the api and ``tailcast forget`` write, its forward, and the worker's marker (#17)."""
    _key, value = Forget.record(" u7 ")
    valid(EVENTS, value)
    valid(EVENTS, {"user_id": 7, "control": "forget", "ts": NOW, "item_id": "ignored", "props": {"a": 1}})
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=10_000, pseudonymize_key=key)
    user = pseudonymize("u7", key) if key else "u7"
    wrong = (partition_for(user.encode(), P) + 1) % P
    ((_k, forwarded, _p),) = proc.process([_raw(value, 3, user="u7", partition=wrong)], {}.get).reroutes
    valid(EVENTS, forwarded)
    out = proc.process([_raw(value, 4, user=user), _raw(orjson.dumps({**EVENT, "user_id": "u7"}), 5, user=user)],
                       {}.get, now=NOW)
    marker, request = out.requests
    valid(SCORE_REQUESTS, marker.to_bytes())
    valid(SCORE_REQUESTS, request.to_bytes())


@pytest.mark.parametrize("message", [
    {"item_id": "i1", "title": "t", "hidden": True}, {"item_id": 7, "title": "t", "hidden": False},
    {"item_id": "i1", "title": "t", "hidden": None, "text": None, "tags": None},
])
def test_the_catalogue_and_the_schema_accept_the_same_item_controls(message):
    valid(ITEMS, message)
    assert parse_item(orjson.dumps(message), max_bytes=10_000).hidden is bool(message["hidden"])


@pytest.mark.parametrize("topic,message,why", [b for b in BAD if b[0] == ITEMS and "hidden" in b[1]])
def test_the_catalogue_rejects_the_item_controls_the_schema_rejects(topic, message, why):
    with pytest.raises(BadEvent):
        parse_item(orjson.dumps(message), max_bytes=10_000)


@pytest.mark.parametrize("topic,message,why", [b for b in BAD if b[0] == IMPRESSIONS])
def test_the_scorer_rejects_the_impressions_the_schema_rejects(topic, message, why):
    with pytest.raises(BadEvent):
        parse_impression(orjson.dumps(message), max_bytes=10_000, default_ts=NOW)


def test_the_scorer_and_the_schema_accept_the_same_impressions():
    for message in (IMPRESSION, {**IMPRESSION, "ts": None, "user_id": 7, "extra": 1}, {**IMPRESSION, "items": []}):
        valid(IMPRESSIONS, message)
        rec = parse_impression(orjson.dumps(message), max_bytes=10_000, default_ts=NOW)
        assert rec.ts == NOW and rec.list_id == "u1:2:0"
