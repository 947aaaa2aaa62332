"""Popularity-aware xQuAD re-ranking for the long tail (Abdollahpouri, Burke & Mobasher, FLAIRS 2019).

Greedily builds the list ``S``, each step taking the candidate ``i`` that maximises::

    (1 - λ) · rel(i) + λ · Σ_{c ∈ {head, tail}} P(c|u) · P(i|c) · cov(c, S)

* ``rel(i)``: the candidate's score min-max normalised to [0, 1] within the candidate list;
* ``P(tail|u)``: the user's tail appetite (:func:`tail_appetite`, the share of tail items in their
  history smoothed toward a global prior), ``P(head|u) = 1 - P(tail|u)``;
* ``P(i|c)``: ``rel(i) / max rel over the candidates of category c`` for ``i`` in ``c``, else 0 — the
  paper's indicator weighted by relevance, so that a tail item nobody would want gets no tail bonus
  (relevance stays in charge; the paper's plain indicator promotes the *least* relevant tail item
  as readily as the most relevant);
* ``cov(c, S)``: the "smooth" variant, ``1 - |S ∩ c| / |S|`` (1 while ``S`` is empty): a category
  already well represented in the list earns less. ``smooth=False`` gives the paper's binary
  ``Π_{j∈S}(1 - P(j|c))`` with indicator ``P(j|c)`` (at most one boost per category).

``λ = strength``; ``strength = 0`` returns exactly the relevance order (stable on ties).

Which categories earn a bonus (``calibrate``). The paper's xQuAD *calibrates*: it has a head term
too, so it moves the list's tail share toward ``P(tail|u)`` (the calibration view of Steck,
"Calibrated Recommendations", RecSys 2018) — a head-leaning user whose candidates are tail-heavy
then gets *more* head items, and fewer tail items, as the strength grows. That breaks the product's
promise for the arm knob ("raising the knob raises tail exposure share and coverage
monotonically"), so the **default is ``calibrate=False``**: the head term is dropped and only tail
items earn a bonus, still scaled by ``P(tail|u)`` and by their relevance. Each step of the greedy
then merges the head and tail candidates (each in relevance order) with a tail bonus that grows with
λ, so the number of tail items in the list never falls as λ rises, for every user (tested over a
replay of the synthetic stream, ``tests/online/test_rerank.py``). ``calibrate=True`` keeps the
paper's two-sided xQuAD as an option.

Cost: the greedy only ever takes the most relevant free candidate of one category (the objective
grows with relevance within a category), so it runs over the top ``k`` head and top ``k`` tail
candidates: one sort and ``k`` scalar steps (:meth:`TailReranker.order`, arrays in and out, is
what the recommender calls).

:class:`TailBoost` is the simple baseline of DESIGN §7: scores multiplied by ``1 + λ·is_tail``.

Returned candidates are the input objects unchanged (score, source, anchor), in the new order.

>>> from online.base import Candidate
>>> cands = [Candidate("h1", 1.0, "mf"), Candidate("h2", 0.9, "mf"), Candidate("t1", 0.8, "covisit", "h0"),
...          Candidate("h3", 0.1, "mf")]
>>> [c.item for c in TailReranker(strength=0.0, k=3).rerank(cands, is_tail={"t1"}, tail_appetite=0.5)]
['h1', 'h2', 't1']
>>> [c.item for c in TailReranker(strength=0.5, k=3).rerank(cands, is_tail={"t1"}, tail_appetite=0.5)]
['t1', 'h1', 'h2']
>>> [c.item for c in TailReranker(strength=0.5, k=3, calibrate=True).rerank(cands, is_tail={"t1"}, tail_appetite=0.5)]
['h1', 't1', 'h2']
>>> round(tail_appetite(["t1", "h1"], {"t1"}), 4)   # (1 + 0.2 * 5) / (2 + 5)
0.2857
>>> [c.item for c in TailBoost(strength=0.5, k=3).rerank(cands, is_tail={"t1"})]   # 0.8 * 1.5 = 1.2
['t1', 'h1', 'h2']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence

import numpy as np

from online.base import Candidate

__all__ = ["TailBoost", "TailReranker", "appetite_from_counts", "tail_appetite"]

TailTest = Callable[[str], bool] | Collection[str]


def _as_predicate(is_tail: TailTest) -> Callable[[str], bool]:
    if callable(is_tail):
        return is_tail
    members = is_tail if isinstance(is_tail, (set, frozenset, dict)) else frozenset(is_tail)
    return members.__contains__


def tail_appetite(
    history: Sequence[str], is_tail: TailTest, prior: float = 0.2, prior_weight: float = 5.0
) -> float:
    """P(tail | user): ``(n_tail_in_history + prior * prior_weight) / (len(history) + prior_weight)``.

    A user with no history gets ``prior``; each event moves the estimate toward their own share.
    """
    if not 0.0 <= prior <= 1.0:
        raise ValueError(f"prior must be in [0, 1], got {prior}")
    if prior_weight < 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")
    pred = _as_predicate(is_tail)
    return appetite_from_counts(sum(1 for item in history if pred(item)), len(history), prior, prior_weight)


def appetite_from_counts(n_tail: int, n: int, prior: float = 0.2, prior_weight: float = 5.0) -> float:
    """:func:`tail_appetite` from the history's tail count ``n_tail`` and length ``n``."""
    denom = n + prior_weight
    return (n_tail + prior * prior_weight) / denom if denom > 0 else prior


class TailReranker:
    """Greedy popularity-aware xQuAD with a single ``strength`` knob (λ in [0, 1]).

    ``calibrate=False`` (default): only tail items earn the diversification bonus, so the tail share
    never falls as the strength rises; ``calibrate=True``: the paper's two-sided xQuAD (see the
    module docstring).
    """

    def __init__(self, *, strength: float, k: int = 10, smooth: bool = True, calibrate: bool = False) -> None:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.strength = float(strength)
        self.k = int(k)
        self.smooth = bool(smooth)
        self.calibrate = bool(calibrate)

    def rerank(
        self, candidates: Sequence[Candidate], *, is_tail: TailTest, tail_appetite: float
    ) -> list[Candidate]:
        """The best ``k`` of ``candidates`` (any order in), best first."""
        if not candidates:
            return []
        scores = np.array([c.score for c in candidates], dtype=np.float64)
        pred = _as_predicate(is_tail)
        tail = np.fromiter((pred(c.item) for c in candidates), dtype=bool, count=len(candidates))
        return [candidates[i] for i in self.order(scores, tail, tail_appetite).tolist()]

    def order(self, scores: np.ndarray, tail: np.ndarray, tail_appetite: float) -> np.ndarray:
        """Positions (into ``scores``) of the ``k`` chosen candidates, best first.

        ``scores``: (n,) relevance (non-finite = irrelevant); ``tail``: (n,) bool.
        """
        n = scores.size
        if not n:
            return np.zeros(0, dtype=np.int64)
        all_finite = bool(np.isfinite(scores).all())
        if not all_finite:
            scores = np.where(np.isfinite(scores), scores, -np.inf)
        order = (-scores).argsort(kind="stable")  # relevance order, ties by input position
        k = min(self.k, n)
        if self.strength == 0.0:
            return order[:k]
        s = scores[order]
        if all_finite:
            finite = None
            lo, hi = s[-1], s[0]  # s is sorted, best first
        else:
            finite = np.isfinite(s)
            lo = s[finite].min() if finite.any() else 0.0
            hi = s[finite].max() if finite.any() else 0.0
        t = tail[order]
        p_tail = min(1.0, max(0.0, float(tail_appetite)))
        lam = self.strength
        # The greedy only takes the most relevant free item of a category (the objective grows with
        # rel within one): queues of the top k of each category, in relevance order. rel: the score
        # min-max normalised over all candidates (0 for a non-finite one), read at those positions.
        head_at, tail_at = (~t).nonzero()[0][:k], t.nonzero()[0][:k]
        at = np.concatenate((head_at, tail_at))
        if hi > lo:
            rel = (s[at] - lo) / (hi - lo)
            if finite is not None:
                rel = np.where(finite[at], rel, 0.0)
        else:
            rel = np.ones(at.size) if finite is None else finite[at].astype(np.float64)
        rel = rel.tolist()
        queues = []
        for pos, rel_c, p_cat in ((head_at, rel[: head_at.size], 1.0 - p_tail if self.calibrate else 0.0),
                                  (tail_at, rel[head_at.size :], p_tail)):
            top = rel_c[0] if rel_c else 0.0  # rel is sorted: the category's best comes first
            weight = lam * p_cat
            bonus = [weight * (r / top) for r in rel_c] if top > 0 else [weight * 0.0] * len(rel_c)  # P(i|c)
            queues.append((pos.tolist(), [(1.0 - lam) * r for r in rel_c], bonus))
        (h_pos, h_base, h_bonus), (t_pos, t_base, t_bonus) = queues
        chosen: list[int] = []
        hi_, ti_ = 0, 0
        n_tail_in = 0
        for step in range(k):
            if self.smooth:
                cov_t = 1.0 - n_tail_in / step if step else 1.0
                cov_h = 1.0 - (step - n_tail_in) / step if step else 1.0
            else:
                cov_t = 0.0 if n_tail_in else 1.0
                cov_h = 0.0 if step - n_tail_in else 1.0
            oh = h_base[hi_] + h_bonus[hi_] * cov_h if hi_ < len(h_pos) else -math.inf
            ot = t_base[ti_] + t_bonus[ti_] * cov_t if ti_ < len(t_pos) else -math.inf
            # ties go to the more relevant (the earlier position in relevance order)
            if ot > oh or (ot == oh and ti_ < len(t_pos) and (hi_ >= len(h_pos) or t_pos[ti_] < h_pos[hi_])):
                chosen.append(t_pos[ti_])
                ti_ += 1
                n_tail_in += 1
            else:
                chosen.append(h_pos[hi_])
                hi_ += 1
        return order[chosen]


class TailBoost:
    """The DESIGN §7 baseline: score × (1 + λ·is_tail), then the top ``k`` (λ = ``strength`` >= 0).

    Meant over co-visitation scores (non-negative); ties keep the input order.
    """

    def __init__(self, *, strength: float, k: int = 10) -> None:
        if not strength >= 0.0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.strength = float(strength)
        self.k = int(k)

    def rerank(self, candidates: Sequence[Candidate], *, is_tail: TailTest) -> list[Candidate]:
        """The best ``k`` of ``candidates`` by boosted score, best first (objects unchanged)."""
        if not candidates:
            return []
        pred = _as_predicate(is_tail)
        tail = np.fromiter((pred(c.item) for c in candidates), dtype=bool, count=len(candidates))
        scores = np.array([c.score for c in candidates], dtype=np.float64)
        boosted = np.where(np.isfinite(scores), scores * (1.0 + self.strength * tail), -np.inf)
        return [candidates[i] for i in np.argsort(-boosted, kind="stable")[: self.k].tolist()]
