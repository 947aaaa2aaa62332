"""``tailcast api`` on the embedded broker: two instances beside a worker and a scorer split the users, and a
plain HTTP client reading either instance gets every user's last list on the topic, a 404 for an unknown
user, a 400 for a bad ``n``, and /healthz; when one instance stops, the other serves every user."""

from __future__ import annotations

import asyncio
import collections
import urllib.error
import urllib.request

import orjson
import pytest

from online.synthetic import generate
from streams.broker import free_port
from streams.topics import EVENTS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration


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

    def mismatches(last: dict) -> list[str]:
        wrong = []
        for n, (user, rec) in enumerate(sorted(last.items())):
            status, body = _get(f"{urls[n % len(urls)]}/recommendations/{user}?n=50")  # from every side
            age = body.pop("age_s", None)
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
        kio.produce(EVENTS, chunk)
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

    # one instance stops: the other takes its partitions over, recovering those users from the changelog
    pipeline_env.stop("api1")
    urls.pop()
    wait(lambda: (h := _serving(urls[0])) and h["partitions"] == [0, 1, 2, 3], timeout=90,
         message="the remaining api instance to own every partition")
    wait(served, timeout=60, message="the remaining instance to serve every user's last list")
    assert _get(f"{urls[0]}/healthz")[1]["users"] == len(expected)
