"""The metrics of docs/design.md §4, one small object each, in river's manner: ``update(...)`` and
``revert(...)`` return the metric, ``get()`` reads it, :class:`Rolling` keeps one over a sliding window
and :class:`Metrics` feeds several the same updates (the exposure agent, ``tailcast evaluate`` and
``models.loo`` all use these).

One update is, per resolved event, the 0-based ``rank`` of its item in the list that preceded it (``None``:
a miss) for :class:`HitRate` and :class:`NDCG`; per published list, a :class:`Shown` judged when published
(so a list leaves a window with the values it entered with) for :class:`TailShare`, :class:`APLT`,
:class:`Novelty`, :class:`Coverage` and :class:`ExposureGini`. Coverage and Gini count against the items
active when ``get`` is called (``active``: a collection, or a function returning one); a recommended item
that is not active does not count.

* **Gini** is the population Gini over *active* items (zero-exposure items count):
  ``G = (n + 1 - 2 * sum_i (n + 1 - i) * x_(i) / sum(x)) / n``, ``x`` sorted ascending, ``i`` 1-based, i.e.
  ``1 - 2 * (area under the Lorenz curve)``. 0 = even; one item holding everything gives ``(n - 1) / n``,
  not 1 (no "sample" factor ``n / (n - 1)``, so that the value does not jump for small n).
* **Novelty** is ``-log2(share)``, ``share = window count / window length``; a zero share counts as
  ``1 / (window length + 1)`` (``online.headtail.ItemWindow.pop_share``), so novelty stays finite.
* Nothing to count gives 0.0, never NaN, so records stay valid JSON.

>>> hr = Rolling(HitRate, window_size=2, k=3)          # HR@3 over the last 2 events
>>> [hr.update(rank).get() for rank in (0, None, 5, 2)]
[1.0, 0.5, 0.0, 0.5]
>>> shown = [Shown(("h", "t1"), n_tail=1, info=3.0), Shown(("t1", "t2", "h"), n_tail=2, info=6.0)]
>>> m = Metrics(tail_share=TailShare(), aplt=APLT(), coverage=Coverage({"h", "t1", "t2", "t3"}))
>>> for s in shown:
...     _ = m.update(s)
>>> m.get()          # 3 tail slots of 5; (1/2 + 2/3) / 2; 3 of 4 active items
{'tail_share': 0.6, 'aplt': 0.5833333333333333, 'coverage': 0.75}
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Collection, Container, Iterable, Sequence
from typing import NamedTuple

import numpy as np

from online.base import positive_int

__all__ = ["APLT", "NDCG", "Coverage", "ExposureGini", "HitRate", "Metric", "Metrics", "Novelty", "Rolling", "Shown",
           "TailShare", "gain", "gini", "lorenz_curve"]

#: The active items: a collection (read when ``get`` is called) or a function returning one.
Active = Callable[[], Collection[str]] | Collection[str]


def gini(counts: Iterable[float]) -> float:
    """Population Gini coefficient of non-negative counts (see the module docstring for the convention).

    >>> gini([1, 1, 1, 1]), gini([0, 0, 0, 4]), gini([5]), gini([0, 0]), gini([])
    (0.0, 0.75, 0.0, 0.0, 0.0)
    >>> round(gini([1, 2, 3, 4]), 6)   # (5 - 2 * (4*1 + 3*2 + 2*3 + 1*4) / 10) / 4
    0.25
    """
    x = np.sort(np.fromiter(counts, dtype=np.float64))
    n = x.size
    if n <= 1:
        return 0.0
    if x[0] < 0:
        raise ValueError(f"gini needs non-negative counts, got {x[0]!r}")
    total = float(x.sum())
    if total <= 0.0:
        return 0.0
    weights = np.arange(n, 0, -1, dtype=np.float64)  # n + 1 - i for i = 1..n
    g = (n + 1 - 2.0 * float(weights @ x) / total) / n
    return float(min(max(g, 0.0), 1.0))  # clip float noise (e.g. -1e-17 for equal counts)


def lorenz_curve(counts: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of counts for plots: ``x`` = share of items (poorest first), ``y`` = share of exposure,
    ``n + 1`` points from (0, 0) to (1, 1) (all-zero or no counts: the line of equality).

    >>> x, y = lorenz_curve([0, 0, 0, 4])
    >>> x.tolist(), y.tolist()
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.0, 0.0, 1.0])
    """
    c = np.sort(np.fromiter(counts, dtype=np.float64))
    n = c.size
    if n == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    x = np.arange(n + 1, dtype=np.float64) / n
    total = float(c.sum())
    if total <= 0.0:
        return x, x.copy()
    y = np.concatenate(([0.0], np.cumsum(c) / total))
    y[-1] = 1.0
    return x, y


def gain(rank: int | None, k: int) -> float:
    """NDCG@k with one relevant item: ``1 / log2(rank + 2)`` inside the top ``k``, else 0."""
    return 1.0 / math.log2(rank + 2) if rank is not None and rank < k else 0.0


class Metric:
    """river's metric protocol: ``update(*args)`` and ``revert(*args)`` return ``self``; ``get()`` reads."""

    __slots__ = ()

    def update(self, *args) -> Metric:  # pragma: no cover - overridden
        raise NotImplementedError

    def revert(self, *args) -> Metric:  # pragma: no cover - overridden
        raise NotImplementedError

    def get(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        value = self.get()
        shown = f"{value:.4f}" if isinstance(value, float) else value
        return f"{type(self).__name__}: {shown}"


class Metrics(Metric):
    """Several metrics fed the same updates (river's ``metrics.base.Metrics``); ``get()``: name -> value."""

    __slots__ = ("metrics",)

    def __init__(self, **metrics: Metric) -> None:
        self.metrics = metrics

    def update(self, *args) -> Metrics:
        for metric in self.metrics.values():
            metric.update(*args)
        return self

    def revert(self, *args) -> Metrics:
        for metric in self.metrics.values():
            metric.revert(*args)
        return self

    def get(self) -> dict:
        return {name: metric.get() for name, metric in self.metrics.items()}

    def __getitem__(self, name: str) -> Metric:
        return self.metrics[name]


class Rolling(Metric):
    """``cls(**kwargs)`` over the last ``window_size`` updates (river's ``utils.Rolling``): the oldest update
    is reverted when a new one overflows the window; ``window_size=None`` keeps every update. Once per window
    turn the metric is rebuilt from the updates in the window, so float sums carry no drift from reverts."""

    __slots__ = ("window_size", "metric", "_make", "_window", "_evictions", "_n")

    def __init__(self, cls: Callable[..., Metric], window_size: int | None, **kwargs) -> None:
        self.window_size = None if window_size is None else positive_int("window_size", window_size)
        self._make = functools.partial(cls, **kwargs)
        self.metric = self._make()
        self._window: deque[tuple] = deque()
        self._evictions = 0
        self._n = 0  # updates held (all of them without a window)

    def update(self, *args) -> Rolling:
        self.metric.update(*args)
        if self.window_size is None:
            self._n += 1
            return self
        window = self._window
        window.append(args)
        if len(window) > self.window_size:
            self.metric.revert(*window.popleft())
            self._evictions += 1
            if self._evictions >= self.window_size:
                self._evictions = 0
                self.metric = self._make()
                for old in window:
                    self.metric.update(*old)
        self._n = len(window)
        return self

    def get(self):
        return self.metric.get()

    def __len__(self) -> int:
        return self._n


class _Ratio(Metric):
    """A sum over updates divided by a count over updates; subclasses say what one update adds."""

    __slots__ = ("num", "den")

    def __init__(self) -> None:
        self.num: float = 0
        self.den = 0

    def _terms(self, x) -> tuple[float, int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, x) -> _Ratio:
        num, den = self._terms(x)
        self.num += num
        self.den += den
        return self

    def revert(self, x) -> _Ratio:
        num, den = self._terms(x)
        self.num -= num
        self.den -= den
        return self

    def get(self) -> float:
        return max(self.num, 0) / self.den if self.den else 0.0


class _AtK(_Ratio):
    __slots__ = ("k",)

    def __init__(self, k: int = 10) -> None:
        super().__init__()
        self.k = positive_int("k", k)


class HitRate(_AtK):
    """HR@k: share of events whose item was in the top ``k`` of the list that preceded it; one
    ``update(rank)`` per event.

    >>> HitRate(k=2).update(0).update(1).update(2).update(None)
    HitRate: 0.5000
    """

    __slots__ = ()

    def _terms(self, rank: int | None) -> tuple[float, int]:
        return rank is not None and rank < self.k, 1


class NDCG(_AtK):
    """NDCG@k with one relevant item per event (:func:`gain`); one ``update(rank)`` per event.

    >>> NDCG(k=2).update(0).update(1).update(2).get()    # (1 + 1/log2(3) + 0) / 3
    0.5436432511904858
    """

    __slots__ = ()

    def _terms(self, rank: int | None) -> tuple[float, int]:
        return gain(rank, self.k), 1


class Shown(NamedTuple):
    """One published list as judged when it was published: its items (best first, cut to ``k``), how many
    of them were tail, and the sum of their self-information ``-log2(popularity share)``."""

    items: tuple[str, ...]
    n_tail: int
    info: float

    @classmethod
    def judge(cls, items: Sequence[str], head: Container[str], pop_share: Callable[[str], float]) -> Shown:
        """``items`` judged against the head set and popularity shares (all > 0) of now."""
        n_tail = 0
        info = 0.0
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"a list holds item ids (str), got {type(item).__name__}")
            n_tail += item not in head
            info -= math.log2(pop_share(item))
        return cls(tuple(items), n_tail, info)


class TailShare(_Ratio):
    """Share of recommended slots filled by tail items; one ``update(shown)`` per list.

    >>> TailShare().update(Shown(("h", "t"), 1, 0.0)).update(Shown(("t",), 1, 0.0))
    TailShare: 0.6667
    """

    __slots__ = ()

    def _terms(self, shown: Shown) -> tuple[float, int]:
        return shown.n_tail, len(shown.items)


class APLT(_Ratio):
    """Average percentage of long tail: mean over non-empty lists of the share of tail items in the list.

    >>> APLT().update(Shown(("h", "t"), 1, 0.0)).update(Shown(("t",), 1, 0.0)).update(Shown((), 0, 0.0))
    APLT: 0.7500
    """

    __slots__ = ()

    def _terms(self, shown: Shown) -> tuple[float, int]:
        return (shown.n_tail / len(shown.items), 1) if shown.items else (0, 0)


class Novelty(_Ratio):
    """Mean self-information ``-log2(popularity share)`` over recommended slots.

    >>> Novelty().update(Shown.judge(["a", "b"], set(), {"a": 0.5, "b": 0.125}.__getitem__))   # (1 + 3) / 2
    Novelty: 2.0000
    """

    __slots__ = ()

    def _terms(self, shown: Shown) -> tuple[float, int]:
        return shown.info, len(shown.items)


class _Exposure(Metric):
    """Recommendation counts per item over the lists updated (``counts``), read against the active items."""

    __slots__ = ("_active", "counts")

    def __init__(self, active: Active | None = None) -> None:
        if isinstance(active, str):
            raise TypeError("active must be a collection of item ids (or a function returning one)")
        self._active = active
        self.counts: dict[str, int] = {}

    def update(self, shown: Shown) -> _Exposure:
        counts = self.counts
        for item in shown.items:
            counts[item] = counts.get(item, 0) + 1
        return self

    def revert(self, shown: Shown) -> _Exposure:
        counts = self.counts
        for item in shown.items:
            c = counts[item] - 1
            if c:
                counts[item] = c
            else:
                del counts[item]
        return self

    def active(self) -> Collection[str]:
        return self._active() if callable(self._active) else self._active


class Coverage(_Exposure):
    """Catalogue coverage: distinct recommended items that are active / active items.

    >>> Coverage({"a", "b", "c", "d"}).update(Shown(("a", "b", "a", "zz"), 0, 0.0)).get()   # zz: not active
    0.5
    """

    __slots__ = ()

    def __init__(self, active: Active) -> None:
        super().__init__(active)

    def get(self) -> float:
        active, counts = self.active(), self.counts
        if not len(active):
            return 0.0
        if len(counts) <= len(active):
            return sum(1 for item in counts if item in active) / len(active)
        return sum(1 for item in active if item in counts) / len(active)


class ExposureGini(_Exposure):
    """Gini of recommendation counts over the active items (never recommended: zeros; not active: left out).
    Without ``active`` the zeros are missing and the value is a lower bound.

    >>> ExposureGini().update(Shown(("i1", "i1", "i2"), 0, 0.0))                 # [1, 2]: (3 - 2*4/3) / 2
    ExposureGini: 0.1667
    >>> ExposureGini(active={"i1", "i2", "i3", "i4"}).update(Shown(("i1",) * 4, 0, 0.0)).get()   # [0, 0, 0, 4]
    0.75
    """

    __slots__ = ()

    def get(self) -> float:
        if self._active is None:
            return gini(self.counts.values())
        get = self.counts.get
        return gini(get(item, 0) for item in self.active())
