"""Edge validation of the events contract (docs/design.md §3)."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.records import (DLQ_REASONS, BadEvent, Forget, Recommendation, RecommendedItem, ScoreRequest, ValidEvent,
                             dead_letter, parse_event, parse_item, parse_item_key, read_request)

OK = dict(max_bytes=10_000, default_ts=1_700_000_000.0)


@pytest.mark.parametrize("raw,reason", [
    (None, "empty_payload"), (b"", "empty_payload"), (b"x" * 10_001, "oversized"),
    (b"\xff\xfe", "invalid_utf8"), (b"{nope", "not_json"), (b"42", "not_object"), (b"null", "not_object"),
    (b'{"item_id": "i"}', "missing_field"), (b'{"user_id": "u"}', "missing_field"),
    (b'{"user_id": null, "item_id": "i"}', "missing_field"),
    (b'{"user_id": "", "item_id": "i"}', "empty_id"), (b'{"user_id": "u", "item_id": " \\t"}', "empty_id"),
    (b'{"user_id": true, "item_id": "i"}', "wrong_type"), (b'{"user_id": 1.5, "item_id": "i"}', "wrong_type"),
    (b'{"user_id": {"a": 1}, "item_id": "i"}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "event": 3}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "ts": "yesterday"}', "wrong_type"),
    (b'{"user_id": "u", "item_id": "i", "ts": -1}', "bad_timestamp"),
    (b'{"user_id": "u", "item_id": "i", "ts": 1e300}', "bad_timestamp"),
    (b'{"user_id": "u", "item_id": "i", "props": [1]}', "wrong_type"),
    (b'{"user_id": "' + b"u" * 300 + b'", "item_id": "i"}', "id_too_long"),
    (b'{"user_id": "u", "control": "Forget"}', "unknown_control"), (b'{"user_id": "u", "control": 1}', "wrong_type"),
    (b'{"control": "forget"}', "missing_field"), (b'{"user_id": "u", "control": "forget", "ts": -1}', "bad_timestamp"),
])
def test_bad_events_have_a_reason(raw, reason):
    with pytest.raises(BadEvent) as info:
        parse_event(raw, **OK)
    assert info.value.reason == reason and info.value.detail


def test_normalisation():
    ev = parse_event(b'{"user_id": 7, "item_id": " i1 ", "event": "PURCHASE", "ts": 1700000000123, "x": 1}', **OK)
    assert (ev.user_id, ev.item_id, ev.event) == ("7", "i1", "purchase")
    assert ev.ts == pytest.approx(1_700_000_000.123)  # milliseconds read as such
    assert ev.props == {"x": 1}  # unknown fields kept in props
    assert parse_event(b'{"user_id": "\xc3\xa9\xe2\x98\x83", "item_id": "i"}', **OK).user_id == "é☃"
    assert parse_event(b'{"user_id": "u", "item_id": "i"}', **OK).ts == OK["default_ts"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["user_id", "item_id", "ts", "event",
                                                                         "props", "x", "control"]), c, max_size=5),
    max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_fuzz_never_crashes(raw):
    """Any bytes either validate or raise BadEvent with a known reason, never anything else."""
    try:
        ev = parse_event(raw, **OK)
    except BadEvent as exc:
        assert exc.reason in DLQ_REASONS
    else:
        if isinstance(ev, Forget):
            assert ev.user_id.strip() and math.isfinite(ev.requested_at) and ev.requested_at >= 0
        else:
            assert ev.user_id.strip() and ev.item_id.strip() and math.isfinite(ev.ts) and ev.ts >= 0


def test_a_control_record_asks_for_an_erasure_and_its_marker_reads_back():
    forget = parse_event(b'{"user_id": 7, "control": "forget", "item_id": "ignored", "ts": 5, "props": {"a": 1}}', **OK)
    assert forget == Forget("7", 5.0, {"a": 1})
    # a null control is no control: the record is an event, and the field does not go into props
    ev = parse_event(b'{"user_id": "u", "item_id": "i", "control": null}', **OK)
    assert isinstance(ev, ValidEvent) and ev.props == {}
    assert read_request(Forget("u", 3.0).to_bytes()) == Forget("u", 3.0)
    with pytest.raises(ValueError, match="erasure marker of user 'u'"):
        ScoreRequest.from_bytes(Forget("u", 3.0).to_bytes())
    assert Forget.record(" 42 ") == (b"42", b'{"user_id":"42","control":"forget"}')
    assert parse_event(Forget.record("42")[1], **OK) == Forget("42", OK["default_ts"])
    with pytest.raises(BadEvent, match="id_too_long"):
        Forget.record("u" * 300)


def test_dead_letter_keeps_bytes_and_source():
    rec = orjson.loads(dead_letter(reason="not_json", error="x", topic="events", partition=2, offset=9,
                                   timestamp=1.0, key=b"k", value=b"\xff" * 10))
    assert rec["source"] == {"topic": "events", "partition": 2, "offset": 9, "timestamp": 1.0}
    assert rec["value_encoding"] == "base64" and rec["value_bytes"] == 10 and not rec["value_truncated"]


def test_round_trips():
    req = ScoreRequest("u", ["a", "b"], [("b", 2.0, "click")], 2, 2.0, 3.0, 4.0)
    assert ScoreRequest.from_bytes(req.to_bytes()) == req
    rec = Recommendation("u", [RecommendedItem("a", 0.5, "covisit", "co-visited with b")], 2, "v1", "control",
                         2.0, 5.0, 3.0)
    assert Recommendation.from_bytes(rec.to_bytes()) == rec
    assert set(rec.to_dict()) >= {"user_id", "items", "user_event_count", "model_version", "arm", "event_ts",
                                  "generated_at", "list_id", "refresh"}
    repeat = Recommendation("u", [], 2, "v2", "control", 2.0, 6.0, 3.0, list_id="u:2:1", refresh="model")
    assert Recommendation.from_bytes(repeat.to_bytes()) == repeat


def test_a_recommendation_written_before_list_id_and_refresh_reads_as_an_event_list():
    old = orjson.dumps({"user_id": "u", "items": [{"item_id": "a", "score": 0.5, "source": "mf"}],
                        "user_event_count": 2, "model_version": "online", "arm": "control", "event_ts": 2.0,
                        "generated_at": 5.0})
    rec = Recommendation.from_bytes(old)
    assert (rec.list_id, rec.refresh, rec.ingested_at, rec.items[0].reason) == ("", "event", 5.0, "")
    assert Recommendation.make_list_id("a:1", 2, 0) == "a:1:2:0"  # the last two fields are the numbers
    assert set(Recommendation.REFRESHES) == {"event", "empty", "model"}


def test_score_request_carries_consumed_hashes_as_base64():
    hashes = np.array([0, 1, 2**32 - 1, 3418000330], dtype=np.uint32)
    req = ScoreRequest("u", ["a"], [("a", 1.0, "click")], 1, 1.0, 1.0, 2.0, consumed=hashes.astype("<u4").tobytes())
    raw = req.to_bytes()
    assert orjson.loads(raw)["consumed"] == base64.b64encode(req.consumed).decode()
    back = ScoreRequest.from_bytes(raw)
    assert back == req and back.consumed_hashes().dtype == np.uint32
    assert back.consumed_hashes().tolist() == hashes.tolist()


def test_a_score_request_written_before_consumed_reads_as_empty():
    old = orjson.dumps({"user_id": "u", "sequence": ["a"], "new": [["a", 1.0, "click"]], "event_count": 1,
                        "event_ts": 1.0, "ingested_at": 1.0, "requested_at": 2.0})
    req = ScoreRequest.from_bytes(old)
    assert req.consumed == b"" and req.consumed_hashes().shape == (0,)
    assert ScoreRequest.from_bytes(req.to_bytes()) == req


def test_parse_item():
    item = parse_item(b'{"item_id": "i1", "title": "Jazz", "tags": ["a", " "]}', max_bytes=1000)
    assert item.content() == "Jazz. a"
    with pytest.raises(BadEvent):
        parse_item(b'{"item_id": "i1", "tags": "a"}', max_bytes=1000)


def test_parse_item_hidden_and_the_key_of_a_tombstone():
    assert parse_item(b'{"item_id": "i1", "title": "Jazz"}', max_bytes=1000).hidden is False
    assert parse_item(b'{"item_id": "i1", "title": "Jazz", "hidden": null}', max_bytes=1000).hidden is False
    assert parse_item(b'{"item_id": "i1", "title": "Jazz", "hidden": true}', max_bytes=1000).hidden is True
    for bad in (b'"true"', b"1", b"0", b"[]"):
        with pytest.raises(BadEvent) as info:
            parse_item(b'{"item_id": "i1", "title": "Jazz", "hidden": ' + bad + b"}", max_bytes=1000)
        assert info.value.reason == "wrong_type"
    assert parse_item_key(b" i9\t") == "i9"
    for key, reason in ((None, "missing_field"), (b"", "missing_field"), (b"\xff", "invalid_utf8"),
                        (b"x" * 257, "id_too_long")):
        with pytest.raises(BadEvent) as info:
            parse_item_key(key)
        assert info.value.reason == reason
