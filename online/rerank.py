"""Tail re-ranking on calibrated relevance: the list that maximises expected hits plus λ times expected
tail hits.

With click probabilities ``p(i)``, the ``k`` items that maximise ``E[hits] + λ·E[tail hits]`` are the top
``k`` by ``p(i)·(1 + λ·tail(i))``. The knob ``strength`` s in [0, 1] maps to ``λ = 3·s`` (s = 1: a tail
hit is worth four head hits). Raising it never lowers a list's tail items, and a tail item the ranker
deems unwanted stays out whatever the knob. The same formula over raw co-visitation scores is
:class:`TailBoost`, the docs/design.md §7 baseline (docs/decisions.md compares it and xQuAD).

Ties (scores equal up to float rounding, :func:`online.base.top_k`) keep the input order; candidates
without a finite score are never shown; candidates come back unchanged, in the new order.

>>> from online.base import Candidate
>>> cands = [Candidate("h1", 0.30, "mf"), Candidate("h2", 0.25, "mf"), Candidate("t1", 0.20, "covisit", "h0"),
...          Candidate("h3", 0.01, "mf")]
>>> [c.item for c in TailReranker(strength=0.0, k=3).rerank(cands, is_tail={"t1"})]
['h1', 'h2', 't1']
>>> [c.item for c in TailReranker(strength=0.5, k=3).rerank(cands, is_tail={"t1"})]   # 0.20 * 2.5 = 0.50
['t1', 'h1', 'h2']
>>> round(appetite_from_counts(1, 2), 4)   # one tail item of two: (1 + 0.2 * 5) / (2 + 5)
0.2857
>>> [c.item for c in TailBoost(strength=0.5, k=3).rerank(cands, is_tail={"t1"})]   # 0.20 * 1.5 = 0.30: ties keep order
['h1', 't1', 'h2']
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from online.base import Candidate, top_k, top_k_rows

__all__ = ["TailBoost", "TailReranker", "appetite_from_counts"]

_LAMBDA_AT_FULL_STRENGTH = 3.0
TailTest = Callable[[str], bool] | Collection[str]


def _as_predicate(is_tail: TailTest) -> Callable[[str], bool]:
    if callable(is_tail):
        return is_tail
    members = is_tail if isinstance(is_tail, (set, frozenset, dict)) else frozenset(is_tail)
    return members.__contains__


def appetite_from_counts(n_tail: int, n: int, prior: float = 0.2, prior_weight: float = 5.0) -> float:
    """P(tail | user) from the history's tail count ``n_tail`` and length ``n``: ``(n_tail + prior *
    prior_weight) / (n + prior_weight)``; a user with no history gets ``prior``."""
    denom = n + prior_weight
    return (n_tail + prior * prior_weight) / denom if denom > 0 else prior


class _BoostedTopK:
    """The top ``k`` of candidates by a tail-boosted score; subclasses say how (:meth:`order`)."""

    def __init__(self, *, strength: float, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.strength = float(strength)
        self.k = int(k)

    def rerank(self, candidates: Sequence[Candidate], *, is_tail: TailTest) -> list[Candidate]:
        """The best ``k`` of ``candidates`` (any order in), best first (objects unchanged)."""
        if not candidates:
            return []
        scores = np.array([c.score for c in candidates], dtype=np.float64)
        pred = _as_predicate(is_tail)
        tail = np.fromiter((pred(c.item) for c in candidates), dtype=bool, count=len(candidates))
        return [candidates[i] for i in self.order(scores, tail).tolist()]

    def order(self, scores: np.ndarray, tail: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TailReranker(_BoostedTopK):
    """The top ``k`` by ``score × (1 + λ·is_tail)``, ``λ = 3·strength`` (see the module doc)."""

    def __init__(self, *, strength: float, k: int = 10) -> None:
        _check_strength(strength)
        super().__init__(strength=strength, k=k)

    def order(self, scores: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """Positions (into ``scores``) of the ``k`` chosen candidates, best first.

        ``scores``: (n,) probabilities (non-finite = irrelevant); ``tail``: (n,) bool.
        """
        # the probabilities carry the float32 rounding of the MF and content scores: float32 tolerance
        return _top_boosted(scores, tail, _LAMBDA_AT_FULL_STRENGTH * self.strength, self.k, np.float32)

    @staticmethod
    def order_blocks(scores: np.ndarray, tail: np.ndarray, bounds: Sequence[int], strengths: Sequence[float],
                     k: int) -> list[np.ndarray]:
        """:meth:`order` of every block ``bounds[b]:bounds[b + 1]`` at ``strengths[b]`` (positions within the
        block): the same lists, from one :func:`~online.base.top_k_rows` over the blocks padded with -inf.

        >>> s, t = np.array([0.3, 0.2, 0.9, 0.1, 0.5]), np.array([False, True, False, True, False])
        >>> [o.tolist() for o in TailReranker.order_blocks(s, t, [0, 3, 3, 5], [1.0, 0.0, 0.0], 2)]
        [[2, 1], [], [1, 0]]
        >>> TailReranker.order_blocks(s, t, [0, 5], [1.5], 2)
        Traceback (most recent call last):
        ...
        ValueError: strength must be in [0, 1], got 1.5
        """
        for strength in strengths:
            _check_strength(strength)
        lens = np.diff(np.asarray(bounds, dtype=np.int64))
        n_b, width = lens.size, int(lens.max(initial=0))
        if not width:
            return [np.zeros(0, dtype=np.int64) for _ in range(n_b)]
        lam = np.repeat([_LAMBDA_AT_FULL_STRENGTH * float(s) for s in strengths], lens)  # as order's float
        boosted = np.full((n_b, width), -np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(n_b), lens)
        boosted[rows, np.arange(rows.size) - np.repeat(np.asarray(bounds[:-1], dtype=np.int64), lens)] = _boosted(
            scores, tail, lam, np.float32)
        return top_k_rows(boosted, k, overwrite=True)


def _check_strength(strength: float) -> None:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")


def _boosted(scores: np.ndarray, tail: np.ndarray, lam: float | np.ndarray, dtype: type) -> np.ndarray:
    """``score × (1 + lam·tail)`` in ``dtype`` (``lam`` one value, or one per score)."""
    return (scores * (1.0 + lam * tail)).astype(dtype)


def _top_boosted(scores: np.ndarray, tail: np.ndarray, lam: float, k: int, dtype: type) -> np.ndarray:
    """Positions of the top ``k`` finite ``score × (1 + lam·tail)``, ties (within the tolerance of
    ``dtype``, see :func:`online.base.top_k`) in input order."""
    if not scores.size:
        return np.zeros(0, dtype=np.int64)
    return top_k(_boosted(scores, tail, lam, dtype), k)


class TailBoost(_BoostedTopK):
    """The docs/design.md §7 baseline: score × (1 + λ·is_tail), then the top ``k`` (λ = ``strength`` >= 0).

    Meant over co-visitation scores (non-negative); ties keep the input order.
    """

    def __init__(self, *, strength: float, k: int = 10) -> None:
        if not strength >= 0.0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        super().__init__(strength=strength, k=k)

    def order(self, scores: np.ndarray, tail: np.ndarray) -> np.ndarray:
        """Positions (into ``scores``, (n,) float64) of the ``k`` chosen candidates, best first."""
        return _top_boosted(scores, tail, self.strength, self.k, np.float64)
