"""The read API without a broker: its answers (``ReadApi``), the latest-list coalescing, and the views on
Faust's web server with the instances' ownership given by hand (routing to the owner included)."""

from __future__ import annotations

import asyncio
import types

import orjson
import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient, TestServer

from streams.agents.api import DEFAULT_N, FORWARDED_HEADER, BadRequest, ReadApi, newest_lists
from streams.agents.ingest import pseudonymize
from streams.app import create_app
from streams.config import load_settings
from streams.records import Recommendation, RecommendedItem


def _rec(user: str, count: int, n_items: int = 12, generated_at: float = 1000.0) -> Recommendation:
    items = [RecommendedItem(f"i{j}", 1.0 - j / 100, "covisit", f"co-visited with i{j + 1}") for j in range(n_items)]
    return Recommendation(user, items, count, "v0001", "tail", 990.0, generated_at, 995.0,
                          Recommendation.make_list_id(user, count, 0), "event")


def test_the_latest_list_in_the_topic_contract_with_its_age():
    rec = _rec("u1", 7)
    api = ReadApi({b"u1": rec.to_bytes()}, clock=lambda: 1004.25)
    status, body = api.recommendations("u1", "3")
    answer = orjson.loads(body)
    assert status == 200
    assert answer.pop("age_s") == 4.25
    expected = rec.to_dict()
    del expected["more"]  # the API serves one list: items, then more when asked for more
    assert answer == {**expected, "items": expected["items"][:3]}
    status, body = api.recommendations("u1", None)
    assert status == 200 and len(orjson.loads(body)["items"]) == DEFAULT_N
    status, body = api.recommendations("u1", "50")  # more than stored: the whole list
    assert status == 200 and orjson.loads(body)["items"] == rec.to_dict()["items"]


def test_hidden_and_deleted_items_are_dropped_from_the_lists_served():
    from streams.agents.catalogue import Catalogue

    catalogue = Catalogue(max_bytes=10_000)
    rec = _rec("u1", 7)  # items i0 .. i11
    api = ReadApi({b"u1": rec.to_bytes()}, banned=catalogue.banned, clock=lambda: 1004.25)

    def served(n="5"):
        status, body = api.recommendations("u1", n)
        assert status == 200
        return [i["item_id"] for i in orjson.loads(body)["items"]]

    assert served() == ["i0", "i1", "i2", "i3", "i4"]
    catalogue.apply(b"i1", b'{"item_id": "i1", "title": "t", "hidden": true}')
    catalogue.apply(b"i3", None)  # deleted
    assert served() == ["i0", "i2", "i4", "i5", "i6"]  # still n items: the stored list is deeper
    assert served("50") == [f"i{j}" for j in range(12) if j not in (1, 3)]
    catalogue.apply(b"i1", b'{"item_id": "i1", "title": "t", "hidden": false}')
    assert served() == ["i0", "i1", "i2", "i4", "i5"]
    # the rest of the list is as published
    body = orjson.loads(api.recommendations("u1", "50")[1])
    assert body["items"][0] == rec.to_dict()["items"][0] and body["list_id"] == rec.list_id


def test_a_stored_list_runs_on_into_more_when_asked_for_more_or_after_a_hide():
    from streams.agents.catalogue import Catalogue

    catalogue = Catalogue(max_bytes=10_000)
    rec = _rec("u1", 7, n_items=30)
    rec.items, rec.more = rec.items[:10], rec.items[10:]  # as the scorer publishes it: k = 10, depth 30
    api = ReadApi({b"u1": rec.to_bytes()}, banned=catalogue.banned, clock=lambda: 1004.25)

    def served(n):
        status, body = api.recommendations("u1", n)
        answer = orjson.loads(body)
        assert status == 200 and "more" not in answer
        return [i["item_id"] for i in answer["items"]]

    assert served(None) == [f"i{j}" for j in range(10)]
    assert served("25") == [f"i{j}" for j in range(25)]
    assert served("100") == [f"i{j}" for j in range(30)]
    catalogue.apply(b"i2", b'{"item_id": "i2", "title": "t", "hidden": true}')
    assert served(None) == [f"i{j}" for j in (0, 1, *range(3, 11))]  # still 10: i10 comes up from more
    body = orjson.loads(api.recommendations("u1", "12")[1])
    assert body["items"][9] == rec.to_dict()["more"][0]  # in the topic's item shape


def test_lists_wait_for_the_catalogue_to_be_read():
    read = asyncio.Event()
    api = ReadApi({b"u1": _rec("u1", 1).to_bytes()}, catalogue_read=read)
    status, body = api.recommendations("u1", "5")
    assert status == 503 and "catalogue" in orjson.loads(body)["error"]
    assert api.healthz(rebalancing=False, partitions=[0])[0] == 503
    assert api.recommendations("u1", "x")[0] == 400  # a bad request is still a bad request
    read.set()
    assert api.recommendations("u1", "5")[0] == 200
    assert api.healthz(rebalancing=False, partitions=[0]) == (200, b'{"status":"ok","users":1,"partitions":[0]}')


def test_unknown_user_is_404_and_bad_n_is_400_in_json():
    api = ReadApi({b"u1": _rec("u1", 1).to_bytes()})
    status, body = api.recommendations("nobody", "5")
    assert status == 404 and "nobody" in orjson.loads(body)["error"]
    for bad in ("0", "-3", "x", "1.5", ""):
        status, body = api.recommendations("u1", bad)
        assert status == 400, bad
        assert orjson.loads(body)["error"].startswith("n must be a positive integer"), bad


def test_pseudonymised_ids_are_looked_up_as_the_worker_writes_them():
    hashed = pseudonymize("alice", "pepper")
    api = ReadApi({hashed.encode(): _rec(hashed, 2).to_bytes()}, pseudonymize_key="pepper")
    status, body = api.recommendations("alice", "2")
    assert status == 200 and orjson.loads(body)["user_id"] == hashed
    assert ReadApi({hashed.encode(): b"{}"}).recommendations("alice", "2")[0] == 404


def test_newest_lists_keeps_the_last_list_per_user_and_counts_unreadable_records():
    values = [_rec("u1", 1).to_bytes(), _rec("u2", 1).to_bytes(), b"not json", _rec("u1", 2).to_bytes(),
              b'{"user_id": "u3"}']
    newest, unreadable = newest_lists((b"ignored", value) for value in values)
    assert newest == {b"u1": values[3], b"u2": values[1]}
    assert unreadable == 2


def test_a_tombstone_is_the_users_newest_record_until_a_later_list():
    """Erasure (#17): the scorer's tombstone (a null value keyed by the user) deletes the stored list; a list
    after it (the user came back) is stored again; a tombstone without a key is unreadable."""
    lists = [(b"u1", _rec("u1", 5).to_bytes()), (b"u2", _rec("u2", 3).to_bytes()), (b"u1", None),
             (b"u2", None), (b"u2", _rec("u2", 1).to_bytes()), (None, None)]
    newest, unreadable = newest_lists(lists)
    assert newest == {b"u1": None, b"u2": lists[4][1]} and unreadable == 1


def test_an_erasure_request_is_the_events_control_record_keyed_by_the_raw_id():
    api = ReadApi({}, pseudonymize_key="secret")
    assert api.erasure(" alice ") == (b"alice", b'{"user_id":"alice","control":"forget"}')  # the worker hashes it
    with pytest.raises(BadRequest, match="empty_id"):
        api.erasure(" ")


def test_healthz_is_503_while_starting_or_rebalancing():
    api = ReadApi({b"u1": b"x", b"u2": b"y"})
    assert api.healthz(rebalancing=False, partitions=[3, 1]) == (200, b'{"status":"ok","users":2,"partitions":[1,3]}')
    assert api.healthz(rebalancing=True, partitions=[])[0] == 503
    assert api.healthz(rebalancing=False, partitions=None) == (503, b'{"status":"starting","users":2,"partitions":[]}')


def test_views_answer_for_owned_users_forward_the_others_once_and_count_requests(tmp_path):
    """The views on Faust's aiohttp app: ownership comes from the router's table metadata (given by hand
    here, from the partition assignor in a running instance); a user of another instance is forwarded to
    it with the forwarding header, and a forwarded request that this instance does not own is refused."""

    async def run():
        settings = load_settings({"TAILCAST_KAFKA": "127.0.0.1:1", "TAILCAST_STATE_DIR": str(tmp_path),
                                  "TAILCAST_PARTITIONS": "4"})
        built = create_app(settings, role="api", partitions={"recommendations": 4})
        app, api, table = built.app, built.parts["api"], built.parts["table"]
        changelog = table.changelog_topic.get_topic_name()
        api.store = {b"u1": _rec("u1", 3).to_bytes()}
        seen, sent = [], []

        async def send(topic, key, value, partition, timestamp, headers):  # the app's producer, not started here
            sent.append((topic, key, value))
            done = asyncio.get_running_loop().create_future()
            done.set_result(types.SimpleNamespace(partition=1, offset=len(sent) - 1))
            return done

        app.producer.send = send

        async def other_instance(request):  # the owner of every partition but u1's
            seen.append((request.path_qs, request.headers.get(FORWARDED_HEADER)))
            return aioweb.json_response({"error": "no list for user u2"}, status=404)

        other_app = aioweb.Application()
        other_app.router.add_get("/recommendations/{user_id}", other_instance)
        async with TestServer(other_app) as other:
            from streams.topics import partition_for

            mine = partition_for(b"u1", 4)
            here, there = str(app.conf.canonical_url), f"http://127.0.0.1:{other.port}"
            app.router.table_metadata = lambda name: {
                here: {changelog: [mine]}, there: {changelog: [p for p in range(4) if p != mine]}}
            assert partition_for(b"u2", 4) != mine  # u2 lives on the other instance
            app.web.init_server()
            async with TestClient(TestServer(app.web.web_app)) as client:
                r = await client.get("/recommendations/u1?n=2")  # the items topic is not read yet
                assert r.status == 503 and "catalogue" in (await r.json())["error"]
                built.parts["catalogue_read"].set()
                built.parts["catalogue"].apply(b"i0", b'{"item_id": "i0", "title": "t", "hidden": true}')
                r = await client.get("/recommendations/u1?n=2")
                assert r.status == 200 and [i["item_id"] for i in (await r.json())["items"]] == ["i1", "i2"]
                r = await client.get("/recommendations/u1?n=zero")
                assert r.status == 400 and "n must be" in (await r.json())["error"]
                r = await client.get("/recommendations/u2?n=4")
                assert r.status == 404 and await r.json() == {"error": "no list for user u2"}
                assert seen == [("/recommendations/u2?n=4", here)]
                r = await client.get("/recommendations/u2", headers={FORWARDED_HEADER: there})
                assert r.status == 503 and "rebalancing" in (await r.json())["error"]
                assert len(seen) == 1  # a forwarded request is never forwarded again
                r = await client.get("/healthz")  # the web server is up, the consumer not yet (CI saw a 500)
                assert r.status == 503 and (await r.json())["status"] == "starting"
                r = await client.get("/metrics")
                assert r.status == 200
                text = await r.text()
                r = await client.delete("/users/alice")  # erasure: the control record on events, any instance
                assert r.status == 202 and await r.json() == {"user_id": "alice", "status": "erasure requested"}
                assert sent == [("events", b"alice", b'{"user_id":"alice","control":"forget"}')]
                r = await client.delete("/users/%20")
                assert r.status == 400 and "empty_id" in (await r.json())["error"] and len(sent) == 1
            await app.http_client.close()
        reg = built.registry
        assert reg.get_sample_value("tailcast_api_requests_total",
                                    {"endpoint": "recommendations", "code": "200"}) == 1
        assert reg.get_sample_value("tailcast_api_requests_total",
                                    {"endpoint": "recommendations", "code": "503"}) == 2
        assert reg.get_sample_value("tailcast_api_requests_total",
                                    {"endpoint": "recommendations", "code": "404"}) == 1
        assert reg.get_sample_value("tailcast_api_requests_routed_total") == 1
        assert reg.get_sample_value("tailcast_api_request_latency_seconds_count", {"endpoint": "recommendations"}) == 5
        assert 'tailcast_api_requests_total{code="400",endpoint="recommendations"} 1.0' in text
        assert reg.get_sample_value("tailcast_api_requests_total", {"endpoint": "users", "code": "202"}) == 1
        assert reg.get_sample_value("tailcast_api_requests_total", {"endpoint": "users", "code": "400"}) == 1

    asyncio.run(run())


@pytest.mark.parametrize("text", ["0", "65536", "http"])
def test_api_port_must_be_a_port(text):
    from streams.config import ConfigError

    with pytest.raises(ConfigError, match="TAILCAST_API_PORT"):
        load_settings({"TAILCAST_API_PORT": text})
