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

xQuAD *calibrates*: it moves the list's tail share toward ``P(tail|u)``, so a head-loving user whose
candidates are tail-heavy gets *more* head items as the strength grows. ``calibrate=False`` drops the
head term (only tail items earn a bonus, still scaled by ``P(tail|u)`` and by their relevance): the
tail share then only grows with the strength, for every user. Returned
candidates are the input objects unchanged (score, source, anchor), in the new order.

>>> from online.base import Candidate
>>> cands = [Candidate("h1", 1.0, "mf"), Candidate("h2", 0.9, "mf"), Candidate("t1", 0.8, "covisit", "h0"),
...          Candidate("h3", 0.1, "mf")]
>>> [c.item for c in TailReranker(strength=0.0, k=3).rerank(cands, is_tail={"t1"}, tail_appetite=0.5)]
['h1', 'h2', 't1']
>>> [c.item for c in TailReranker(strength=0.5, k=3).rerank(cands, is_tail={"t1"}, tail_appetite=0.5)]
['h1', 't1', 'h2']
>>> round(tail_appetite(["t1", "h1"], {"t1"}), 4)   # (1 + 0.2 * 5) / (2 + 5)
0.2857
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from online.base import Candidate

__all__ = ["TailReranker", "tail_appetite"]

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
    n_tail = sum(1 for item in history if pred(item))
    denom = len(history) + prior_weight
    return (n_tail + prior * prior_weight) / denom if denom > 0 else prior


class TailReranker:
    """Greedy popularity-aware xQuAD with a single ``strength`` knob (λ in [0, 1])."""

    def __init__(self, *, strength: float, k: int = 10, smooth: bool = True, calibrate: bool = True) -> None:
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
        scores = np.where(np.isfinite(scores), scores, -np.inf)
        order = np.argsort(-scores, kind="stable")  # relevance order, ties by input position
        k = min(self.k, len(candidates))
        if self.strength == 0.0:
            return [candidates[i] for i in order[:k].tolist()]
        cands = [candidates[i] for i in order.tolist()]
        s = scores[order]
        finite = np.isfinite(s)
        lo = s[finite].min() if finite.any() else 0.0
        hi = s[finite].max() if finite.any() else 0.0
        rel = np.where(finite, (s - lo) / (hi - lo), 0.0) if hi > lo else finite.astype(np.float64)
        pred = _as_predicate(is_tail)
        tail = np.fromiter((pred(c.item) for c in cands), dtype=bool, count=len(cands))
        p_tail = min(1.0, max(0.0, float(tail_appetite)))
        p_cat = np.where(tail, p_tail, 1.0 - p_tail if self.calibrate else 0.0)  # P(c(i)|u)
        p_item = np.zeros_like(rel)  # P(i|c(i))
        for mask in (tail, ~tail):
            if mask.any():
                top = rel[mask].max()
                p_item[mask] = rel[mask] / top if top > 0 else 0.0
        lam = self.strength
        base = (1.0 - lam) * rel
        bonus = lam * p_cat * p_item
        chosen: list[int] = []
        free = np.ones(len(cands), dtype=bool)
        n_tail_in = 0
        for step in range(k):
            if self.smooth:
                cov_t = 1.0 - n_tail_in / step if step else 1.0
                cov_h = 1.0 - (step - n_tail_in) / step if step else 1.0
            else:
                cov_t = 0.0 if n_tail_in else 1.0
                cov_h = 0.0 if step - n_tail_in else 1.0
            obj = base + bonus * np.where(tail, cov_t, cov_h)
            obj[~free] = -np.inf
            best = int(np.argmax(obj))  # first maximum: ties go to the more relevant
            chosen.append(best)
            free[best] = False
            n_tail_in += int(tail[best])
        return [cands[i] for i in chosen]
