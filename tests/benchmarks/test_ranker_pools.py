"""benchmarks/ranker_pools.py's ablation: a pool as the recommender without a source would have seen it."""

from __future__ import annotations

import numpy as np

from benchmarks.ranker_pools import SOURCES, proposing, replay, select, without


def _pool(proposals: list[list[str]]) -> np.ndarray:
    """One row per candidate: each proposing source's score 0.5, rank 1 and proposed flag 1; dense features 7."""
    n_s = len(SOURCES)
    X = np.full((len(proposals), 3 * n_s + 6), 7.0)
    X[:, : 3 * n_s] = 0.0
    for r, names in enumerate(proposals):
        for name in names:
            i = SOURCES.index(name)
            X[r, [i, n_s + i, 2 * n_s + i]] = (0.5, 1.0, 1.0)
    return X


def test_without_drops_the_rows_only_the_source_proposed_and_zeroes_its_columns():
    X = _pool([["covisit"], ["content"], ["covisit", "content"], ["last"]])
    rows, hit = without(X, 2, ("content",))
    n_s, c = len(SOURCES), SOURCES.index("content")
    assert rows.shape[0] == 3 and hit == 1                     # row 1 (content only) is gone; row 2 is now row 1
    assert not rows[:, [c, n_s + c, 2 * n_s + c]].any()        # content reads "not proposed" everywhere
    assert rows[1, SOURCES.index("covisit")] == 0.5 and (rows[:, 3 * n_s:] == 7.0).all()
    assert without(X, 1, ("content",))[1] == -1                # a click only content proposed is lost
    assert without(X, 3, ())[0] is X                           # nothing left out: the pool as recorded


def test_replay_without_a_source_loses_the_clicks_only_it_proposed():
    rng = np.random.default_rng(0)
    pools = []
    for n in range(60):   # the click is the only row `last` proposes, and only `last`; covisit proposes the rest
        X = _pool([["last"]] + [["covisit"]] * 9)
        X[1:, SOURCES.index("covisit")] = rng.random(9)
        pools.append((X[:5].astype(np.float32), X.astype(np.float32) if n % 3 == 0 else None, 0))
    assert proposing(pools) == ["covisit", "last"]
    full, no_last = replay(pools, "blender"), replay(pools, "blender", left_out=("last",))
    assert full["per_pool"].shape == no_last["per_pool"].shape == (20,)
    assert full["ndcg"] > 0.5 and no_last["ndcg"] == 0.0       # every click was `last`'s alone
    assert replay(pools, "blender", left_out=("covisit",))["ndcg"] == 1.0   # the click is all that is left


def test_select_serves_a_variant_only_once_it_is_ahead_beyond_noise():
    full = np.tile([0.5, 0.0], 200)            # the full ranker alternates hits and misses
    better = full + 0.25                       # this variant is always .25 ahead
    noisy = full + np.tile([0.3, -0.3], 200)   # this one is even on average
    chosen = select(full, {"better": better, "noisy": noisy}, window=50)
    assert chosen[0] == full[0] and chosen[1] == full[1]       # nothing to go by yet
    assert np.array_equal(chosen[2:], better[2:])              # ahead with no spread: chosen from the third pool
    assert np.array_equal(select(full, {"noisy": noisy}, window=50), full)
