"""The feedback blender: learns from the stream itself how to weigh the candidate sources.

Every shown recommendation list is labelled by the user's next event: the shown item that was
consumed next is a positive, the others negatives. A river ``Pipeline(StandardScaler(),
LogisticRegression())`` learns from these labels, one example at a time (prequentially: each
example is first predicted, for the running AUC, then learned).

Choice of model (measured here, 6 sources = 15 features): ``LogisticRegression`` learns in ~14 µs per
example through the scaler pipeline, ``facto.FMClassifier(n_factors=4)`` in ~245 µs; the interactions FM would add
(source x source) barely matter once the rank features are in, so the linear model it is.

Features per (user, candidate), for each source ``s`` of ``sources``:

* ``s``: the source's raw score, squashed by ``sign(v) * log1p(|v|)`` (monotone, so each source's
  ranking and AUC are unchanged, while a decayed popularity count of 10^4 no longer dominates the
  scaler), 0 when the source did not propose the candidate;
* ``s_rr``: reciprocal rank ``1 / (1 + rank)`` of the candidate in that source's list, 0 when absent;

plus ``is_tail`` and ``log_user_events`` (``log1p`` of the user's event count) and their product
``tail_x_log_user_events`` (does a user's history length change how much they take tail items?).

Before ``warmup`` examples (with at least one click and one non-click) have been learned, predictions
are a prior, a weighted reciprocal-rank fusion with the normalised scores as tie-breakers:
``sum_s a_s * (rr_s + 0.1 * v_s / (1 + |v_s|))`` with ``a_s = 0.5`` for the non-personal sources
(``popularity``, ``fresh``) and 1 for the others, passed through a sigmoid (a ranking, not a
calibrated probability).

``auc()`` returns the running ROC AUC (over the last ``auc_window`` examples, exact and scale-free:
``river.metrics.RollingROCAUC``; ``metrics.ROCAUC`` bins scores over [0, 1], which raw source scores
are not) of the blender and of every single source's raw score, on the same examples.

Measured ``learn_one`` cost: 18 µs per feedback example (6 sources, 20k examples, 2-core shared CPU box),
with ``.venv/bin/python -m timeit -s "from online.blender import _bench_setup as s; b, ex = s()" "b.learn_many(ex)"``
(per-example figure = time / 20k).

>>> blender = FeedbackBlender(sources=["covisit", "mf"])
>>> x = blender.features({"covisit": 0.8}, is_tail=True, user_event_count=3)
>>> x["covisit_rr"], x["mf"], x["is_tail"]
(0.0, 0.0, 1.0)
>>> p = blender.predict_many([x, blender.features({"mf": 0.1}, is_tail=False, user_event_count=3)])
>>> bool(p[0] > p[1])
True
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from river import compose, linear_model, metrics, optim, preprocessing

__all__ = ["FeedbackBlender"]

#: Prior weight of the sources that are not personal (the others weigh 1).
_PRIOR_WEIGHTS = {"popularity": 0.5, "fresh": 0.5}


class FeedbackBlender:
    """Online logistic regression over per-source scores, trained by next-event feedback."""

    def __init__(
        self,
        *,
        sources: Sequence[str],
        seed: int = 0,
        l2: float = 1e-4,
        lr: float = 0.02,
        warmup: int = 200,
        auc_window: int = 10_000,
    ) -> None:
        if not sources:
            raise ValueError("sources must name at least one candidate source")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct, got {list(sources)}")
        self.sources = tuple(sources)
        self.seed = int(seed)
        self.l2 = float(l2)
        self.lr = float(lr)
        self.warmup = int(warmup)
        self.auc_window = int(auc_window)
        self.feature_names: tuple[str, ...] = (
            *self.sources,
            *(f"{s}_rr" for s in self.sources),
            "is_tail",
            "log_user_events",
            "tail_x_log_user_events",
        )
        self._rr_name = {s: f"{s}_rr" for s in self.sources}
        self._prior_weights = np.array([_PRIOR_WEIGHTS.get(s, 1.0) for s in self.sources])
        self._scaler = preprocessing.StandardScaler()
        self._lr = linear_model.LogisticRegression(
            optimizer=optim.SGD(self.lr), l2=self.l2, intercept_lr=self.lr
        )
        self._model = compose.Pipeline(self._scaler, self._lr)
        self._aucs = {name: metrics.RollingROCAUC(window_size=self.auc_window) for name in ("blend", *self.sources)}
        self._rng = random.Random(seed)
        self.n_learned = 0
        self.n_clicked = 0

    # ---------------------------------------------------------------- features
    def features(
        self,
        source_scores: Mapping[str, float],
        *,
        is_tail: bool,
        user_event_count: int,
        source_ranks: Mapping[str, int] | None = None,
    ) -> dict[str, float]:
        """The feature dict of one (user, candidate); sources not in ``self.sources`` are ignored."""
        x = dict.fromkeys(self.feature_names, 0.0)
        for s, v in source_scores.items():
            if s in x and s in self._rr_name:
                v = float(v)
                if v - v == 0.0:  # finite
                    x[s] = math.log1p(v) if v >= 0.0 else -math.log1p(-v)
        if source_ranks:
            rr_name = self._rr_name
            for s, r in source_ranks.items():
                name = rr_name.get(s)
                if name is not None:
                    x[name] = 1.0 / (1.0 + r)
        if is_tail:
            log_events = math.log1p(max(0, user_event_count))
            x["is_tail"] = 1.0
            x["log_user_events"] = log_events
            x["tail_x_log_user_events"] = log_events
        else:
            x["log_user_events"] = math.log1p(max(0, user_event_count))
        return x

    # ---------------------------------------------------------------- prediction
    @property
    def warmed_up(self) -> bool:
        return self.n_learned >= self.warmup and 0 < self.n_clicked < self.n_learned

    def _matrix(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        names = self.feature_names
        return np.array([[x.get(f, 0.0) for f in names] for x in xs], dtype=np.float64).reshape(len(xs), len(names))

    def _prior_terms(self, X: np.ndarray) -> np.ndarray:
        """(n, S) per-source prior terms ``a_s * (rr_s + 0.1 * v_s / (1 + |v_s|))``."""
        n_s = len(self.sources)
        scores, rr = X[:, :n_s], X[:, n_s : 2 * n_s]
        return self._prior_weights * (rr + 0.1 * scores / (1.0 + np.abs(scores)))

    def _prior_logits(self, X: np.ndarray) -> np.ndarray:
        return self._prior_terms(X).sum(axis=1)

    def _linear(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The pipeline as arrays: feature means, stds (0 = constant so far), weights, intercept."""
        names = self.feature_names
        means = np.array([self._scaler.means.get(f, 0.0) for f in names])
        stds = np.sqrt(np.array([max(self._scaler.vars.get(f, 0.0), 0.0) for f in names]))
        w = self._lr.weights
        weights = np.array([w.get(f, 0.0) for f in names])
        return means, stds, weights, float(self._lr.intercept)

    def _model_logits(self, X: np.ndarray) -> np.ndarray:
        means, stds, weights, intercept = self._linear()
        z = np.divide(X - means, stds, out=np.zeros_like(X), where=stds > 0)  # (n, F)
        return z @ weights + intercept

    def predict_many(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        """Click probabilities of ``xs`` (the prior's sigmoid before warm-up), float64 (len(xs),).

        Vectorised equivalent of ``pipeline.predict_proba_one`` for each x (one matrix product).
        """
        if not len(xs):
            return np.zeros(0)
        X = self._matrix(xs)
        logits = self._model_logits(X) if self.warmed_up else self._prior_logits(X)
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -35.0, 35.0)))

    def _predict_one(self, x: Mapping[str, float]) -> float:
        """``predict_many([x])[0]`` in plain Python (a 1-row numpy path costs ~20 µs of overhead)."""
        if self.warmed_up:
            means, vars_, w = self._scaler.means, self._scaler.vars, self._lr._weights
            logit = float(self._lr.intercept)
            for f in self.feature_names:
                v = vars_.get(f, 0.0)
                if v > 0:
                    logit += w.get(f, 0.0) * (x.get(f, 0.0) - means.get(f, 0.0)) / math.sqrt(v)
        else:
            logit = 0.0
            for s, a in zip(self.sources, self._prior_weights.tolist()):
                v = x.get(s, 0.0)
                logit += a * (x.get(self._rr_name[s], 0.0) + 0.1 * v / (1.0 + abs(v)))
        logit = min(35.0, max(-35.0, logit))
        return 1.0 / (1.0 + math.exp(-logit))

    def contributions_many(self, xs: Sequence[Mapping[str, float]]) -> np.ndarray:
        """(len(xs), len(sources)): each source's additive share of each logit (its score and rank
        terms), i.e. which source "proposed" a candidate most. Prior phase: the prior's terms."""
        X = self._matrix(xs)
        n_s = len(self.sources)
        if self.warmed_up:
            means, stds, weights, _ = self._linear()
            part = np.divide(X - means, stds, out=np.zeros_like(X), where=stds > 0) * weights
        else:
            return self._prior_terms(X)
        return part[:, :n_s] + part[:, n_s : 2 * n_s]

    def contributions(self, x: Mapping[str, float]) -> dict[str, float]:
        """:meth:`contributions_many` of one ``x``, as ``{source: share}``."""
        row = self.contributions_many([x])[0]
        return {s: float(v) for s, v in zip(self.sources, row.tolist())}

    # ---------------------------------------------------------------- learning
    def learn_one(self, x: Mapping[str, float], clicked: bool) -> None:
        """Prequential step: score ``x`` for the running AUCs, then learn from it."""
        y = bool(clicked)
        p = self._predict_one(x)
        self._aucs["blend"].update(y, p)
        for s in self.sources:
            self._aucs[s].update(y, x.get(s, 0.0))
        self._model.learn_one(dict(x), y)
        self.n_learned += 1
        self.n_clicked += y

    def learn_many(self, examples: Iterable[tuple[Mapping[str, float], bool]]) -> None:
        for x, clicked in examples:
            self.learn_one(x, clicked)

    def learn_shown(
        self, xs: Sequence[Mapping[str, float]], clicked: Sequence[bool], *, max_negatives: int | None = None
    ) -> int:
        """Learn one shown list: every clicked example, and ``max_negatives`` of the others drawn at
        random (``None``: all of them). Subsampling negatives keeps feedback cheap (a list of 10 is
        10 learn steps otherwise) and leaves AUC, a ranking measure, unbiased. Returns examples learned.
        """
        if len(xs) != len(clicked):
            raise ValueError(f"{len(xs)} feature dicts but {len(clicked)} click labels")
        pos = [n for n, c in enumerate(clicked) if c]
        neg = [n for n, c in enumerate(clicked) if not c]
        if max_negatives is not None and len(neg) > max_negatives:
            neg = sorted(self._rng.sample(neg, max_negatives))
        chosen = sorted(pos + neg)
        for n in chosen:
            self.learn_one(xs[n], clicked[n])
        return len(chosen)

    def auc(self) -> dict[str, float]:
        """Running ROC AUC of ``"blend"`` and of each source's raw score, on the same examples."""
        return {name: float(m.get()) for name, m in self._aucs.items()}


def _bench_setup(n_examples: int = 20_000, seed: int = 0):
    """A blender over 6 sources and a synthetic labelled stream, for the timeit figure."""
    rng = np.random.default_rng(seed)
    sources = ["popularity", "covisit", "mf", "content", "fresh", "transformer"]
    blender = FeedbackBlender(sources=sources)
    s = rng.random((n_examples, len(sources)))
    y = rng.random(n_examples) < 1 / (1 + np.exp(-(3 * s[:, 1] + 2 * s[:, 2] - 3)))
    examples = [
        (
            blender.features(dict(zip(sources, row.tolist())), is_tail=bool(n % 3), user_event_count=n % 40),
            bool(label),
        )
        for n, (row, label) in enumerate(zip(s, y))
    ]
    return blender, examples
