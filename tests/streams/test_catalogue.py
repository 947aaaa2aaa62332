"""Catalogue control on the items topic (#17), in memory: hide, restore, delete, and bad records."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from streams.agents.catalogue import Catalogue
from streams.records import CATALOG_CHANGES


def item(item_id, **fields) -> bytes:
    return orjson.dumps({"item_id": item_id, "title": f"title {item_id}", **fields})


def test_the_last_record_of_an_item_decides_whether_it_is_banned():
    c = Catalogue(max_bytes=10_000)
    steps = [
        (b"a", item("a"), "upsert", set()),
        (b"b", item("b", hidden=True), "hide", {"b"}),  # hidden with its first record
        (b"a", item("a", hidden=True), "hide", {"a", "b"}),
        (b"a", item("a", hidden=True), "hide", {"a", "b"}),  # hiding twice changes nothing
        (b"a", item("a", hidden=False), "restore", {"b"}),
        (b"b", item("b", text="new text"), "restore", {}),  # a record without "hidden" is visible
        (b"b", None, "delete", {"b"}),
        (b"z", None, "delete", {"b", "z"}),  # an item never seen can be deleted (and stays banned)
        (b"b", item("b", hidden=None), "restore", {"z"}),  # re-created: null reads as false
        (b"c", item("c"), "upsert", {"z"}),
    ]
    for key, value, kind, banned in steps:
        change = c.apply(key, value)
        assert (change.kind, c.banned) == (kind, set(banned)), (key, value)
        assert change.kind in CATALOG_CHANGES
        assert (change.record is None) == (kind == "delete")


def test_the_record_carries_the_text_to_encode_and_ids_are_normalised():
    c = Catalogue(max_bytes=10_000)
    change = c.apply(b"7", orjson.dumps({"item_id": 7, "title": " Jazz ", "tags": ["trio"], "hidden": True}))
    assert (change.kind, change.item_id, change.record.content(), change.record.hidden) == (
        "hide", "7", "Jazz. trio", True)
    assert c.apply(b" 7 ", None).item_id == "7"  # a tombstone's key is stripped as ids are
    assert c.banned == {"7"}


@pytest.mark.parametrize("key,value,why", [
    (None, None, "missing_field"),  # a tombstone without a key names no item
    (b"  ", None, "missing_field"),
    (b"\xff", None, "invalid_utf8"),
    (b"a" * 300, None, "id_too_long"),
    (b"a", b"", "empty_payload"),
    (b"a", b"{nope", "not_json"),
    (b"a", b'{"title": "no id"}', "missing_field"),
    (b"a", item("a", hidden="yes"), "wrong_type"),
    (b"a", item("a", hidden=1), "wrong_type"),
    (b"a", b'{"item_id": "a", "pad": "' + b"x" * 20_000 + b'"}', "oversized"),
])
def test_a_bad_record_changes_nothing_and_says_why(key, value, why):
    c = Catalogue(max_bytes=10_000)
    c.apply(b"a", item("a", hidden=True))
    change = c.apply(key, value)
    assert change.kind == "invalid" and change.error.startswith(why) and change.item_id is None
    assert c.banned == {"a"}


def test_apply_many_keeps_topic_order():
    c = Catalogue(max_bytes=10_000)
    records = [SimpleNamespace(key=b"a", value=item("a", hidden=True)), SimpleNamespace(key=b"a", value=None),
               SimpleNamespace(key=b"a", value=item("a"))]
    assert [ch.kind for ch in c.apply_many(records)] == ["hide", "delete", "restore"]
    assert c.banned == set()
