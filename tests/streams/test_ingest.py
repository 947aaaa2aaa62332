"""The ingest agent's batch logic, in memory (no broker)."""

from __future__ import annotations

import base64
import random
import struct

import orjson
import pytest

from online.base import item_hash
from streams.agents.ingest import IngestProcessor, RawRecord, UserState, consumed_of, pseudonymize
from streams.records import Forget, ScoreRequest
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


def test_a_redelivered_batch_asks_again_for_the_states_it_had_written():
    """A worker killed after writing the user states of a batch but before sending its score requests: the
    batch comes again, every event a duplicate. Its users are asked for again, with the events they already
    hold (the scorer learns each event once and drops a request for a state it has published)."""
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store: dict[str, UserState] = {}
    store.update(proc.process([rec("u1", "a", 5), rec("u2", "x", 0)], store.get).states)
    batch = [rec("u1", "b", 6), rec("u1", "c", 7), rec("u3", "z", 0)]
    store.update(proc.process(batch, store.get).states)  # written; the requests never left
    again = proc.process([*batch, rec("u3", "w", 1)], store.get)
    assert again.duplicates == 3 and again.applied == 1 and set(again.states) == {"u3"}
    reqs = {r.user_id: r for r in again.requests}
    assert set(reqs) == {"u1", "u3"}  # u2's state was not redelivered
    assert reqs["u1"].event_count == 3 and [n[0] for n in reqs["u1"].new] == ["b", "c"]
    assert reqs["u3"].event_count == 2 and [n[0] for n in reqs["u3"].new] == ["z", "w"]
    # a redelivered event that is not the newest of the state (a newer one came since) travels without it
    store.update(again.states)
    late = proc.process([rec("u3", "z", 0)], store.get)
    assert [(r.user_id, r.event_count, r.new) for r in late.requests] == [("u3", 2, [])]


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


# ---------------------------------------------------------------------------------------- consumed items
def _hashes(raw: bytes) -> list[int]:
    return list(struct.unpack(f"<{len(raw) // 4}I", raw))


def _round_trip(store: dict[str, UserState]):
    """The table as the worker has it: states go through their bytes between batches."""
    return lambda user: None if user not in store else UserState.from_bytes(store[user].to_bytes())


def test_consumed_covers_the_whole_history_not_only_the_recent_sequence():
    proc = IngestProcessor(partitions=P, history_len=3, max_event_bytes=1000)
    store: dict[str, UserState] = {}
    items = ["a", "b", "b", "c", "a", "d", "e", "f", "g", "b"]  # 10 events > history_len, with repeats
    for offset, item in enumerate(items):
        out = proc.process([rec("u1", item, offset)], _round_trip(store))
        store.update(out.states)
    state = store["u1"]
    assert state.sequence == ["f", "g", "b"]
    # every item once (no compaction needed yet: only the direct repeat was skipped and "a" came twice)
    assert _hashes(state.consumed) == [item_hash(i) for i in ["a", "b", "c", "a", "d", "e", "f", "g", "b"]]
    assert set(_hashes(state.consumed)) == {item_hash(i) for i in items}
    request = out.requests[0]
    assert request.consumed == bytes(state.consumed)
    assert set(request.consumed_hashes().tolist()) == {item_hash(i) for i in items}
    assert set(ScoreRequest.from_bytes(request.to_bytes()).consumed_hashes().tolist()) == set(_hashes(state.consumed))


@pytest.mark.parametrize("seed", range(5))
def test_consumed_keeps_the_most_recent_distinct_items_up_to_the_cap(seed):
    """Against a reference: the cap's most recently consumed distinct items are always all there (so
    excluding them is exact), the entries never pass cap + cap // 8, and right after a compaction each
    item is there once and at most cap of them."""
    cap, history = 8, 3
    proc = IngestProcessor(partitions=P, history_len=history, max_event_bytes=1000, consumed_max=cap)
    rng = random.Random(seed)
    store: dict[str, UserState] = {}
    last_seen: dict[str, int] = {}  # reference: item -> offset of its last consumption
    offset, previous, compacted = 0, None, 0
    for _ in range(80):
        batch, appended = [], 0
        for _ in range(rng.choice([1, 1, 2, 6])):
            item = f"i{min(rng.randint(0, 30), rng.randint(0, 30))}"  # skewed, so repeats are common
            batch.append(rec("u1", item, offset))
            appended += item != previous
            last_seen[item], offset, previous = offset, offset + 1, item
        before = len(store["u1"].consumed) // 4 if "u1" in store else 0
        out = proc.process(batch, _round_trip(store))
        store.update(out.states)
        entries = _hashes(store["u1"].consumed)
        recent = sorted(last_seen, key=last_seen.get)[-cap:]
        assert {item_hash(i) for i in recent} <= set(entries)
        assert len(entries) <= cap + cap // 8
        assert entries == _hashes(out.requests[0].consumed)
        if len(batch) == 1 and len(entries) < before + appended:  # this event's append was compacted
            compacted += 1
            assert len(set(entries)) == len(entries) <= cap
    assert compacted > 0


def test_compaction_moves_an_item_consumed_again_to_the_newest_end():
    proc = IngestProcessor(partitions=P, history_len=2, max_event_bytes=1000, consumed_max=4)
    store: dict[str, UserState] = {}
    items = ["a", "b", "c", "d", "a", "e"]  # 6 entries > 4 + 4 // 8: compacted when "e" comes
    out = proc.process([rec("u1", item, offset) for offset, item in enumerate(items)], store.get)
    assert _hashes(out.states["u1"].consumed) == [item_hash(i) for i in ["c", "d", "a", "e"]]


def test_states_in_both_older_layouts_get_consumed_from_their_sequence():
    four = UserState.from_bytes(orjson.dumps([["a", "b", "a", "c"], 9, 5.0, [[1, 7]]]))
    five = UserState.from_bytes(orjson.dumps([["a", "b", "a", "c"], 9, 5.0, 1, 7]))
    assert four == five
    assert four.applied == {1: 7} and four.count == 9
    assert _hashes(four.consumed) == [item_hash(i) for i in ["b", "a", "c"]]
    assert UserState.from_bytes(orjson.dumps([[], 0, 0.0, -1, -1])) == UserState()
    # and the worker goes on from there
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    out = proc.process([rec("u1", "d", 8)], {"u1": four}.get)
    assert _hashes(out.states["u1"].consumed) == [item_hash(i) for i in ["b", "a", "c", "d"]]


def test_user_state_round_trips_with_a_full_consumed_set():
    state = UserState(["i1", "i2"], 2500, 7.5, {0: 3, 2: 9}, consumed_of(f"i{j}" for j in range(2000)))
    raw = state.to_bytes()
    assert len(state.consumed) == 8000 and UserState.from_bytes(raw) == state
    assert orjson.loads(raw)[4] == base64.b64encode(state.consumed).decode()


def test_recent_exclusion_sends_no_consumed_items():
    proc = IngestProcessor(partitions=P, history_len=3, max_event_bytes=1000, exclude_consumed="recent")
    out = proc.process([rec("u1", "a", 0), rec("u1", "b", 1)], {}.get)
    assert out.requests[0].consumed == b"" and out.requests[0].consumed_hashes().size == 0
    assert _hashes(out.states["u1"].consumed) == [item_hash("a"), item_hash("b")]  # kept for a switch back to all


@pytest.mark.parametrize("kwargs", [{"consumed_max": 0}, {"exclude_consumed": "some"}])
def test_processor_rejects_bad_consumed_options(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        IngestProcessor(partitions=P, history_len=3, max_event_bytes=1000, **kwargs)


# --- erasure (#17) ----------------------------------------------------------------------------------------

def forget(user, offset, *, partition=None):
    return rec(user, None, offset, partition=partition, value=orjson.dumps({"user_id": user, "control": "forget"}))


def test_a_forget_deletes_the_state_after_the_request_for_the_users_earlier_events():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store = {"u1": UserState(["x"], 1, 5.0, {0: 3}, consumed_of(["x"]))}
    out = proc.process([rec("u1", "a", 4), rec("u2", "c", 0), rec("u1", "b", 5), forget("u1", 6)], store.get, now=9.0)
    assert "u1" not in out.states and out.forgotten == {"u1": 3}  # a tombstone for a state of 3 events
    first, marker, other = out.requests
    assert (first.user_id, first.event_count, [n[0] for n in first.new]) == ("u1", 3, ["a", "b"])
    assert (type(marker), marker.user_id, marker.requested_at) == (Forget, "u1", 9.0)
    assert other.user_id == "u2" and out.applied == 3
    # the erased state is gone: the user's next event starts a new one, offsets included
    del store["u1"]
    again = proc.process([rec("u1", "d", 7)], store.get)
    assert again.states["u1"] == UserState(["d"], 1, 100.0, {partition_for(b"u1", P): 7}, consumed_of(["d"]))


def test_a_user_forgotten_and_back_within_a_batch_is_a_new_user_after_the_marker():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store = {"u1": UserState(["x", "y"], 2, 5.0, {0: 3}, consumed_of(["x", "y"]))}
    out = proc.process([forget("u1", 4), rec("u1", "a", 5), rec("u1", "b", 6), forget("u1", 7), rec("u1", "c", 8)],
                       store.get)
    assert out.forgotten == {"u1": 4}  # the stored state (2 events) and the one made in between (2)
    assert [(type(r).__name__, getattr(r, "event_count", None)) for r in out.requests] == [
        ("Forget", None), ("ScoreRequest", 2), ("Forget", None), ("ScoreRequest", 1)]
    assert out.requests[1].sequence == ["a", "b"] and out.requests[1].consumed == bytes(consumed_of(["a", "b"]))
    assert out.states["u1"].sequence == ["c"] and out.states["u1"].count == 1  # written instead of a tombstone


def test_forgetting_a_user_without_state_still_sends_the_marker():
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    out = proc.process([forget("nobody", 0)], {}.get)
    assert out.forgotten == {"nobody": 0} and [r.user_id for r in out.requests] == ["nobody"] and not out.states


def test_a_redelivered_forget_batch_ends_with_the_same_erasure():
    """A worker killed after the tombstone but before its commit gets the batch again: the events are applied to
    a new state (the old one, with its offsets, is gone) and the forget erases it again."""
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store: dict[str, UserState] = {}
    batch = [rec("u1", "a", 0), forget("u1", 1)]
    first = proc.process(batch, store.get)
    again = proc.process(batch, store.get)
    assert first.forgotten == again.forgotten == {"u1": 1} and not first.states and not again.states
    assert [type(r).__name__ for r in again.requests] == ["ScoreRequest", "Forget"]


@pytest.mark.parametrize("key", [None, "secret"])
def test_a_forget_is_forwarded_like_an_event_and_pseudonymised_once(key):
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000, pseudonymize_key=key)
    user = pseudonymize("alice", key) if key else "alice"
    wrong = (partition_for(user.encode(), P) + 1) % P
    out = proc.process([forget("alice", 12, partition=wrong)], {}.get)
    ((k, value, target),) = out.reroutes
    body = orjson.loads(value)
    assert k == user.encode() and target == partition_for(user.encode(), P) and not out.forgotten
    assert body["user_id"] == user and body["control"] == "forget" and body["props"]["_origin"] == [wrong, 12]
    assert b"alice" not in value or key is None
    # where it lands, the worker erases the user it names (not hashed a second time)
    store = {user: UserState(["x"], 1, 5.0, {target: 0}, consumed_of(["x"]))}
    landed = proc.process([RawRecord("events", target, 40, 100.0, k, value)], store.get)
    assert landed.forgotten == {user: 1} and [r.user_id for r in landed.requests] == [user]


@pytest.mark.parametrize("value,reason", [
    (b'{"user_id": "u1", "control": "erase"}', "unknown_control"),
    (b'{"user_id": "u1", "control": ["forget"]}', "wrong_type"),
    (b'{"control": "forget"}', "missing_field"),
    (b'{"user_id": " ", "control": "forget"}', "empty_id"),
    (b'{"user_id": "u1", "control": "forget", "props": 3}', "wrong_type"),
])
def test_malformed_control_records_are_dead_lettered_with_their_reason(value, reason):
    proc = IngestProcessor(partitions=P, history_len=10, max_event_bytes=1000)
    store = {"u1": UserState(["x"], 1, 5.0, {0: 3}, consumed_of(["x"]))}
    out = proc.process([rec("u1", None, 4, value=value)], store.get)
    assert [r for r, _ in out.dead_letters] == [reason] and not out.forgotten and not out.requests
    assert orjson.loads(out.dead_letters[0][1])["reason"] == reason
