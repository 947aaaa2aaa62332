from __future__ import annotations

import math

import numpy as np
import pytest

from online.popularity import DecayedPopularity


def feed(model: DecayedPopularity, counts: list[int]) -> None:
    """Item ``i{n}`` gets ``counts[n]`` events, interleaved, at ts 0, 1, 2, ..."""
    left = list(counts)
    ts = 0.0
    while any(left):
        for n, c in enumerate(left):
            if c:
                model.learn_one("u", f"i{n}", ts, ())
                left[n] -= 1
                ts += 1.0


def test_decay_arithmetic() -> None:
    pop = DecayedPopularity(half_life_s=10.0)
    pop.learn_one("u", "a", 0.0, ())
    pop.learn_one("u", "a", 10.0, ())
    pop.learn_one("u", "b", 10.0, ())
    np.testing.assert_allclose(pop.score("u", (), ["a", "b", "zz"]), [1.5, 1.0, 0.0])  # 0.5 + 1; at latest ts
    assert [c.item for c in pop.recommend("u", (), 2)] == ["a", "b"]
    pop.learn_one("u", "c", 20.0, ())
    np.testing.assert_allclose(pop.score("u", (), ["a", "b"]), [0.75, 0.5])
    pop.learn_one("u", "c", 30.0, ())
    np.testing.assert_allclose(pop.score("u", (), ["b"]), [0.25])


def test_decay_rebases_over_long_streams() -> None:
    pop = DecayedPopularity(half_life_s=1.0)
    pop.learn_one("u", "old", 0.0, ())
    pop.learn_one("u", "new", 5000.0, ())  # 5000 half-lives later: 2**5000 would overflow
    pop.learn_one("u", "new", 5000.0, ())
    np.testing.assert_allclose(pop.score("u", (), ["old", "new"]), [0.0, 2.0])  # finite
    assert [c.item for c in pop.recommend("u", (), 2)] == ["new", "old"]


def test_head_tail_split_on_fixture() -> None:
    counts = [50, 30, 10, 5, 3, 1, 1]  # 7 active items; floor(0.2 * 7) = 1 head item
    pop = DecayedPopularity(window_events=1000, head_share=0.2, refresh_every=1)
    feed(pop, counts)
    assert pop.head_items() == frozenset({"i0"})
    assert [pop.is_tail(f"i{n}") for n in range(7)] == [False] + [True] * 6
    assert pop.is_tail("never-seen")
    np.testing.assert_array_equal(pop.tail_mask(["i0", "i1", "zz"]), [False, True, True])
    assert pop.window_count("i1") == 30 and pop._n_active == 7
    assert pop.window_count("i0") == 50 and len(pop._window) == 100

    wider = DecayedPopularity(window_events=1000, head_share=0.3, refresh_every=1)  # floor(2.1) = 2
    feed(wider, counts)
    assert wider.head_items() == frozenset({"i0", "i1"})


def test_head_ties_broken_by_item_id() -> None:
    pop = DecayedPopularity(window_events=100, head_share=0.5, refresh_every=1)
    for item in ["z", "b", "a", "c"]:  # all count 1: the 2 head items are the smallest ids
        pop.learn_one("u", item, 0.0, ())
    assert pop.head_items() == frozenset({"a", "b"})


def test_sliding_window_forgets() -> None:
    pop = DecayedPopularity(window_events=3, head_share=0.4, refresh_every=1)
    for n, item in enumerate("aabcd"):
        pop.learn_one("u", item, float(n), ())
    assert pop.window_count("a") == 0 and len(pop._window) == 3
    assert [i for i in "abcd" if pop.window_count(i)] == ["b", "c", "d"]  # active items
    assert pop.head_items() == frozenset({"b"})  # floor(0.4 * 3) = 1, three-way tie -> smallest id
    assert pop.score("u", (), ["a"])[0] > 0  # the decayed ranking keeps its memory


def test_head_set_refreshes_lazily() -> None:
    pop = DecayedPopularity(window_events=1000, head_share=0.5, refresh_every=100)
    for _ in range(3):
        pop.learn_one("u", "a", 0.0, ())
    pop.learn_one("u", "b", 0.0, ())
    assert pop.head_items() == frozenset({"a"})
    for _ in range(10):
        pop.learn_one("u", "b", 1.0, ())
    assert pop.head_items() == frozenset({"a"})  # cached: fewer than 100 events since the refresh
    for _ in range(100):
        pop.learn_one("u", "b", 2.0, ())
    assert pop.head_items() == frozenset({"b"})


def test_fresh_items_are_recent_and_rare() -> None:
    pop = DecayedPopularity(half_life_s=100.0, window_events=1000, head_share=0.2, refresh_every=1, fresh_max_count=2)
    for n in range(30):
        pop.learn_one("u", "hit", float(n), ())
    for n, item in enumerate(["old-rare", "mid", "mid", "mid", "new-1", "new-2"]):
        pop.learn_one("u", item, 100.0 + n, ())
    idx, scores = pop.fresh_indices(3, pop.item_index.indices(["new-1"]))
    assert [pop.item_index.names[i] for i in idx] == ["new-2", "old-rare"]  # "mid" has 3 events, "hit" is head
    assert ((0 < scores) & (scores <= 1)).all() and scores[0] > scores[1]


def test_memory_is_bounded() -> None:
    pop = DecayedPopularity(window_events=5, max_items=20, refresh_every=1)
    for n in range(200):
        pop.learn_one("u", f"i{n}", float(n), ())
    assert len(pop) <= 20
    assert [i for i in pop.item_index.names if pop.window_count(i)] == [f"i{n}" for n in range(195, 200)]
    assert all(pop.window_count(f"i{n}") == 1 for n in range(195, 200))
    assert [c.item for c in pop.recommend("u", ["i199"], 2)] == ["i198", "i197"]


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="head_share"):
        DecayedPopularity(head_share=1.5)
    with pytest.raises(ValueError, match="half_life_s"):
        DecayedPopularity(half_life_s=0.0)


def test_recommend_excludes_history_and_exclude() -> None:
    pop = DecayedPopularity()
    feed(pop, [5, 4, 3, 2, 1])
    recs = pop.recommend("u", ["i0"], 3, exclude={"i2"})
    assert [c.item for c in recs] == ["i1", "i3", "i4"]
    assert all(c.source == "popularity" and c.reason() == "popular now" for c in recs)
    assert math.isfinite(recs[0].score)


def test_fresh_many_equals_fresh_indices_per_user() -> None:
    """The micro-batch scan gives every user what their own fresh_indices call would."""
    rng = np.random.default_rng(0)
    pop = DecayedPopularity(half_life_s=100.0, window_events=400, refresh_every=50, fresh_max_count=3)
    for n in range(3000):
        item = f"i{n // 3}" if rng.random() < 0.3 else f"i{min(int(rng.zipf(1.2)), 900)}"  # a stream of new items
        pop.learn_one("u", item, float(n), ())
    n_items = len(pop)
    bans = [None, np.zeros(0, dtype=np.int64), np.array([-1, -1]),
            *(rng.integers(-1, n_items, int(rng.integers(1, 60))) for _ in range(20)),
            np.arange(n_items - 40, n_items)]  # bans most of the freshest
    for k in (0, 1, 10, 25):
        many = pop.fresh_many(k, bans)
        for ban, (idx, scores) in zip(bans, many):
            one_idx, one_scores = pop.fresh_indices(k, ban)
            assert idx.tolist() == one_idx.tolist() and scores.tolist() == one_scores.tolist()
            assert idx.dtype == one_idx.dtype and scores.dtype == one_scores.dtype


@pytest.mark.parametrize("k", [0, 1, 10, 1500])
def test_top_many_equals_top_indices_per_user(k: int) -> None:
    rng = np.random.default_rng(1)
    pop = DecayedPopularity(half_life_s=50.0, refresh_every=100)
    for n in range(4000):
        pop.learn_one("u", f"i{min(int(rng.zipf(1.1)), 1800)}", float(n), ())
    n_items = len(pop)
    bans = [None, np.array([-1]), *(rng.integers(-1, n_items, int(rng.integers(1, 80))) for _ in range(15))]
    for ban, (idx, scores) in zip(bans, pop.top_many(k, bans)):
        one_idx, one_scores = pop.top_indices(k, ban)
        assert idx.tolist() == one_idx.tolist() and scores.tolist() == one_scores.tolist()


def test_ranking_is_current_between_head_refreshes(monkeypatch) -> None:
    """The popular items are ranked by their decayed counts now, not as of the last head refresh (every
    ``refresh_every`` events): a newly trending item is proposed at once, in the order of ranking every item, ties
    included (after a quiet spell every count is nearly 0 and ties go by index, over the whole catalogue). A small
    cache, so that most items lie outside it; short half-lives rebase the clock."""
    from online import popularity
    from online.base import top_k

    monkeypatch.setattr(popularity, "_CACHE_TOP", 60)
    for half_life in (5.0, 500.0):
        rng = np.random.default_rng(7)
        pop = DecayedPopularity(half_life_s=half_life, refresh_every=1000, window_events=5000)
        ts = 0.0
        for n in range(6000):
            ts += float(rng.exponential(1.0)) + (4000.0 if n in (2000, 4500) else 0.0)  # quiet spells
            trending = n > 3000 and n % 3 == 0  # items 1500+ trend late, while the head is cached
            item = f"i{1500 + int(rng.integers(0, 40))}" if trending else f"i{min(int(rng.zipf(1.2)), 1400)}"
            pop.learn_one("u", item, ts, ())
            if n % 7 == 0 or n == 5999:
                names = list(pop.item_index.names)
                stored = np.array(pop._score)  # a copy: the counts in the clock's frame, as the model ranks them
                for k in (1, 10, 30):
                    want = [names[i] for i in top_k(stored, k).tolist()]
                    assert [c.item for c in pop.recommend("u", (), k)] == want, (half_life, n, k)
