"""The ranker ("feedback blender"): learns from the stream itself how to weigh the candidate sources.

Examples: each list's candidate pool, labelled by the user's next event (the clicked candidate positive,
random pool candidates negative; :class:`~online.recommender.OnlineRecommender`). The learner is a
one-hidden-layer perceptron (``hidden`` ReLU units) over standardised features, trained by Adam on each
mini-batch's mean log loss, prequentially (each example is predicted, for the running AUC, then learned);
its initial weights are drawn from ``seed`` (torch's ``nn.Linear`` rule). The scaler is river's
``StandardScaler`` (running mean and population variance, updated before the batch is scaled);
standardised features are clipped to ``[-z_clip, z_clip]``, so that a feature nearly constant so far
cannot lock the ranker in. A feature constant so far (a source not proposing yet) starts its running statistics
when it first varies, and a source proposing for the first time starts with input weights 0: it earns its
weight from the pools instead of being averaged in (docs/decisions.md, "A late source starts at weight 0").

Features per (user, candidate), for each source ``s``: ``s`` (the raw score squashed by
``sign(v)·log1p(|v|)``), ``s_rr`` (``1 / (1 + rank)`` in its list) and ``s_in`` (1 when it proposed the
candidate), 0 when it did not; then :data:`N_DENSE` more (:meth:`FeedbackBlender._put_dense`). Before
``warmup`` examples (with both labels) have been learned, predictions are a prior:
``sigmoid(sum_s a_s·(rr_s + 0.1·v_s / (1 + |v_s|)))``, ``a_s`` 0.5 for the non-personal sources, else 1.
Why this learner and these features: docs/decisions.md ("The ranker's learner", "#15 ranker headroom").

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

from online.base import TIE_RTOL, must_be_at_least

__all__ = ["FeedbackBlender", "sigmoid"]

#: Adam's step size (its other constants are torch's defaults: betas .9 / .999, eps 1e-8).
_DEFAULT_LR = 0.003
#: Hidden ReLU units.
_DEFAULT_HIDDEN = 48
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

#: Prior weight of the sources that are not personal (the others weigh 1).
_PRIOR_WEIGHTS = {"popularity": 0.5, "fresh": 0.5}


#: Feature columns after the per-source ones (see :meth:`FeedbackBlender._put_dense`).
N_DENSE = 6
#: The source gate's user segments: the event count at which each starts (new, regular, heavy users).
GATE_SEGMENTS = (0, 4, 32)
#: Labelled pools a source's gain is averaged over, per segment: a plain mean up to this many, then exponential
#: weights (their mean age).
_GAIN_POOLS = 4096
#: A source is left out of a segment only when its mean gain is below zero by more than this many standard errors.
GATE_Z = 2.0
_ZBUF_MAX = 1 << 21  # largest standardised matrix (elements) whose buffer is kept between calls: 16 MB


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35.0, 35.0)))


def _squash(v: np.ndarray) -> np.ndarray:
    """``sign(v) * log1p(|v|)``, 0 where ``v`` is not finite."""
    v = np.where(np.isfinite(v), v, 0.0)
    return np.sign(v) * np.log1p(np.abs(v))


def _blocks(f, X: np.ndarray, bounds: Sequence[int]) -> np.ndarray:
    """(n,) ``f`` of each non-empty block of rows ``X[bounds[i]:bounds[i + 1]]``, one call per block."""
    out = np.empty(X.shape[0])
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            out[a:b] = f(X[a:b])
    return out


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of scores ``s`` for boolean labels ``y`` (average ranks: a tie counts one half)."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return 0.0
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    return float((avg_rank[inv][y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


class FeedbackBlender:
    """An online one-hidden-layer perceptron over per-source scores, trained by next-event feedback."""

    def __init__(
        self,
        *,
        sources: Sequence[str],
        seed: int = 0,
        hidden: int = _DEFAULT_HIDDEN,
        lr: float = _DEFAULT_LR,
        warmup: int = 200,
        auc_window: int = 10_000,
        batch_size: int = 32,
        z_clip: float = 5.0,
    ) -> None:
        if not sources:
            raise ValueError("sources must name at least one candidate source")
        if len(set(sources)) != len(sources):
            raise ValueError(f"sources must be distinct, got {list(sources)}")
        must_be_at_least(1, hidden=hidden, batch_size=batch_size, auc_window=auc_window)
        self.sources, self.seed, self.hidden, self.lr = tuple(sources), int(seed), int(hidden), float(lr)
        self.warmup, self.auc_window, self.batch_size = int(warmup), int(auc_window), int(batch_size)
        self.z_clip = float(z_clip)
        self.feature_names: tuple[str, ...] = (
            *self.sources,
            *(f"{s}_rr" for s in self.sources),
            *(f"{s}_in" for s in self.sources),
            "is_tail",
            "log_user_events",
            "tail_x_log_user_events",
            "log_popularity",
            "tail_x_appetite",
            "batch_unknown",
        )
        n_f = len(self.feature_names)
        self._rr_name = {s: f"{s}_rr" for s in self.sources}
        self._in_name = {s: f"{s}_in" for s in self.sources}
        self._prior_weights = np.array([_PRIOR_WEIGHTS.get(s, 1.0) for s in self.sources])
        # scaler (running mean / population variance)
        self._n_seen = np.zeros(len(self.feature_names))  # rows in each column's statistics
        self._proposing = np.zeros(len(self.sources), dtype=bool)  # sources seen proposing in a learned batch
        # the source gate: per user segment and source, the running NDCG@k gain of serving it (see judge)
        self._gain = np.zeros((len(GATE_SEGMENTS), len(self.sources)))  # running mean
        self._gain_sq = np.zeros_like(self._gain)  # running mean of its square
        self._n_judged = np.zeros(len(GATE_SEGMENTS), dtype=np.int64)  # pools judged
        self._mean = np.zeros(n_f)
        self._var = np.zeros(n_f)
        # the perceptron: logit = relu(z @ W1 + b1) @ w2 + b2, initial weights as torch's nn.Linear draws them,
        # but for batch_unknown's row: it starts at 0 (it is constant until a batch model is served)
        init = np.random.default_rng(self.seed)
        a1, a2 = 1.0 / math.sqrt(n_f - 1), 1.0 / math.sqrt(self.hidden)
        self._W1 = np.vstack([init.uniform(-a1, a1, (n_f - 1, self.hidden)), np.zeros((1, self.hidden))])
        self._b1 = init.uniform(-a1, a1, self.hidden)
        self._w2 = init.uniform(-a2, a2, self.hidden)
        self._b2 = np.array(init.uniform(-a2, a2))
        self._adam_m = [np.zeros_like(p) for p in self._params()]  # Adam's moments, per parameter
        self._adam_v = [np.zeros_like(p) for p in self._params()]
        self._steps = 0
        self._eff: tuple[np.ndarray, np.ndarray] | None = None  # (means, 1 / stds) cache for serving
        self._buf_x: list[tuple[np.ndarray, None]] = []  # (rows, None): the pickled layout of the buffer
        self._buf_y: list[bool] = []
        self._n_buf = 0
        # prequential AUC ring buffer: label, blend prediction, each source's (squashed) score
        self._auc_y = np.zeros(self.auc_window, dtype=bool)
        self._auc_s = np.zeros((self.auc_window, 1 + len(self.sources)))
        self._auc_pos = 0
        self._auc_n = 0
        self._rng = random.Random(seed)
        self._zbuf = np.zeros(0)  # serving scratch of logits_entries, not pickled
        self._jbuf = np.zeros(0)  # the gate's scratch (judge), not pickled
        self.n_learned = 0  # examples received (applied or buffered)
        self.n_clicked = 0
        self._n_applied = 0
        self._n_applied_clicked = 0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_zbuf"] = state["_jbuf"] = np.zeros(0)
        return state

    def __setstate__(self, state: dict) -> None:
        if "_W1" not in state:  # a snapshot (online.snapshot) taken before #15: it does not load, it is not served
            raise ValueError("this FeedbackBlender was pickled with the linear ranker; its weights do not carry "
                             "over to the perceptron")
        if "batch_unknown" not in state["feature_names"]:  # pickled before the feature: it starts as a new one
            state["feature_names"] = (*state["feature_names"], "batch_unknown")
            for key in ("_mean", "_var"):
                state[key] = np.append(state[key], 0.0)
            zero_row = np.zeros((1, state["_W1"].shape[1]))
            state["_W1"] = np.vstack([state["_W1"], zero_row])
            for key in ("_adam_m", "_adam_v"):  # W1's moments come first
                state[key][0] = np.vstack([state[key][0], zero_row])
            state["_buf_x"] = [(np.hstack([x, np.zeros((x.shape[0], 1))]), None) for x, _ in state["_buf_x"]]
            state["_eff"] = None
        state.setdefault("_jbuf", np.zeros(0))
        if "_gain" not in state:  # pickled before the source gate: every source serves until judged
            state["_gain"] = np.zeros((len(GATE_SEGMENTS), len(state["sources"])))
            state["_n_judged"] = np.zeros(len(GATE_SEGMENTS), dtype=np.int64)
        if "_gain_sq" not in state:  # pickled before the standard error: each gate serves as it did
            state["_gain_sq"] = np.square(state["_gain"])
        if np.ndim(state["_n_seen"]) == 0:  # pickled before per-column counts: every column saw every row
            state["_n_seen"] = np.full(len(state["feature_names"]), float(state["_n_seen"]))
        self.__dict__.update(state)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def _params(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self._W1, self._b1, self._w2, self._b2

    def features(
        self,
        source_scores: Mapping[str, float],
        *,
        is_tail: bool,
        user_event_count: int,
        source_ranks: Mapping[str, int] | None = None,
        popularity: float = 0.0,
        appetite: float = 0.0,
        batch_unknown: bool = False,
    ) -> dict[str, float]:
        """The feature dict of one (user, candidate); sources not in ``self.sources`` are ignored."""
        x = dict.fromkeys(self.feature_names, 0.0)
        for s, v in source_scores.items():
            if s in self._rr_name:
                v = float(v)
                if v - v == 0.0:  # finite
                    x[s] = math.log1p(v) if v >= 0.0 else -math.log1p(-v)
                    x[self._in_name[s]] = 1.0
        if source_ranks:
            rr_name = self._rr_name
            for s, r in source_ranks.items():
                name = rr_name.get(s)
                if name is not None:
                    x[name] = 1.0 / (1.0 + r)
                    x[self._in_name[s]] = 1.0
        log_events = math.log1p(max(0, user_event_count))
        x["log_user_events"] = log_events
        x["log_popularity"] = math.log1p(max(0.0, popularity))
        if is_tail:
            x["is_tail"] = 1.0
            x["tail_x_log_user_events"] = log_events
            x["tail_x_appetite"] = float(appetite)
        x["batch_unknown"] = float(bool(batch_unknown))
        return x

    def feature_matrix(
        self,
        scores: np.ndarray,
        ranks: np.ndarray,
        is_tail: np.ndarray,
        user_event_count: int | np.ndarray,
        popularity: float | np.ndarray = 0.0,
        appetite: float | np.ndarray = 0.0,
        batch_unknown: bool | np.ndarray = False,
    ) -> np.ndarray:
        """(n, n_features) float64 feature rows, the vectorised :meth:`features`.

        ``scores``: (n, S) raw scores in ``sources`` order, 0 where a source did not propose the
        candidate; ``ranks``: (n, S) 0-based ranks, ``inf`` where absent; ``is_tail``: (n,) bool;
        ``user_event_count``: one count, or (n,) counts (rows of several users).
        """
        n, n_s = scores.shape
        X = np.empty((n, self.n_features))
        X[:, :n_s] = _squash(scores)
        X[:, n_s : 2 * n_s] = 1.0 / (1.0 + ranks)
        X[:, 2 * n_s : 3 * n_s] = np.isfinite(ranks) | (X[:, :n_s] != 0)
        self._put_dense(X, is_tail, user_event_count, popularity, appetite, batch_unknown)
        return X

    def feature_entries(self, n: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, ranks: np.ndarray,
                        is_tail: np.ndarray, user_event_count: np.ndarray, popularity: float | np.ndarray = 0.0,
                        appetite: float | np.ndarray = 0.0, batch_unknown: bool | np.ndarray = False) -> np.ndarray:
        """:meth:`feature_matrix` (same values) from the proposals as entries: candidate ``rows[e]`` was
        proposed by source ``cols[e]`` (its position in ``sources``) with raw score ``values[e]`` at 0-based
        rank ``ranks[e]``; each (row, source) pair at most once. Only the proposals are transformed."""
        X = np.zeros((n, self.n_features))
        at, _, x = self._entries(rows, cols, values, ranks)
        X.reshape(-1)[at] = x
        self._put_dense(X, is_tail, user_event_count, popularity, appetite, batch_unknown)
        return X

    def _entries(self, rows, cols, values, ranks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The proposals' score, rank and proposed features: (flat positions in an (n, n_features) matrix,
        feature columns, values)."""
        n_s = len(self.sources)
        at = rows * self.n_features + cols  # (m,) flat position of each proposal's score feature
        return (np.concatenate([at, at + n_s, at + 2 * n_s]), np.concatenate([cols, cols + n_s, cols + 2 * n_s]),
                np.concatenate([_squash(values), 1.0 / (1.0 + ranks), np.ones(values.size)]))

    @staticmethod
    def _put_dense(X: np.ndarray, is_tail: np.ndarray, user_event_count, popularity, appetite,
                   batch_unknown) -> None:
        """Write the last :data:`N_DENSE` feature columns of ``X``: ``is_tail``, ``log_user_events``, their
        product, ``log_popularity`` (``log1p`` of the item's window count), ``tail_x_appetite`` (the user's
        tail appetite, on tail items) and ``batch_unknown`` (1: a batch model is served and the item is not
        in its vocabulary, so its batch features are missing, not low)."""
        log_events = np.log1p(np.maximum(0, np.asarray(user_event_count, dtype=np.float64)))
        tail = np.asarray(is_tail, dtype=np.float64)
        log_pop = np.log1p(np.maximum(0.0, np.asarray(popularity, dtype=np.float64)))
        dense = (tail, log_events, tail * log_events, log_pop, tail * np.asarray(appetite, dtype=np.float64),
                 np.asarray(batch_unknown, dtype=np.float64))
        for j, column in enumerate(dense, start=X.shape[1] - N_DENSE):
            X[:, j] = column

    def logits_entries(
        self,
        n: int,
        rows: np.ndarray,
        cols: np.ndarray,
        values: np.ndarray,
        ranks: np.ndarray,
        is_tail: np.ndarray,
        user_event_count: np.ndarray,
        bounds: Sequence[int],
        popularity: float | np.ndarray = 0.0,
        appetite: float | np.ndarray = 0.0,
        batch_unknown: bool | np.ndarray = False,
    ) -> np.ndarray:
        """:meth:`logits_blocks` of the :meth:`feature_entries` matrix of the same arguments (same values).
        Learned phase: the standardised matrix is built directly (a zero feature standardises to one value
        per column), into a buffer kept between calls (a fresh array of a few MB costs page faults)."""
        if not self.warmed_up:
            return self.logits_blocks(self.feature_entries(n, rows, cols, values, ranks, is_tail, user_event_count,
                                                           popularity, appetite, batch_unknown), bounds)
        n_f = self.n_features
        mean, inv_std = self._scaling()
        clip = self.z_clip
        if n * n_f <= _ZBUF_MAX:
            if self._zbuf.size < n * n_f:
                self._zbuf = np.empty(max(n * n_f, 2 * self._zbuf.size))
            Z = self._zbuf[: n * n_f].reshape(n, n_f)
        else:
            Z = np.empty((n, n_f))
        Z[:] = np.clip((0.0 - mean) * inv_std, -clip, clip)  # a zero feature, standardised
        at, f, x = self._entries(rows, cols, values, ranks)
        Z.reshape(-1)[at] = np.clip((x - mean[f]) * inv_std[f], -clip, clip)
        self._put_dense(Z, is_tail, user_event_count, popularity, appetite, batch_unknown)
        d = slice(n_f - N_DENSE, None)
        Z[:, d] = np.clip((Z[:, d] - mean[d]) * inv_std[d], -clip, clip)
        return _blocks(self._net, Z, bounds)

    def _matrix(self, xs: Sequence[Mapping[str, float]] | np.ndarray) -> np.ndarray:
        if isinstance(xs, np.ndarray):
            return xs.reshape(-1, self.n_features).astype(np.float64, copy=False)
        names = self.feature_names
        return np.array([[x.get(f, 0.0) for f in names] for x in xs], dtype=np.float64).reshape(len(xs), len(names))

    @property
    def warmed_up(self) -> bool:
        """Whether predictions come from the learned model (``warmup`` examples applied, both labels)."""
        return self._n_applied >= self.warmup and 0 < self._n_applied_clicked < self._n_applied

    def _prior_terms(self, X: np.ndarray) -> np.ndarray:
        """(n, S) per-source prior terms ``a_s * (rr_s + 0.1 * v_s / (1 + |v_s|))``."""
        n_s = len(self.sources)
        scores, rr = X[:, :n_s], X[:, n_s : 2 * n_s]
        return self._prior_weights * (rr + 0.1 * scores / (1.0 + np.abs(scores)))

    def _scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(means, 1 / stds) of the scaler (1 / std = 0 for a feature constant so far)."""
        if self._eff is None:
            std = np.sqrt(np.maximum(self._var, 0.0))
            self._eff = (self._mean.copy(), np.divide(1.0, std, out=np.zeros_like(std), where=std > 0))
        return self._eff

    def _z(self, X: np.ndarray) -> np.ndarray:
        """Standardised features, clipped to ``[-z_clip, z_clip]`` (n, F)."""
        mean, inv_std = self._scaling()
        Z = (X - mean) * inv_std
        return np.clip(Z, -self.z_clip, self.z_clip, out=Z)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """(n,) logits of feature rows ``X`` (the prior's before warm-up)."""
        if not self.warmed_up:
            return self._prior_terms(X).sum(axis=1)
        return self._net(self._z(X))

    def logits_blocks(self, X: np.ndarray, bounds: Sequence[int]) -> np.ndarray:
        """(n,) :meth:`logits` of each block of rows ``X[bounds[i]:bounds[i + 1]]`` (one user's), one product
        per block: a product's rounding depends on its row count."""
        if not self.warmed_up:
            return _blocks(lambda rows: self._prior_terms(rows).sum(axis=1), X, bounds)
        return _blocks(self._net, self._z(X), bounds)

    def _hidden(self, Z: np.ndarray) -> np.ndarray:
        """(n, hidden) pre-activations of standardised rows ``Z``."""
        pre = Z @ self._W1
        pre += self._b1
        return pre

    def _net(self, Z: np.ndarray) -> np.ndarray:
        """(n,) logits of standardised rows ``Z``."""
        h = self._hidden(Z)
        out = np.maximum(h, 0.0, out=h) @ self._w2
        out += self._b2
        return out

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """Click probabilities of feature rows ``X`` (n, n_features), float64 (n,)."""
        return sigmoid(self.logits(X))

    def predict_many(self, xs: Sequence[Mapping[str, float]] | np.ndarray) -> np.ndarray:
        """Click probabilities of ``xs`` (feature dicts or rows), float64 (len(xs),)."""
        if not len(xs):
            return np.zeros(0)
        return self.predict_matrix(self._matrix(xs))

    def contributions_matrix(self, X: np.ndarray) -> np.ndarray:
        """(n, S): each source's share of each logit by gradient × input: its score, rank and proposed
        features (standardised) times the logit's gradient there, summed (the linear model of the active
        units, without the hidden biases). Prior phase: the prior's terms."""
        if not self.warmed_up:
            return self._prior_terms(X)
        n_s = len(self.sources)
        Z = self._z(X)
        grad = ((self._hidden(Z) > 0.0) * self._w2) @ self._W1[: 3 * n_s].T  # (n, 3S) d logit / d z
        part = Z[:, : 3 * n_s] * grad
        return part[:, :n_s] + part[:, n_s : 2 * n_s] + part[:, 2 * n_s :]

    def learn_matrix(self, X: np.ndarray, clicked: np.ndarray | Sequence[bool]) -> None:
        """Learn feature rows ``X`` (m, n_features) with labels ``clicked`` (m,); applied in mini-batches."""
        y = [bool(c) for c in clicked]
        if X.shape != (len(y), self.n_features):
            raise ValueError(f"expected a ({len(y)}, {self.n_features}) feature matrix, got {X.shape}")
        if not y:
            return
        self._buf_x.append((X, None))
        self._buf_y.extend(y)
        self._n_buf += len(y)
        self.n_learned += len(y)
        self.n_clicked += sum(y)
        if self._n_buf >= self.batch_size:
            self._flush()

    def learn_one(self, x: Mapping[str, float], clicked: bool) -> None:
        """Learn one example given as a feature dict (see :meth:`features`)."""
        self.learn_matrix(self._matrix([x]), [bool(clicked)])

    def learn_many(self, examples: Iterable[tuple[Mapping[str, float], bool]]) -> None:
        for x, clicked in examples:
            self.learn_one(x, clicked)

    def flush(self) -> None:
        """Apply the buffered examples now (reads do not wait for a full batch; see the module doc)."""
        self._flush()

    def _flush(self) -> None:
        if not self._n_buf:
            return
        X = np.concatenate([part for part, _ in self._buf_x])  # (m, F)
        y = np.array(self._buf_y, dtype=bool)  # (m,)
        self._buf_x, self._buf_y, self._n_buf = [], [], 0
        m = y.size
        # prequential: record the prediction made before learning, for the AUCs
        slots = (self._auc_pos + np.arange(m)) % self.auc_window
        self._auc_y[slots] = y
        self._auc_s[slots, 0] = self.predict_matrix(X)
        n_s = len(self.sources)
        # a source ranks the candidates it proposed by its score, and all the others below them (its score
        # column is 0 for those, which would rank them above a source's negative scores: logits, dot products)
        proposed = X[:, 2 * n_s : 3 * n_s] > 0
        self._auc_s[slots, 1:] = np.where(proposed, X[:, :n_s], -np.inf)
        self._auc_pos = int(slots[-1] + 1) % self.auc_window
        self._auc_n = min(self.auc_window, self._auc_n + m)
        # scaler: merge the batch's mean and variance into the running ones (Chan et al.); a column constant
        # so far that varies now (a source proposing for the first time) starts afresh from this batch: the
        # rows from before it existed would shrink its variance and blow its standardised values up
        b_mean = X.mean(axis=0)
        b_var = X.var(axis=0)
        n0 = np.where((self._var == 0.0) & (b_var > 0.0), 0.0, self._n_seen)
        n1 = n0 + m
        delta = b_mean - self._mean
        self._var = (self._var * n0 + b_var * m + delta * delta * (n0 * m / n1)) / n1
        self._mean = self._mean + delta * (m / n1)
        self._n_seen = n1
        self._adopt_new_sources(proposed.any(axis=0))
        # the perceptron: one Adam step on the batch's mean log loss
        self._eff = None
        Z = self._z(X)  # (m, F), with the scaler just updated (as river's pipeline does)
        pre = self._hidden(Z)
        h = np.maximum(pre, 0.0)
        g = (sigmoid(h @ self._w2 + float(self._b2)) - y) / m  # d loss / d logit, (m,)
        g_h = np.outer(g, self._w2) * (pre > 0.0)  # (m, hidden)
        grads = (Z.T @ g_h, g_h.sum(axis=0), h.T @ g, np.array(g.sum()))
        self._steps += 1
        c1, c2 = 1.0 - _BETA1**self._steps, 1.0 - _BETA2**self._steps
        for p, grad, mom, var in zip(self._params(), grads, self._adam_m, self._adam_v):
            mom *= _BETA1
            mom += (1.0 - _BETA1) * grad
            var *= _BETA2
            var += (1.0 - _BETA2) * grad * grad
            p -= self.lr * (mom / c1) / (np.sqrt(var / c2) + _EPS)
        self._eff = None
        self._n_applied += m
        self._n_applied_clicked += int(y.sum())

    def _adopt_new_sources(self, proposing: np.ndarray) -> None:
        """A source proposing for the first time (a batch model swapped in after warm-up) starts with input
        weights 0, not its untrained random ones: its candidates are scored by the other features until the
        pools, where they are labelled whether shown or not, have taught the ranker what it is worth."""
        new = proposing & ~self._proposing
        if new.any() and self._proposing.any():
            n_s = len(self.sources)
            W = self._W1[: 3 * n_s].reshape(3, n_s, self.hidden)  # (score, rank, proposed) x sources x units
            W[:, new] = 0.0
        self._proposing |= proposing

    @staticmethod
    def segment(user_event_counts: np.ndarray | int) -> np.ndarray:
        """The gate's user segment (index into :data:`GATE_SEGMENTS`) of each event count."""
        return np.searchsorted(GATE_SEGMENTS, np.asarray(user_event_counts), side="right") - 1

    def gain_se(self) -> np.ndarray:
        """(segments, S): the standard error of each running gain (infinite before two pools are judged)."""
        n = np.minimum(self._n_judged, _GAIN_POOLS)[:, None].astype(float)
        var = np.maximum(self._gain_sq - np.square(self._gain), 0.0)
        return np.where(n >= 2, np.sqrt(var / np.maximum(n - 1.0, 1.0)), np.inf)

    def _serving(self) -> np.ndarray:
        """(segments, S) bool: a source serves a segment unless its gain is negative beyond :data:`GATE_Z`
        standard errors."""
        return self._gain + GATE_Z * self.gain_se() >= 0.0

    def served(self, user_event_counts: np.ndarray | int) -> np.ndarray:
        """(..., S) bool: whether each source serves users with these event counts (see :meth:`_serving`)."""
        return self._serving()[self.segment(user_event_counts)]

    def judge(self, X: np.ndarray, hit: int, user_event_count: int, k: int) -> np.ndarray:
        """Update the source gate with one labelled pool; return each source's gain on it (S,).

        ``X``: the pool's feature rows, ``hit``: the clicked row. A source's gain is the NDCG@``k`` of the
        clicked row among the pool ranked with the source minus that without it (its features at "not
        proposed", the rows only it proposed left out), the other sources as the user's segment serves them
        now, at re-ranking strength 0. A source serves a segment unless its gain there, averaged over the last
        ~:data:`_GAIN_POOLS` pools, is negative beyond :data:`GATE_Z` standard errors: a source that does not
        help is left out, not averaged in, and noise leaves nothing out. Nothing is judged before warm-up (the
        prior weighs the sources)."""
        n_s = len(self.sources)
        if not self.warmed_up or X.shape[0] == 0:
            return np.zeros(n_s)
        seg = int(self.segment(user_event_count))
        on = self._serving()[seg]  # (S,)
        sign = np.where(on, 1.0, -1.0)  # a served source is toggled off, a left-out one on
        mean, inv_std = self._scaling()
        Z = self._z(X)  # (n, F)
        proposed = X[:, 2 * n_s : 3 * n_s] > 0.0  # (n, S)
        s, r = np.nonzero(proposed.T)  # (E,) each proposal's source and row, source by source
        n_e = r.size
        if self._jbuf.size < 2 * n_e * self.hidden:  # scratch: a fresh array this size costs page faults
            self._jbuf = np.empty(2 * max(n_e * self.hidden, self._jbuf.size))
        D = self._jbuf[: n_e * self.hidden].reshape(n_e, self.hidden)
        # (E, H): the change in a proposal row's hidden pre-activations when its source goes to "not proposed"
        c = np.arange(3)[:, None] * n_s + s  # (3, E) its score, rank and proposed columns
        dz = (np.clip((0.0 - mean[c]) * inv_std[c], -self.z_clip, self.z_clip) - Z[r, c]).T  # (E, 3)
        bounds = np.searchsorted(s, np.arange(n_s + 1)).tolist()
        for src in range(n_s):
            a, e = bounds[src], bounds[src + 1]
            if e > a:
                np.matmul(dz[a:e], self._W1[src : 3 * n_s : n_s], out=D[a:e])
        pre = self._hidden(Z)  # (n, H)
        left_out = ~on[s]
        if left_out.any():
            np.add.at(pre, r[left_out], D[left_out])  # the segment's served sources
        D *= sign[s, None]
        D += np.take(pre, r, axis=0, out=self._jbuf[n_e * self.hidden : 2 * n_e * self.hidden].reshape(n_e, -1))
        toggled = np.maximum(D, 0.0, out=D) @ self._w2  # (E,) each proposal's row with its source toggled
        base = np.maximum(pre, 0.0, out=pre) @ self._w2  # (n,) logits of the served list, less the output bias
        n_on = proposed[:, on].sum(axis=1)
        ranked = n_on > 0  # (n,) in the served list
        ranked_e = n_on[r] - sign[s] > 0  # (E,) in the list with the source toggled
        hit_logit = np.full(n_s + 1, base[hit])  # in the served list, then with each source toggled
        hit_ranked = np.full(n_s + 1, ranked[hit])
        at_hit = np.flatnonzero(r == hit)
        hit_logit[1 + s[at_hit]], hit_ranked[1 + s[at_hit]] = toggled[at_hit], ranked_e[at_hit]
        floor = hit_logit + TIE_RTOL * np.maximum(1.0, np.abs(hit_logit))  # (1 + S,) above it: ranked above
        rank = np.empty(n_s + 1, dtype=np.int64)
        rank[0] = (ranked & (base > floor[0])).sum()
        rank[1:] = (ranked & (base > floor[1:, None]) & ~proposed.T).sum(axis=1)  # rows the source did not touch
        rank[1:] += np.bincount(s, weights=ranked_e & (toggled > floor[1 + s]), minlength=n_s).astype(np.int64)
        ndcg = np.where(hit_ranked & (rank < k), 1.0 / np.log2(rank + 2.0), 0.0)  # (1 + S,)
        gain = sign * (ndcg[0] - ndcg[1:])  # with minus without
        self._n_judged[seg] += 1
        rate = 1.0 / min(int(self._n_judged[seg]), _GAIN_POOLS)
        self._gain[seg] += (gain - self._gain[seg]) * rate
        self._gain_sq[seg] += (np.square(gain) - self._gain_sq[seg]) * rate
        return gain

    def gate(self) -> dict[str, dict[str, dict[str, float | bool]]]:
        """Per segment (``"new"``, ``"regular"``, ``"heavy"``) and source: its running ``gain`` (see
        :meth:`judge`), the gain's standard error ``se`` and whether it ``served`` the segment."""
        se, on = self.gain_se(), self._serving()
        return {name: {src: {"gain": float(self._gain[g, c]), "se": float(se[g, c]), "served": bool(on[g, c])}
                       for c, src in enumerate(self.sources)}
                for g, name in enumerate(("new", "regular", "heavy"))}

    def auc_counts(self) -> tuple[int, int]:
        """(examples, clicks) in the window that :meth:`auc` reads: how much its figures can be trusted."""
        self._flush()
        return self._auc_n, int(self._auc_y[: self._auc_n].sum())

    def auc(self) -> dict[str, float]:
        """ROC AUC of ``"blend"`` and of each source's score over the last ``auc_window`` examples; a source
        ranks the candidates it proposed by its score and all others below them. A source with one score
        for the whole window (one that never proposed) gets NaN, not a chance-level 0.5 it did not measure."""
        self._flush()
        n = self._auc_n
        y, s = self._auc_y[:n], self._auc_s[:n]
        out = {}
        for c, name in enumerate(("blend", *self.sources)):
            col = s[:, c]
            out[name] = float("nan") if c and n and bool(np.all(col == col[0])) else _auc(y, col)
        return out
