"""Exposure metrics of docs/design.md §4: who gets recommended, and how evenly.

Three layers, smallest first:

* **Plain functions** for offline evaluation over a static set of lists: :func:`tail_share`,
  :func:`coverage`, :func:`gini`, :func:`aplt`, :func:`novelty`, :func:`lorenz_curve`.
* **Step-by-step metrics** in the river style (``metric.update(...).get()``): :class:`TailShare`,
  :class:`Coverage`, :class:`ExposureGini`, :class:`APLT`, :class:`Novelty`. They are cumulative (no
  window) and do not learn head/tail themselves: they are *given* an oracle at construction, either a
  fixed set (offline) or a live window's bound method (``window.is_tail``, ``window.pop_share``,
  ``window.active_items``), so one head/tail definition serves every metric.
* **Live windows**: :class:`~online.headtail.ItemWindow` (the last ``window_events`` interactions: active
  items, head/tail, popularity shares) and :class:`ExposureWindow` (the recommendation lists over a sliding window, with
  every metric maintained incrementally and read by :meth:`ExposureWindow.snapshot`).

Conventions shared by all layers:

* **Head/tail** (docs/design.md §4) is defined once, in ``online.headtail``; :class:`ItemWindow` lives
  there and is re-exported here.
* **Gini** is the population Gini of a count vector over *active* items (zero-exposure items count):
  ``G = (n + 1 - 2 * sum_i (n + 1 - i) * x_(i) / sum(x)) / n`` with ``x`` sorted ascending and ``i``
  1-based. It equals the mean absolute difference over all ordered pairs divided by twice the mean, and
  ``1 - 2 * (area under the Lorenz curve)``. 0 = even; the maximum, one item holding everything, is
  ``(n - 1) / n`` (0.75 for n = 4), not 1 — the "sample" convention multiplies by ``n / (n - 1)`` to reach
  1; we do not, so that the value does not jump for small n. ``n <= 1`` or all-zero counts give 0.0.
* **Novelty** uses ``-log2(share)`` with ``share = window count / window length``; an item with zero
  share (never interacted in the window) gets ``share = 1 / (window length + 1)``: slightly rarer than an
  item seen once, so novelty stays finite and monotone in popularity.
* Empty inputs (no slots, no lists, no active items) give 0.0, never NaN, so records stay valid JSON.

>>> lists = [["a", "b"], ["a", "c"]]
>>> tail_share(lists, {"b", "c"}), aplt(lists, {"b", "c"}), coverage(lists, {"a", "b", "c", "d"})
(0.5, 0.5, 0.75)
>>> gini([1, 1, 1, 1]), gini([0, 0, 0, 4])
(0.0, 0.75)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Container, Iterable, KeysView, Mapping, Sequence

import numpy as np

from online.headtail import ItemWindow

__all__ = [
    "APLT",
    "Coverage",
    "ExposureGini",
    "ExposureWindow",
    "ItemWindow",
    "Novelty",
    "SharedItemWindowError",
    "TailShare",
    "aplt",
    "coverage",
    "gini",
    "lorenz_curve",
    "novelty",
    "tail_share",
]

#: A head/tail decision: a predicate ``item -> is_tail`` or a container of the tail items.
TailOracle = Callable[[str], bool] | Container[str]
#: Popularity share of an item: a mapping ``item -> share`` or a function.
ShareOracle = Callable[[str], float] | Mapping[str, float]
#: The active items: a collection (read when ``get`` is called, so a live view stays current) or a
#: zero-argument function returning one.
ActiveOracle = Callable[[], Collection[str]] | Collection[str]


class SharedItemWindowError(RuntimeError):
    """An :class:`ExposureWindow` sharing an :class:`ItemWindow` was fed an event: feed the shared one."""


# --------------------------------------------------------------------------------------------------
# helpers


def _tail_predicate(tail: TailOracle) -> Callable[[str], bool]:
    if isinstance(tail, str):
        raise TypeError("tail must be a set of tail item ids or a predicate, not a single str")
    if callable(tail):
        return tail  # type: ignore[return-value]
    if isinstance(tail, Container):
        return tail.__contains__
    raise TypeError(f"tail must be a container of item ids or a callable, got {type(tail).__name__}")


def _share_function(pop_share: ShareOracle) -> Callable[[str], float]:
    if isinstance(pop_share, Mapping):
        get = pop_share.get
        return lambda item: get(item, 0.0)
    if callable(pop_share):
        return pop_share
    raise TypeError(f"pop_share must be a mapping or a callable, got {type(pop_share).__name__}")


def _check_zero_share(zero_share: float | None) -> None:
    if zero_share is not None and not 0.0 < zero_share <= 1.0:
        raise ValueError(f"zero_share must be in (0, 1], got {zero_share!r}")


def _self_information(share: float, zero_share: float | None, item: str) -> float:
    if share > 0.0:
        return -math.log2(share)
    if zero_share is None:
        raise ValueError(
            f"item {item!r} has zero popularity share; pass zero_share= (e.g. 1 / (window_events + 1)) "
            "to define its novelty"
        )
    return -math.log2(zero_share)


def _lists(lists: Iterable[Sequence[str]], k: int | None) -> Iterable[Sequence[str]]:
    if isinstance(lists, str):
        raise TypeError("expected an iterable of recommendation lists, got a str")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    for items in lists:
        if isinstance(items, str):
            raise TypeError(
                "expected an iterable of recommendation lists (sequences of item ids), got a str "
                "element: wrap a single list as [items]"
            )
        yield items if k is None else items[:k]


def _check_item(item: object) -> None:
    if not isinstance(item, str):
        raise TypeError(
            f"update takes one item id (str) per recommended slot, got {type(item).__name__}; "
            "call update once per item"
        )


def _check_list(items: object) -> None:
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"expected a sequence of item ids, got {type(items).__name__}")


def _active(active: ActiveOracle) -> Collection[str]:
    return active() if callable(active) else active


# --------------------------------------------------------------------------------------------------
# plain functions (offline evaluation)


def tail_share(lists: Iterable[Sequence[str]], tail: TailOracle, *, k: int | None = None) -> float:
    """Share of recommended slots filled by tail items (each list cut to its top ``k`` if given).

    >>> tail_share([["h", "t1"], ["t1", "t2", "h"]], {"t1", "t2"})   # 3 tail slots of 5
    0.6
    >>> tail_share([], {"t"})
    0.0
    """
    is_tail = _tail_predicate(tail)
    slots = hits = 0
    for items in _lists(lists, k):
        for item in items:
            slots += 1
            hits += bool(is_tail(item))
    return hits / slots if slots else 0.0


def coverage(lists: Iterable[Sequence[str]], active_items: Collection[str], *, k: int | None = None) -> float:
    """Catalog coverage: distinct recommended items that are active / number of active items.

    Recommended items that are not active (no interaction in the window) are not counted, so the value
    stays in [0, 1].

    >>> coverage([["a", "b"], ["b", "zz"]], {"a", "b", "c", "d"})   # {a, b} of 4 ("zz" inactive)
    0.5
    """
    if isinstance(active_items, str):
        raise TypeError("active_items must be a collection of item ids, not a single str")
    live = isinstance(active_items, (set, frozenset, Mapping, KeysView))
    active = active_items if live else set(active_items)
    if not len(active):
        return 0.0
    seen: set[str] = set()
    for items in _lists(lists, k):
        seen.update(items)
    return sum(1 for item in seen if item in active) / len(active)


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


def aplt(lists: Iterable[Sequence[str]], tail: TailOracle, *, k: int | None = None) -> float:
    """Average percentage of long tail: mean over non-empty lists of the share of tail items in the list.

    Empty lists are skipped (their share is undefined).

    >>> aplt([["h", "t"], ["t", "t2", "h", "h"], []], {"t", "t2"})   # (1/2 + 2/4) / 2
    0.5
    """
    is_tail = _tail_predicate(tail)
    total = 0.0
    n_lists = 0
    for items in _lists(lists, k):
        if not items:
            continue
        total += sum(1 for item in items if is_tail(item)) / len(items)
        n_lists += 1
    return total / n_lists if n_lists else 0.0


def novelty(
    lists: Iterable[Sequence[str]],
    pop_share: ShareOracle,
    *,
    zero_share: float | None = None,
    k: int | None = None,
) -> float:
    """Mean self-information ``-log2(share)`` over recommended slots.

    ``pop_share`` gives each item's share of the interactions (count / window length). Items with share
    0 (or missing from the mapping) use ``zero_share``; the live windows use ``1 / (window length + 1)``.
    Without ``zero_share`` such an item raises ``ValueError`` rather than silently counting as infinite.

    >>> novelty([["a", "b"]], {"a": 0.5, "b": 0.125})    # (1 + 3) / 2
    2.0
    >>> novelty([["a", "new"]], {"a": 0.5}, zero_share=1 / 16)   # (1 + 4) / 2
    2.5
    """
    _check_zero_share(zero_share)
    share_of = _share_function(pop_share)
    total = 0.0
    slots = 0
    for items in _lists(lists, k):
        for item in items:
            total += _self_information(share_of(item), zero_share, item)
            slots += 1
    return total / slots if slots else 0.0


def lorenz_curve(counts: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lorenz curve of counts for plots: ``x`` = share of items (poorest first), ``y`` = share of exposure.

    Both arrays have ``n + 1`` points from (0, 0) to (1, 1); ``gini(counts) == 1 - 2 * trapezoid(y, x)``.
    All-zero or empty counts give the line of equality.

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


# --------------------------------------------------------------------------------------------------
# step-by-step metrics (river style)


class _Metric:
    """``update(...)`` returns ``self``; ``get()`` returns a float; repr shows the current value."""

    __slots__ = ()

    def get(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {self.get():.4f}"


class TailShare(_Metric):
    """Share of recommended slots filled by tail items; one ``update(item)`` per slot.

    The head/tail decision is taken by ``is_tail`` (a predicate such as ``ExposureWindow.is_tail``, or a
    set of tail items) at update time, i.e. with the head set current when the item was recommended.

    >>> metric = TailShare({"t1", "t2"})
    >>> for item in ["h", "t1", "t2", "h"]:
    ...     print(metric.update(item).get())
    0.0
    0.5
    0.6666666666666666
    0.5
    >>> metric
    TailShare: 0.5000
    """

    __slots__ = ("_is_tail", "slots", "tail_slots")

    def __init__(self, is_tail: TailOracle) -> None:
        self._is_tail = _tail_predicate(is_tail)
        self.slots = 0
        self.tail_slots = 0

    def update(self, item: str) -> TailShare:
        _check_item(item)
        self.slots += 1
        self.tail_slots += bool(self._is_tail(item))
        return self

    def get(self) -> float:
        return self.tail_slots / self.slots if self.slots else 0.0


class Coverage(_Metric):
    """Distinct recommended items that are active / active items; one ``update(item)`` per slot.

    ``active`` is read when :meth:`get` is called (a live keys view or ``ExposureWindow.active_items``
    stays current), so an item counts if it is active *now*.

    >>> metric = Coverage({"a", "b", "c", "d"})
    >>> metric.update("a").update("a").update("b").get()
    0.5
    >>> metric.update("not-active").get()
    0.5
    """

    __slots__ = ("_active", "_seen")

    def __init__(self, active: ActiveOracle) -> None:
        if isinstance(active, str):
            raise TypeError("active must be a collection of item ids (or a function returning one)")
        self._active = active
        self._seen: set[str] = set()

    def update(self, item: str) -> Coverage:
        _check_item(item)
        self._seen.add(item)
        return self

    def get(self) -> float:
        active = _active(self._active)
        n = len(active)
        if not n:
            return 0.0
        if len(self._seen) <= n:
            hit = sum(1 for item in self._seen if item in active)
        else:
            hit = sum(1 for item in active if item in self._seen)
        return hit / n


class ExposureGini(_Metric):
    """Gini of recommendation counts; one ``update(item)`` per slot.

    With ``active`` (read at :meth:`get` time) the Gini runs over the active items, those never
    recommended counting as zeros, and recommended items that are not active are left out (docs/design.md §4).
    Without it only recommended items are known, so zeros are missing and the value is a lower bound.

    >>> round(ExposureGini().update("i1").update("i1").update("i2").get(), 4)  # [1, 2]: (3 - 2*4/3) / 2
    0.1667
    >>> metric = ExposureGini(active={"i1", "i2", "i3", "i4"})
    >>> for _ in range(4):
    ...     _ = metric.update("i1")
    >>> metric.get()                                                   # counts [0, 0, 0, 4]
    0.75
    """

    __slots__ = ("_active", "counts")

    def __init__(self, active: ActiveOracle | None = None) -> None:
        if isinstance(active, str):
            raise TypeError("active must be a collection of item ids (or a function returning one)")
        self._active = active
        self.counts: dict[str, int] = {}

    def update(self, item: str) -> ExposureGini:
        _check_item(item)
        self.counts[item] = self.counts.get(item, 0) + 1
        return self

    def get(self) -> float:
        if self._active is None:
            return gini(self.counts.values())
        get = self.counts.get
        return gini(get(item, 0) for item in _active(self._active))


class APLT(_Metric):
    """Mean over lists of the share of tail items in the list; one ``update(items)`` per list.

    Empty lists are skipped (share undefined). Tail decided at update time, as in :class:`TailShare`.

    >>> metric = APLT({"t"})
    >>> metric.update(["h", "t"]).get()
    0.5
    >>> metric.update(["t", "t", "t", "h"]).get()    # (1/2 + 3/4) / 2
    0.625
    """

    __slots__ = ("_is_tail", "lists", "_total")

    def __init__(self, is_tail: TailOracle) -> None:
        self._is_tail = _tail_predicate(is_tail)
        self.lists = 0
        self._total = 0.0

    def update(self, items: Sequence[str]) -> APLT:
        _check_list(items)
        if items:
            is_tail = self._is_tail
            self._total += sum(1 for item in items if is_tail(item)) / len(items)
            self.lists += 1
        return self

    def get(self) -> float:
        return self._total / self.lists if self.lists else 0.0


class Novelty(_Metric):
    """Mean ``-log2(popularity share)`` of recommended items; one ``update(item)`` per slot.

    ``pop_share`` (e.g. ``ExposureWindow.pop_share``, which already smooths zero shares to
    ``1 / (window length + 1)``, or a mapping) is read at update time. A zero share uses ``zero_share``
    and raises ``ValueError`` if it is not given.

    >>> metric = Novelty({"a": 0.5, "b": 0.125})
    >>> metric.update("a").get(), metric.update("b").get()
    (1.0, 2.0)
    >>> Novelty({"a": 0.5}, zero_share=1 / 8).update("cold").get()
    3.0
    """

    __slots__ = ("_share", "_zero_share", "slots", "_total")

    def __init__(self, pop_share: ShareOracle, *, zero_share: float | None = None) -> None:
        _check_zero_share(zero_share)
        self._share = _share_function(pop_share)
        self._zero_share = zero_share
        self.slots = 0
        self._total = 0.0

    def update(self, item: str) -> Novelty:
        _check_item(item)
        self._total += _self_information(self._share(item), self._zero_share, item)
        self.slots += 1
        return self

    def get(self) -> float:
        return self._total / self.slots if self.slots else 0.0


# --------------------------------------------------------------------------------------------------
# live windows


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class ExposureWindow:
    """Live exposure metrics over sliding windows of interactions and of published recommendation lists.

    * Interactions (``observe_event``) feed an :class:`ItemWindow` of the last ``window_events`` events:
      active items, head/tail (lazily refreshed, see its staleness note) and popularity shares.
    * Recommendations (``observe_recommendation``) are cut to their top ``k`` and kept over a window of
      the last ``rec_window`` **lists** (default ``window_events``; empty lists are ignored). A list's
      tail slots and novelty are judged **when it is observed** (head set and shares of that moment) and
      kept as running sums, so ``observe_*`` is O(k) and a list leaves the window with the values it
      entered with. Coverage and Gini are read at :meth:`snapshot` time against the *current* active
      items (O(active items), plus a sort for the Gini).
    * To share one interaction window between several arms, build each arm's window with
      :meth:`shared` and feed events to the :class:`ItemWindow` itself, once; ``observe_event`` on such a
      window raises :class:`SharedItemWindowError` rather than count an event once per arm.

    ``snapshot()`` keys: ``tail_share`` (tail slots / slots), ``coverage`` (distinct recommended items
    that are active / active items), ``gini`` (over active items' exposure counts), ``aplt``,
    ``novelty``, ``window_events`` (events currently in the interaction window) and ``k``.

    >>> w = ExposureWindow(window_events=10, head_share=0.2, k=2)
    >>> for item in ["a"] * 5 + ["b", "b", "c", "d", "e"]:    # 5 active items -> head = {"a"}
    ...     _ = w.observe_event("u", item)
    >>> _ = w.observe_recommendation(["a", "b", "zz"])         # cut to ["a", "b"]
    >>> _ = w.observe_recommendation(["c", "a"])
    >>> snap = w.snapshot()
    >>> snap["tail_share"], snap["aplt"], snap["coverage"], snap["window_events"], snap["k"]
    (0.5, 0.5, 0.6, 10, 2)
    >>> snap["gini"]        # exposure counts over active items a..e: [2, 1, 1, 0, 0]
    0.5
    >>> round(snap["novelty"], 4)   # shares a=.5, b=.2, c=.1: (1 + 2.3219 + 3.3219 + 1) / 4
    1.911
    """

    __slots__ = (
        "items",
        "k",
        "rec_window",
        "_owns_items",
        "_lists",
        "_exposure",
        "_slots",
        "_tail_slots",
        "_aplt_sum",
        "_novelty_sum",
        "_evictions",
    )

    def __init__(
        self,
        *,
        window_events: int = 100_000,
        head_share: float = 0.2,
        k: int = 10,
        rec_window: int | None = None,
        refresh_events: int | None = None,
    ) -> None:
        items = ItemWindow(window_events=window_events, head_share=head_share, refresh_events=refresh_events)
        self._setup(items, owns_items=True, k=k, rec_window=rec_window)

    @classmethod
    def shared(cls, items: ItemWindow, *, k: int = 10, rec_window: int | None = None) -> ExposureWindow:
        """An exposure window over an interaction window owned (and fed) by someone else."""
        if not isinstance(items, ItemWindow):
            raise TypeError(f"items must be an ItemWindow, got {type(items).__name__}")
        self = cls.__new__(cls)
        self._setup(items, owns_items=False, k=k, rec_window=rec_window)
        return self

    def _setup(self, items: ItemWindow, *, owns_items: bool, k: int, rec_window: int | None) -> None:
        _check_positive("k", k)
        if rec_window is None:
            rec_window = items.window_events
        _check_positive("rec_window", rec_window)
        self.items = items
        self.k = k
        self.rec_window = rec_window
        self._owns_items = owns_items
        # one entry per list in the window: (items cut to k, tail slots, sum of self-information)
        self._lists: deque[tuple[tuple[str, ...], int, float]] = deque()
        self._exposure: dict[str, int] = {}
        self._slots = 0
        self._tail_slots = 0
        self._aplt_sum = 0.0
        self._novelty_sum = 0.0
        self._evictions = 0

    # -- oracles for the step-by-step metrics and the prequential metrics
    def is_tail(self, item: str) -> bool:
        return self.items.is_tail(item)

    def pop_share(self, item: str) -> float:
        return self.items.pop_share(item)

    def active_items(self) -> KeysView[str]:
        return self.items.active_items()

    # -- inputs
    def observe_event(self, user: str, item: str) -> ExposureWindow:
        """One interaction (docs/design.md §3 ``events``): updates active items and head/tail."""
        if not self._owns_items:
            raise SharedItemWindowError(
                "this ExposureWindow shares its ItemWindow; call observe_event on the shared ItemWindow once"
            )
        self.items.observe_event(user, item)
        return self

    def observe_recommendation(self, items: Sequence[str]) -> ExposureWindow:
        """One published list (item ids, best first), cut to the top ``k``."""
        _check_list(items)
        top = tuple(items[: self.k])
        if not top:
            return self
        window = self.items
        head = window.head_items()
        n_tail = 0
        info = 0.0
        exposure = self._exposure
        for item in top:
            _check_item(item)
            n_tail += item not in head
            info -= math.log2(window.pop_share(item))
            exposure[item] = exposure.get(item, 0) + 1
        self._lists.append((top, n_tail, info))
        self._slots += len(top)
        self._tail_slots += n_tail
        self._aplt_sum += n_tail / len(top)
        self._novelty_sum += info
        if len(self._lists) > self.rec_window:
            self._evict()
        return self

    def _evict(self) -> None:
        old, n_tail, info = self._lists.popleft()
        exposure = self._exposure
        for item in old:
            c = exposure[item] - 1
            if c:
                exposure[item] = c
            else:
                del exposure[item]
        self._slots -= len(old)
        self._tail_slots -= n_tail
        self._aplt_sum -= n_tail / len(old)
        self._novelty_sum -= info
        self._evictions += 1
        if self._evictions >= self.rec_window:  # re-add exactly once per window turn: no float drift
            self._evictions = 0
            self._aplt_sum = math.fsum(t / len(lst) for lst, t, _ in self._lists)
            self._novelty_sum = math.fsum(i for _, _, i in self._lists)

    # -- outputs
    @property
    def n_lists(self) -> int:
        return len(self._lists)

    def exposure_counts(self) -> dict[str, int]:
        """Recommendation count per item over the list window (a copy)."""
        return dict(self._exposure)

    def snapshot(self) -> dict[str, float | int]:
        active = self.items.active_items()
        n_active = len(active)
        exposure = self._exposure
        if n_active:
            if len(exposure) <= n_active:
                covered = sum(1 for item in exposure if item in active)
            else:
                covered = sum(1 for item in active if item in exposure)
            cov = covered / n_active
            get = exposure.get
            g = gini(get(item, 0) for item in active)
        else:
            cov = 0.0
            g = 0.0
        slots = self._slots
        n_lists = len(self._lists)
        return {
            "tail_share": self._tail_slots / slots if slots else 0.0,
            "coverage": cov,
            "gini": g,
            "aplt": max(self._aplt_sum, 0.0) / n_lists if n_lists else 0.0,
            "novelty": max(self._novelty_sum, 0.0) / slots if slots else 0.0,
            "window_events": self.items.n_events,
            "k": self.k,
        }
