"""The read API process (``tailcast api``): each user's latest list in a Faust table, served over HTTP.

The ``latest`` agent keeps each user's newest list as published (a tombstone deletes it, #17), partitioned
like the topic so that instances split the users; ``items`` drops hidden and deleted items (503 until read);
the views serve ``GET /recommendations/{user_id}?n=10``, ``DELETE /users/{user_id}``, ``/healthz`` and
``/metrics``. A request for another instance's user is forwarded once, by the pseudonymised key
(docs/decisions.md). :class:`ReadApi` holds the answers, without Faust types.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any, ClassVar

import aiohttp
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ConsumerNotStarted
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from yarl import URL

from streams.agents.catalogue import Catalogue, follow_partitions
from streams.agents.ingest import pseudonymize, write_table
from streams.config import KafkaSettings
from streams.metrics import ApiMetrics
from streams.records import BadEvent, Forget, Recommendation
from streams.topics import EVENTS, ITEMS, RECOMMENDATIONS, partition_for

__all__ = ["ReadApi", "BadRequest", "newest_lists", "register", "DEFAULT_N", "FORWARDED_HEADER"]

log = logging.getLogger(__name__)

#: Items returned when a request gives no ``n``.
DEFAULT_N = 10
#: The latest-list agent's micro-batch: at most this many lists, or what arrived within this many seconds.
LATEST_BATCH = 1000
LATEST_BATCH_WAIT_S = 0.02
#: Header on a request one instance forwards to the owner of its user; such a request is never forwarded again.
FORWARDED_HEADER = "X-Tailcast-Forwarded-By"
#: Longest a forwarded request waits for the owning instance.
FORWARD_TIMEOUT_S = 2.0
JSON = "application/json"
#: What a stored list must hold: the fields of the topic contract without a reader's default.
_LIST_FIELDS = frozenset({"user_id", "items", "user_event_count", "model_version", "arm", "event_ts", "generated_at"})


class BadRequest(ValueError):
    """A request parameter is malformed; the message says which and how."""


def parse_n(text: str | None) -> int:
    """The ``n`` query parameter: a positive integer, :data:`DEFAULT_N` when absent.

    >>> parse_n(None), parse_n("3")
    (10, 3)
    >>> parse_n("0")
    Traceback (most recent call last):
    ...
    streams.agents.api.BadRequest: n must be a positive integer, got '0'
    """
    if text is None:
        return DEFAULT_N
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise BadRequest(f"n must be a positive integer, got {text!r}")
    return n


def newest_lists(records: Iterable[tuple[bytes | None, bytes | None]]) -> tuple[dict[bytes, bytes | None], int]:
    """The last record per user among ``recommendations`` records ``(key, value)`` (in topic order), keyed by
    the user id as UTF-8: a list's value as published, or None for a tombstone (the user was erased, #17:
    a null value keyed by the user); and how many records were neither (a tombstone without a key counts).

    >>> rec = Recommendation("u1", [], 3, "online", "control", 1.0, 100.0, 99.0, "u1:3:0").to_bytes()
    >>> newest_lists([(b"u1", rec), (b"u1", None), (b"u2", rec[:5]), (None, None)])
    ({b'u1': None}, 2)
    """
    newest: dict[bytes, bytes | None] = {}
    unreadable = 0
    for key, value in records:
        if value is None:
            if key:
                newest[key] = None
            else:
                unreadable += 1
            continue
        try:  # the fields a reader needs, without building the list's 50 items
            record = orjson.loads(value)
            if not (isinstance(record, dict) and _LIST_FIELDS <= record.keys() and isinstance(record["items"], list)):
                raise ValueError("not a list record")
            key_bytes = record["user_id"].encode()
        except (ValueError, TypeError, AttributeError):
            unreadable += 1
            continue
        newest[key_bytes] = value
    return newest, unreadable


class ReadApi:
    """The read API's answers, ``(status, JSON body)``, from ``store`` (user id bytes -> latest list).

    Errors are ``{"error": message}``. ``banned`` (a live set) is dropped from every list; until
    ``catalogue_read`` (when given) is set, lists are answered with 503.

    >>> import orjson
    >>> rec = Recommendation("u1", [], 3, "online", "control", 1.0, 100.0, 99.0, "u1:3:0")
    >>> api = ReadApi({b"u1": rec.to_bytes()}, clock=lambda: 102.5)
    >>> status, body = api.recommendations("u1", "5")
    >>> status, orjson.loads(body)["age_s"], orjson.loads(body)["list_id"]
    (200, 2.5, 'u1:3:0')
    >>> api.recommendations("u2", None)
    (404, b'{"error":"no list for user u2"}')
    """

    def __init__(self, store: Mapping[bytes, bytes], *, pseudonymize_key: str | None = None,
                 clock=time.time, banned: Collection[str] = frozenset(),
                 catalogue_read: asyncio.Event | None = None) -> None:
        self.store = store
        self.pseudonymize_key = pseudonymize_key
        self.clock = clock
        self.banned = banned
        self.catalogue_read = catalogue_read

    def _catalogue_pending(self) -> bool:
        return self.catalogue_read is not None and not self.catalogue_read.is_set()

    def erasure(self, user_id: str) -> tuple[bytes, bytes]:
        """``DELETE /users/{user_id}``: the ``events`` control record (key, value) of the user's erasure, keyed
        by the raw id; :class:`BadRequest` for an id the worker would reject.

        >>> ReadApi({}).erasure("u1")
        (b'u1', b'{"user_id":"u1","control":"forget"}')
        """
        try:
            return Forget.record(user_id)
        except BadEvent as exc:
            raise BadRequest(f"bad user id: {exc}") from None

    def key(self, user_id: str) -> bytes:
        """The table key of ``user_id`` as a client gives it (pseudonymised as at ingest, when configured)."""
        user = pseudonymize(user_id, self.pseudonymize_key) if self.pseudonymize_key else user_id
        return user.encode()

    def recommendations(self, user_id: str, n: str | None) -> tuple[int, bytes]:
        """``GET /recommendations/{user_id}?n=``: the latest list, its first ``n`` items not banned (``more``
        folded in) and ``age_s``; 404 without a list, 400 for a bad ``n``, 503 while the catalogue is read."""
        try:
            count = parse_n(n)
        except BadRequest as exc:
            return 400, orjson.dumps({"error": str(exc)})
        if self._catalogue_pending():
            return 503, orjson.dumps({"error": "the item catalogue is still being read (starting); retry"})
        stored = self.store.get(self.key(user_id))
        if stored is None:
            return 404, orjson.dumps({"error": f"no list for user {user_id}"})
        record = orjson.loads(stored)
        items = record["items"]
        more = record.pop("more", None)
        if more and (count > len(items) or self.banned):
            items = items + more  # the list runs on into what the scorer ranked after it
        banned = self.banned
        if banned:
            items = [item for item in items if item["item_id"] not in banned]
        record["items"] = items[:count]
        record["age_s"] = round(self.clock() - record["generated_at"], 3)
        return 200, orjson.dumps(record)

    def healthz(self, *, rebalancing: bool, partitions: Iterable[int] | None) -> tuple[int, bytes]:
        """``GET /healthz``: 200 while serving; 503 while starting (``partitions`` None, or the catalogue being
        read) or rebalancing."""
        starting = partitions is None or self._catalogue_pending()
        status = "starting" if starting else "rebalancing" if rebalancing else "ok"
        body = {"status": status, "users": len(self.store), "partitions": sorted(partitions or ())}
        return (200 if status == "ok" else 503), orjson.dumps(body)


class _Endpoint(View):
    """A view that counts and times its requests (``tailcast_api_requests_total``, ``..._latency_seconds``)."""

    endpoint: ClassVar[str]
    api: ClassVar[ReadApi]
    metrics: ClassVar[ApiMetrics]

    async def dispatch(self, request: Any) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            response = await super().dispatch(request)
            status = response.status
            return response
        except Exception:  # noqa: BLE001 - every answer is JSON, an unexpected failure too
            log.exception("%s %s failed", request.method, request.path)
            return self.answer(500, orjson.dumps({"error": "internal error; see the api instance's log"}))
        finally:
            self.metrics.requests.labels(endpoint=self.endpoint, code=str(status)).inc()
            self.metrics.latency.labels(endpoint=self.endpoint).observe(time.perf_counter() - started)

    def answer(self, status: int, body: bytes) -> Response:
        return self.bytes(body, status=status, content_type=JSON)


class RecommendationsView(_Endpoint):
    """``GET /recommendations/{user_id}?n=10``, answered by the instance that owns the user."""

    endpoint = "recommendations"
    table_name: ClassVar[str]
    changelog: ClassVar[str]
    partitions: ClassVar[int]

    async def get(self, request: Request, user_id: str) -> Response:
        key = self.api.key(user_id)
        owner = self._owner(key)
        if owner is None:
            return self.answer(503, orjson.dumps({"error": "no api instance owns this user's partition yet "
                                                           "(rebalancing); retry"}))
        if self._ident(owner) == self._ident(self.app.conf.canonical_url):
            return self.answer(*self.api.recommendations(user_id, request.query.get("n")))
        if FORWARDED_HEADER in request.headers:  # the sender thinks this instance owns it; this one disagrees
            return self.answer(503, orjson.dumps({"error": "this user's partition is moving between api "
                                                           "instances (rebalancing); retry"}))
        return await self._forward(owner, request)

    def _owner(self, key: bytes) -> URL | None:
        """The canonical URL of the instance whose table partition holds ``key`` (None: no owner yet)."""
        partition = partition_for(key, self.partitions)
        for url, topics in self.app.router.table_metadata(self.table_name).items():
            if partition in topics.get(self.changelog, ()):
                return URL(url)
        return None

    @staticmethod
    def _ident(url: URL) -> tuple[str, int]:
        return (url.host or "", url.port or 80)

    async def _forward(self, owner: URL, request: Request) -> Response:
        target = URL(str(owner).rstrip("/") + str(request.rel_url), encoded=True)
        headers = {FORWARDED_HEADER: str(self.app.conf.canonical_url)}
        try:
            async with self.app.http_client.get(target, headers=headers,
                                                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)) as resp:
                body, status, ctype = await resp.read(), resp.status, resp.content_type
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("the api instance at %s (owner of the user in %s) did not answer: %r", owner,
                        request.rel_url, exc)
            return self.answer(503, orjson.dumps({"error": f"the api instance owning this user ({owner}) did "
                                                           "not answer; retry"}))
        self.metrics.routed.inc()
        return self.bytes(body, status=status, content_type=ctype)


class UsersView(_Endpoint):
    """``DELETE /users/{user_id}``: erasure (#17). Any instance writes the control record to ``events`` and
    answers 202 once the broker has it."""

    endpoint = "users"

    async def delete(self, request: Request, user_id: str) -> Response:
        try:
            key, value = self.api.erasure(user_id)
        except BadRequest as exc:
            return self.answer(400, orjson.dumps({"error": str(exc)}))
        try:
            sent = await (await self.app.producer.send(EVENTS, key, value, None, None, None))
        except KafkaError as exc:
            log.error("api: could not write the erasure request of a user to %s: %r", EVENTS, exc)
            return self.answer(503, orjson.dumps({"error": f"could not write the erasure request to {EVENTS}; "
                                                           "retry"}))
        log.info("api: erasure of user %s requested (%s[%d]@%d)", self.api.key(user_id).decode(), EVENTS,
                 sent.partition, sent.offset)
        return self.answer(202, orjson.dumps({"user_id": key.decode(), "status": "erasure requested"}))


class HealthView(_Endpoint):
    """``GET /healthz``."""

    endpoint = "healthz"

    async def get(self, request: Request) -> Response:
        try:
            assigned = self.app.consumer.assignment()
        except ConsumerNotStarted:
            partitions = None
        else:
            partitions = [tp.partition for tp in assigned if tp.topic == RECOMMENDATIONS]
        return self.answer(*self.api.healthz(rebalancing=bool(self.app.rebalancing), partitions=partitions))


class MetricsView(_Endpoint):
    """``GET /metrics``: the process's Prometheus registry."""

    endpoint = "metrics"
    registry: ClassVar[CollectorRegistry]

    async def get(self, request: Request) -> Response:
        return self.bytes(generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def register(app, *, topic, partitions: int, pseudonymize_key: str | None, registry: CollectorRegistry,
             kafka: KafkaSettings, max_item_bytes: int, batched_writes: bool = True) -> dict[str, Any]:
    """Declare the ``latest_list`` table, its agent, the ``items`` task and the views on a Faust app;
    ``batched_writes``: :func:`~streams.agents.ingest.write_table`'s (Faust's buffer overflowed when a model swap
    re-published every active user's list)."""
    metrics = ApiMetrics.create(registry)
    table = app.Table(
        "latest_list", default=None, partitions=partitions,
        key_type=bytes, value_type=bytes,  # the raw codec: the list's bytes as published
        # the changelog partition from the key (murmur2), not the "current event": a batch mixes partitions
        use_partitioner=True,
        help="Each user's latest recommendation list, as published",
    )
    catalogue = Catalogue(max_bytes=max_item_bytes)
    catalogue_read = asyncio.Event()
    api = ReadApi(table, pseudonymize_key=pseudonymize_key, banned=catalogue.banned, catalogue_read=catalogue_read)
    changelog = table.changelog_topic.get_topic_name()

    @app.agent(topic, name="latest")
    async def latest(stream):
        async for events in stream.take_events(LATEST_BATCH, within=LATEST_BATCH_WAIT_S):
            newest, unreadable = newest_lists((e.message.key, e.message.value) for e in events)
            # each user's newest list; None (an erased user) deletes it
            await write_table(table, newest, partitions=partitions, batched=batched_writes, producer=app.producer)
            erased = [key.decode(errors="replace") for key, value in newest.items() if value is None]
            if erased:
                log.info("api: deleted the stored list of %d erased user(s): %s", len(erased), ", ".join(erased))
            if unreadable:
                log.error("skipped %d unreadable record(s) on %s", unreadable, RECOMMENDATIONS)
                metrics.lists_unreadable.inc(unreadable)
            metrics.lists_received.inc(len(events) - unreadable - len(erased))
            metrics.users.set(len(table))

    async def apply_items(records) -> None:
        for record, change in zip(records, catalogue.apply_many(records)):
            if change.kind == "invalid":
                log.warning("skipping bad item record at offset %d: %s", record.offset, change.error)
        metrics.banned_items.set(len(catalogue.banned))

    @app.task
    async def items() -> None:
        """Follow the whole ``items`` topic: the hidden and deleted items are dropped from every answer."""
        await follow_partitions(kafka, ITEMS, apply_items, caught_up=catalogue_read)

    shared = {"api": api, "metrics": metrics}
    routed = {"table_name": table.name, "changelog": changelog, "partitions": partitions}
    for path, view, extra in (("/recommendations/{user_id}", RecommendationsView, routed),
                              ("/users/{user_id}", UsersView, {}),
                              ("/healthz", HealthView, {}),
                              ("/metrics", MetricsView, {"registry": registry})):
        app.page(path, name=view.endpoint)(type(view.__name__, (view,), {**shared, **extra}))
    return {"metrics": metrics, "table": table, "agent": latest, "api": api, "catalogue": catalogue,
            "catalogue_read": catalogue_read}
