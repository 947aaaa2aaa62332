"""The head/tail split of docs/design.md §4, defined once, and the live window of interactions it reads.

**Head** = the top ``floor(head_share * n_active)`` active items (count > 0) by count, ties by item id
(ascending): at most ``head_share`` of them; **tail** = every other item, never-seen ones included.
:func:`head_positions` is the definition every other split calls or is tested against.

>>> head_positions(np.array([0, 5, 1, 9, 0, 2, 2, 0, 3, 3]), 0.5).tolist()   # 7 active: 3 head; 8 beats 9
[1, 3, 8]
>>> head_positions(np.array([2, 2, 1]), 0.34, ids=["b", "a", "c"]).tolist()   # 1 head: "a" wins the tie
[1]
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import KeysView, Sequence

import numpy as np

from online.base import positive_int

__all__ = ["ItemWindow", "head_positions", "head_size"]


def head_size(n_active: int, head_share: float) -> int:
    """``floor(head_share * n_active)`` (a hair of slack so that 0.2 * 10 is 2, not 1)."""
    return math.floor(head_share * n_active + 1e-9)


def head_positions(counts: np.ndarray, head_share: float, ids: Sequence[str] | None = None) -> np.ndarray:
    """Positions of the head items in ``counts`` (in no promised order); ties at the boundary count by
    ``ids[position]`` (default: by position). Positions with count 0 are not active and never head."""
    active = np.flatnonzero(counts > 0)
    n_head = head_size(active.size, head_share)
    if n_head == 0:
        return active[:0]
    c = counts[active]
    cut = np.partition(c, c.size - n_head)[c.size - n_head]  # the n_head-th largest count
    above = active[c > cut]
    tied = active[c == cut].tolist()  # ascending positions
    if ids is not None:
        tied.sort(key=ids.__getitem__)
    return np.concatenate([above, np.asarray(tied[: n_head - above.size], dtype=np.int64)])


class ItemWindow:
    """The last ``window_events`` interactions: active items, head/tail split and popularity shares.

    ``observe_event`` is O(1). The head set is recomputed (O(active items)) by the first read after at least
    ``refresh_events`` new events (default 1 % of the window; 1: always exact), so it may lag by up to
    ``refresh_events - 1`` events. Counts, active items and shares are never stale.

    >>> w = ItemWindow(window_events=5, head_share=0.2, refresh_events=1)
    >>> for item in ["b", "a", "c", "d", "e"]:           # 5 active items, one head item
    ...     _ = w.observe_event("u1", item)
    >>> sorted(w.head_items()), w.is_tail("a"), w.is_tail("b"), w.is_tail("never-seen")
    (['a'], False, True, True)
    >>> w.pop_share("a"), w.pop_share("never-seen")      # 1/5, and 1/(5+1) for a zero count
    (0.2, 0.16666666666666666)
    >>> _ = w.observe_event("u2", "c")   # evicts "b"; 4 active items: floor(0.2 * 4) = 0 head items
    >>> w.count("b"), w.count("c"), w.n_active, sorted(w.head_items())
    (0, 2, 4, [])
    """

    __slots__ = ("window_events", "head_share", "refresh_events", "_events", "_counts", "_head",
                 "_since_refresh")

    def __init__(
        self, *, window_events: int = 100_000, head_share: float = 0.2, refresh_events: int | None = None
    ) -> None:
        positive_int("window_events", window_events)
        if not 0.0 <= head_share <= 1.0:
            raise ValueError(f"head_share must be in [0, 1], got {head_share!r}")
        if refresh_events is None:
            refresh_events = max(1, window_events // 100)
        positive_int("refresh_events", refresh_events)
        self.window_events = window_events
        self.head_share = float(head_share)
        self.refresh_events = refresh_events
        self._events: deque[str] = deque()
        self._counts: dict[str, int] = {}
        self._head: frozenset[str] | None = None
        self._since_refresh = 0

    def observe_event(self, user: str, item: str) -> ItemWindow:
        """Count one interaction (``user`` matches the events contract; head/tail is per item)."""
        if not isinstance(item, str):
            raise TypeError(f"item must be one item id (str), got {type(item).__name__}")
        counts = self._counts
        self._events.append(item)
        counts[item] = counts.get(item, 0) + 1
        if len(self._events) > self.window_events:
            old = self._events.popleft()
            c = counts[old] - 1
            if c:
                counts[old] = c
            else:
                del counts[old]
        self._since_refresh += 1
        return self

    @property
    def n_events(self) -> int:
        """Events currently in the window (``window_events`` once full)."""
        return len(self._events)

    @property
    def n_active(self) -> int:
        return len(self._counts)

    def count(self, item: str) -> int:
        return self._counts.get(item, 0)

    def active_items(self) -> KeysView[str]:
        """Items with at least one interaction in the window (a live view)."""
        return self._counts.keys()

    def head_items(self) -> frozenset[str]:
        """The head set of :func:`head_positions` (maybe stale, see the class docstring)."""
        if self._head is None or self._since_refresh >= self.refresh_events:
            ids = list(self._counts)
            counts = np.fromiter(self._counts.values(), dtype=np.int64, count=len(ids))
            self._head = frozenset(ids[i] for i in head_positions(counts, self.head_share, ids).tolist())
            self._since_refresh = 0
        return self._head

    def is_tail(self, item: str) -> bool:
        """True unless ``item`` is in the head set (items absent from the window are tail)."""
        return item not in self.head_items()

    def pop_share(self, item: str) -> float:
        """``count / n_events``; ``1 / (n_events + 1)`` for an item with no interaction in the window."""
        c = self._counts.get(item, 0)
        n = len(self._events)
        return c / n if c else 1.0 / (n + 1)
