"""The baselines' item window: counts over the last events, kept ranked, exact after every event.

MostPop's top-k and the docs/design.md §4 head/tail split are reads of one ranking by (count desc, item id
asc), kept in count buckets: an event is two bisects, and the head boundary is found from the lowest counts
once after a change, so the split is exact at every read without re-selecting all active items per event.

>>> w = WindowPopularity(window_events=5, head_share=0.4)
>>> for item in "aabcd":
...     w.observe(item)
>>> w.top(2), w.top(2, banned={"a"}), w.is_tail("a"), w.is_tail("b"), w.is_tail("never-seen")
([('a', 2), ('b', 1)], [('b', 1), ('c', 1)], False, True, True)
>>> w.observe("e")      # evicts the first "a": five items of count 1, head = floor(0.4 * 5) = 2 by id
>>> [i for i in "abcde" if not w.is_tail(i)], w.count("a")
(['a', 'b'], 1)
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Collection

from online.headtail import head_size

__all__ = ["WindowPopularity"]

_NOTHING: frozenset[str] = frozenset()


class WindowPopularity:
    """Counts of the last ``window_events`` items, ranked by (count desc, item id asc)."""

    __slots__ = ("window_events", "head_share", "_events", "_counts", "_bucket", "_levels", "_boundary")

    def __init__(self, *, window_events: int, head_share: float = 0.2) -> None:
        if window_events < 1:
            raise ValueError(f"window_events must be >= 1, got {window_events}")
        if not 0.0 <= head_share <= 1.0:
            raise ValueError(f"head_share must be in [0, 1], got {head_share!r}")
        self.window_events = int(window_events)
        self.head_share = float(head_share)
        self._events: deque[str] = deque()
        self._counts: dict[str, int] = {}
        self._bucket: dict[int, list[str]] = {}  # count -> the items with that count, sorted by id
        self._levels: list[int] = []  # the distinct counts, ascending
        # the last head item as (count, id): head iff count > it, or equal count and id <= it; ("" = no
        # item of that count is head); None = not computed since the last change
        self._boundary: tuple[int, str] | None = None

    def observe(self, item: str) -> None:
        """One event of ``item``; the oldest event leaves once the window is full."""
        self._events.append(item)
        self._move(item, 1)
        if len(self._events) > self.window_events:
            self._move(self._events.popleft(), -1)
        self._boundary = None

    def _move(self, item: str, step: int) -> None:
        counts, bucket, levels = self._counts, self._bucket, self._levels
        c = counts.get(item, 0)
        if c:
            ids = bucket[c]
            del ids[bisect_left(ids, item)]
            if not ids:
                del bucket[c]
                del levels[bisect_left(levels, c)]
        c += step
        if c:
            counts[item] = c
            ids = bucket.get(c)
            if ids is None:
                bucket[c] = [item]
                insort(levels, c)
            else:
                insort(ids, item)
        else:
            del counts[item]

    def __len__(self) -> int:
        """Active items (at least one event in the window)."""
        return len(self._counts)

    def count(self, item: str) -> int:
        return self._counts.get(item, 0)

    def _head_boundary(self) -> tuple[int, str]:
        if self._boundary is None:
            n_active = len(self._counts)
            n_tail = n_active - head_size(n_active, self.head_share)
            below = 0  # tail items in the levels walked so far
            boundary = (math.inf, "")  # no item: everything is tail
            for c in self._levels:  # lowest count first; within a count the larger ids rank lower
                ids = self._bucket[c]
                if below + len(ids) >= n_tail:
                    n_head_here = len(ids) - (n_tail - below)
                    boundary = (c, ids[n_head_here - 1] if n_head_here else "")
                    break
                below += len(ids)
            self._boundary = boundary
        return self._boundary

    def is_tail(self, item: str) -> bool:
        """True unless ``item`` is in the head (items absent from the window are tail)."""
        c = self._counts.get(item)
        if c is None:
            return True
        bc, bid = self._head_boundary()
        return c < bc or (c == bc and item > bid)

    def top(self, n: int, banned: Collection[str] = _NOTHING,
            also_banned: Collection[str] = _NOTHING) -> list[tuple[str, int]]:
        """The ``n`` best ``(item, count)`` not in ``banned`` nor ``also_banned``, best first."""
        out: list[tuple[str, int]] = []
        if n <= 0:
            return out
        bucket = self._bucket
        for c in reversed(self._levels):
            for item in bucket[c]:
                if item in banned or item in also_banned:
                    continue
                out.append((item, c))
                if len(out) >= n:
                    return out
        return out
