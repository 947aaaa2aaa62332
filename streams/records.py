"""The records that travel on tailcast's topics (docs/design.md §3), and validation of input at the edge:
a malformed record becomes a :class:`BadEvent` with a reason (for ``events.dlq``), never a crash.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import orjson

from online.ab import Impression

__all__ = ["BadEvent", "DLQ_REASONS", "CATALOG_CHANGES", "ValidEvent", "Forget", "FORGET", "parse_event",
           "read_request", "ScoreRequest", "RecommendedItem", "Recommendation", "dead_letter", "parse_item",
           "parse_item_key", "ItemRecord", "MAX_IMPRESSION_ITEMS", "parse_impression", "dumps",
           "loads"]

dumps = orjson.dumps
loads = orjson.loads

MAX_ID_CHARS = 256
MAX_EVENT_TYPE_CHARS = 32
FUTURE_TOLERANCE_S = 86_400.0
MS_THRESHOLD = 1e11  # a ts above this (year 5138 in seconds) is read as milliseconds
#: An event's own fields; any other top-level field goes into ``props`` (``control`` makes a control record).
_EVENT_FIELDS = frozenset({"user_id", "item_id", "event", "ts", "props", "control"})

#: Every reason a record can be dead-lettered for; the label set of ``tailcast_worker_dlq_records_total``.
DLQ_REASONS = ("empty_payload", "oversized", "invalid_utf8", "not_json", "not_object", "missing_field", "empty_id",
               "id_too_long", "wrong_type", "bad_timestamp", "unknown_control")

#: The one control record (#17): erasure, on ``events`` and as the worker's marker on ``score-requests``.
FORGET = "forget"

#: The most items one impression may display.
MAX_IMPRESSION_ITEMS = 200

#: What an ``items`` record does to the catalogue; the labels of ``tailcast_scorer_catalog_records_total``.
CATALOG_CHANGES = ("upsert", "hide", "restore", "delete", "invalid")


class BadEvent(ValueError):
    """An input record that breaks the contract; ``reason`` is one of :data:`DLQ_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in DLQ_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.4 µs more to build, per event
class ValidEvent:
    user_id: str
    item_id: str
    event: str
    ts: float
    props: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Forget:
    """Erase a user (#17): the control record ``{"user_id", "control": "forget"}`` on ``events`` (``requested_at``:
    its ``ts``), and the marker the worker writes on ``score-requests`` after the user's earlier requests
    (``requested_at``: the worker's clock). ``props``: the reserved keys of a forwarded request.

    >>> f = Forget("u7", 5.0)
    >>> f.to_bytes(), read_request(f.to_bytes()) == f
    (b'{"user_id":"u7","control":"forget","requested_at":5.0}', True)
    """

    user_id: str
    requested_at: float
    props: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """The ``score-requests`` marker (``props`` stay behind: they belong to the events topic)."""
        return orjson.dumps({"user_id": self.user_id, "control": FORGET, "requested_at": self.requested_at})

    @staticmethod
    def record(user_id: str) -> tuple[bytes, bytes]:
        """The ``events`` record (key, value) that asks for ``user_id``'s erasure, keyed by the id as given
        (raw: a pseudonymising worker hashes it); :class:`BadEvent` for an id the worker would reject.

        >>> Forget.record(" u7 ")
        (b'u7', b'{"user_id":"u7","control":"forget"}')
        >>> Forget.record("")
        Traceback (most recent call last):
        ...
        streams.records.BadEvent: empty_id: user_id is empty
        """
        user = _id({"user_id": user_id}, "user_id")
        return user.encode(), orjson.dumps({"user_id": user, "control": FORGET})


def _decode_object(raw: bytes | None, *, max_bytes: int) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise BadEvent("empty_payload", "the record has no value")
    if len(raw) > max_bytes:
        raise BadEvent("oversized", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadEvent("invalid_utf8", "the value is not valid UTF-8") from None
        raise BadEvent("not_json", str(exc)) from None
    if not isinstance(value, dict):
        raise BadEvent("not_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def _id(obj: dict[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise BadEvent("missing_field", f"{name} is missing")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadEvent("wrong_type", f"{name} must be a string (or integer), got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise BadEvent("empty_id", f"{name} is empty")
    if len(text) > MAX_ID_CHARS:
        raise BadEvent("id_too_long", f"{name} has {len(text)} characters > {MAX_ID_CHARS}")
    return text


def _timestamp(obj: dict[str, Any], default_ts: float) -> float:
    value = obj.get("ts")
    if value is None:
        return default_ts
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadEvent("wrong_type", f"ts must be a number of Unix seconds, got {type(value).__name__}")
    ts = float(value)
    if not math.isfinite(ts) or ts < 0:
        raise BadEvent("bad_timestamp", f"ts={value!r} is not a finite non-negative number")
    if ts > MS_THRESHOLD:
        ts /= 1000.0
    if ts > max(default_ts, time.time()) + FUTURE_TOLERANCE_S:
        raise BadEvent("bad_timestamp", f"ts={value!r} is more than a day in the future")
    return ts


def _control(obj: dict[str, Any], control: Any, default_ts: float) -> Forget:
    """A control record: user id, ``ts`` and ``props`` read as for an event, other fields ignored."""
    user_id = _id(obj, "user_id")
    if not isinstance(control, str):
        raise BadEvent("wrong_type", f"control must be a string, got {type(control).__name__}")
    if control != FORGET:
        raise BadEvent("unknown_control", f"control must be {FORGET!r}, got {control!r:.40}")
    return Forget(user_id, _timestamp(obj, default_ts), _props(obj))


def _props(obj: dict[str, Any]) -> dict[str, Any]:
    props = obj.get("props")
    if props is not None and not isinstance(props, dict):
        raise BadEvent("wrong_type", f"props must be an object, got {type(props).__name__}")
    return props or {}


def parse_event(raw: bytes | None, *, max_bytes: int, default_ts: float) -> ValidEvent | Forget:
    """Validate one ``events`` record (docs/design.md §3) or raise :class:`BadEvent`.

    A non-null ``control`` field makes it a control record: ``"forget"`` returns a :class:`Forget`.
    Normalisations (README): integer ids become strings, ids are stripped, ``event`` is lower-cased (default
    ``"click"``), ``ts`` defaults to the Kafka time and is milliseconds above 1e11, and unknown top-level
    fields go into ``props``.

    >>> parse_event(b'{"user_id": "u1", "item_id": 42}', max_bytes=1000, default_ts=5.0)
    ValidEvent(user_id='u1', item_id='42', event='click', ts=5.0, props={})
    >>> parse_event(b'{"user_id": ""}', max_bytes=1000, default_ts=5.0)
    Traceback (most recent call last):
    ...
    streams.records.BadEvent: empty_id: user_id is empty
    >>> parse_event(b'{"user_id": "u1", "control": "forget"}', max_bytes=1000, default_ts=5.0)
    Forget(user_id='u1', requested_at=5.0, props={})
    """
    obj = _decode_object(raw, max_bytes=max_bytes)
    control = obj.get("control")
    if control is not None:
        return _control(obj, control, default_ts)
    user_id = _id(obj, "user_id")
    item_id = _id(obj, "item_id")
    event = obj.get("event", "click")
    if event is None:
        event = "click"
    if not isinstance(event, str) or not event.strip() or len(event) > MAX_EVENT_TYPE_CHARS:
        raise BadEvent("wrong_type", f"event must be a short non-empty string, got {event!r:.40}")
    ts = _timestamp(obj, default_ts)
    props = _props(obj)
    extra = {k: v for k, v in obj.items() if k not in _EVENT_FIELDS}
    if extra:
        props = {**props, **extra}
    return ValidEvent(user_id, item_id, event.strip().lower(), ts, props)


def _bytes_field(raw: bytes | None, limit: int) -> dict[str, Any]:
    if raw is None:
        return {"value": None, "value_encoding": "none", "value_bytes": 0, "value_truncated": False}
    kept = raw[:limit]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return {"value": text, "value_encoding": encoding, "value_bytes": len(raw),
            "value_truncated": len(raw) > limit}


def dead_letter(*, reason: str, error: str, topic: str, partition: int, offset: int, timestamp: float | None,
                key: bytes | None, value: bytes | None, keep_bytes: int = 65_536) -> bytes:
    """The ``events.dlq`` record: the original bytes (UTF-8 text or base64, truncated past ``keep_bytes``:
    ``value_truncated``), the error, and where the original is."""
    record = {
        "reason": reason,
        "error": error,
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp},
        "key": None if key is None else _bytes_field(key, 1024)["value"],
        **_bytes_field(value, keep_bytes),
        "dlq_at": time.time(),
    }
    return orjson.dumps(record)


@dataclass(slots=True)
class ScoreRequest:
    """Internal ``score-requests`` record: what the scorer needs to recommend for one user state.

    ``new``: the ``(item_id, ts, event)`` added since the user's previous request, the last ``len(new)`` of
    the ``event_count`` events; ``ingested_at``: the Kafka time of the oldest of them (freshness starts
    there). ``consumed``: the worker's ``UserState.consumed`` (uint32 LE item hashes, base64 on the wire);
    empty with ``TAILCAST_EXCLUDE_CONSUMED=recent`` and in older requests.

    >>> from online.base import item_hash
    >>> req = ScoreRequest("u", ["a"], [("a", 2.0, "click")], 1, 2.0, 3.0, 4.0,
    ...                    consumed=item_hash("a").to_bytes(4, "little"))
    >>> req.to_bytes()[-22:], req.consumed_hashes(), item_hash("a")
    (b'"consumed":"Q7636A=="}', array([3904355907], dtype=uint32), 3904355907)
    >>> ScoreRequest.from_bytes(req.to_bytes()) == req
    True
    """

    user_id: str
    sequence: list[str]
    new: list[tuple[str, float, str]]
    event_count: int
    event_ts: float
    ingested_at: float
    requested_at: float
    consumed: bytes = b""

    def consumed_hashes(self) -> np.ndarray:
        """``consumed`` as a uint32 array (a read-only view of the bytes)."""
        return np.frombuffer(self.consumed, dtype="<u4").astype(np.uint32, copy=False)

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "user_id": self.user_id, "sequence": self.sequence, "new": self.new,
            "event_count": self.event_count, "event_ts": self.event_ts,
            "ingested_at": self.ingested_at, "requested_at": self.requested_at,
            "consumed": binascii.b2a_base64(self.consumed, newline=False).decode("ascii"),
        })

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScoreRequest:
        request = read_request(raw)
        if not isinstance(request, cls):
            raise ValueError(f"not a score request but the erasure marker of user {request.user_id!r}")
        return request


def read_request(raw: bytes) -> ScoreRequest | Forget:
    """One ``score-requests`` record: a :class:`ScoreRequest`, or the :class:`Forget` marker of an erasure.
    Raises ``ValueError``, ``KeyError`` or ``TypeError`` for a record that is neither."""
    d = orjson.loads(raw)
    if d.get("control") == FORGET:
        return Forget(d["user_id"], d["requested_at"])
    return ScoreRequest(d["user_id"], d["sequence"], [tuple(x) for x in d["new"]], d["event_count"], d["event_ts"],
                        d["ingested_at"], d["requested_at"], binascii.a2b_base64(d.get("consumed", "")))


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.4 µs more to build, 10 per list
class RecommendedItem:
    item_id: str
    score: float
    source: str
    reason: str = ""


@dataclass(slots=True)
class Recommendation:
    """The ``recommendations`` contract (docs/design.md §3).

    ``user_event_count``: the user's events this list reflects (it predicts the next one); ``generated_at -
    ingested_at`` is its freshness. ``refresh``: why it was published, ``"event"`` (a new state, at most once
    per count), ``"empty"`` (an empty list scored again) or ``"model"`` (after a model swap). ``list_id``
    (``user_id:user_event_count:n``, n-th list for that count) names it for impressions, the same in every run.
    ``more``: the items ranked after ``items`` up to ``LIST_DEPTH``, for the read API; ``items`` is what the
    A/B and long-tail figures count. Older records read with ``list_id=""``, ``refresh="event"``, ``more=[]``.

    >>> rec = Recommendation("u7", [], 3, "online", "control", 1.0, 2.0, 1.5,
    ...                      list_id=Recommendation.make_list_id("u7", 3, 1), refresh="empty")
    >>> rec.list_id, Recommendation.from_bytes(rec.to_bytes()) == rec
    ('u7:3:1', True)
    """

    #: Why a list was published (the values of ``refresh``).
    REFRESHES: ClassVar[tuple[str, ...]] = ("event", "empty", "model")

    user_id: str
    items: list[RecommendedItem]
    user_event_count: int
    model_version: str
    arm: str
    event_ts: float
    generated_at: float
    ingested_at: float
    list_id: str = ""
    refresh: str = "event"
    more: list[RecommendedItem] = field(default_factory=list)

    @staticmethod
    def make_list_id(user_id: str, user_event_count: int, n: int) -> str:
        """The ``list_id`` of the user's ``n``-th list (from 0) for ``user_event_count``; the last two
        ``:``-separated fields are the integers, so ids are unique whatever the user id holds."""
        return f"{user_id}:{user_event_count}:{n}"

    def to_dict(self) -> dict[str, Any]:
        def write(items: list[RecommendedItem]) -> list[dict[str, Any]]:
            return [{"item_id": i.item_id, "score": i.score, "source": i.source, "reason": i.reason} for i in items]

        return {
            "user_id": self.user_id,
            "items": write(self.items),
            "user_event_count": self.user_event_count,
            "model_version": self.model_version,
            "arm": self.arm,
            "event_ts": self.event_ts,
            "generated_at": self.generated_at,
            "ingested_at": self.ingested_at,
            "list_id": self.list_id,
            "refresh": self.refresh,
            "more": write(self.more),
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Recommendation:
        d = orjson.loads(raw)

        def read(items: list[dict]) -> list[RecommendedItem]:
            return [RecommendedItem(i["item_id"], i["score"], i["source"], i.get("reason", "")) for i in items]

        return cls(d["user_id"], read(d["items"]), d["user_event_count"], d["model_version"], d["arm"],
                   d["event_ts"], d["generated_at"], d.get("ingested_at", d["generated_at"]), d.get("list_id", ""),
                   d.get("refresh", "event"), read(d.get("more", ())))


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One ``items`` record: the item's whole state (compacted topic); ``hidden``: never recommended (#17)."""

    item_id: str
    title: str
    text: str
    tags: tuple[str, ...]
    hidden: bool = False

    def content(self) -> str:
        """The text the content encoder reads: title, text and tags."""
        parts = [self.title, self.text, ", ".join(self.tags)]
        return ". ".join(p for p in parts if p)


def parse_item(raw: bytes | None, *, max_bytes: int) -> ItemRecord:
    """Validate one ``items`` record (docs/design.md §3) or raise :class:`BadEvent` (a tombstone, read with
    :func:`parse_item_key`, is ``empty_payload`` here). ``hidden``: a boolean, null or absent is false.

    >>> parse_item(b'{"item_id": 7, "title": " Jazz ", "hidden": true}', max_bytes=1000)
    ItemRecord(item_id='7', title='Jazz', text='', tags=(), hidden=True)
    >>> parse_item(b'{"item_id": "i1", "title": "Jazz", "hidden": "yes"}', max_bytes=1000)
    Traceback (most recent call last):
    ...
    streams.records.BadEvent: wrong_type: hidden must be true or false, got 'yes'
    """
    obj = _decode_object(raw, max_bytes=max_bytes)
    item_id = _id(obj, "item_id")
    title = obj.get("title", "")
    text = obj.get("text", "") or ""
    tags = obj.get("tags", []) or []
    hidden = obj.get("hidden")
    if not isinstance(title, str) or not isinstance(text, str):
        raise BadEvent("wrong_type", "title and text must be strings")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise BadEvent("wrong_type", "tags must be a list of strings")
    if hidden is not None and not isinstance(hidden, bool):
        raise BadEvent("wrong_type", f"hidden must be true or false, got {hidden!r:.40}")
    return ItemRecord(item_id, title.strip(), text.strip(), tuple(t.strip() for t in tags if t.strip()),
                      bool(hidden))


def parse_item_key(key: bytes | None) -> str:
    """The item id an ``items`` record's key names (a tombstone's only content), or raise :class:`BadEvent`.

    >>> parse_item_key(b" i42 ")
    'i42'
    >>> parse_item_key(None)
    Traceback (most recent call last):
    ...
    streams.records.BadEvent: missing_field: a tombstone on items needs a key (the item id)
    """
    if key is None or not key.strip():
        raise BadEvent("missing_field", "a tombstone on items needs a key (the item id)")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise BadEvent("invalid_utf8", "the key is not valid UTF-8") from None
    return _id({"item_id": text}, "item_id")


def parse_impression(raw: bytes | None, *, max_bytes: int, default_ts: float) -> Impression:
    """Validate one ``impressions`` record (``streams/schemas/impressions.schema.json``) or raise
    :class:`BadEvent`: the ledger's :class:`~online.ab.Impression`, its ``arm`` left for the reader to assign.
    Ids are read as events' ids are; ``ts`` defaults to the Kafka record time.

    >>> parse_impression(b'{"user_id": "u1", "list_id": "u1:3:0", "ts": 9,'
    ...                  b' "items": [{"item_id": "i4", "position": 0}, {"item_id": 7, "position": 1}]}',
    ...                  max_bytes=1000, default_ts=5.0)
    Impression(user='u1', list_id='u1:3:0', items=('i4', '7'), positions=(0, 1), ts=9.0, arm='')
    >>> parse_impression(b'{"user_id": "u1", "list_id": "x", "items": [{"item_id": "i4"}]}',
    ...                  max_bytes=1000, default_ts=5.0)
    Traceback (most recent call last):
    ...
    streams.records.BadEvent: missing_field: items[0].position is missing
    """
    obj = _decode_object(raw, max_bytes=max_bytes)
    user_id = _id(obj, "user_id")
    list_id = _id(obj, "list_id")
    shown = obj.get("items")
    if shown is None:
        raise BadEvent("missing_field", "items is missing")
    if not isinstance(shown, list) or len(shown) > MAX_IMPRESSION_ITEMS:
        raise BadEvent("wrong_type", f"items must be a list of at most {MAX_IMPRESSION_ITEMS} objects")
    items, positions = [], []
    for n, slot in enumerate(shown):
        if not isinstance(slot, dict):
            raise BadEvent("wrong_type", f"items[{n}] must be an object, got {type(slot).__name__}")
        if slot.get("item_id") is None:
            raise BadEvent("missing_field", f"items[{n}].item_id is missing")
        items.append(_id(slot, "item_id"))
        pos = slot.get("position")
        if pos is None:
            raise BadEvent("missing_field", f"items[{n}].position is missing")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise BadEvent("wrong_type", f"items[{n}].position must be an integer >= 0, got {pos!r:.40}")
        positions.append(pos)
    return Impression(user_id, list_id, tuple(items), tuple(positions), _timestamp(obj, default_ts), "")
