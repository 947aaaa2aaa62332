"""The feedback blender is river's ``StandardScaler | LogisticRegression(SGD)`` re-implemented in numpy.

online/blender.py says why (river's per-example dict path cost ~10x the scorer's budget) and claims the
same update rules. This checks that claim against river itself: with one example per step and no
clipping, the numpy learner's weights and predictions equal river's on the same stream, once every source
has proposed (a source that proposes for the first time later starts from the others' mean weights,
which river has no notion of).
"""

from __future__ import annotations

import numpy as np
import pytest

from online.blender import FeedbackBlender

river = pytest.importorskip("river")
from river import linear_model, optim, preprocessing  # noqa: E402


def _stream(rng, names, n=400):
    true_w = rng.normal(size=len(names))
    proposed = [n for n, name in enumerate(names) if name.endswith("_in")]
    for step in range(n):
        x = rng.normal(size=len(names)) * rng.uniform(0.5, 4.0, size=len(names)) + rng.normal(size=len(names))
        if step == 0:  # every source proposes in the first example: no late source to adopt (see the module doc)
            x[proposed] = np.abs(x[proposed]) + 0.1
        yield x, bool(rng.random() < 1.0 / (1.0 + np.exp(-(x @ true_w) / 3.0)))


def _learn_and_compare(ours, theirs, rng, intercept) -> None:
    """Feed both learners the same stream, one example a step; weights, intercept (``intercept(model)``
    reads river's) and predictions must agree."""
    names = ours.feature_names
    for x, y in _stream(rng, names):
        ours.learn_matrix(x[None, :], [y])
        theirs.learn_one(dict(zip(names, x.tolist(), strict=True)), y)
    lr_model = theirs["LogisticRegression"]
    river_w = np.array([lr_model.weights.get(n, 0.0) for n in names])
    np.testing.assert_allclose(ours._w, river_w, rtol=1e-6, atol=1e-9)
    assert ours._b == pytest.approx(intercept(lr_model), rel=1e-6, abs=1e-9)
    probe = rng.normal(size=(20, len(names)))
    expected = [theirs.predict_proba_one(dict(zip(names, row.tolist(), strict=True)))[True] for row in probe]
    np.testing.assert_allclose(ours.predict_matrix(probe), expected, rtol=1e-6, atol=1e-9)


def test_numpy_blender_follows_rivers_pipeline_update_for_update():
    rng = np.random.default_rng(7)
    lr, l2 = 0.02, 1e-4
    ours = FeedbackBlender(sources=("covisit", "popularity", "mf"), batch_size=1, z_clip=float("inf"), lr=lr,
                           l2=l2, warmup=0)
    theirs = preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(lr), l2=l2, intercept_lr=lr)
    _learn_and_compare(ours, theirs, rng, lambda m: m.intercept)
