"""Time-decayed popularity, and the head/tail split over a sliding window of events (docs/design.md §4).

* **ranking**: a decayed count per item, ``sum over its events of 2 ** (-(now - ts) / half_life_s)``, kept
  lazily (:class:`online.base.DecayClock`): an event costs one add, not a decay pass; read as of now, not as of
  the last refresh (:meth:`DecayedPopularity._ranking`);
* **head/tail**: counts over the last ``window_events`` events, split by ``online.headtail.head_positions``;
  the head set is recomputed at most once every ``refresh_every`` events and read from a cached set.

Beyond ``max_items`` known items, the items out of the window are dropped, least decayed-popular first,
down to ``max_items // 2`` (window items are kept: the bound is ``max(max_items, window_events)``).

>>> pop = DecayedPopularity(half_life_s=10.0, window_events=8, head_share=0.25, refresh_every=1)
>>> for n, item in enumerate("aaaabbcd"):
...     pop.learn_one("u", item, ts=float(n), history=())
>>> [c.item for c in pop.recommend("u", (), k=3)]
['a', 'b', 'd']
>>> pop.is_tail("a"), pop.is_tail("b"), pop.is_tail("never-seen")
(False, True, True)
>>> pop.window_count("a"), pop.window_count("b")
(4, 2)
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from itertools import islice

import numpy as np

from online.base import Candidate, DecayClock, IdIndex, ItemIndexed, must_be_at_least, tie_floor, top_k
from online.headtail import head_positions

__all__ = ["DecayedPopularity"]

_CACHE_TOP = 1000  # the most popular items ranked at each refresh (the ranking now starts from them)


class DecayedPopularity(ItemIndexed):
    """Decayed popularity ranking plus the windowed head/tail split. ``name = "popularity"``."""

    name = "popularity"
    _ranked: tuple[int, list[int]] = (-1, [])  # (event count, the ranking then): _ranking's last (older pickles)

    def __init__(self, *, half_life_s: float = 86400.0, window_events: int = 100_000, head_share: float = 0.2,
                 max_items: int = 1_000_000, refresh_every: int = 1000, fresh_max_count: int = 3) -> None:
        must_be_at_least(1, window_events=window_events)
        if not 0.0 <= head_share <= 1.0:
            raise ValueError(f"head_share must be in [0, 1], got {head_share}")
        must_be_at_least(2, max_items=max_items)
        must_be_at_least(1, refresh_every=refresh_every)
        self.half_life_s = float(half_life_s)
        self.window_events = int(window_events)
        self.head_share = float(head_share)  # share of the window's active items that are head
        self.max_items = int(max_items)
        self.refresh_every = int(refresh_every)
        self.fresh_max_count = int(fresh_max_count)  # "fresh": a non-head item with at most this many events

        self._clock = DecayClock(half_life_s)
        self._index = IdIndex()
        # Python sequences, not numpy: a scalar update is ~4x cheaper than a numpy item update and learn_one is
        # on the ingest hot path. The floats in `array`s (8 bytes an item against a list's 32; numpy copies them
        # whole, never holds a view: an array with a view cannot grow), the counts in a list (small ints are shared).
        self._score = array("d")  # lazily decayed counts (DecayClock frame)
        self._count: list[int] = []  # events in the window
        self._first_ts = array("d")  # ts of the first event seen
        self._window: deque[int] = deque()
        self._n_active = 0
        self._n_events = 0
        self._last_ts = -math.inf
        # lazily refreshed caches
        self._refreshed_at = -1
        self._head: frozenset[str] = frozenset()
        self._head_mask = np.zeros(0, dtype=bool)
        self._window_counts = np.zeros(0, dtype=np.int64)
        self._top: np.ndarray = np.zeros(0, dtype=np.int64)
        self._ranked = (-1, [])

    @property
    def head_version(self) -> int:
        """Changes whenever the head set is recomputed (the event count at the last refresh)."""
        return self._refreshed_at

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str] = ()) -> None:
        idx = self._index.get(item)
        if idx < 0:
            idx = self._add_item(item, ts)
        clock = self._clock
        if clock.t0 is None:
            clock.t0 = float(ts)
        e = (ts - clock.t0) * clock.rate
        if e > clock.max_exponent:
            f = clock.rebase(ts)
            self._score = array("d", [v * f for v in self._score])
            e = 0.0
        self._score[idx] += 2.0**e
        count = self._count
        window = self._window
        if len(window) >= self.window_events:
            old = window.popleft()
            count[old] -= 1
            if count[old] == 0:
                self._n_active -= 1
        window.append(idx)
        count[idx] += 1
        if count[idx] == 1:
            self._n_active += 1
        self._n_events += 1
        if ts > self._last_ts:
            self._last_ts = ts

    def _add_item(self, item: str, ts: float) -> int:
        if len(self._index) >= self.max_items:
            self._compact()
        idx = self._index.add(item)
        self._score.append(0.0)
        self._count.append(0)
        self._first_ts.append(float(ts))
        return idx

    def _compact(self) -> None:
        """Forget out-of-window items, least decayed-popular first, down to ``max_items // 2``."""
        count = np.asarray(self._count)
        score = np.array(self._score)
        keep = count > 0
        room = self.max_items // 2 - int(keep.sum())
        if room > 0:
            idle = np.flatnonzero(~keep)
            keep[idle[top_k(score[idle], room)]] = True
        kept = np.flatnonzero(keep)  # ascending: first-seen order is preserved
        remap = np.full(count.size, -1, dtype=np.int64)
        remap[kept] = np.arange(kept.size)
        names = self._index.names
        index = IdIndex(self._index.table)
        for i in kept.tolist():
            index.add(names[i])
        self._index = index
        self._score = array("d", score[kept].tolist())
        self._count = count[kept].tolist()
        self._first_ts = array("d", np.array(self._first_ts)[kept].tolist())
        self._window = deque(remap[np.fromiter(self._window, dtype=np.int64)].tolist())
        self._refreshed_at = -1

    def _refresh(self) -> None:
        if self._refreshed_at >= 0 and self._n_events - self._refreshed_at < self.refresh_every:
            return
        count = np.asarray(self._count, dtype=np.int64)
        names = self._index.names
        head = head_positions(count, self.head_share, names)
        self._head_mask = np.zeros(count.size, dtype=bool)
        self._head_mask[head] = True
        self._window_counts = count
        self._head = frozenset(names[i] for i in head.tolist())
        self._top = top_k(np.array(self._score), _CACHE_TOP)
        self._refreshed_at = self._n_events

    def is_tail(self, item: str) -> bool:
        """True unless ``item`` is in the current head (an unknown item is tail)."""
        self._refresh()
        return item not in self._head

    def tail_mask(self, items: Iterable[str]) -> np.ndarray:
        """Boolean array, True where the item is tail."""
        self._refresh()
        head = self._head
        return np.fromiter((i not in head for i in items), dtype=bool)

    def head_items(self) -> frozenset[str]:
        self._refresh()
        return self._head

    def window_count(self, item: str) -> int:
        idx = self._index.get(item)
        return self._count[idx] if idx >= 0 else 0

    def _now(self) -> float:
        """The latest event's ts (0.0 before any): decayed counts and ages are read then."""
        return self._last_ts if math.isfinite(self._last_ts) else 0.0

    def fresh_indices(self, k: int, banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The fresh tail as (item indices, scores): the most recently first-seen items still active with
        few window counts, scored ``2 ** (-age / half_life_s)`` of their first appearance (1.0 = brand
        new); ``banned``: indices to skip (-1 ignored)."""
        return self.fresh_many(k, [banned])[0]

    def top_many(self, k: int, banned: Sequence[np.ndarray | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``k`` most popular items now as (item indices, decayed counts), for each ``banned[b]`` (indices
        to skip, -1 ignored), reading the ranking once."""
        self._refresh()
        skips = []
        for b in banned:
            skip = set(b.tolist()) if b is not None and b.size else set()
            skip.discard(-1)
            skips.append(skip)
        need = k + max((len(s) for s in skips), default=0)
        ranked = self._ranking(need)
        f = self._clock.now_factor(self._now())
        score = self._score
        out = []
        for skip in skips:
            idx: list[int] = []
            for i in ranked[: k + len(skip)]:  # (k = 0 with a ban keeps one item)
                if i not in skip:
                    idx.append(i)
                    if len(idx) >= k:
                        break
            out.append((np.asarray(idx, dtype=np.int64), np.array([score[i] * f for i in idx], dtype=np.float64)))
        return out

    def _ranking(self, need: int) -> list[int]:
        """The ``need`` most popular item indices now, best first: ``top_k`` of every item's decayed count.

        Decay is one factor for every item, so the items without an event since the last refresh keep their order
        of then: the first ``need`` of them lie within the first ``need`` + (items seen since) of the refresh's top
        :data:`_CACHE_TOP`, and no item beyond scores above the last of those. So those and the items seen since
        (the window's newest entries), re-scored, rank as the whole catalogue does, unless the last one ranked is
        tied with that bound (counts decayed to nothing after a quiet spell): then, or for a larger ``need``, the
        whole catalogue is ranked. The last ranking is kept until the next event (a smaller ``need`` reads its
        prefix)."""
        if self._ranked[0] == self._n_events and len(self._ranked[1]) >= need:
            return self._ranked[1][:need]
        top = self._top
        since = self._n_events - self._refreshed_at
        ranked = None
        if since == 0 and need <= top.size:
            ranked = top[:need].tolist()
        elif since <= len(self._window):
            seen = np.unique(np.fromiter(islice(reversed(self._window), since), dtype=np.int64, count=since))
            whole = top.size < _CACHE_TOP  # the cache held every item, and the items since are all seen
            cached = top if whole else top[: need + seen.size]
            rows = np.union1d(cached, seen)  # ascending, as the catalogue: ties by index
            score = self._score
            values = np.array([score[i] for i in rows.tolist()])
            order = top_k(values, need)
            if whole:
                ranked = rows[order].tolist()
            elif order.size == need:
                untouched = cached[~np.isin(cached, seen)]  # in the refresh's order, so the last is the least
                if untouched.size and tie_floor(values[order[-1]]) > score[int(untouched[-1])]:
                    ranked = rows[order].tolist()
        if ranked is None:
            ranked = top_k(np.array(self._score), need).tolist()
        self._ranked = (self._n_events, ranked)
        return ranked

    def fresh_many(self, k: int, banned: Sequence[np.ndarray | None]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`fresh_indices` ``(k, banned[b])`` for every ``b``, with one vectorised scan of the
        catalogue for all of them (the fresh items do not change between the calls of a micro-batch)."""
        self._refresh()
        if k <= 0:
            return [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in banned]
        skips = [set(b.tolist()) if b is not None and b.size else () for b in banned]
        need = k + max((len(s) for s in skips), default=0)  # a user skips at most len(skip) of them
        count = self._count
        n = len(count)
        lo = max(0, n - (20 * k + 1000))  # the indices fresh_indices scans, from the newest down
        c = np.array(count[lo:n], dtype=np.int64)
        ok = (c >= 1) & (c <= self.fresh_max_count)
        head = self._head_mask
        if head.size > lo:
            ok[: min(n, head.size) - lo] &= ~head[lo : min(n, head.size)]
        found = (lo + np.flatnonzero(ok))[::-1][:need].tolist()
        factor = 1.0 / self.half_life_s
        now = self._now()
        first_ts = self._first_ts
        score = {i: 2.0 ** (-max(0.0, now - first_ts[i]) * factor) for i in found}
        out = []
        for skip in skips:
            idx = [i for i in found if i not in skip][:k] if skip else found[:k]
            out.append((np.asarray(idx, dtype=np.int64), np.asarray([score[i] for i in idx], dtype=np.float64)))
        return out

    def head_mask(self) -> np.ndarray:
        """(n,) bool over this model's item indices at the last refresh: True for head items (items
        added since are tail). Read-only."""
        self._refresh()
        return self._head_mask

    def window_counts(self) -> np.ndarray:
        """(n,) int64 over this model's item indices at the last refresh (the head's refresh): each item's
        events in the window (items added since read as absent). Read-only."""
        self._refresh()
        return self._window_counts

    def top_indices(self, k: int, banned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_many` of one ``banned``: :meth:`recommend` as (item indices, decayed counts)."""
        return self.top_many(k, [banned])[0]

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        idx = self._index.indices(items)
        if not len(self._score):
            return np.zeros(len(idx))
        score = self._score
        scores = np.array([score[i] for i in np.maximum(idx, 0).tolist()]) * self._clock.now_factor(self._now())
        return np.where(idx >= 0, scores, 0.0)

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        top, scores = self.top_indices(k, self._index.indices([*exclude, *history]))
        names = self._index.names
        return [Candidate(names[i], s, "popularity") for i, s in zip(top.tolist(), scores.tolist())]
