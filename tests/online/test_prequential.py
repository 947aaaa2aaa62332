"""Prequential pairing by user_event_count and HR@K / NDCG@K (docs/design.md §3, §4)."""

from __future__ import annotations

import json
import math
import random

import pytest

from online.metrics import gain
from online.prequential import ArmMetrics, Outcome, PrequentialMetrics, PrequentialPairer, hit_rank

RECORD_KEYS = {
    "window_end", "window_events", "arm", "tail_share", "coverage", "gini", "aplt", "novelty",
    "hr", "ndcg", "tail_hr", "hr_by_bucket", "k",
}


def stored_lists(p: PrequentialPairer) -> int:
    """The recommendation lists ``p`` holds (its memory)."""
    return sum(len(st.recs) for st in p._users.values())


def brief(outcomes):
    return [(o.user, o.event_index, o.pairing, o.rank, o.rec_count, o.arm) for o in outcomes]


# -------------------------------------------------------------------------------------- hit_rank


def test_hit_rank():
    assert hit_rank(["a", "b", "c"], "a") == 0
    assert hit_rank(("a", "b", "c"), "c") == 2
    assert hit_rank(["a"], "z") is None
    assert hit_rank([], "z") is None


# ------------------------------------------------------------------------------------- pairing


def test_rec_before_event_resolves_immediately_exact():
    p = PrequentialPairer()
    assert p.observe_recommendation("u", 3, ["a", "b", "c"], "A") == []
    assert brief(p.observe_event("u", "c", 4)) == [("u", 4, "exact", 2, 3, "A")]
    assert p.pending == 0


def test_event_before_rec_waits_then_exact():
    p = PrequentialPairer()
    assert p.observe_event("u", "b", 4) == []  # needs a list with count >= 3
    assert p.pending == 1
    assert p.observe_recommendation("u", 2, ["b"], "A") == []  # count 2 < 3: an exact list may still come
    assert brief(p.observe_recommendation("u", 3, ["x", "b"], "A")) == [("u", 4, "exact", 1, 3, "A")]
    assert p.pending == 0


def test_skipped_count_pairs_stale_with_latest_preceding_list():
    p = PrequentialPairer()
    p.observe_recommendation("u", 1, ["a"], "A")
    p.observe_recommendation("u", 2, ["b", "z"], "A")
    assert p.observe_event("u", "z", 5) == []  # needs count 4; 3 and 4 skipped
    # count 5 proves 3 and 4 were coalesced away: pair with list 2 (the latest <= 4)
    assert brief(p.observe_recommendation("u", 5, ["z"], "A")) == [("u", 5, "stale", 1, 2, "A")]


def test_first_event_is_none_and_charged_to_the_users_arm():
    p = PrequentialPairer()
    assert p.observe_event("u", "a", 1) == []  # count 0 could exist: wait for a list with count >= 0
    out = p.observe_recommendation("u", 1, ["a"], "B")
    assert brief(out) == [("u", 1, "none", None, None, "B")]
    assert out[0].prior_events == 0
    # a cold-start list (count 0) pairs exactly with event 1
    p.observe_recommendation("v", 0, ["q", "a"], "A")
    assert brief(p.observe_event("v", "a", 1)) == [("v", 1, "exact", 1, 0, "A")]


def test_none_when_all_lists_are_newer_than_the_event():
    p = PrequentialPairer()
    p.observe_event("u", "a", 1)
    p.observe_event("u", "b", 2)
    p.observe_event("u", "c", 3)
    # the first list the user got reflects 3 events: events 1..3 had nothing before them
    out = p.observe_recommendation("u", 3, ["d"], "A")
    assert brief(out) == [("u", j, "none", None, None, "A") for j in (1, 2, 3)]
    assert [o.prior_events for o in out] == [0, 1, 2]


def test_flush_resolves_pending_with_what_is_known():
    p = PrequentialPairer()
    p.observe_recommendation("u", 2, ["a", "b"], "A")
    p.observe_event("u", "b", 5)  # needs 4; never comes
    p.observe_event("w", "x", 1)  # user never served: arm None
    assert p.pending == 2
    out = sorted(p.flush(), key=lambda o: o.user)
    assert brief(out) == [("u", 5, "stale", 1, 2, "A"), ("w", 1, "none", None, None, None)]
    assert p.pending == 0
    assert p.flush() == []


def test_miss_in_list_has_rank_none():
    p = PrequentialPairer()
    p.observe_recommendation("u", 1, ["a", "b"], "A")
    (o,) = p.observe_event("u", "zz", 2)
    assert (o.pairing, o.rank, o.hit(10), gain(o.rank, 10)) == ("exact", None, False, 0.0)


def test_late_recommendation_is_dropped_and_counted():
    p = PrequentialPairer()
    p.observe_recommendation("u", 5, ["a"], "A")
    assert p.observe_recommendation("u", 3, ["b"], "A") == []
    assert p.late_recommendations == 1
    assert brief(p.observe_event("u", "a", 6)) == [("u", 6, "exact", 0, 5, "A")]


def test_duplicate_count_uses_latest_list_known_at_resolution():
    p = PrequentialPairer()
    p.observe_recommendation("u", 1, ["a"], "A")
    p.observe_recommendation("u", 1, ["b"], "A")
    assert brief(p.observe_event("u", "b", 2)) == [("u", 2, "exact", 0, 1, "A")]


def test_out_of_order_events_are_paired_and_kept_sorted():
    p = PrequentialPairer()
    p.observe_event("u", "c", 3)
    p.observe_event("u", "b", 2)
    out = p.observe_recommendation("u", 2, ["b", "c"], "A")
    # event 2 needs count 1 (2 >= 1: resolved, latest <= 1: none); event 3 needs 2: exact
    assert brief(out) == [("u", 2, "none", None, None, "A"), ("u", 3, "exact", 1, 2, "A")]


def test_pending_cap_evicts_oldest_as_none():
    p = PrequentialPairer(max_pending_per_user=2)
    p.observe_recommendation("u", 1, ["a"], "A")
    assert p.observe_event("u", "a", 3) == []
    assert p.observe_event("u", "a", 4) == []
    out = p.observe_event("u", "a", 5)  # third pending: event 3 given up
    assert brief(out) == [("u", 3, "none", None, None, "A")]
    assert (p.evicted_events, p.pending) == (1, 2)


def test_user_cap_evicts_least_recently_touched_user():
    p = PrequentialPairer(max_users=2)
    p.observe_event("u1", "a", 2)
    p.observe_event("u2", "a", 2)
    p.observe_event("u1", "b", 3)  # touch u1: u2 is now the least recent
    out = p.observe_event("u3", "a", 1)
    assert brief(out) == [("u2", 2, "none", None, None, None)]
    assert (p.evicted_users, p.evicted_events, len(p._users)) == (1, 1, 2)


def test_only_needed_lists_are_kept():
    p = PrequentialPairer()
    for j in range(1, 200):
        p.observe_event("u", "a", j)
        p.observe_recommendation("u", j, ["a"], "A")
    assert stored_lists(p) == 1  # only the latest list can still pair with a future event
    # recommendations ahead of events (the rec topic consumed first) are kept until used
    q = PrequentialPairer()
    for c in range(1, 11):
        q.observe_recommendation("u", c, [f"i{c}"], "A")
    assert stored_lists(q) == 10
    for j in range(1, 12):
        q.observe_event("u", f"i{j - 1}", j)
    assert stored_lists(q) == 1
    assert q.lost_pairings == 0


def test_list_cap_and_lost_pairing_counter():
    p = PrequentialPairer(max_recs_per_user=3)
    for c in range(1, 7):
        p.observe_recommendation("u", c, [f"i{c}"], "A")
    assert stored_lists(p) == 3  # lists 4, 5, 6
    (o,) = p.observe_event("u", "i2", 3)  # its list (2) was dropped
    assert (o.pairing, p.lost_pairings) == ("none", 1)
    (o,) = p.observe_event("u", "i4", 5)
    assert (o.pairing, o.rank) == ("exact", 0)


def test_pairer_validates():
    p = PrequentialPairer()
    with pytest.raises(ValueError, match="event_index"):
        p.observe_event("u", "a", 0)
    with pytest.raises(ValueError, match="user_event_count"):
        p.observe_recommendation("u", -1, ["a"], "A")
    with pytest.raises(TypeError):
        p.observe_recommendation("u", 1, "abc", "A")
    with pytest.raises(ValueError):
        PrequentialPairer(max_users=0)


# ------------------------------------------------------------- streaming == offline, randomized


def _random_history(rng, n_users=40, n_items=30):
    """Per user: events 1..n (items), lists for a random strictly increasing subset of counts."""
    users = {}
    for u in range(n_users):
        user = f"u{u}"
        n = rng.randint(1, 25)
        events = [f"i{min(int(rng.expovariate(0.15)), n_items - 1)}" for _ in range(n)]
        arm = rng.choice(["A", "B"])
        recs = []
        for c in range(0, n + 1):
            if rng.random() < (0.1 if c == 0 else 0.55):  # most counts skipped now and then
                items = rng.sample([f"i{x}" for x in range(n_items)], 6)
                if c < n and rng.random() < 0.5:  # plant the next item somewhere
                    items[rng.randrange(6)] = events[c]
                    items = list(dict.fromkeys(items))
                recs.append((c, items))
        users[user] = (events, recs, arm if recs else None)
    return users


def _offline(users):
    """Sort everything, pair by count: the latest list with count <= j-1."""
    expected = {}
    for user, (events, recs, arm) in users.items():
        for j, item in enumerate(events, start=1):
            before = [(c, items) for c, items in recs if c <= j - 1]
            if before:
                c, items = before[-1]
                pairing = "exact" if c == j - 1 else "stale"
                expected[(user, j)] = (item, arm, hit_rank(items, item), pairing, j - 1, c)
            else:
                expected[(user, j)] = (item, arm, None, "none", j - 1, None)
    return expected


def _interleave(rng, users):
    """A random interleaving of both topics that keeps each user's order within each topic."""
    queues = []
    for user, (events, recs, arm) in users.items():
        queues.append([("event", user, item, j) for j, item in enumerate(events, start=1)])
        queues.append([("rec", user, c, items, arm) for c, items in recs])
    queues = [q[::-1] for q in queues if q]
    stream = []
    while queues:
        i = rng.randrange(len(queues))
        stream.append(queues[i].pop())
        if not queues[i]:
            queues.pop(i)
    return stream


def _feed(target, stream):
    out = []
    for msg in stream:
        if msg[0] == "event":
            _, user, item, j = msg
            out += target.observe_event(user, item, j)
        else:
            _, user, c, items, arm = msg
            out += target.observe_recommendation(user, c, items, arm)
    return out + target.flush()


@pytest.mark.parametrize("seed", range(8))
def test_streaming_pairing_equals_offline_under_random_interleaving(seed):
    rng = random.Random(seed)
    users = _random_history(rng)
    expected = _offline(users)
    p = PrequentialPairer()
    out = _feed(p, _interleave(rng, users))
    got = {
        (o.user, o.event_index): (o.item, o.arm, o.rank, o.pairing, o.prior_events, o.rec_count) for o in out
    }
    assert len(out) == len(got) == len(expected)  # every event resolved exactly once
    assert got == expected
    assert p.pending == 0 and p.lost_pairings == 0 and p.evicted_events == 0
    pairings = {v[3] for v in expected.values()}
    assert pairings == {"exact", "stale", "none"}  # the fixture exercises every case
    # and the metrics over the streamed outcomes equal HR/NDCG computed offline
    m = PrequentialMetrics(k=3, window_events=None)
    for o in out:
        m.update(o, is_tail=False)
    ranks = [v[2] for v in expected.values()]
    hr = sum(r is not None and r < 3 for r in ranks) / len(ranks)
    ndcg = sum(1 / math.log2(r + 2) for r in ranks if r is not None and r < 3) / len(ranks)
    assert m.get()["hr"] == pytest.approx(hr) and m.get()["ndcg"] == pytest.approx(ndcg)


def test_streaming_memory_stays_small_when_topics_are_roughly_in_step():
    rng = random.Random(42)
    p = PrequentialPairer()
    peak_lists = peak_pending = run = longest_run = 0
    for j in range(1, 3000):
        p.observe_event("u", "a", j)
        if rng.random() < 0.6:
            p.observe_recommendation("u", j, ["a"], "A")
            run = 0
        else:
            run += 1  # a coalesced (skipped) count: the event waits for the next list
            longest_run = max(longest_run, run)
        peak_lists = max(peak_lists, stored_lists(p))
        peak_pending = max(peak_pending, p.pending)
    assert peak_lists <= 2  # the latest list, plus the one a pending event may still need
    assert peak_pending == longest_run - 1  # r skipped lists in a row leave r - 1 events waiting


# ------------------------------------------------------------------------------------- metrics


def _o(rank, prior, pairing="exact", user="u", item="i"):
    return Outcome(user, item, prior + 1, "A", rank, pairing, prior, None if pairing == "none" else prior)


def test_hr_ndcg_by_hand():
    m = PrequentialMetrics(k=3, window_events=None)
    m.update(_o(0, 1), is_tail=False)  # hit, gain 1
    m.update(_o(2, 1), is_tail=True)  # hit, gain 1/log2(4) = 0.5
    m.update(_o(3, 1), is_tail=True)  # rank 3 outside top-3: miss
    m.update(_o(None, 0, "none"), is_tail=False)  # no list: miss, still evaluated
    r = m.get()
    assert r["hr"] == pytest.approx(2 / 4)
    assert r["ndcg"] == pytest.approx((1 + 0.5) / 4)
    assert r["tail_hr"] == pytest.approx(1 / 2) and r["tail_evaluated"] == 2
    assert (r["evaluated"], r["exact"], r["stale"], r["none"]) == (4, 3, 0, 1)


def test_ndcg_rank_one_is_inverse_log2_of_three():
    m = PrequentialMetrics(k=10).update(_o(1, 3), is_tail=False)
    assert m.get()["ndcg"] == pytest.approx(1 / math.log2(3))


def test_buckets_by_prior_event_count():
    m = PrequentialMetrics(k=10, window_events=None)
    m.update(_o(0, 5), is_tail=False)  # hit, <=5
    m.update(_o(None, 6), is_tail=False)  # miss, 6-20
    m.update(_o(0, 21), is_tail=False)  # hit, >20
    m.update(_o(None, 21), is_tail=False)  # miss, >20
    for prior in (0, 20, 500):  # the buckets' other ends: misses
        m.update(_o(None, prior), is_tail=False)
    r = m.get()
    assert r["hr_by_bucket"] == {"<=5": 0.5, "6-20": 0.0, ">20": pytest.approx(1 / 3)}
    assert r["bucket_counts"] == {"<=5": 2, "6-20": 2, ">20": 3}


def test_empty_metrics_are_zero_with_zero_counts_and_valid_json():
    r = PrequentialMetrics().get()
    assert r["hr"] == r["ndcg"] == r["tail_hr"] == 0.0
    assert r["hr_by_bucket"] == {"<=5": 0.0, "6-20": 0.0, ">20": 0.0}
    assert r["bucket_counts"] == {"<=5": 0, "6-20": 0, ">20": 0}
    assert r["evaluated"] == r["tail_evaluated"] == 0
    json.dumps(r, allow_nan=False)


def test_sliding_window_evicts_oldest_outcomes():
    m = PrequentialMetrics(k=10, window_events=2)
    m.update(_o(0, 1), is_tail=True)  # hit
    m.update(_o(None, 7, "stale"), is_tail=False)  # miss
    assert m.get()["hr"] == 0.5
    m.update(_o(None, 30, "none"), is_tail=False)  # first outcome leaves the window
    r = m.get()
    assert r["hr"] == 0.0 and r["ndcg"] == 0.0 and r["evaluated"] == 2
    assert r["tail_evaluated"] == 0 and r["tail_hr"] == 0.0
    assert r["bucket_counts"] == {"<=5": 0, "6-20": 1, ">20": 1}
    assert (r["exact"], r["stale"], r["none"]) == (0, 1, 1)


def test_sliding_window_matches_recomputation_over_a_long_stream():
    rng = random.Random(9)
    m = PrequentialMetrics(k=5, window_events=37)
    outs = []
    for _ in range(3000):
        rank = rng.choice([None, 0, 1, 2, 3, 4, 5, 8])
        o = _o(rank, rng.randint(0, 40), rng.choice(["exact", "stale"]))
        tail = rng.random() < 0.4
        outs.append((o, tail))
        m.update(o, is_tail=tail)
    last = outs[-37:]
    r = m.get()
    assert r["hr"] == pytest.approx(sum(o.hit(5) for o, _ in last) / 37)
    assert r["ndcg"] == pytest.approx(sum(gain(o.rank, 5) for o, _ in last) / 37, abs=1e-12)
    tail_hits = [o.hit(5) for o, t in last if t]
    assert r["tail_hr"] == pytest.approx(sum(tail_hits) / len(tail_hits))


def test_invalid_buckets_raise():
    with pytest.raises(ValueError, match="contiguous"):
        PrequentialMetrics(buckets=((0, 5, "a"), (7, None, "b")))
    with pytest.raises(ValueError, match="open-ended"):
        PrequentialMetrics(buckets=((0, 5, "a"), (6, 9, "b")))
    with pytest.raises(ValueError):
        PrequentialMetrics(k=0)


# ---------------------------------------------------------------------------------- ArmMetrics


def test_arm_metrics_record_has_exactly_the_design_keys():
    am = ArmMetrics(k=2, window_events=100)
    am.observe_event("u1", "a", 1)
    am.observe_recommendation("u1", 1, ["a", "b", "c"], "A")
    am.observe_event("u1", "b", 2)
    rec = am.record("A", window_end=123.5)
    assert set(rec) == RECORD_KEYS
    assert set(rec["hr_by_bucket"]) == {"<=5", "6-20", ">20"}
    assert (rec["arm"], rec["window_end"], rec["k"], rec["window_events"]) == ("A", 123.5, 2, 2)
    json.dumps(rec, allow_nan=False)
    with pytest.raises(KeyError, match="unknown arm"):
        am.record("nope", 0.0)


def test_arm_metrics_shares_the_event_window_but_not_exposure():
    am = ArmMetrics(k=10, window_events=100, refresh_events=1)
    for j, item in enumerate("aaaaabcdef", start=1):  # 6 active -> head {a}
        am.observe_event("u0", item, j)
    am.observe_recommendation("u1", 0, ["a"], "pop")
    am.observe_recommendation("u2", 0, ["b", "c"], "tail")
    assert am.arms() == ["pop", "tail"]
    pop, tail = am.record("pop", 1.0), am.record("tail", 1.0)
    assert (pop["tail_share"], tail["tail_share"]) == (0.0, 1.0)
    assert (pop["coverage"], tail["coverage"]) == (pytest.approx(1 / 6), pytest.approx(2 / 6))
    assert pop["window_events"] == tail["window_events"] == 10  # one event window, counted once
    # u0's events were never served: scored for no arm
    assert am.unattributed == 0
    assert len(am.flush()) == 10 and am.unattributed == 10
    # tail HR: u2's next event hits a tail item
    out = am.observe_event("u2", "c", 1)
    assert [(o.pairing, o.rank) for o in out] == [("exact", 1)]
    q = am.quality("tail").get()
    assert (q["hr"], q["tail_hr"], q["tail_evaluated"]) == (1.0, 1.0, 1)


def test_arm_metrics_per_arm_quality_equals_offline():
    rng = random.Random(7)
    users = _random_history(rng)
    expected = _offline(users)
    am = ArmMetrics(k=3, window_events=100_000)
    _feed(am, _interleave(rng, users))
    for arm in ("A", "B"):
        ranks = [v[2] for v in expected.values() if v[1] == arm]
        q = am.quality(arm).get()
        assert q["evaluated"] == len(ranks)
        assert q["hr"] == pytest.approx(sum(r is not None and r < 3 for r in ranks) / len(ranks))
    assert am.unattributed == sum(1 for v in expected.values() if v[1] is None)


def test_forget_resolves_the_users_pending_events_and_drops_everything_held_for_them():
    """Erasure (#17): the user's pending events pair with the lists known (as at a flush); afterwards the user
    is new: no event of theirs pairs with a list from before."""
    p = PrequentialPairer()
    p.observe_recommendation("u", 2, ["a", "b"], "A")
    p.observe_event("u", "b", 3)
    p.observe_event("u", "c", 5)  # waits for list 4
    p.observe_recommendation("v", 1, ["x"], "B")
    assert brief(p.forget("u")) == [("u", 5, "stale", None, 2, "A")]  # c is not in list 2: a miss
    assert (len(p._users), p.pending, stored_lists(p)) == (1, 0, 1) and p.forget("u") == []
    assert p.observe_event("u", "a", 3) == [] and p.pending == 1  # list 2 (a hit) is gone: it waits for a list
    metrics = ArmMetrics(k=2, window_events=10)
    metrics.observe_recommendation("u", 1, ["a"], "A")
    metrics.observe_event("u", "z", 3)
    assert [o.pairing for o in metrics.forget("u")] == ["stale"] and len(metrics.pairer._users) == 0
    assert metrics.quality("A").get()["hr"] == 0.0  # the resolved event counts, as a miss
