"""Prequential HR@K / NDCG@K: pair each event with the recommendation list that preceded it (docs/design.md §3, §4).

The k-th recommendation for a user (``user_event_count == k``) predicts that user's (k+1)-th event. Events
and recommendations arrive on two topics in any interleaving, so pairing is done by count, never by time:
event ``j`` (1-based ``event_index``) is paired with the user's **latest** list whose count is ``<= j-1``:

* ``"exact"``: that count is ``j - 1`` (the list made right after the previous event);
* ``"stale"``: it is older (the scorer coalesced requests and skipped counts);
* ``"none"``: there is no such list (every user's first event; users never served).

Per user, list counts arrive non-decreasing, so once a list with count ``>= j - 1`` has been seen no list
that could pair with event ``j`` is still on its way: the event is resolved then. The streaming result
thus equals the offline one (sort everything, pair by count) whatever the interleaving, provided counts
strictly increase per user (with a repeated count, an event resolved on the first copy keeps it).

>>> pairer = PrequentialPairer()
>>> pairer.observe_event("u", "i1", 1)          # first event: waits for any list with count >= 0
[]
>>> (o,) = pairer.observe_recommendation("u", 1, ["i2", "i3"], "A")   # resolves event 1
>>> o.pairing, o.rank, o.arm, o.prior_events                          # nothing preceded it
('none', None, 'A', 0)
>>> pairer.observe_event("u", "i3", 2)          # list 1 predicts event 2: exact, rank 1
[Outcome(user='u', item='i3', event_index=2, arm='A', rank=1, pairing='exact', prior_events=1, rec_count=1)]
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from online.exposure import ExposureWindow
from online.headtail import ItemWindow
from online.metrics import NDCG, HitRate, Metric, Rolling

__all__ = [
    "DEFAULT_BUCKETS",
    "ArmMetrics",
    "Outcome",
    "PrequentialMetrics",
    "PrequentialPairer",
    "hit_rank",
]

Pairing = Literal["exact", "stale", "none"]
PAIRINGS: tuple[Pairing, ...] = ("exact", "stale", "none")

#: User-activity buckets by prior event count: ``(low, high or None, label)``, inclusive bounds.
DEFAULT_BUCKETS: tuple[tuple[int, int | None, str], ...] = ((0, 5, "<=5"), (6, 20, "6-20"), (21, None, ">20"))


def hit_rank(items: Sequence[str], target: str) -> int | None:
    """0-based position of ``target`` in ``items``, ``None`` if absent.

    >>> hit_rank(["a", "b", "c"], "c"), hit_rank(["a"], "z"), hit_rank([], "a")
    (2, None, None)
    """
    try:
        return items.index(target)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event, resolved against the list that preceded it.

    ``arm``: the paired list's arm; for ``"none"``, the arm of the user's latest known list (arms are per
    user: a first event is charged to the arm that then serves the user), ``None`` without any list.
    ``rank``: 0-based position of ``item`` in the paired list, ``None`` if absent or no list.
    ``rec_count``: the paired list's ``user_event_count`` (``None`` for ``"none"``).
    """

    user: str
    item: str
    event_index: int
    arm: str | None
    rank: int | None
    pairing: Pairing
    prior_events: int
    rec_count: int | None

    def hit(self, k: int) -> bool:
        """Whether the item is within the top ``k`` of the paired list."""
        return self.rank is not None and self.rank < k


class _Rec:
    __slots__ = ("count", "items", "arm")

    def __init__(self, count: int, items: tuple[str, ...], arm: str) -> None:
        self.count = count
        self.items = items
        self.arm = arm


class _UserState:
    __slots__ = ("recs", "counts", "pending", "max_count", "last_event", "arm", "dropped_from")

    def __init__(self) -> None:
        self.recs: list[_Rec] = []  # ascending count, arrival order within a count
        self.counts: list[int] = []  # parallel to recs, for bisect
        self.pending: deque[tuple[int, str]] = deque()  # (event_index, item), ascending event_index
        self.max_count = -1  # highest list count seen (-1: none yet)
        self.last_event = 0  # highest event index seen
        self.arm: str | None = None  # arm of the latest list seen
        self.dropped_from: int | None = None  # smallest count of a list this state threw away


class PrequentialPairer:
    """Streaming pairing of events with the recommendation lists that preceded them, in bounded memory.

    ``observe_event`` / ``observe_recommendation`` / ``flush`` return the :class:`Outcome` objects they
    resolve (ascending ``event_index`` per user). Memory is bounded three ways, each counted:

    * per user, at most ``max_pending_per_user`` unresolved events; the oldest beyond that resolves as
      ``"none"`` (``evicted_events``);
    * per user, only the lists still needed (the latest with count ``<=`` the oldest pending event's
      ``j - 1``, or the last event index, and every newer one), at most ``max_recs_per_user``;
    * at most ``max_users`` users, the least recently touched evicted first (``evicted_users``; their
      pending events resolve as ``"none"``); a returning user starts afresh.

    An event whose list was thrown away resolves as ``"none"`` (``lost_pairings``). A list with a lower
    count than one already seen cannot change any pairing and is dropped (``late_recommendations``).

    >>> p = PrequentialPairer()
    >>> p.observe_recommendation("u", 2, ["x", "y"], "B")       # list 1 was skipped (coalesced)
    []
    >>> [(o.event_index, o.pairing, o.rank) for o in p.observe_event("u", "y", 4)]   # needs list 3
    []
    >>> [(o.event_index, o.pairing, o.rank) for o in p.observe_recommendation("u", 5, ["z"], "B")]
    [(4, 'stale', 1)]
    >>> p.observe_event("u", "q", 7), p.pending
    ([], 1)
    >>> [(o.event_index, o.pairing, o.rec_count) for o in p.flush()]   # end of replay: latest <= 6 is 5
    [(7, 'stale', 5)]
    """

    def __init__(
        self,
        *,
        max_pending_per_user: int = 64,
        max_recs_per_user: int = 32,
        max_users: int = 1_000_000,
    ) -> None:
        for name, value in (
            ("max_pending_per_user", max_pending_per_user),
            ("max_recs_per_user", max_recs_per_user),
            ("max_users", max_users),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_pending_per_user = max_pending_per_user
        self.max_recs_per_user = max_recs_per_user
        self.max_users = max_users
        self._users: OrderedDict[str, _UserState] = OrderedDict()
        self.pending = 0
        self.evicted_events = 0
        self.evicted_users = 0
        self.lost_pairings = 0
        self.late_recommendations = 0

    # -- state
    def _state(self, user: str, out: list[Outcome]) -> _UserState:
        users = self._users
        st = users.get(user)
        if st is None:
            st = users[user] = _UserState()
            if len(users) > self.max_users:
                old_user, old = users.popitem(last=False)
                self.evicted_users += 1
                while old.pending:
                    j, item = old.pending.popleft()
                    out.append(self._evict(old_user, old, j, item))
        else:
            users.move_to_end(user)
        return st

    # -- pairing
    def _resolve(self, user: str, st: _UserState, j: int, item: str) -> Outcome:
        prior = j - 1
        idx = bisect_right(st.counts, prior) - 1
        if idx < 0:
            if st.dropped_from is not None and st.dropped_from <= prior:
                self.lost_pairings += 1
            return Outcome(user, item, j, st.arm, None, "none", prior, None)
        rec = st.recs[idx]
        pairing: Pairing = "exact" if rec.count == prior else "stale"
        return Outcome(user, item, j, rec.arm, hit_rank(rec.items, item), pairing, prior, rec.count)

    def _evict(self, user: str, st: _UserState, j: int, item: str) -> Outcome:
        """A pending event given up for memory: its list is not known yet, so it pairs with nothing."""
        self.pending -= 1
        self.evicted_events += 1
        return Outcome(user, item, j, st.arm, None, "none", j - 1, None)

    def _prune(self, st: _UserState) -> None:
        need = st.pending[0][0] - 1 if st.pending else st.last_event
        idx = bisect_right(st.counts, need) - 1
        drop = max(idx, len(st.recs) - self.max_recs_per_user, 0)
        if drop:
            if st.dropped_from is None:
                st.dropped_from = st.counts[0]
            del st.recs[:drop]
            del st.counts[:drop]

    def observe_recommendation(
        self, user: str, user_event_count: int, items: Sequence[str], arm: str
    ) -> list[Outcome]:
        """One published list (docs/design.md §3 ``recommendations``); returns the events it resolves."""
        if not isinstance(user_event_count, int) or user_event_count < 0:
            raise ValueError(f"user_event_count must be an int >= 0, got {user_event_count!r}")
        if isinstance(items, str):
            raise TypeError("items must be a sequence of item ids, not a single str")
        out: list[Outcome] = []
        st = self._state(user, out)
        if user_event_count < st.max_count:
            self.late_recommendations += 1
            return out
        st.max_count = user_event_count
        st.arm = arm
        st.recs.append(_Rec(user_event_count, tuple(items), arm))
        st.counts.append(user_event_count)
        pending = st.pending
        while pending and pending[0][0] - 1 <= user_event_count:
            j, item = pending.popleft()
            self.pending -= 1
            out.append(self._resolve(user, st, j, item))
        self._prune(st)
        return out

    def observe_event(self, user: str, item: str, event_index: int) -> list[Outcome]:
        """One interaction, ``event_index`` = its 1-based position in the user's history."""
        if not isinstance(event_index, int) or event_index < 1:
            raise ValueError(f"event_index must be an int >= 1, got {event_index!r}")
        out: list[Outcome] = []
        st = self._state(user, out)
        if event_index > st.last_event:
            st.last_event = event_index
        if event_index - 1 <= st.max_count:
            out.append(self._resolve(user, st, event_index, item))
        else:
            pending = st.pending
            if not pending or pending[-1][0] <= event_index:
                pending.append((event_index, item))
            else:  # out of order: keep the queue sorted (rare; the queue is short)
                pos = bisect_right([j for j, _ in pending], event_index)
                pending.insert(pos, (event_index, item))
            self.pending += 1
            if len(pending) > self.max_pending_per_user:
                j, old_item = pending.popleft()
                out.append(self._evict(user, st, j, old_item))
        self._prune(st)
        return out

    def _drain(self, user: str, st: _UserState, out: list[Outcome]) -> list[Outcome]:
        """Resolve all of ``user``'s pending events with the lists known now, into ``out``."""
        while st.pending:
            j, item = st.pending.popleft()
            self.pending -= 1
            out.append(self._resolve(user, st, j, item))
        return out

    def flush(self) -> list[Outcome]:
        """Resolve every pending event with the lists known now (end of a replay)."""
        out: list[Outcome] = []
        for user, st in self._users.items():
            self._drain(user, st, out)
            self._prune(st)
        return out

    def forget(self, user: str) -> list[Outcome]:
        """Erase ``user`` (#17): their pending events are resolved with the lists known now (as :meth:`flush`
        does) and returned, and everything held for them goes; their next event starts afresh.

        >>> p = PrequentialPairer()
        >>> _ = p.observe_recommendation("u", 1, ["x"], "A"); _ = p.observe_event("u", "y", 3)
        >>> [(o.event_index, o.pairing) for o in p.forget("u")], p.pending, p.forget("u")
        ([(3, 'stale')], 0, [])
        """
        st = self._users.pop(user, None)
        return [] if st is None else self._drain(user, st, [])


def _check_buckets(buckets: Iterable[tuple[int, int | None, str]]) -> tuple[tuple[int, int | None, str], ...]:
    bs = tuple(tuple(b) for b in buckets)  # type: ignore[misc]
    if not bs:
        raise ValueError("buckets must not be empty")
    expected_low = 0
    for i, (low, high, label) in enumerate(bs):
        if low != expected_low:
            raise ValueError(
                f"buckets must be contiguous from 0: bucket {label!r} starts at {low}, "
                f"expected {expected_low}"
            )
        if high is None:
            if i != len(bs) - 1:
                raise ValueError(f"only the last bucket may be open-ended (high=None), not {label!r}")
            break
        if high < low:
            raise ValueError(f"bucket {label!r} has high {high} < low {low}")
        expected_low = high + 1
    else:
        raise ValueError("the last bucket must be open-ended (high=None) so every prior count has a bucket")
    if len({label for _, _, label in bs}) != len(bs):
        raise ValueError("bucket labels must be distinct")
    return bs  # type: ignore[return-value]


class _Quality(Metric):
    """HR, NDCG, tail HR, HR per bucket and pairing counts; one update per resolved event, as
    ``(rank, is_tail, bucket index, pairing index)``."""

    __slots__ = ("labels", "hr", "ndcg", "tail_hr", "by_bucket", "pairings")

    def __init__(self, k: int, labels: Sequence[str]) -> None:
        self.labels = labels
        self.hr, self.ndcg, self.tail_hr = HitRate(k), NDCG(k), HitRate(k)
        self.by_bucket = [HitRate(k) for _ in labels]
        self.pairings = [0] * len(PAIRINGS)

    def _step(self, sign: int, rank: int | None, tail: bool, b: int, p: int) -> _Quality:
        for metric in (self.hr, self.ndcg, self.by_bucket[b], *((self.tail_hr,) if tail else ())):
            (metric.update if sign > 0 else metric.revert)(rank)
        self.pairings[p] += sign
        return self

    def update(self, *args) -> _Quality:
        return self._step(1, *args)

    def revert(self, *args) -> _Quality:
        return self._step(-1, *args)

    def get(self) -> dict:
        return {
            "hr": self.hr.get(),
            "ndcg": self.ndcg.get(),
            "tail_hr": self.tail_hr.get(),
            "hr_by_bucket": {label: m.get() for label, m in zip(self.labels, self.by_bucket)},
            "evaluated": self.hr.den,
            "exact": self.pairings[0],
            "stale": self.pairings[1],
            "none": self.pairings[2],
            "tail_evaluated": self.tail_hr.den,
            "bucket_counts": {label: m.den for label, m in zip(self.labels, self.by_bucket)},
        }


class PrequentialMetrics:
    """HR@K, NDCG@K, tail HR@K and HR@K per user-activity bucket over the last ``window_events`` outcomes
    (``None``: no window). ``update(outcome, is_tail=...)``: the target's head/tail status as the caller
    read it when the outcome resolved. O(1) per update.

    "none" pairings count as misses (docs/design.md §4: with no preceding list the item does not appear in
    it; excluding them would reward not serving, and hide first events, the long-tail users' case); the
    counts ``exact``, ``stale`` and ``none`` are reported beside the rates. "stale" pairings are scored
    against the stale list, as served.

    ``get()`` keys: ``hr``, ``ndcg``, ``tail_hr``, ``hr_by_bucket`` (by the user's prior event count
    ``j - 1``), and the counts ``evaluated``, ``exact``, ``stale``, ``none``, ``tail_evaluated``,
    ``bucket_counts``. A rate with nothing to count is 0.0 (never NaN: records stay valid JSON).

    >>> m = PrequentialMetrics(k=2)
    >>> hit_first = Outcome("u", "i", 2, "A", 0, "exact", 1, 1)
    >>> hit_second = Outcome("v", "j", 8, "A", 1, "stale", 7, 5)
    >>> miss = Outcome("w", "k", 1, "A", None, "none", 0, None)
    >>> m = m.update(hit_first, is_tail=False).update(hit_second, is_tail=True)
    >>> r = m.update(miss, is_tail=True).get()
    >>> round(r["hr"], 4), round(r["ndcg"], 4), r["tail_hr"]     # 2/3; (1 + 1/log2(3)) / 3; 1 of 2 tail
    (0.6667, 0.5436, 0.5)
    >>> r["hr_by_bucket"], r["bucket_counts"]
    ({'<=5': 0.5, '6-20': 1.0, '>20': 0.0}, {'<=5': 2, '6-20': 1, '>20': 0})
    >>> r["evaluated"], r["exact"], r["stale"], r["none"]
    (3, 1, 1, 1)
    """

    def __init__(
        self,
        *,
        k: int = 10,
        window_events: int | None = 100_000,
        buckets: Iterable[tuple[int, int | None, str]] = DEFAULT_BUCKETS,
    ) -> None:
        if window_events is not None and (not isinstance(window_events, int) or window_events < 1):
            raise ValueError(f"window_events must be a positive int or None (no window), got {window_events!r}")
        self.k = k
        self.window_events = window_events
        self.buckets = _check_buckets(buckets)
        self._bounds = [b[0] for b in self.buckets]
        self._window = Rolling(_Quality, window_events, k=k, labels=[label for _, _, label in self.buckets])

    def _bucket_index(self, prior_events: int) -> int:
        if prior_events < 0:
            raise ValueError(f"prior_events must be >= 0, got {prior_events!r}")
        return bisect_right(self._bounds, prior_events) - 1

    def update(self, outcome: Outcome, *, is_tail: bool) -> PrequentialMetrics:
        b = self._bucket_index(outcome.prior_events)
        self._window.update(outcome.rank, bool(is_tail), b, PAIRINGS.index(outcome.pairing))
        return self

    def get(self) -> dict:
        return self._window.get()

    def __repr__(self) -> str:
        r = self.get()
        return f"PrequentialMetrics(k={self.k}): hr={r['hr']:.4f} ndcg={r['ndcg']:.4f} n={r['evaluated']}"


class ArmMetrics:
    """Everything the exposure agent and the evaluate harness need, per A/B arm: one
    :class:`~online.headtail.ItemWindow` shared by all arms (head/tail is a property of the item stream),
    per arm an :class:`~online.exposure.ExposureWindow` and a :class:`PrequentialMetrics`, and one
    :class:`PrequentialPairer` (outcomes without an arm count in ``unattributed``). An event is paired
    before it enters the window, the usual prequential order.

    >>> am = ArmMetrics(k=2, window_events=100)
    >>> _ = am.observe_event("u1", "a", 1)
    >>> _ = am.observe_recommendation("u1", 1, ["a", "b"], "tail-rerank")
    >>> _ = am.observe_event("u1", "b", 2)        # list 1 predicts event 2: hit at rank 1
    >>> am.arms()
    ['tail-rerank']
    >>> rec = am.record("tail-rerank", window_end=1700000000.0)
    >>> rec["hr"], rec["hr_by_bucket"]["<=5"], rec["coverage"], rec["window_events"], rec["k"]
    (0.5, 0.5, 1.0, 2, 2)
    """

    def __init__(
        self,
        *,
        k: int = 10,
        window_events: int = 100_000,
        head_share: float = 0.2,
        buckets: Iterable[tuple[int, int | None, str]] = DEFAULT_BUCKETS,
        refresh_events: int | None = None,
        max_pending_per_user: int = 64,
        max_recs_per_user: int = 32,
        max_users: int = 1_000_000,
    ) -> None:
        self.k = k
        self.window_events = window_events
        self.buckets = _check_buckets(buckets)
        self.items = ItemWindow(
            window_events=window_events, head_share=head_share, refresh_events=refresh_events
        )
        self.pairer = PrequentialPairer(
            max_pending_per_user=max_pending_per_user,
            max_recs_per_user=max_recs_per_user,
            max_users=max_users,
        )
        self._exposure: dict[str, ExposureWindow] = {}
        self._quality: dict[str, PrequentialMetrics] = {}
        self.unattributed = 0
        PrequentialMetrics(k=k, window_events=window_events, buckets=self.buckets)  # validate early

    def _arm(self, arm: str) -> None:
        if arm not in self._exposure:
            self._exposure[arm] = ExposureWindow.shared(self.items, k=self.k, rec_window=self.window_events)
            self._quality[arm] = PrequentialMetrics(
                k=self.k, window_events=self.window_events, buckets=self.buckets
            )

    def _score(self, outcomes: list[Outcome]) -> list[Outcome]:
        is_tail = self.items.is_tail
        for o in outcomes:
            if o.arm is None:
                self.unattributed += 1
                continue
            self._arm(o.arm)
            self._quality[o.arm].update(o, is_tail=is_tail(o.item))
        return outcomes

    def observe_event(self, user: str, item: str, event_index: int) -> list[Outcome]:
        outcomes = self._score(self.pairer.observe_event(user, item, event_index))
        self.items.observe_event(user, item)
        return outcomes

    def observe_recommendation(
        self, user: str, user_event_count: int, items: Sequence[str], arm: str
    ) -> list[Outcome]:
        if not isinstance(arm, str):
            raise TypeError(f"arm must be a str, got {type(arm).__name__}")
        self._arm(arm)
        self._exposure[arm].observe_recommendation(items)
        return self._score(self.pairer.observe_recommendation(user, user_event_count, items, arm))

    def flush(self) -> list[Outcome]:
        return self._score(self.pairer.flush())

    def forget(self, user: str) -> list[Outcome]:
        """Erase ``user``'s pairing state (:meth:`PrequentialPairer.forget`); the windows hold no per-user data."""
        return self._score(self.pairer.forget(user))

    def arms(self) -> list[str]:
        return sorted(self._exposure)

    def exposure(self, arm: str) -> ExposureWindow:
        return self._exposure[self._known(arm)]

    def quality(self, arm: str) -> PrequentialMetrics:
        return self._quality[self._known(arm)]

    def _known(self, arm: str) -> str:
        if arm not in self._exposure:
            raise KeyError(f"unknown arm {arm!r}; arms seen so far: {self.arms()}")
        return arm

    def record(self, arm: str, window_end: float) -> dict:
        """The docs/design.md §3 ``longtail-metrics`` record for ``arm`` (exactly its keys)."""
        snap = self.exposure(arm).snapshot()
        q = self._quality[arm].get()
        return {"window_end": float(window_end), "window_events": snap["window_events"], "arm": arm,
                **{key: snap[key] for key in ("tail_share", "coverage", "gini", "aplt", "novelty")},
                **{key: q[key] for key in ("hr", "ndcg", "tail_hr", "hr_by_bucket")}, "k": self.k}
