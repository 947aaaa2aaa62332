"""The contract every online model honours, and the small pieces they share.

Every model in ``online/`` learns from one event at a time and answers three questions::

    learn_one(user, item, ts, history)          # history: the user's recent items BEFORE this event,
                                                # oldest first, most recent last (bounded, e.g. 50)
    recommend(user, history, k, exclude=())     # top-k Candidates, best first
    score(user, history, items)                 # float64 scores aligned with items; unknown item -> 0.0

Ids are ``str`` in the public API and dense ``int`` indices inside (see :class:`IdIndex`); timestamps
are float Unix seconds. ``recommend`` never returns an item of ``exclude`` nor of ``history``
(re-recommending what the user just consumed is left to the caller to add back, on purpose).

>>> c = Candidate("i7", 0.9, "covisit", anchor="i42")
>>> c.reason()
'co-visited with i42'
>>> Candidate("i9", 0.1, "fresh").reason()
'tail discovery'
"""

from __future__ import annotations

from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from zlib import crc32
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "item_hash",
    "item_hashes",
    "SOURCES",
    "TIE_RTOL",
    "TIE_RTOL_F64",
    "TOP_K_SPARE",
    "Candidate",
    "CandidateList",
    "DecayClock",
    "Event",
    "IdIndex",
    "ItemIndexed",
    "OnlineModel",
    "group",
    "learn_many",
    "must_be_at_least",
    "positive_int",
    "recent_distinct",
    "tie_floor",
    "top_k",
    "top_k_rows",
]

#: Every value ``Candidate.source`` may take.
SOURCES = ("popularity", "covisit", "transitions", "last", "mf", "content", "fresh", "transformer", "vae", "blend")

_REASONS = {
    "popularity": "popular now",
    "covisit": "co-visited with {anchor}",
    "transitions": "often next after {anchor}",
    "last": "goes with {anchor}, your latest",
    "mf": "liked by people with your taste",
    "content": "similar to {anchor}",
    "fresh": "tail discovery",
    "transformer": "matches your recent sequence",
    "vae": "fits your whole history",
    "blend": "picked for you",
}
_REASONS_NO_ANCHOR = {"covisit": "often seen together", "transitions": "often next",
                      "content": "similar to what you like"}
_REASONS_FIXED = {s: text for s, text in _REASONS.items() if "{" not in text}  # need no formatting

def item_hash(item: str) -> int:
    """A stable 32-bit hash of an item id (CRC-32 of its UTF-8 bytes): how a user's consumed items are kept
    compactly (4 bytes each) in the user state and the score requests, the same on every machine.

    >>> item_hash("i42")
    3418000330
    """
    return crc32(item.encode())


def item_hashes(items: Iterable[str]) -> np.ndarray:
    """:func:`item_hash` of each item, as a uint32 array."""
    return np.fromiter((crc32(i.encode()) for i in items), dtype=np.uint32)


#: ``(user, item, ts, history)``, the argument tuple of ``learn_one``.
Event = tuple[str, str, float, Sequence[str]]


@dataclass(slots=True, unsafe_hash=True)
class Candidate:
    """One recommended item, the source that proposed it and (optionally) the history item behind it.
    Hashable but not frozen: a frozen dataclass's constructor costs 3.5x, and the scorer builds 50 a list."""

    item: str
    score: float
    source: str
    anchor: str | None = None

    def reason(self) -> str:
        """Short human text for the recommendation message, e.g. ``"co-visited with i42"``."""
        fixed = _REASONS_FIXED.get(self.source)
        if fixed is not None:
            return fixed
        if self.anchor is None and self.source in _REASONS_NO_ANCHOR:
            return _REASONS_NO_ANCHOR[self.source]
        return _REASONS.get(self.source, "recommended").format(anchor=self.anchor)


class CandidateList(Sequence):
    """One source's candidates as parallel ``items`` and ``scores`` lists, best first (what a batch model
    hands back), seen as a sequence of :class:`Candidate` (no anchor) built only when read: the recommender
    reads the lists directly (a hundred ``Candidate`` objects per user cost more than the request).

    >>> cl = CandidateList(["a", "b"], [0.5, 0.25], "transformer")
    >>> len(cl), cl[1], [c.item for c in cl]
    (2, Candidate(item='b', score=0.25, source='transformer', anchor=None), ['a', 'b'])
    """

    __slots__ = ("items", "scores", "source")

    def __init__(self, items: Sequence[str], scores: Sequence[float], source: str) -> None:
        if len(items) != len(scores):
            raise ValueError(f"{len(items)} items but {len(scores)} scores")
        self.items = items
        self.scores = scores
        self.source = source

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [Candidate(item, float(s), self.source) for item, s in zip(self.items[i], self.scores[i])]
        return Candidate(self.items[i], float(self.scores[i]), self.source)

    def __iter__(self) -> Iterator[Candidate]:
        source = self.source
        for item, s in zip(self.items, self.scores):
            yield Candidate(item, float(s), source)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CandidateList):
            return (self.source, list(self.items), list(self.scores)) == (
                other.source, list(other.items), list(other.scores))
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # mutable lists inside

    def __repr__(self) -> str:
        return f"CandidateList({list(self)!r})"


@runtime_checkable
class OnlineModel(Protocol):
    """What the scorer, the evaluator and the contract test rely on."""

    name: str

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None: ...

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]: ...

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray: ...


def learn_many(model: OnlineModel, events: Iterable[Event]) -> int:
    """Feed ``(user, item, ts, history)`` tuples to ``model.learn_one`` in order; return how many."""
    n = 0
    for user, item, ts, history in events:
        model.learn_one(user, item, ts, history)
        n += 1
    return n


def recent_distinct(history: Sequence[str], n: int) -> list[str]:
    """The last ``n`` distinct items of ``history`` (oldest first), most recent first.

    >>> recent_distinct(["a", "b", "a", "c", "c"], 2)
    ['c', 'a']
    """
    out: list[str] = []
    seen: set[str] = set()
    for item in reversed(history):
        if len(out) >= n:
            break
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def must_be_at_least(minimum: float, **values: float) -> None:
    """Raise ``ValueError`` naming the first of ``values`` below ``minimum`` (constructor arguments).

    >>> must_be_at_least(1, dim=8, batch_size=0)
    Traceback (most recent call last):
    ValueError: batch_size must be >= 1, got 0
    """
    for name, value in values.items():
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")


def positive_int(name: str, value: int) -> int:
    """``value``, or ``ValueError`` naming ``name`` unless it is an int >= 1 (a bool is not)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class KeyTable:
    """Dense, append-only ``str -> int`` ids, one string object a key: what the :class:`IdIndex` es of one
    recommender share (each keeps 4 bytes an id and its names, not a dict of its own)."""

    __slots__ = ("ids", "keys")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.keys: list[str] = []

    def id(self, key: str) -> int:
        g = self.ids.get(key)
        if g is None:
            g = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return g

    def __getstate__(self) -> list[str]:
        return self.keys

    def __setstate__(self, keys: list[str]) -> None:
        self.keys = list(keys)
        self.ids = {k: g for g, k in enumerate(self.keys)}


class IdIndex:
    """Dense, append-only ``str -> int`` mapping (index = order of first appearance), over a
    :class:`KeyTable` (its own unless given one: :meth:`share`).

    >>> ix = IdIndex()
    >>> ix.add("a"), ix.add("b"), ix.add("a"), ix.get("zz")
    (0, 1, 0, -1)
    >>> len(ix), ix.names[1]
    (2, 'b')
    """

    __slots__ = ("_table", "_local", "_names")

    def __init__(self, table: KeyTable | None = None) -> None:
        self._table = KeyTable() if table is None else table
        self._local = array("i")  # table id -> index here, -1: not here
        self._names: list[str] = []

    @property
    def table(self) -> KeyTable:
        return self._table

    def add(self, key: str) -> int:
        t = self._table
        g = t.ids.get(key)
        if g is None:
            g = t.id(key)
        local = self._local
        if g < len(local):
            idx = local[g]
            if idx >= 0:
                return idx
        else:
            local.frombytes(_MINUS_ONE * (g + 1 - len(local)))
        idx = local[g] = len(self._names)
        self._names.append(t.keys[g])
        return idx

    def get(self, key: str, default: int = -1) -> int:
        g = self._table.ids.get(key)
        if g is None or g >= len(self._local):
            return default
        idx = self._local[g]
        return default if idx < 0 else idx

    @property
    def names(self) -> list[str]:
        return self._names

    def indices(self, keys: Iterable[str]) -> np.ndarray:
        """int64 indices of ``keys``, -1 for unknown ones."""
        found = map(self._table.ids.get, keys, repeat(-1))
        g = np.fromiter(found, dtype=np.int64, count=len(keys)) if hasattr(keys, "__len__") else \
            np.fromiter(found, dtype=np.int64)
        out = np.full(g.size, -1, dtype=np.int64)
        local = np.frombuffer(self._local, dtype=np.int32) if len(self._local) else np.zeros(0, dtype=np.int32)
        ok = (g >= 0) & (g < local.size)
        out[ok] = local[g[ok]]
        return out

    def share(self, table: KeyTable) -> None:
        """Move onto ``table`` (the same indices; the names become the table's strings)."""
        if table is not self._table:
            self._load(table, self._names)

    def _load(self, table: KeyTable, names: list[str]) -> None:
        """Hold ``names`` (index order) over ``table``."""
        self._table, self._local, self._names = table, array("i"), []
        for name in names:
            self.add(name)

    def __contains__(self, key: object) -> bool:
        return self.get(key) >= 0  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._names)

    def __getstate__(self) -> tuple[KeyTable, list[str]]:
        return self._table, self._names

    def __setstate__(self, state: tuple[KeyTable, list[str]] | list[str]) -> None:
        table, names = state if isinstance(state, tuple) else (KeyTable(), state)  # a list: pickled before tables
        self._load(table, names)


_MINUS_ONE = array("i", [-1]).tobytes()


class ItemIndexed:
    """A model over an :class:`IdIndex` of its items (``_index``): ``item_index`` (the recommender maps it
    to its own), ``len`` (the items it knows) and ``in`` (whether it knows an item)."""

    _index: IdIndex

    @property
    def item_index(self) -> IdIndex:
        return self._index

    def __len__(self) -> int:
        return len(self.item_index)

    def __contains__(self, item: object) -> bool:
        return item in self.item_index


class DecayClock:
    """Lazy exponential decay: an event at ``ts`` adds ``2 ** ((ts - t0) / half_life)`` instead of decaying
    every stored weight; the value at ``now`` is ``stored * 2 ** (-(now - t0) / half_life)``, so ratios and
    rankings are exact without a decay pass. Past ``max_exponent`` the owner rescales its weights by
    :meth:`rebase`'s factor. ``rate`` (``1 / half_life_s``) is for hot loops that inline :meth:`exponent`.

    >>> clock = DecayClock(half_life_s=10.0)
    >>> clock.weight(0.0), clock.weight(10.0), clock.weight(20.0)
    (1.0, 2.0, 4.0)
    >>> clock.now_factor(20.0)   # multiply stored weights by this to read them at t=20
    0.25
    """

    __slots__ = ("half_life_s", "t0", "max_exponent", "rate")

    def __init__(self, half_life_s: float, max_exponent: float = 200.0) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s!r}")
        self.half_life_s = float(half_life_s)
        self.t0: float | None = None
        self.max_exponent = max_exponent
        self.rate = 1.0 / self.half_life_s

    def exponent(self, ts: float) -> float:
        if self.t0 is None:
            self.t0 = float(ts)
        return (ts - self.t0) * self.rate

    def weight(self, ts: float) -> float:
        return 2.0 ** self.exponent(ts)

    def rebase(self, ts: float) -> float:
        """Move the reference time to ``ts``; return the factor to multiply stored weights by."""
        factor = 2.0 ** (-self.exponent(ts))
        self.t0 = float(ts)
        return factor

    def now_factor(self, now: float) -> float:
        if self.t0 is None:
            return 1.0
        return 2.0 ** (-(now - self.t0) * self.rate)

    def __getstate__(self) -> tuple[float, float | None, float]:
        return (self.half_life_s, self.t0, self.max_exponent)

    def __setstate__(self, state: tuple[float, float | None, float]) -> None:
        self.half_life_s, self.t0, self.max_exponent = state
        self.rate = 1.0 / self.half_life_s


#: Float32 scores closer than ``TIE_RTOL * max(1, |score|)`` are tied wherever a model chooses between them
#: (top k, anchors). A float32 product of the same vectors differs in its last bits from one BLAS kernel,
#: thread count or processor to another (by up to 1.2e-6 on MF scores near 1, 1.8e-7 on content cosines,
#: measured between OpenBLAS's kernels), so an exact comparison of two scores equal by construction
#: (tag-hashed content vectors make many) picks whichever the machine's rounding favours. Tied scores go
#: by a stable rule instead: the lower index in a top k, the most recent history item for an anchor.
TIE_RTOL = 1e-5
#: The same for scores computed in float64 throughout (popularity's decayed counts, co-visitation's
#: sums): equal sums added in another order differ by a few units of 1e-16, while decayed counts one
#: second apart (one-day half-life) differ by 8e-6 and must keep their order.
TIE_RTOL_F64 = 1e-12


def tie_floor(best: np.ndarray | float, rtol: float | None = None) -> np.ndarray:
    """The lowest score still tied with ``best`` (elementwise, float64): ``best - rtol * max(1, |best|)``,
    ``best`` itself where it is not finite. ``rtol``: :data:`TIE_RTOL` for float32 ``best``,
    :data:`TIE_RTOL_F64` otherwise; give :data:`TIE_RTOL` for float64 values derived from float32 ones.

    >>> float(tie_floor(np.float32(0.5))), float(tie_floor(-3e6, TIE_RTOL)), float(tie_floor(-np.inf))
    (0.49999, -3000030.0, -inf)
    """
    best = np.asarray(best)
    return _tie_lo(best.astype(np.float64, copy=False), _tie_rtol(best.dtype) if rtol is None else rtol)


def _tie_rtol(dtype: np.dtype) -> float:
    return TIE_RTOL if dtype.kind == "f" and dtype.itemsize <= 4 else TIE_RTOL_F64


def _tie_lo(v: np.ndarray, rtol: float) -> np.ndarray:
    """:func:`tie_floor` of float64 ``v`` with a given ``rtol`` (+-inf stay themselves, without a nan)."""
    return v - np.minimum(rtol * np.maximum(np.abs(v), 1.0), 1e300)


def _tie_groups(v: np.ndarray, rtol: float) -> np.ndarray:
    """The tie group (0, 1, ...) of each of the finite scores ``v`` (1-d float64, best first), as in
    :func:`top_k`. Vectorised as chains of consecutive scores less than a tolerance apart; a chain wider
    than one tolerance (rare) is split by walking its leaders."""
    m = v.size
    lo = _tie_lo(v, rtol)  # (m,) the lowest score tied with each
    new = np.empty(m, dtype=bool)  # (m,) first of its chain
    new[:1] = True
    np.less(v[1:], lo[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    chain = np.cumsum(new) - 1
    wide = np.flatnonzero(v < lo[starts[chain]])  # farther than a tolerance from its chain's first
    if wide.size:
        ends = np.append(starts[1:], m)
        neg = -v  # ascending
        for c in np.unique(chain[wide]).tolist():
            s, e = int(starts[c]), int(ends[c])
            i = s
            while i < e:  # a leader; the next one is the first score below its tolerance
                new[i] = True
                i = s + int(np.searchsorted(neg[s:e], -lo[i], side="right"))
    return np.cumsum(new) - 1


def top_k(scores: np.ndarray, k: int, banned: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` largest finite scores, best first, except the ``banned`` indices; tied scores
    (:data:`TIE_RTOL`, :data:`TIE_RTOL_F64` by dtype) by index. Ties are grouped from the top: the best score
    and its ties (:func:`tie_floor`) by index, then the best of the rest and its ties, and so on: the same
    list whatever the rounding, and a smaller ``k`` gives a prefix of a larger one's list.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9]), 2, banned=np.array([1]))
    array([3, 2])
    >>> s = np.array([0.2, 0.7 + 1e-7, 0.7, 0.1], dtype=np.float32)   # 0.7 + 1e-7: 0.7 up to the rounding
    >>> top_k(s, 2), top_k(s[[0, 2, 1, 3]], 2)
    (array([1, 2]), array([1, 2]))
    """
    if k <= 0 or scores.size == 0:
        return np.empty(0, dtype=np.int64)
    rtol = _tie_rtol(scores.dtype)
    s = np.asarray(scores, dtype=np.float64)
    if banned is not None and banned.size:
        s = s.copy()
        s[banned[banned >= 0]] = -np.inf
    finite = np.isfinite(s)
    n_ok = int(finite.sum())
    if n_ok == 0:
        return np.empty(0, dtype=np.int64)
    k = min(k, n_ok)
    if k < s.size:
        thr = s[np.argpartition(-s, k - 1)[k - 1]]
        part = np.flatnonzero(s >= tie_floor(thr, rtol))  # the k-th score's ties and all above
    else:
        part = np.flatnonzero(finite)
    v = s[part]
    order = np.lexsort((part, -v))
    part, v = part[order], v[order]
    ok = np.isfinite(v)  # (+inf, as before: ranked first, not counted in k)
    gid = np.full(part.size, -1, dtype=np.int64)
    gid[ok] = _tie_groups(v[ok], rtol)
    if gid[-1] - gid[0] + 1 < part.size:  # some scores tied: index order within each group
        part = part[np.lexsort((part, gid))]
    return part[:k].astype(np.int64, copy=False)


def group(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_inverse=True)`` for 1-d int keys: (sorted distinct keys,
    each one's first position, each key's position in ``uniq``), via one stable argsort (numpy 2's
    ``unique`` costs ~10x a sort on the few hundred keys of a request).

    >>> group(np.array([5, 3, 5, 1]))
    (array([1, 3, 5]), array([3, 1, 0]), array([2, 1, 2, 0]))
    """
    keys = np.asarray(keys)
    if not keys.size:
        empty = np.zeros(0, dtype=np.int64)
        return keys[:0], empty, empty
    order = np.argsort(keys, kind="stable")
    s = keys[order]
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    inv = np.empty(s.size, dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    return s[new], order[new], inv


#: :func:`top_k_rows` partitions this many scores more than ``k`` off each row: room for the ties of the
#: k-th score (a row with more of them falls back to :func:`top_k`)
TOP_K_SPARE = 16


def top_k_rows(
    scores: np.ndarray, k: int, banned: Sequence[np.ndarray | None] | None = None, *, overwrite: bool = False
) -> list[np.ndarray]:
    """:func:`top_k` of every row of ``scores`` (B, N), same result, one vectorised partition.

    ``banned[b]``: indices excluded from row ``b`` (-1 ignored). The ``k + TOP_K_SPARE`` largest of each row
    are grouped into ties there; a row whose k-th score has ties beyond them, with non-finite scores among
    its best or a run of near-ties wider than a tolerance falls back to :func:`top_k`. ``overwrite``: set the
    banned entries of ``scores`` itself to -inf (no copy).

    >>> [r.tolist() for r in top_k_rows(np.array([[0.1, 0.9, 0.5], [3.0, 2.0, 1.0]]), 2, [None, np.array([0])])]
    [[1, 2], [1, 2]]
    >>> [r.tolist() for r in top_k_rows(np.array([[0.5, 0.7, 0.5, 0.5], [1.0, 1.0, 1.0, 2.0]]), 2)]
    [[1, 0], [3, 0]]
    """
    n_rows, n = scores.shape
    if n_rows == 1:
        return [top_k(scores[0], k, None if banned is None else banned[0])]
    if k <= 0 or n == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_rows)]
    s = scores if overwrite else np.array(scores)  # (B, N) we may write -inf into (float32 stays float32: same order)
    if banned is not None:
        lens = [0 if b is None else b.size for b in banned]
        if any(lens):
            cols = np.concatenate([b for b in banned if b is not None and b.size])
            rows = np.arange(n_rows).repeat(lens)
            ok = cols >= 0
            s[rows[ok], cols[ok]] = -np.inf
    ke, kk = min(k, n), min(k + TOP_K_SPARE, n)
    if kk < n:
        part = s.argpartition(n - kk, axis=1)[:, n - kk :]  # (B, kk) the kk largest, unordered
        vals = np.take_along_axis(s, part, axis=1)
    else:
        part, vals = np.broadcast_to(np.arange(n), (n_rows, n)), s
    order = vals.argsort(axis=1)[:, ::-1]  # best first (NaN before all)
    v = np.take_along_axis(vals, order, axis=1).astype(np.float64, copy=False)  # (B, kk)
    part = np.take_along_axis(part, order, axis=1)
    lo = _tie_lo(v, _tie_rtol(s.dtype))  # (B, kk) the lowest score tied with each
    new = np.empty(v.shape, dtype=bool)  # (B, kk) first of its chain of near-ties (as in _tie_groups)
    new[:, 0] = True
    np.less(v[:, 1:], lo[:, :-1], out=new[:, 1:])
    start = np.maximum.accumulate(np.where(new, np.arange(kk), 0), axis=1)
    narrow = ~(v < np.take_along_axis(lo, start, axis=1)).any(axis=1)  # every chain is one tie group
    clean = narrow & np.isfinite(v[:, 0]) & np.isfinite(v[:, ke - 1])
    if kk < n:
        clean &= new[:, ke:].any(axis=1)  # the k-th score's group ends inside the partition
    key = np.cumsum(new, axis=1) * n + part  # (B, kk) (tie group, index)
    ranked = np.take_along_axis(part, key.argsort(axis=1)[:, :ke], axis=1)
    return [ranked[r] if ok_r else top_k(s[r], k) for r, ok_r in enumerate(clean.tolist())]
