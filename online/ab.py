"""A/B figures from impressions (#17): what a client displayed, the clicks that followed, per arm.

An **impression** is one list a client displayed to a user (the ``impressions`` topic): its items at their
display positions, a time and the serving arm. Each displayed item is a **slot**, whose head/tail status
is read when the impression arrives.

A **click** (any event) on item ``i`` by user ``u`` at time ``t`` is credited to the *latest* impression of
``u`` shown at ``ts <= t <= ts + window_s`` that displayed ``i`` (last touch); a slot counts one click at
most. A click that arrives before its impression (the topics are read independently) waits, at most
``MAX_EARLY_CLICKS`` a user and ``window_s`` old; only users already shown a list keep such clicks.

Per arm, each figure is a share with a 95% Wilson score interval: ``ctr`` = clicked / displayed slots,
``tail_ctr`` = clicked / displayed tail slots, ``tail_click_share`` = clicked tail slots / clicked slots.

>>> ledger = ImpressionLedger(is_tail=lambda item: item.startswith("t"))
>>> ledger.impression(Impression("u1", "u1:3:0", ("h1", "t1", "t2"), (0, 1, 2), 100.0, "tail"))
[]
>>> ledger.click("u1", "t2", 130.0)
Credit(arm='tail', list_id='u1:3:0', item='t2', position=2, tail=True)
>>> ledger.click("u1", "t2", 140.0) is None      # the slot was clicked already
True
>>> c = ledger.counts["tail"]
>>> (c.impressions, c.slots, c.tail_slots, c.clicks, c.tail_clicks)
(1, 3, 2, 1, 1)
>>> [round(x, 3) for x in c.ctr()]               # 1 of 3 slots: the share and its 95% interval
[0.333, 0.061, 0.792]
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from online.base import must_be_at_least

__all__ = ["ATTRIBUTION_WINDOW_S", "ArmCounts", "Credit", "Impression", "ImpressionLedger", "wilson"]

#: A click later than this after an impression is not credited to it (seconds).
ATTRIBUTION_WINDOW_S = 1800.0
#: Impressions kept per user (the newest), and clicks waiting for their impression.
MAX_IMPRESSIONS = 16
MAX_EARLY_CLICKS = 16
#: Users whose impressions are kept (the most recently shown a list).
MAX_USERS = 200_000
#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float, float]:
    """The share ``successes / trials`` and its Wilson score interval; ``(0, 0, 1)`` with no trial.

    >>> [round(x, 4) for x in wilson(5, 10)]
    [0.5, 0.2366, 0.7634]
    >>> wilson(0, 0)
    (0.0, 0.0, 1.0)
    """
    if trials <= 0:
        return 0.0, 0.0, 1.0
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class Impression:
    """One displayed list: ``items[n]`` was shown at display position ``positions[n]``."""

    user: str
    list_id: str
    items: tuple[str, ...]
    positions: tuple[int, ...]
    ts: float
    arm: str

    def __post_init__(self) -> None:
        if len(self.items) != len(self.positions):
            raise ValueError(f"impression {self.list_id!r}: {len(self.items)} items but "
                             f"{len(self.positions)} positions")


class Credit(NamedTuple):
    """One clicked slot."""

    arm: str
    list_id: str
    item: str
    position: int
    tail: bool


@dataclass(slots=True)
class ArmCounts:
    """One arm's counts since the process started."""

    impressions: int = 0  # lists displayed
    slots: int = 0  # items displayed in them (an item shown twice in a list is one slot)
    tail_slots: int = 0  # of those, tail items
    clicks: int = 0  # displayed slots clicked afterwards
    tail_clicks: int = 0  # of those, tail items

    def ctr(self) -> tuple[float, float, float]:
        return wilson(self.clicks, self.slots)

    def tail_ctr(self) -> tuple[float, float, float]:
        return wilson(self.tail_clicks, self.tail_slots)

    def tail_click_share(self) -> tuple[float, float, float]:
        return wilson(self.tail_clicks, self.clicks)

    def record(self) -> dict:
        """The ``ab`` object of a ``longtail-metrics`` record: the counts, and each share with its interval."""
        out: dict = {"impressions": self.impressions, "slots": self.slots, "tail_slots": self.tail_slots,
                     "clicks": self.clicks, "tail_clicks": self.tail_clicks}
        for name, (p, low, high) in (("ctr", self.ctr()), ("tail_ctr", self.tail_ctr()),
                                     ("tail_click_share", self.tail_click_share())):
            out[name] = {"value": p, "low": low, "high": high}
        return out


class _Shown:
    """An impression as kept for attribution: its slots by item, and which were clicked."""

    __slots__ = ("ts", "arm", "list_id", "slots", "clicked")

    def __init__(self, imp: Impression, tails: Sequence[bool]) -> None:
        self.ts = imp.ts
        self.arm = imp.arm
        self.list_id = imp.list_id
        self.slots: dict[str, tuple[int, bool]] = {}
        for item, pos, tail in zip(imp.items, imp.positions, tails):
            self.slots.setdefault(item, (pos, tail))  # an item shown twice is one slot, its first position
        self.clicked: set[str] = set()


class _User:
    __slots__ = ("shown", "early")

    def __init__(self) -> None:
        self.shown: deque[_Shown] = deque()  # in ts order, the newest last
        self.early: deque[tuple[str, float]] = deque()


class ImpressionLedger:
    """Impressions and clicks in, per-arm :class:`ArmCounts` out, with ``max_impressions`` impressions and
    ``max_early_clicks`` waiting clicks a user, for the ``max_users`` users most recently shown a list."""

    def __init__(self, *, is_tail: Callable[[str], bool], window_s: float = ATTRIBUTION_WINDOW_S,
                 max_impressions: int = MAX_IMPRESSIONS, max_early_clicks: int = MAX_EARLY_CLICKS,
                 max_users: int = MAX_USERS) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        must_be_at_least(1, max_impressions=max_impressions, max_early_clicks=max_early_clicks, max_users=max_users)
        self.is_tail = is_tail
        self.window_s = float(window_s)
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._max_impressions = max_impressions
        self._max_early = max_early_clicks
        self._max_users = max_users
        self.counts: dict[str, ArmCounts] = {}

    def arms(self) -> list[str]:
        return sorted(self.counts)

    @property
    def n_users(self) -> int:
        return len(self._users)

    def _credit(self, shown: _Shown, item: str) -> Credit:
        pos, tail = shown.slots[item]
        shown.clicked.add(item)
        c = self.counts[shown.arm]
        c.clicks += 1
        c.tail_clicks += tail
        return Credit(shown.arm, shown.list_id, item, pos, tail)

    def impression(self, imp: Impression) -> list[Credit]:
        """Count a displayed list; returns the credits of clicks that had arrived before it."""
        shown = _Shown(imp, [bool(self.is_tail(item)) for item in imp.items])
        c = self.counts.setdefault(imp.arm, ArmCounts())
        c.impressions += 1
        c.slots += len(shown.slots)
        c.tail_slots += sum(tail for _, tail in shown.slots.values())
        st = self._users.get(imp.user)
        if st is None:
            st = self._users[imp.user] = _User()
            if len(self._users) > self._max_users:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(imp.user)
        kept = st.shown
        at = len(kept)
        while at and kept[at - 1].ts > imp.ts:  # a client's impressions may arrive out of order
            at -= 1
        if len(kept) >= self._max_impressions:
            if at == 0:  # older than every impression kept: counted, but it takes no click
                return []
            kept.popleft()
            at -= 1
        kept.insert(at, shown)
        credits: list[Credit] = []
        if st.early:
            waiting: deque[tuple[str, float]] = deque()
            for item, ts in st.early:
                if item in shown.slots and item not in shown.clicked and imp.ts <= ts <= imp.ts + self.window_s:
                    credits.append(self._credit(shown, item))
                else:
                    waiting.append((item, ts))
            st.early = waiting
        return credits

    def click(self, user: str, item: str, ts: float) -> Credit | None:
        """Attribute one event; ``None`` when no displayed slot takes it (yet: see the module doc)."""
        st = self._users.get(user)
        if st is None:
            return None
        kept = st.shown
        for shown in reversed(kept):  # the latest impression shown before the click
            if shown.ts > ts:
                continue
            if ts - shown.ts > self.window_s:
                break
            if item in shown.slots:
                return None if item in shown.clicked else self._credit(shown, item)
        if kept and kept[-1].ts <= ts:  # newer than every impression kept: its own may still be on its way
            early = st.early
            while early and early[0][1] < ts - self.window_s:
                early.popleft()
            early.append((item, ts))
            if len(early) > self._max_early:
                early.popleft()
        return None

    def forget(self, user: str) -> None:
        """Erase ``user``'s impressions and waiting clicks (#17); the per-arm counts hold no per-user data."""
        self._users.pop(user, None)
