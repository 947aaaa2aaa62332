from __future__ import annotations

import numpy as np
import pytest

from online.blender import FeedbackBlender

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
    blender = FeedbackBlender(sources=SOURCES, seed=0)
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


def test_one_example_batches_equal_the_river_pipeline() -> None:
    """With batch_size=1 and SGD the numpy learner is river's Pipeline(StandardScaler(), LogisticRegression(SGD))."""
    from river import compose, linear_model, optim, preprocessing

    blender = FeedbackBlender(sources=SOURCES, warmup=50, batch_size=1, z_clip=float("inf"))
    river_model = compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.SGD(blender.lr), l2=blender.l2, intercept_lr=blender.lr),
    )
    stream = [pair for shown in feedback_stream(n_lists=30) for pair in shown]
    xs = [blender.features(s, is_tail=bool(n % 2), user_event_count=n % 7) for n, (s, _) in enumerate(stream)]
    for x, (_, y) in zip(xs, stream):
        blender.learn_one(x, y)
        river_model.learn_one(dict(x), y)
    assert blender.warmed_up
    expected = [river_model.predict_proba_one(x)[True] for x in xs[:40]]
    np.testing.assert_allclose(blender.predict_many(xs[:40]), expected, rtol=1e-9)
    np.testing.assert_allclose(blender.predict_matrix(blender._matrix(xs[:40])), expected, rtol=1e-9)
    contrib = blender.contributions_many(xs[:5])
    assert contrib.shape == (5, len(SOURCES)) and np.isfinite(contrib).all()


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


def test_a_source_that_appears_late_starts_with_the_mean_weights_of_the_others() -> None:
    """A batch model swapped in after warm-up is not stuck at weight 0 (it would be credited nothing)."""
    blender = FeedbackBlender(sources=["covisit", "mf", "transformer"], warmup=10)
    rng = np.random.default_rng(0)
    X = np.zeros((256, blender.n_features))
    X[:, 0:2] = rng.random((256, 2))  # covisit and mf scores; the transformer proposes nothing yet
    X[:, 3:5] = rng.random((256, 2))
    X[:, 6:8] = 1.0
    y = X[:, 0] + X[:, 3] > 1.0  # clicks follow covisit
    blender.learn_matrix(X, y)
    w = blender._w[:9].reshape(3, 3)
    assert np.all(w[:, 2] == 0.0) and np.abs(w[:, :2]).sum() > 0
    before = w[:, :2].mean(axis=1)
    late = X[:1].copy()
    late[0, [2, 5, 8]] = (0.9, 0.5, 1.0)  # the transformer proposes
    blender.learn_matrix(late, [False])
    blender.flush()
    w = blender._w[:9].reshape(3, 3)
    np.testing.assert_allclose(w[:, 2], before, atol=0.05)  # the others' mean, moved by one small step
    assert np.abs(w[:, 2]).sum() > 0
