from __future__ import annotations

import math

import numpy as np
import pytest

from online.blender import GATE_Z, FeedbackBlender

SOURCES = ["covisit", "mf", "popularity"]


def feedback_stream(n_lists: int = 800, list_len: int = 10, seed: int = 0):
    """Shown lists whose clicks depend on two sources (covisit, mf), not on popularity.

    covisit scores are cosines in [0, 1], mf scores are dot products (any sign), popularity is a
    decayed count that is pure noise here: the blender must learn the scales and the weights.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n_lists):
        cov = rng.random(list_len)
        mf = rng.normal(0.0, 2.0, list_len)
        pop = rng.exponential(50.0, list_len)
        logit = 4.0 * cov + 1.0 * mf - 4.0
        clicked = rng.random(list_len) < 1.0 / (1.0 + np.exp(-logit))
        yield [
            ({"covisit": float(c), "mf": float(m), "popularity": float(p)}, bool(y))
            for c, m, p, y in zip(cov, mf, pop, clicked)
        ]


def test_blender_beats_every_single_source() -> None:
    # AUC over the last 2000 of the 8000 examples: the perceptron takes ~100 of its 250 steps to pass the best
    # source (over all 8000, .826 against mf's .838; the linear ranker it replaced, .863)
    blender = FeedbackBlender(sources=SOURCES, seed=0, auc_window=2000)
    for shown in feedback_stream():
        for scores, clicked in shown:
            x = blender.features(scores, is_tail=False, user_event_count=5)
            blender.learn_one(x, clicked)
    auc = blender.auc()
    assert set(auc) == {"blend", *SOURCES}
    assert auc["popularity"] == pytest.approx(0.5, abs=0.05)
    assert auc["blend"] > max(auc[s] for s in SOURCES) + 0.02, auc
    assert blender.warmed_up and blender.n_learned == 8000


def test_prior_ranks_sensibly_before_learning() -> None:
    blender = FeedbackBlender(sources=SOURCES)
    strong = blender.features({"covisit": 0.9, "mf": 2.0}, is_tail=True, user_event_count=1, source_ranks={"covisit": 0})
    weak = blender.features({"covisit": 0.1}, is_tail=True, user_event_count=1, source_ranks={"covisit": 30})
    none = blender.features({}, is_tail=True, user_event_count=1)
    p = blender.predict_many([weak, none, strong])
    assert p[2] > p[0] > p[1] and ((p > 0) & (p < 1)).all()
    assert not blender.warmed_up


def _learned(seed: int = 0, n_lists: int = 60) -> tuple[FeedbackBlender, list[dict]]:
    blender = FeedbackBlender(sources=SOURCES, seed=seed, warmup=50)
    stream = [pair for shown in feedback_stream(n_lists=n_lists) for pair in shown]
    xs = [blender.features(s, is_tail=bool(n % 2), user_event_count=n % 7) for n, (s, _) in enumerate(stream)]
    for x, (_, y) in zip(xs, stream):
        blender.learn_one(x, y)
    blender.flush()
    return blender, xs


def test_learning_is_deterministic_under_the_seed_and_survives_pickling() -> None:
    import pickle

    a, xs = _learned(seed=0)
    b, _ = _learned(seed=0)
    c, _ = _learned(seed=1)
    assert a.warmed_up
    for pa, pb in zip(a._params(), b._params()):
        assert np.array_equal(pa, pb)
    assert not np.array_equal(a._W1, c._W1)  # another seed, other initial (so learned) weights
    restored = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(restored.predict_many(xs[:40]), a.predict_many(xs[:40]))
    restored.learn_many((x, n % 3 == 0) for n, x in enumerate(xs[:64]))  # learning goes on from the same state
    a.learn_many((x, n % 3 == 0) for n, x in enumerate(xs[:64]))
    np.testing.assert_array_equal(restored.predict_many(xs[:40]), a.predict_many(xs[:40]))


def test_a_pickle_of_the_linear_ranker_does_not_load() -> None:
    import pickle

    old = FeedbackBlender(sources=SOURCES)
    state = old.__dict__.copy()
    for name in ("_W1", "_b1", "_w2", "_b2", "_adam_m", "_adam_v", "_steps", "hidden"):
        del state[name]
    state.update(_w=np.zeros(old.n_features), _b=0.0, l2=1e-4)  # what a blender pickled before #15 held
    old.__dict__ = state
    with pytest.raises(ValueError, match="linear ranker"):
        pickle.loads(pickle.dumps(old))


def test_batch_unknown_starts_at_zero_weight_and_a_blender_pickled_before_it_loads_and_predicts_alike() -> None:
    import pickle

    a, xs = _learned(seed=0)
    at = a.feature_names.index("batch_unknown")
    assert not a._W1[at].any()  # constant 0 so far (no batch model): its weights never moved from 0
    # what a blender pickled before the feature held: its column dropped everywhere
    old = pickle.loads(pickle.dumps(a))
    keep = [n for n in range(a.n_features) if n != at]
    old.feature_names = tuple(old.feature_names[n] for n in keep)
    old._mean, old._var, old._W1 = old._mean[keep], old._var[keep], old._W1[keep]
    old._adam_m[0], old._adam_v[0] = old._adam_m[0][keep], old._adam_v[0][keep]
    restored = pickle.loads(pickle.dumps(old))
    assert restored.feature_names == a.feature_names and restored._W1.shape == a._W1.shape
    np.testing.assert_allclose(restored.predict_many(xs[:40]), a.predict_many(xs[:40]), rtol=1e-12)
    flagged = [{**x, "batch_unknown": 1.0} for x in xs[:64]]
    restored.learn_many((x, n % 3 == 0) for n, x in enumerate(flagged))  # and it learns the new column
    assert restored._W1[at].any()


def test_a_blender_pickled_with_one_row_count_loads_with_that_count_for_every_column() -> None:
    import pickle

    a, xs = _learned(seed=0)
    old = pickle.loads(pickle.dumps(a))
    old._n_seen = 480  # what a blender pickled before per-column counts held: one count for every column
    restored = pickle.loads(pickle.dumps(old))
    np.testing.assert_array_equal(restored._n_seen, np.full(a.n_features, 480.0))
    np.testing.assert_allclose(restored.predict_many(xs[:40]), a.predict_many(xs[:40]), rtol=1e-12)
    restored.learn_many((x, n % 3 == 0) for n, x in enumerate(xs[:64]))
    restored.flush()
    np.testing.assert_array_equal(restored._n_seen, np.full(a.n_features, 544.0))


def test_a_blender_pickled_before_the_source_gate_loads_with_every_source_served() -> None:
    import pickle

    a, xs = _learned(seed=0)
    old = pickle.loads(pickle.dumps(a))
    for name in ("_gain", "_gain_sq", "_n_judged", "_jbuf"):
        delattr(old, name)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.served([0, 10, 100]).all()
    assert {judged["gain"] for judged in restored.gate()["heavy"].values()} == {0.0}
    np.testing.assert_allclose(restored.predict_many(xs[:40]), a.predict_many(xs[:40]), rtol=1e-12)


def test_a_blender_pickled_before_the_gates_standard_error_keeps_its_gate() -> None:
    import pickle

    a, _ = _learned(seed=0)
    old = pickle.loads(pickle.dumps(a))
    old._gain[1] = [-0.001 * (c % 2) for c in range(len(SOURCES))]  # what the mean-only gate left out: odd columns
    old._n_judged[:] = 5000
    del old._gain_sq
    restored = pickle.loads(pickle.dumps(old))
    assert restored.served(10).tolist() == [c % 2 == 0 for c in range(len(SOURCES))]
    assert restored.served([0, 100]).all()


def test_contributions_are_gradient_times_input() -> None:
    blender, xs = _learned()
    X = blender._matrix(xs[:30])
    Z = blender._z(X)
    n_s = len(SOURCES)
    want = np.zeros((len(Z), n_s))
    eps = 1e-6
    for f in range(3 * n_s):  # central differences of the logit in each standardised source feature
        up, down = Z.copy(), Z.copy()
        up[:, f] += eps
        down[:, f] -= eps
        want[:, f % n_s] += Z[:, f] * (blender._net(up) - blender._net(down)) / (2 * eps)
    np.testing.assert_allclose(blender.contributions_matrix(X), want, atol=1e-6)
    assert blender.contributions_matrix(blender._matrix(xs[:5])).shape == (5, n_s)


def test_feature_matrix_equals_the_feature_dicts() -> None:
    blender = FeedbackBlender(sources=SOURCES)
    scores = np.array([[0.5, -3.0, np.inf], [0.0, 2.0, 40.0]])
    ranks = np.array([[1, np.inf, 0], [np.inf, 3, 2]])
    X = blender.feature_matrix(scores, ranks, np.array([True, False]), 9)
    dicts = [
        blender.features({"covisit": 0.5, "mf": -3.0, "popularity": np.inf}, is_tail=True, user_event_count=9,
                         source_ranks={"covisit": 1, "popularity": 0}),
        blender.features({"mf": 2.0, "popularity": 40.0}, is_tail=False, user_event_count=9,
                         source_ranks={"mf": 3, "popularity": 2}),
    ]
    np.testing.assert_allclose(X, blender._matrix(dicts), rtol=1e-12)


def test_mini_batches_are_applied_late_but_counted_at_once() -> None:
    blender = FeedbackBlender(sources=SOURCES, warmup=10, batch_size=32)
    x = blender.features({"mf": 1.0}, is_tail=False, user_event_count=1)
    for n in range(20):
        blender.learn_one(x, n % 2 == 0)
    assert blender.n_learned == 20 and blender.n_clicked == 10
    assert not blender.warmed_up  # nothing applied yet: still the prior
    blender.flush()
    assert blender.warmed_up and blender.auc()["blend"] >= 0.0


def test_features() -> None:
    blender = FeedbackBlender(sources=SOURCES)
    x = blender.features(
        {"covisit": 0.5, "mf": -3.0, "transformer": 9.0, "popularity": float("inf")},
        is_tail=True,
        user_event_count=9,
        source_ranks={"covisit": 1},
    )
    assert list(x) == list(blender.feature_names)
    assert x["covisit"] == pytest.approx(np.log1p(0.5)) and x["mf"] == pytest.approx(-np.log1p(3.0))
    assert x["popularity"] == 0.0 and "transformer" not in x  # non-finite -> 0, unknown source ignored
    assert x["covisit_rr"] == 0.5 and x["mf_rr"] == 0.0
    assert x["is_tail"] == 1.0 and x["log_user_events"] == pytest.approx(np.log(10.0))
    assert x["tail_x_log_user_events"] == x["log_user_events"]


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="distinct"):
        FeedbackBlender(sources=["mf", "mf"])
    with pytest.raises(ValueError, match="at least one"):
        FeedbackBlender(sources=[])


def test_single_source_auc_ranks_unproposed_candidates_last_whatever_the_score_sign() -> None:
    # a source with negative scores (decoder logits) that proposes 3 of 10 shown items; the clicked item is
    # always its best one: alone it ranks well (pooled over lists, so not perfectly), although its scores are
    # below the 0 of "not proposed" (ranking those above its own proposals gave 0.19)
    blender = FeedbackBlender(sources=["vae", "popularity"], seed=0, auc_window=2000)
    rng = np.random.default_rng(1)
    for _ in range(150):
        logits = -5.0 - rng.random(3)
        best = int(np.argmax(logits))
        for n in range(10):
            scores = {"popularity": float(rng.exponential(10.0))}
            ranks = {}
            if n < 3:
                scores["vae"] = float(logits[n])
                ranks["vae"] = int((logits > logits[n]).sum())
            blender.learn_one(blender.features(scores, is_tail=False, user_event_count=3, source_ranks=ranks),
                              n == best)
    assert blender.auc()["vae"] > 0.9


def test_a_source_that_appears_late_starts_at_weight_0_with_its_own_statistics() -> None:
    """A batch model swapped in after warm-up is neither scored by untrained random weights nor averaged in
    with the others: it starts at input weight 0, standardised by the rows since it proposes, and learns."""
    blender = FeedbackBlender(sources=["covisit", "mf", "transformer"], warmup=10)
    rng = np.random.default_rng(0)
    X = np.zeros((256, blender.n_features))
    X[:, 0:2] = rng.random((256, 2))  # covisit and mf scores; the transformer proposes nothing yet
    X[:, 3:5] = rng.random((256, 2))
    X[:, 6:8] = 1.0
    y = X[:, 0] + X[:, 3] > 1.0  # clicks follow covisit
    initial = blender._W1[:9].reshape(3, 3, -1)[:, 2].copy()
    blender.learn_matrix(X, y)
    W = blender._W1[:9].reshape(3, 3, -1)  # (score, rank, proposed) x sources x hidden units
    assert np.array_equal(W[:, 2], initial)  # untrained: its features were constant (standardised to 0)
    late = X[:32].copy()
    late[::2, [2, 5, 8]] = (0.9, 0.5, 1.0)  # the transformer proposes every other candidate, the clicked ones
    blender.learn_matrix(late, [r % 2 == 0 for r in range(32)])
    blender.flush()
    # its statistics are those of these 32 rows alone, not diluted by the 256 from before it proposed
    np.testing.assert_allclose(blender._mean[[2, 5, 8]], [0.45, 0.25, 0.5])
    np.testing.assert_array_equal(blender._n_seen[[2, 8]], [32, 32])
    assert blender._n_seen[0] == 288
    W = blender._W1[:9].reshape(3, 3, -1)
    assert np.abs(W[:, 2]).max() <= 0.0031  # from 0, one Adam step (lr .003)
    assert np.abs(W[:, 2]).sum() > 0
    for _ in range(40):
        blender.learn_matrix(late, [r % 2 == 0 for r in range(32)])
    logits = blender.logits(late)
    assert logits[::2].min() > logits[1::2].max()  # it has learned that its proposals are clicked


def _trusting_the_transformer() -> FeedbackBlender:
    """A ranker that has learned to rank the transformer's proposals first (clicks follow them)."""
    blender = FeedbackBlender(sources=["covisit", "mf", "transformer"], warmup=10)
    rng = np.random.default_rng(0)
    X = np.zeros((256, blender.n_features))
    X[:, 0], X[:, 3], X[:, 6] = rng.random(256), 1.0 / (1.0 + rng.integers(0, 50, 256)), 1.0  # covisit: noise
    by_t = np.arange(256) % 2 == 0
    X[by_t, 2], X[by_t, 5], X[by_t, 8] = rng.random(by_t.sum()) + 0.5, 0.5, 1.0
    for _ in range(30):
        blender.learn_matrix(X, by_t & (rng.random(256) < 0.5))
    blender.flush()
    return blender


def _ndcg_without(blender: FeedbackBlender, X: np.ndarray, hit: int, left_out: list[int], k: int) -> float:
    """The clicked row's NDCG@k with the sources ``left_out`` set to "not proposed", recomputed from scratch."""
    n_s = len(blender.sources)
    X = X.copy()
    for s in left_out:
        X[:, [s, n_s + s, 2 * n_s + s]] = 0.0
    ranked = X[:, 2 * n_s : 3 * n_s].any(axis=1)
    if not ranked[hit]:
        return 0.0
    logits = blender.logits(X)
    rank = int((ranked & (logits > logits[hit] + 1e-5 * max(1.0, abs(logits[hit])))).sum())
    return 1.0 / np.log2(rank + 2.0) if rank < k else 0.0


def _pushing_the_click_down(blender: FeedbackBlender) -> np.ndarray:
    """A pool whose clicked row 0 covisit alone proposed, below 12 rows the transformer alone proposed."""
    X = np.zeros((13, blender.n_features))
    X[0, [0, 3, 6]] = (0.5, 1.0, 1.0)
    X[1:, 2], X[1:, 5], X[1:, 8] = 1.0, 1.0 / np.arange(1, 13), 1.0
    return X


def test_the_gate_leaves_out_a_source_that_pushes_the_click_down_in_that_segment_only() -> None:
    blender = _trusting_the_transformer()
    X = _pushing_the_click_down(blender)
    assert FeedbackBlender(sources=["covisit"]).judge(X[:, [0, 3, 6]], 0, 10, 10).tolist() == [0.0]  # no warm-up
    served = [_ndcg_without(blender, X, 0, [], 10), _ndcg_without(blender, X, 0, [2], 10)]
    assert served == [0.0, 1.0]  # the transformer's 12 rank above the click: without them it is first
    gain = blender.judge(X, 0, user_event_count=10, k=10)
    np.testing.assert_allclose(gain, [0.0, 0.0, -1.0])  # covisit's click is out of the top 10 either way
    assert blender.served(10).all()  # one pool is no evidence: its standard error is not known
    blender.judge(X, 0, user_event_count=10, k=10)
    assert blender.served(10).tolist() == [True, True, False]  # the regular segment (4 to 31 events) only
    assert blender.served([0, 3, 32, 500]).all()
    gain = blender.judge(X, 0, user_event_count=10, k=10)  # now ranked without the transformer
    np.testing.assert_allclose(gain, [1.0, 0.0, -1.0])  # covisit alone proposed the click, first
    regular = blender.gate()["regular"]
    assert regular["transformer"]["gain"] == -1.0 and regular["transformer"]["se"] == 0.0
    assert not regular["transformer"]["served"] and regular["covisit"]["served"] and regular["mf"]["served"]
    assert set(blender.gate()) == {"new", "regular", "heavy"}


def test_the_gate_leaves_a_source_out_only_when_its_gain_is_negative_beyond_two_standard_errors() -> None:
    blender = _trusting_the_transformer()
    hurts = _pushing_the_click_down(blender)
    helps = hurts.copy()  # the click is the transformer's, ranked first; without it, not in the list at all
    helps[0, [0, 3, 6]], helps[0, [2, 5, 8]] = 0.0, (1.5, 1.0, 1.0)
    helps[1:, [2, 5, 8]], helps[1:, [0, 3, 6]] = 0.0, hurts[1:, [2, 5, 8]]
    gains = []
    for n in range(40):  # the transformer costs the click in three pools of four and wins it in the fourth
        gains.append(blender.judge(helps if n % 4 == 3 else hurts, 0, user_event_count=10, k=10)[2])
        mean, se = np.mean(gains), np.std(gains, ddof=1) / np.sqrt(len(gains)) if n else np.inf
        judged = blender.gate()["regular"]["transformer"]
        assert math.isclose(judged["gain"], mean, abs_tol=1e-12) and math.isclose(judged["se"], se, rel_tol=1e-9)
        assert judged["served"] == (mean + GATE_Z * se >= 0.0)
        if n == 7:
            assert judged["served"]  # mean -.5, but within two standard errors of 0 after 8 pools
    assert sorted(set(gains)) == [-1.0, 1.0] and not blender.served(10)[2]


def _leave_out(blender: FeedbackBlender, segment: int, col: int) -> None:
    """The gate's state after many pools in which the source lost the click every time."""
    blender._gain[segment, col], blender._gain_sq[segment, col], blender._n_judged[segment] = -1.0, 1.0, 10**6


def test_the_gates_gains_are_those_of_the_pool_ranked_again_without_each_source() -> None:
    blender = _trusting_the_transformer()
    rng = np.random.default_rng(1)
    n_s, moved = 3, 0
    for trial in range(20):
        n = 40
        X = np.zeros((n, blender.n_features))
        proposed = rng.random((n, n_s)) < 0.4
        proposed[rng.integers(0, n), rng.integers(0, n_s)] = True
        X[:, :n_s] = np.where(proposed, rng.random((n, n_s)) * 2, 0.0)
        X[:, n_s : 2 * n_s] = np.where(proposed, 1.0 / (1.0 + rng.integers(0, 50, (n, n_s))), 0.0)
        X[:, 2 * n_s : 3 * n_s] = proposed
        X[:, -3] = rng.random(n) * 3  # log_popularity
        hit = int(np.flatnonzero(proposed.any(axis=1))[0])
        if trial == 10:  # from here on the transformer is left out of the segment, and toggled back on
            _leave_out(blender, blender.segment(5), 2)
        left_out = [s for s in range(n_s) if not blender.served(5)[s]]
        base = _ndcg_without(blender, X, hit, left_out, 10)
        expected = []
        for s in range(n_s):
            if s in left_out:
                expected.append(_ndcg_without(blender, X, hit, [o for o in left_out if o != s], 10) - base)
            else:
                expected.append(base - _ndcg_without(blender, X, hit, [*left_out, s], 10))
        np.testing.assert_allclose(blender.judge(X, hit, user_event_count=5, k=10), expected, atol=1e-12,
                                   err_msg=f"trial {trial}")
        moved += any(expected)
    assert moved >= 10 and not blender.served(5)[2]
