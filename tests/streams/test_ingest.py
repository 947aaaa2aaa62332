"""The ingest agent's batch logic, in memory (no broker)."""

from __future__ import annotations

import orjson

from streams.agents.ingest import IngestProcessor, RawRecord, UserState, pseudonymize
from streams.topics import partition_for

P = 4


def rec(user, item, offset, *, partition=None, value=None, ts=100.0):
    body = value if value is not None else orjson.dumps({"user_id": user, "item_id": item})
    part = partition_for(user.encode(), P) if partition is None else partition
    return RawRecord("events", part, offset, ts, user.encode(), body)


def test_batch_updates_state_once_per_user_and_emits_one_request_each():
    proc = IngestProcessor(partitions=P, history_len=3, max_event_bytes=1000)
    store: dict[str, UserState] = {}
    out = proc.process([rec("u1", "a", 0), rec("u1", "b", 1), rec("u2", "c", 0), rec("u1", "c", 2),
                        rec("u1", "d", 3)], store.get)
    assert out.applied == 5 and not out.dead_letters
    assert out.states["u1"].sequence == ["b", "c", "d"] and out.states["u1"].count == 4  # bounded to 3
    reqs = {r.user_id: r for r in out.requests}
    assert len(out.requests) == 2
    assert reqs["u1"].event_count == 4 and [n[0] for n in reqs["u1"].new] == ["a", "b", "c", "d"]
    # every new event travels, even when there are more than the bounded sequence keeps
    assert reqs["u2"].sequence == ["c"] and reqs["u2"].event_count == 1


def test_redelivered_offsets_are_skipped():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store: dict[str, UserState] = {}
    first = proc.process([rec("u1", "a", 5), rec("u1", "b", 6)], store.get)
    store.update(first.states)
    again = proc.process([rec("u1", "a", 5), rec("u1", "b", 6), rec("u1", "c", 7)], store.get)
    assert again.duplicates == 2 and again.applied == 1
    assert again.states["u1"].count == 3 and again.states["u1"].sequence == ["a", "b", "c"]


def test_bad_events_go_to_dlq_and_the_batch_goes_on():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=100)
    out = proc.process([rec("u1", "a", 0), rec("u1", "", 1, value=b"{oops"), rec("u1", "b", 2)], {}.get)
    assert out.applied == 2 and [r for r, _ in out.dead_letters] == ["not_json"]
    assert orjson.loads(out.dead_letters[0][1])["source"]["offset"] == 1


def test_events_on_the_wrong_partition_are_rerouted_not_applied():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    right = partition_for(b"u1", P)
    out = proc.process([rec("u1", "a", 0, partition=(right + 1) % P)], {}.get)
    assert out.applied == 0 and len(out.reroutes) == 1
    key, value, partition = out.reroutes[0]
    assert key == b"u1" and partition == right and orjson.loads(value)["item_id"] == "a"


def test_a_forward_repeated_after_a_crash_is_applied_once():
    """At-least-once: the forwarding worker dies before committing, so the same record is forwarded twice.
    Each copy lands at a new offset on the user's partition; the origin it carries makes the second a
    duplicate there, while the user's own partition and other origins keep their own positions."""
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    right = partition_for(b"u1", P)
    wrong, other = (right + 1) % P, (right + 2) % P
    raw = [rec("u1", "a", 40, partition=wrong), rec("u1", "b", 41, partition=wrong)]
    first, again = proc.process(raw, {}.get), proc.process(raw, {}.get)  # the redelivered batch
    assert [v for _, v, _ in first.reroutes] == [v for _, v, _ in again.reroutes]
    assert orjson.loads(first.reroutes[0][1])["props"]["_origin"] == [wrong, 40]
    landed = [RawRecord("events", p, off, 1.0, k, v)
              for off, (k, v, p) in enumerate(first.reroutes + again.reroutes, start=100)]
    store: dict[str, UserState] = {}
    out = proc.process([rec("u1", "x", 7)] + landed + [rec("u1", "y", 200, value=orjson.dumps(
        {"user_id": "u1", "item_id": "y", "props": {"_origin": [other, 3]}}))], store.get)
    assert out.applied == 4 and out.duplicates == 2
    assert out.states["u1"].sequence == ["x", "a", "b", "y"]
    assert out.states["u1"].applied == {right: 7, wrong: 41, other: 3}
    store.update(out.states)
    assert proc.process(landed, store.get).duplicates == 4  # and once more, after the state was stored


def test_pseudonymised_ids_never_pass_the_edge():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000, pseudonymize_key="secret")
    hashed = pseudonymize("alice", "secret")
    assert hashed != "alice" and hashed == pseudonymize("alice", "secret") != pseudonymize("alice", "other")
    # first hop: alice's raw event lands somewhere; it is applied only on the hashed id's partition
    out = proc.process([rec("alice", "a", 0, partition=(partition_for(hashed.encode(), P) + 1) % P)], {}.get)
    key, value, partition = out.reroutes[0]
    body = orjson.loads(value)
    assert key == hashed.encode() and body["user_id"] == hashed and body["props"]["_pseudonymized"]
    # second hop: the forwarded record is applied under the hashed id, not hashed twice
    out2 = proc.process([RawRecord("events", partition, 0, 1.0, key, value)], {}.get)
    assert list(out2.states) == [hashed] and out2.requests[0].user_id == hashed
    assert b"alice" not in out2.requests[0].to_bytes()


def test_offset_gaps_count_records_that_never_arrived_per_partition_and_generation():
    from types import SimpleNamespace as M

    from streams.agents.ingest import OffsetGaps

    gaps = OffsetGaps()
    got = lambda *pog: [M(partition=p, offset=o, generation_id=g) for p, o, g in pog]  # noqa: E731
    assert gaps.observe(got((0, 10, 1), (1, 5, 1), (0, 11, 1), (1, 6, 1))) == 0  # contiguous, interleaved
    assert gaps.observe(got((0, 13, 1))) == 1  # 12 never arrived
    assert gaps.observe(got((0, 12, 1), (0, 13, 1), (0, 14, 1))) == 0  # redelivered after a seek: not a gap
    assert gaps.observe(got((1, 9, 1))) == 2  # 7 and 8 on partition 1
    # a new generation (rebalance): the partition may have moved on under another worker
    assert gaps.observe(got((0, 500, 2), (0, 501, 2))) == 0
    assert gaps.last == {0: 501}
