"""``tailcast api`` on the embedded broker, with independent clients at both ends (confluent-kafka producing,
a plain HTTP client reading): two instances beside a worker and a scorer split the users, and a client
reading either instance gets every user's last list on the topic, a 404 for an unknown
user, a 400 for a bad ``n``, and /healthz; an item hidden (or deleted) mid-stream is in no list the scorer
sends after it has read the hide, and both instances drop it from the lists they serve until it is
restored (#17); when one instance stops, the other serves every user."""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.error
import urllib.request

import orjson
import pytest

from online.synthetic import generate
from streams.broker import free_port
from streams.kafka import client_kwargs
from streams.metrics import read_metric
from streams.topics import EVENTS, ITEMS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration
confluent_kafka = pytest.importorskip("confluent_kafka")


def _produce(pipeline, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    """Publish with a client we did not write: librdkafka, on its default partitioner (so most events reach
    a partition their user does not hash to and the worker forwards them); a None value is a tombstone."""
    producer = confluent_kafka.Producer({"bootstrap.servers": pipeline.broker.address, "linger.ms": 5})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _serving(url: str) -> dict | None:
    try:
        status, body = _get(url + "/healthz")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None  # not listening yet: Faust starts its web server after table recovery
    return body if status == 200 else None


def _lists_with_time(settings) -> list[tuple[float, dict]]:
    """Every list on ``recommendations`` with its Kafka timestamp (seconds): the producer's time of the send."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def go() -> list[tuple[float, dict]]:
        consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(RECOMMENDATIONS, p) for p in consumer.partitions_for_topic(RECOMMENDATIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out = []
            while any([(await consumer.position(tp)) < end[tp] for tp in tps]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    out += [(r.timestamp / 1000.0, orjson.loads(r.value)) for r in records]
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def test_api_instances_serve_each_users_last_list(pipeline_env, kio, wait):
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    urls = []
    for i in range(2):
        port = free_port()
        pipeline_env.start("api", name=f"api{i}", TAILCAST_API_PORT=str(port))
        urls.append(f"http://127.0.0.1:{port}")

    def split():
        health = [_serving(url) for url in urls]
        if not all(health):
            return None
        owned = [set(h["partitions"]) for h in health]
        return all(owned) and set().union(*owned) == set(range(4)) and sum(map(len, owned)) == 4

    wait(split, timeout=120, message="two api instances serving, each owning some of the 4 partitions")

    data = generate(n_users=60, n_items=150, n_events=600, seed=3)
    events = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]
    expected: collections.Counter = collections.Counter()

    def last_lists():
        """Each user's last list on the topic, once every user's reflects all their events so far."""
        last = {}
        for _p, _o, _k, rec in sorted(kio.read_all(RECOMMENDATIONS), key=lambda r: (r[0], r[1])):
            last[rec["user_id"]] = rec
        done = {u: r["user_event_count"] for u, r in last.items()} == dict(expected)
        return last if done else None

    banned: set[str] = set()  # items hidden or deleted on the items topic: the API drops them

    def mismatches(last: dict) -> list[str]:
        wrong = []
        for n, (user, rec) in enumerate(sorted(last.items())):
            status, body = _get(f"{urls[n % len(urls)]}/recommendations/{user}?n=50")  # from every side
            age = body.pop("age_s", None)
            rec = {**rec}
            listed = rec["items"] + rec.pop("more")  # the API serves one list, items then more, up to n
            rec["items"] = [i for i in listed if i["item_id"] not in banned][:50]
            if status != 200 or body != rec or not -1.0 < age < 600.0:
                wrong.append(f"{user}: {status} {body} age {age}")
        return wrong

    def served():
        current = last_lists()
        return current is not None and not mismatches(current)

    # in three rounds, so that the users' lists are replaced by newer ones between the checks
    first_lists: dict[str, str] = {}
    for start in range(0, len(events), 200):
        chunk = events[start:start + 200]
        _produce(pipeline_env, EVENTS, chunk)
        expected.update(key.decode() for key, _ in chunk)
        wait(last_lists, timeout=120, message="every user's newest list on the topic")
        wait(served, timeout=60, message="GET /recommendations/USER to equal each user's last list on the topic")
        first_lists = first_lists or {u: rec["list_id"] for u, rec in last_lists().items()}
    last = last_lists()
    replaced = [u for u, list_id in first_lists.items() if last[u]["list_id"] != list_id]
    assert len(replaced) > len(first_lists) / 2  # the API followed the users' newer lists
    assert any(rec["items"] for rec in last.values())

    user = next(u for u, rec in sorted(last.items()) if len(rec["items"]) >= 3)
    for url in urls:
        status, body = _get(f"{url}/recommendations/{user}?n=3")
        assert status == 200 and body["items"] == last[user]["items"][:3] and body["list_id"] == last[user]["list_id"]
        assert _get(f"{url}/recommendations/no-such-user") == (404, {"error": "no list for user no-such-user"})
        status, body = _get(f"{url}/recommendations/{user}?n=0")
        assert status == 400 and "n must be a positive integer" in body["error"]
        status, body = _get(f"{url}/healthz")
        assert status == 200 and body["status"] == "ok"
    assert sum(_get(f"{url}/healthz")[1]["users"] for url in urls) == len(expected)  # split, none twice

    routed = 0.0
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'tailcast_api_requests_total{code="200",endpoint="recommendations"}' in text
        routed += sum(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("tailcast_api_requests_routed_total "))
    assert routed > 0  # half the users were asked of the instance that does not hold them

    # catalogue control (#17): the two items the users' lists hold most, one hidden and one deleted mid-stream
    shown = collections.Counter(i["item_id"] for rec in last.values() for i in rec["items"])
    (hidden, _), (deleted, _) = shown.most_common(2)
    _produce(pipeline_env, ITEMS, [(hidden.encode(), orjson.dumps({"item_id": hidden, "title": "x", "hidden": True})),
                          (deleted.encode(), None)])
    scorer = pipeline_env.metrics_url("scorer")
    wait(lambda: read_metric(scorer, "tailcast_scorer_catalog_records_total", 'change="hide"') == 1
         and read_metric(scorer, "tailcast_scorer_catalog_records_total", 'change="delete"') == 1,
         timeout=30, message="the scorer to read the hide and the tombstone")
    read_at = time.time()  # the scorer had applied both by now
    banned |= {hidden, deleted}
    wait(served, timeout=30, message="both api instances to drop the hidden and the deleted item")
    more = generate(n_users=60, n_items=150, n_events=200, seed=4)
    chunk = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in more.events]
    _produce(pipeline_env, EVENTS, chunk)
    expected.update(key.decode() for key, _ in chunk)
    wait(last_lists, timeout=120, message="every user's newest list after the hide")
    wait(served, timeout=60, message="the api to serve the newest lists, without the banned items")
    lists = _lists_with_time(pipeline_env.settings)
    before = [rec for t, rec in lists if t < read_at]
    after = [rec for t, rec in lists if t >= read_at]
    assert any(i["item_id"] in banned for rec in before for i in rec["items"])
    assert len({rec["user_id"] for rec in after}) > len(expected) / 2
    leaked = [rec["list_id"] for rec in after if banned & {i["item_id"] for i in rec["items"]}]
    assert not leaked, f"lists sent after the scorer read the hide hold a banned item: {leaked[:5]}"
    assert [read_metric(url + "/metrics", "tailcast_api_banned_items", "") for url in urls] == [2.0, 2.0]
    # a visible record of the hidden item restores it: the api serves it again in the lists stored before
    assert any(hidden in {i["item_id"] for i in rec["items"]} for rec in last_lists().values())
    _produce(pipeline_env, ITEMS, [(hidden.encode(), orjson.dumps({"item_id": hidden, "title": "x", "hidden": False}))])
    banned.discard(hidden)
    wait(served, timeout=30, message="both api instances to serve the restored item again")

    # one instance stops: the other takes its partitions over, recovering those users from the changelog
    pipeline_env.stop("api1")
    urls.pop()
    wait(lambda: (h := _serving(urls[0])) and h["partitions"] == [0, 1, 2, 3], timeout=90,
         message="the remaining api instance to own every partition")
    wait(served, timeout=60, message="the remaining instance to serve every user's last list")
    assert _get(f"{urls[0]}/healthz")[1]["users"] == len(expected)
