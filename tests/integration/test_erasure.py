"""Erasure (#17) on the embedded broker, pseudonymised: a worker, a scorer and an api instance serve a stream;
a plain HTTP client asks the api to erase one user mid-stream (``DELETE /users/{raw id}``) and ``tailcast
forget`` a second one, while the other users' events keep coming. Then GET answers 404 for both, the last
record of each one's key is a tombstone in the worker's state changelog, on ``recommendations`` and in the api
table's changelog, the worker counted both, and every other user's list still reflects all their events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter

import orjson
import pytest

from online.synthetic import generate
from streams.agents.ingest import pseudonymize
from streams.broker import free_port
from streams.metrics import read_metric
from streams.topics import EVENTS, RECOMMENDATIONS, ensure_topics

pytestmark = pytest.mark.integration

KEY = "erasure-test-key"


def _request(url: str, method: str = "GET") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _healthy(url: str) -> bool:
    try:
        return _request(url + "/healthz")[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False  # not listening yet: Faust starts its web server after table recovery


def _last_records(kio, topic: str, *, decode: bool = True) -> dict[bytes, object]:
    """The last value (None: a tombstone) of each key in ``topic``; a key's records are on one partition."""
    return {key: value for _p, _o, key, value in kio.read_all(topic, decode=decode)}


def test_a_user_erased_mid_stream_is_gone_from_every_store_and_the_others_are_served(pipeline_env, kio, wait):
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    pipeline_env.env["TAILCAST_PSEUDONYMIZE_KEY"] = KEY
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    port = free_port()
    pipeline_env.start("api", TAILCAST_API_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    wait(lambda: _healthy(url), timeout=90, message="the api instance to serve")

    data = generate(n_users=20, n_items=80, n_events=400, seed=5)
    events = [(u, orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]
    expected: Counter = Counter()

    def produce(chunk) -> None:
        kio.produce(EVENTS, [(user.encode(), value) for user, value in chunk])  # raw ids: the worker hashes
        expected.update(user for user, _ in chunk)

    def served(users) -> bool:
        for user in users:
            status, body = _request(f"{url}/recommendations/{user}")
            if status != 200 or body["user_event_count"] != expected[user]:
                return False
        return True

    produce(events[:200])
    wait(lambda: served(expected), timeout=60, message="every user's list for all their events")
    victim, second = sorted(expected, key=lambda u: -expected[u])[:2]
    erased = {pseudonymize(user, KEY).encode() for user in (victim, second)}

    status, body = _request(f"{url}/users/{victim}", method="DELETE")
    assert (status, body) == (202, {"user_id": victim, "status": "erasure requested"})
    others = [(user, value) for user, value in events[200:] if user not in (victim, second)]
    produce(others[:100])  # the stream goes on while the erasures travel
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "forget", second], env=pipeline_env.env,
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and f"erasure of user {second} requested" in cli.stdout, cli.stderr
    produce(others[100:])
    del expected[victim], expected[second]

    for user in (victim, second):
        wait(lambda: _request(f"{url}/recommendations/{user}") == (404, {"error": f"no list for user {user}"}),
             timeout=30, message=f"GET to answer 404 for the erased user {user}")
    wait(lambda: served(expected), timeout=60, message="the other users' lists for all their events")
    assert read_metric(pipeline_env.metrics_url("worker"), "tailcast_worker_users_forgotten_total") == 2

    states = _last_records(kio, "tailcast-worker-user_state-changelog", decode=False)
    assert erased <= set(states) and all(states[key] is None for key in erased)  # last records: tombstones
    users = {u for _ts, u, _i, _e in data.events}
    assert set(states) == {pseudonymize(u, KEY).encode() for u in users}  # raw ids never passed the edge
    lists = _last_records(kio, RECOMMENDATIONS)
    assert all(lists[key] is None for key in erased)  # the scorer's tombstones, after the users' last lists
    assert all(lists[pseudonymize(u, KEY).encode()]["user_event_count"] == n for u, n in expected.items())
    wait(lambda: all(_last_records(kio, "tailcast-api-latest_list-changelog", decode=False).get(key, b"") is None
                     for key in erased),
         timeout=10, message="tombstones as the last records of the users in the api table's changelog")
    stored = _last_records(kio, "tailcast-api-latest_list-changelog", decode=False)
    assert sum(value is not None for value in stored.values()) == len(expected)
    # a downstream reader sees the erasures as tombstones and keeps reading past them
    out = subprocess.run([sys.executable, "-m", "streams.cli", "tail", "--from-beginning", "--idle-timeout", "3"],
                         env=pipeline_env.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = [orjson.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["key"].encode() for r in shown if r.get("tombstone")} == erased
