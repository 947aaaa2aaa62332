"""The feedback store: each user's latest candidate pool, kept until their next event labels it.

The ranker learns from the candidate pool, not from what was shown (docs/decisions.md, issue #15): every
candidate some source proposed within its top ``pool_depth`` is kept (:class:`Pool`, compact arrays) until
the user's next event; when that item is in the pool it is a positive against ``negatives`` candidates
drawn at random from the same pool (:meth:`FeedbackStore.examples`). At most ``max_pending`` users' pools are
held, the least recently served dropped first.

>>> store = FeedbackStore(pool_depth=2, negatives=1, max_pending=1, seed=0)
>>> pools = store.pools_from_batch(items=np.array([7, 8, 9]), tail=np.array([False, True, True]),
...     popularity=np.array([5.0, 1.0, 0.0]), unknown=np.zeros(3, dtype=bool), rows=np.array([0, 1, 2]),
...     cols=np.array([0, 0, 0]), values=np.array([3.0, 2.0, 1.0]), ranks=np.array([0, 1, 2]),
...     owners=np.array([0, 0, 0]), bounds=np.array([0, 3]), counts=[4], appetites=[0.5])
>>> pools[0].items.tolist()   # the proposal at rank 2 is beyond pool_depth 2
[7, 8]
>>> store.keep(["u1"], [("i7",)], pools); len(store), store.users()
(1, ['u1'])
>>> store.pop("u1")[0], store.pop("u1")
(('i7',), None)
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from online.blender import FeedbackBlender

__all__ = ["FeedbackStore", "Pool"]


@dataclass(slots=True)
class Pool:
    """One list's candidate pool: the candidates and their proposals within each source's top ``pool_depth``
    as entries; about 8 KB for a user with every source."""

    items: np.ndarray  # (P,) int32, the recommender's item indices
    tail: np.ndarray  # (P,) bool
    popularity: np.ndarray  # (P,) float32 window counts
    unknown: np.ndarray  # (P,) bool: not in the served batch model's vocabulary
    rows: np.ndarray  # (E,) int32, into items
    cols: np.ndarray  # (E,) int16, the source's position in the blender's sources
    values: np.ndarray  # (E,) float64 (decayed counts overflow float32)
    ranks: np.ndarray  # (E,) int32
    count: int  # the user's event count when the list was made
    appetite: float  # the user's tail appetite then

    def features(self, blender: FeedbackBlender, chosen: Sequence[int]) -> np.ndarray:
        """The blender's feature rows of candidates ``chosen`` (rows of ``items``), in that order."""
        where = np.full(self.items.size, -1, dtype=np.int64)
        chosen = np.asarray(chosen, dtype=np.int64)
        where[chosen] = np.arange(chosen.size)
        local = where[self.rows]
        sel = local >= 0
        return blender.feature_entries(len(chosen), local[sel], self.cols[sel].astype(np.int64),
                                       self.values[sel], self.ranks[sel].astype(np.float64),
                                       self.tail[chosen], np.full(len(chosen), self.count), self.popularity[chosen],
                                       self.appetite, self.unknown[chosen])


class FeedbackStore:
    """user -> (the items shown, the :class:`Pool` of that list), least recently served first."""

    def __init__(self, *, pool_depth: int = 50, negatives: int = 8, max_pending: int = 100_000,
                 seed: int = 0, rng: random.Random | None = None) -> None:
        self.pool_depth = int(pool_depth)
        self.negatives = int(negatives)
        self.max_pending = int(max_pending)
        self._rng = rng if rng is not None else random.Random(seed)
        self._lists: OrderedDict[str, tuple[tuple[str, ...], Pool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lists)

    def users(self) -> list[str]:
        """The users with a list held, least recently served first."""
        return list(self._lists)

    def get(self, user: str) -> tuple[tuple[str, ...], Pool] | None:
        """The user's held list (None without one), left held."""
        return self._lists.get(user)

    def keep(self, users: Sequence[str], shown: Sequence[tuple[str, ...]], pools: Sequence[Pool]) -> None:
        """Hold each user's newest list (its shown items and pool), dropping the least recently served beyond
        ``max_pending``; a user listed twice keeps the later one."""
        lists = self._lists
        for user, items, pool in zip(users, shown, pools):
            lists[user] = (items, pool)
            lists.move_to_end(user)
        while len(lists) > self.max_pending:
            lists.popitem(last=False)

    def pop(self, user: str) -> tuple[tuple[str, ...], Pool] | None:
        """The user's held list, removed (None without one)."""
        return self._lists.pop(user, None)

    @contextmanager
    def set_aside(self) -> Iterator[None]:
        """Hold no pools for the duration (a snapshot leaves them out: they are the bulk of the state, and
        after a restart each user's next event labels none), then put them back."""
        lists, self._lists = self._lists, OrderedDict()
        try:
            yield
        finally:
            self._lists = lists

    def examples(self, pool: Pool, hit: int) -> list[int]:
        """The pool rows to learn from when row ``hit`` was clicked: it and up to ``negatives`` distinct others
        drawn at random, in row order."""
        n_rows = pool.items.size
        chosen = [hit]
        if n_rows > 1:
            rand = self._rng.random
            want = min(self.negatives, n_rows - 1)
            picked: set[int] = {hit}
            while len(chosen) < want + 1:  # distinct negatives, drawn without a full permutation
                r = int(rand() * n_rows)
                if r not in picked:
                    picked.add(r)
                    chosen.append(r)
        chosen.sort()
        return chosen

    def pools_from_batch(self, *, items: np.ndarray, tail: np.ndarray, popularity: np.ndarray,
                         unknown: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
                         ranks: np.ndarray, owners: np.ndarray, bounds: np.ndarray, counts: Sequence[int],
                         appetites: Sequence[float]) -> list[Pool]:
        """Each user's :class:`Pool` from a micro-batch's merged candidates (``items``/``tail``/``popularity``/
        ``unknown``, user b's rows ``bounds[b]:bounds[b + 1]``) and their proposals (``rows``, ``cols``,
        ``values``, ``ranks`` and the user ``owners`` of each, sorted by user): the candidates proposed within
        some source's top ``pool_depth``, in compact dtypes (copies: the batch's arrays are let go)."""
        n_b = bounds.size - 1
        sel = ranks < self.pool_depth  # (m,) proposals kept
        keep = np.zeros(items.size, dtype=bool)
        keep[rows[sel]] = True
        new_row = np.cumsum(keep) - 1  # (n,) kept candidates renumbered, user after user
        kb = np.concatenate([[0], np.cumsum(keep)])[bounds].tolist()  # user b's kept rows: kb[b]:kb[b + 1]
        eb = np.searchsorted(owners[sel], np.arange(n_b + 1)).tolist()  # user b's kept proposals
        p_items, p_tail, p_pop = items[keep].astype(np.int32), tail[keep], popularity[keep].astype(np.float32)
        p_unknown = unknown[keep]
        e_rows = new_row[rows[sel]].astype(np.int32)
        e_cols, e_vals, e_ranks = cols[sel].astype(np.int16), values[sel], ranks[sel].astype(np.int32)
        return [Pool(p_items[kb[b] : kb[b + 1]].copy(), p_tail[kb[b] : kb[b + 1]].copy(),
                     p_pop[kb[b] : kb[b + 1]].copy(), p_unknown[kb[b] : kb[b + 1]].copy(),
                     e_rows[eb[b] : eb[b + 1]] - kb[b],
                     e_cols[eb[b] : eb[b + 1]].copy(), e_vals[eb[b] : eb[b + 1]].copy(),
                     e_ranks[eb[b] : eb[b + 1]].copy(), int(count), float(appetite))
                for b, count, appetite in zip(range(n_b), counts, appetites)]
