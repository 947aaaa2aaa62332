"""Item co-visitation neighbours, learned one event at a time (online item-to-item CF).

When a user touches item ``j`` and item ``h`` sits ``d`` positions back in their history (``d = 1`` the
most recent, up to ``lookback``), ``h -> j`` gains ``w / d`` and ``j -> h`` gains ``backward_weight`` times
that, ``w`` the event's decay weight (half-life ``half_life_s``, kept lazily: :class:`online.base.DecayClock`).
An item keeps at most ``max_neighbours`` neighbours: a row grows to twice that, then the strongest are kept
(amortised O(1) per update). A row is three flat columns, neighbour index (``array('i')``), weight
(``array('f')``, float32: the decay frame is rebased every :data:`MAX_EXPONENT` half-lives so that it cannot
overflow) and key byte (the index's low byte, a ``bytearray`` searched with ``find``, a C ``memchr``, then
checked against the index): 9 bytes a neighbour (docs/decisions.md, "Co-visitation rows"). The recommender
pairs this model with the transition counter (:meth:`CoVisitation.pair`): both see the same pairs, so the
rows hold one neighbour column and two weight columns, interleaved (13 bytes a neighbour for both models).

The similarity of ``j`` to an anchor ``h`` is ``W[h][j] / sqrt(n_h * n_j)``, ``n`` the decayed event counts:
dividing by ``sqrt(n_j)`` keeps a blockbuster that co-occurs with everything from topping every list, and
both sides decay alike. ``recommend`` sums the similarities of the last ``history_window`` distinct history
items weighted 1, 1/2, 1/3, ...; a candidate's ``anchor`` is the history item with the largest term (the
column sums and argmax of the (anchors, candidates) term matrix, ``_aggregate``, what ``score`` uses).
:meth:`CoVisitation.top` gets the same numbers without the matrix (``np.add.at`` into a dense scratch array,
in anchor order) and computes the anchors of the candidates read only.

>>> cv = CoVisitation(lookback=2, half_life_s=1e9)
>>> for user in ("u1", "u2", "u3"):
...     cv.learn_one(user, "A", 0.0, [])
...     cv.learn_one(user, "B", 1.0, ["A"])
>>> cv.learn_one("u4", "C", 2.0, ["A"])
>>> [(c.item, c.anchor) for c in cv.recommend("u9", ["A"], k=2)]
[('B', 'A'), ('C', 'A')]
>>> cv.recommend("u9", ["A"], k=1)[0].reason()
'co-visited with A'
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Collection, Sequence

import numpy as np

from online.base import (Candidate, DecayClock, IdIndex, ItemIndexed, group, must_be_at_least, recent_distinct,
                         tie_floor)

__all__ = ["CoVisitation"]


class CoVisitation(ItemIndexed):
    """Decayed, bounded, normalised item co-visitation. ``name = "covisit"``."""

    name = "covisit"

    def __init__(self, *, lookback: int = 5, half_life_s: float = 7 * 86400.0, max_neighbours: int = 100,
                 backward_weight: float = 0.5, history_window: int = 10, normalise: bool = True,
                 distance_decay: bool = True) -> None:
        must_be_at_least(1, lookback=lookback, max_neighbours=max_neighbours)
        must_be_at_least(0, backward_weight=backward_weight)
        self.lookback = int(lookback)
        self.half_life_s = float(half_life_s)
        self.max_neighbours = int(max_neighbours)
        self.backward_weight = float(backward_weight)
        self.history_window = int(history_window)
        self.normalise = bool(normalise)  # W[h][j] / sqrt(n_h * n_j); off: raw counts (transitions)
        self.distance_decay = bool(distance_decay)  # h at distance d gains w / d; off: w
        self._clock = DecayClock(half_life_s, MAX_EXPONENT)
        self._index = IdIndex()
        # Neighbours of item h, slot by slot (a prune keeps the order of its sort): _nj[h][slot] = j,
        # _nw[h][slot] = weight (DecayClock frame), _key[h][slot] = j & 255. ``array.array`` rows: a scalar
        # update costs what a list's does, and reads view them without a copy (no view outlives a read).
        self._key: list[bytearray] = []
        self._nj: list[array] = []
        self._nw: list[array] = []
        self._count = array("d")  # decayed event count per item (same frame)
        # weight columns a row holds (2: paired, see pair) and this model's; the model whose learn_one writes
        # this model's column (None: this one) and the model this one writes a second column for (None: none)
        self._cols, self._col = 1, 0
        self._owner: CoVisitation | None = None
        self._mate: CoVisitation | None = None
        self._acc = self._mark = _EMPTY_J  # serving scratch (see top), grown on first use
        self._banned = np.zeros(0, dtype=bool)

    @classmethod
    def transitions(cls, *, max_neighbours: int = 100) -> CoVisitation:
        """The plain transition counter: ``W[h][j]`` counts ``j`` following ``h`` within 5 items (``j -> h``
        counts one half), no time decay, no distance weighting, no popularity normalisation; a user's
        score of ``j`` sums ``W[h_r][j] / r`` over their last 5 distinct items. Source ``"transitions"``.

        >>> cv = CoVisitation.transitions()
        >>> for user in ("u1", "u2"):
        ...     cv.learn_one(user, "A", 0.0, [])
        ...     cv.learn_one(user, "B", 1.0, ["A"])
        >>> [(c.item, c.score) for c in cv.recommend("u9", ["A"], 1) + cv.recommend("u9", ["B"], 1)]
        [('B', 2.0), ('A', 1.0)]
        """
        model = cls(lookback=5, half_life_s=math.inf, max_neighbours=max_neighbours, backward_weight=0.5,
                    history_window=5, normalise=False, distance_decay=False)
        model.name = "transitions"
        return model

    @classmethod
    def paired(cls) -> tuple[CoVisitation, CoVisitation]:
        """The default co-visitation model and :meth:`transitions`, paired (:meth:`pair`): the recommender's."""
        covisit, transitions = cls(), cls.transitions()
        covisit.pair(transitions)
        return covisit, transitions

    def pair(self, mate: CoVisitation) -> None:
        """Keep ``mate``'s weights as a second column of this model's rows: both models see the same pairs
        (same ``lookback``, ``backward_weight`` and ``max_neighbours``), so one neighbour column and one slot
        lookup serve both, and this model's ``learn_one`` teaches ``mate`` too (``mate.learn_one`` does
        nothing). A full row keeps the union of each column's ``max_neighbours`` strongest (at most 1.5 times
        that; docs/decisions.md, "One neighbour column for both co-visitation models"). Both must be empty.

        >>> cv, tr = CoVisitation(), CoVisitation.transitions()
        >>> cv.pair(tr)
        >>> for user in ("u1", "u2"):
        ...     cv.learn_one(user, "A", 0.0, [])
        ...     tr.learn_one(user, "A", 0.0, [])   # taught by cv.learn_one: nothing more happens
        ...     cv.learn_one(user, "B", 1.0, ["A"])
        >>> [(c.item, c.score) for c in tr.recommend("u9", ["A"], 1)]
        [('B', 2.0)]
        """
        if len(self._index) or len(mate._index) or self._cols != 1 or mate._cols != 1:
            raise ValueError("pair co-visitation models before either learns, and each once")
        same = ("lookback", "backward_weight", "max_neighbours")
        if any(getattr(self, a) != getattr(mate, a) for a in same):
            raise ValueError(f"paired co-visitation models need the same {', '.join(same)}")
        mate._index, mate._key, mate._nj, mate._nw = self._index, self._key, self._nj, self._nw
        self._cols = mate._cols = 2
        mate._col, mate._owner, self._mate = 1, self, mate

    def _idx(self, item: str, w: float, w2: float) -> int:
        idx = self._index.get(item)
        if idx < 0:
            idx = self._index.add(item)
            self._key.append(bytearray())
            self._nj.append(array("i"))
            self._nw.append(array("f"))
            self._count.append(w)  # seen only in a history so far: count it once, now
            if self._mate is not None:
                self._mate._count.append(w2)
        return idx

    def _weight(self, ts: float) -> float:
        """The decay weight of an event at ``ts`` in this model's frame (rebasing the frame when it is due)."""
        clock = self._clock
        if clock.t0 is None:
            clock.t0 = float(ts)
        e = (ts - clock.t0) * clock.rate
        if e > clock.max_exponent:
            self._rebase(ts)
            e = 0.0
        return 2.0**e

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        if self._owner is not None:  # paired: the owner's learn_one wrote this model's column
            return
        w = self._weight(ts)
        mate = self._mate
        w2 = mate._weight(ts) if mate is not None else 0.0
        j = self._idx(item, 0.0, 0.0)
        self._count[j] += w
        if mate is not None:
            mate._count[j] += w2
        n = len(history)
        if not n:
            return
        cap = 2 * self.max_neighbours
        key_of, nj_of, nw_of = self._key, self._nj, self._nw
        decay = self.distance_decay
        decay2 = mate is not None and mate.distance_decay
        bw, bw2 = w * self.backward_weight, w2 * self.backward_weight
        kj = j & 255
        keys_j, js_j, nw_j = key_of[j], nj_of[j], nw_of[j]
        for d in range(1, min(self.lookback, n) + 1):
            h_item = history[n - d]
            if h_item == item:
                continue
            h = self._idx(h_item, w, w2)
            # this model's gains (h -> j, j -> h) and the mate's (paired)
            a, ab = (w / d, bw / d) if decay else (w, bw)
            b, bb = (w2 / d, bw2 / d) if decay2 else (w2, bw2)
            # W[h][j] here and W[j][h] below written out, not a shared method: a call per update costs
            # about a fifth of learn_one, which is on the ingest hot path. The slot of j in row h: the
            # first slot whose key byte is j's and whose index is j (-1: none)
            keys, js, nw = key_of[h], nj_of[h], nw_of[h]
            slot = keys.find(kj)
            while slot >= 0 and js[slot] != j:
                slot = keys.find(kj, slot + 1)
            if slot < 0:
                keys.append(kj)
                js.append(j)
                nw.append(a)
                if mate is not None:
                    nw.append(b)
                if len(js) > cap:
                    self._prune(h)
            elif mate is None:
                nw[slot] += a
            else:
                nw[2 * slot] += a
                nw[2 * slot + 1] += b
            if bw:
                kh = h & 255
                slot = keys_j.find(kh)
                while slot >= 0 and js_j[slot] != h:
                    slot = keys_j.find(kh, slot + 1)
                if slot < 0:
                    keys_j.append(kh)
                    js_j.append(h)
                    nw_j.append(ab)
                    if mate is not None:
                        nw_j.append(bb)
                elif mate is None:
                    nw_j[slot] += ab
                else:
                    nw_j[2 * slot] += ab
                    nw_j[2 * slot + 1] += bb
        if len(js_j) > cap:
            self._prune(j)

    def _prune(self, h: int) -> None:
        """Keep the ``max_neighbours`` strongest neighbours of ``h`` (ties: the earlier entry); paired, the
        union of each column's ``max_neighbours`` strongest, by best rank (ties: the earlier entry), at most
        1.5 times ``max_neighbours``."""
        cols, m = self._cols, self.max_neighbours
        nw = np.array(self._nw[h]).reshape(-1, cols)
        if cols == 1:
            keep = np.argsort(-nw[:, 0], kind="stable")[:m]
        else:
            slots = np.arange(nw.shape[0])
            best = np.full(nw.shape[0], nw.shape[0])
            for c in range(cols):
                rank = np.empty_like(slots)
                rank[np.argsort(-nw[:, c], kind="stable")] = slots
                best = np.minimum(best, rank)
            keep = np.lexsort((slots, best))[: min(int((best < m).sum()), m + m // 2)]
        nj = np.array(self._nj[h], dtype=np.intc)[keep]  # the C int of array("i")
        # fresh rows of exactly the kept size (no slack); the key bytes follow their neighbours
        self._nj[h] = array("i", nj.tobytes())
        self._nw[h] = array("f", nw[keep].tobytes())
        self._key[h] = bytearray((nj & 255).astype(np.uint8).tobytes())

    def _rebase(self, ts: float) -> None:
        """Rescale this model's counts and weight column to a frame starting at ``ts``."""
        f = self._clock.rebase(ts)
        self._count = array("d", (np.frombuffer(self._count) * f).tolist())
        cols, col = self._cols, self._col
        rows = []
        for nw in self._nw:
            w = np.array(nw, dtype=np.float64)  # (either typecode)
            w[col::cols] *= f
            rows.append(_rows_f(w))
        self._nw[:] = rows  # in place: a paired model reads the same list

    def _anchors(self, history: Sequence[str]) -> tuple[list[int], list[int]]:
        """The last ``history_window`` distinct history items, most recent first, as (this model's
        indices, -1 when unknown; their recency ranks ``r``, 1 = the most recent)."""
        idx = list(map(self._index.get, recent_distinct(history, self.history_window)))
        return idx, list(range(1, len(idx) + 1))

    def _terms(self, recent: Sequence[int], ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every (anchor, neighbour) term ``W[h_r][j] / (r * sqrt(n_h_r * n_j))`` of the score sums of
        ``recent``/``ranks`` (see :meth:`_anchors`): (neighbour indices, terms, anchor position of each term,
        anchors' indices), anchor by anchor, each row in stored order; anchors without a row are skipped."""
        count, nj_of = self._count, self._nj
        anchors: list[int] = []
        scales: list[float] = []
        for h, r in zip(recent, ranks):
            if h < 0 or count[h] <= 0 or not nj_of[h]:
                continue
            anchors.append(h)
            scales.append(1.0 / (r * math.sqrt(count[h])) if self.normalise else 1.0 / r)
        if not anchors:
            return _EMPTY_J, _EMPTY_W, _EMPTY_J, _EMPTY_J
        nw_of = self._nw
        lens = [len(nj_of[h]) for h in anchors]
        # the rows joined as bytes (a copy: no view of a row outlives the call)
        js = np.frombuffer(b"".join([nj_of[h] for h in anchors]), dtype=np.intc).astype(np.int64)
        ws = np.frombuffer(b"".join([nw_of[h] for h in anchors]), dtype=np.float32)[self._col::self._cols]
        ws = ws * np.array(scales).repeat(lens)
        which = np.arange(len(anchors)).repeat(lens)  # anchor position of each term
        cj = np.frombuffer(count)[js]
        ok = cj > 0
        if not ok.all():
            js, ws, which, cj = js[ok], ws[ok], which[ok], cj[ok]
        return js, ws / np.sqrt(cj) if self.normalise else ws, which, np.asarray(anchors, dtype=np.int64)

    def _aggregate(self, history: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Candidates (sorted indices), their summed scores, the (anchors, candidates) term matrix and the
        anchors' indices: the definition of the scores and anchors (the largest term; ties: the most recent)."""
        js, terms, which, anchors = self._terms(*self._anchors(history))
        if not anchors.size or not js.size:
            return _EMPTY_J, _EMPTY_W, np.zeros((0, 0)), _EMPTY_J
        uniq, _, inv = group(js)
        M = np.zeros((len(anchors), uniq.size))  # (A, U): anchor x candidate terms
        M[which, inv] = terms
        return uniq, M.sum(axis=0), M, anchors

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # the serving scratch is not state: it is regrown on first use
        state["_acc"] = state["_mark"] = _EMPTY_J
        state["_banned"] = np.zeros(0, dtype=bool)
        return state

    def __setstate__(self, state: dict) -> None:
        if "_slot" in state:  # pickled by the layout before (a {neighbour: slot} dict a row, int64 indices)
            del state["_slot"]
            state["_nj"] = [array("i", nj.tolist()) for nj in state["_nj"]]
            state["_key"] = [bytearray(j & 255 for j in nj) for nj in state["_nj"]]
        state.setdefault("_cols", 1)  # pickled before paired rows
        state.setdefault("_col", 0)
        state.setdefault("_owner", None)
        state.setdefault("_mate", None)
        self.__dict__.update(state)
        if self._clock.max_exponent != MAX_EXPONENT:
            self._to_float32()

    def _to_float32(self) -> None:
        """A model pickled with float64 weights (and a frame up to 2^200): rebased so that its largest stored
        weight is at most 1 where the frame is past :data:`MAX_EXPONENT`, then stored as float32."""
        clock = self._clock
        clock.max_exponent = MAX_EXPONENT
        top = max((max(nw) for nw in self._nw if len(nw)), default=0.0)
        if top > 2.0**MAX_EXPONENT and clock.t0 is not None and math.isfinite(clock.half_life_s):
            self._rebase(clock.t0 + math.floor(math.log2(top)) * clock.half_life_s)
        self._nw[:] = [_rows_f(np.array(nw, dtype=np.float64)) for nw in self._nw]

    def _grow_scratch(self) -> None:
        n = max(1024, 2 * len(self._index))
        self._acc = np.zeros(n)  # per-item sums; all 0 between calls
        self._mark = np.zeros(n, dtype=np.int64)  # any value between calls
        self._banned = np.zeros(n + 1, dtype=bool)  # all False between calls; a spare last entry (index -1)

    def top(
        self, recent: Sequence[int], ranks: Sequence[int], k: int, banned: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, Sequence[int]]:
        """:meth:`candidates` from ``recent``/``ranks`` (see :meth:`_anchors`); ``banned`` must hold the
        history's indices too (-1 ignored). The anchors come back lazily, by rank (the recommender reads
        the few it shows); the sums run through a dense scratch array (``np.add.at`` in anchor order: the
        term matrix's column sums), so no sort is needed to group them."""
        js, terms, which, anchors = self._terms(recent, ranks)
        if not js.size or k <= 0:
            return _EMPTY_J, _EMPTY_W, _EMPTY_J
        if self._acc.size < len(self._index):
            self._grow_scratch()
        acc, mark = self._acc, self._mark
        np.add.at(acc, js, terms)
        total = acc[js]
        acc[js] = 0.0
        pos = np.arange(js.size)
        mark[js] = pos  # one entry per item wins, whichever: it stands for the item
        keep = mark[js] == pos
        if banned is not None and banned.size:
            flag = self._banned  # index -1 sets the spare last entry, which no item reads
            flag[banned] = True
            keep &= ~flag[js]
            flag[banned] = False
        # (the sums are finite: positive decayed weights over positive counts; no filter needed)
        cand, score = js[keep], total[keep]
        if cand.size > k:  # the k best by (score desc, index asc): top_k over the sorted candidates
            thr = score[(-score).argpartition(k - 1)[k - 1]]
            part = (score >= thr).nonzero()[0]
            cand, score = cand[part], score[part]
        order = np.lexsort((cand, -score))[:k]
        cand, score = cand[order], score[order]
        return cand, score, _LazyAnchors(cand, js, terms, which, anchors)

    def candidates(
        self, history: Sequence[str], k: int, banned: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The top ``k`` as index arrays: (item indices, scores, anchor indices), best first (ties:
        the lower index); ``banned`` holds indices (-1 ignored), history items are always excluded."""
        ban = self._index.indices(history)
        if banned is not None and banned.size:
            ban = np.concatenate([ban, banned])
        idx, scores, anchors = self.top(*self._anchors(history), k, ban)
        return idx, scores, np.fromiter((anchors[r] for r in range(idx.size)), dtype=np.int64, count=idx.size)

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        idx, scores, anchors = self.candidates(history, k, self._index.indices(exclude))
        names = self._index.names
        return [
            Candidate(names[j], s, self.name, anchor=names[a])
            for j, s, a in zip(idx.tolist(), scores.tolist(), anchors.tolist())
        ]

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        uniq, acc, _, _ = self._aggregate(history)
        idx = self._index.indices(items)
        out = np.zeros(len(idx))
        if uniq.size:
            pos = np.minimum(np.searchsorted(uniq, idx), uniq.size - 1)
            hit = uniq[pos] == idx
            out[hit] = acc[pos[hit]]
        return out


_EMPTY_J = np.zeros(0, dtype=np.int64)
_EMPTY_W = np.zeros(0)
MAX_EXPONENT = 64.0  # the decay frame's largest exponent: 2^64 times any event count stays inside float32


def _rows_f(weights: np.ndarray) -> array:
    """A float32 weight row (``array('f')``) of ``weights``."""
    return array("f", weights.astype(np.float32).tobytes())


class _LazyAnchors(Sequence):
    """The anchor (this model's index) of each top candidate, by rank, computed when read: the history item
    with the largest term, ties (within :func:`~online.base.tie_floor`, so that rounding does not tell
    equal terms apart) to the most recent, as ``argmax`` over the term matrix's column."""

    __slots__ = ("_cand", "_js", "_terms", "_which", "_anchors")

    def __init__(self, cand, js, terms, which, anchors) -> None:
        self._cand, self._js, self._terms, self._which, self._anchors = cand, js, terms, which, anchors

    def __len__(self) -> int:
        return self._cand.size

    def __getitem__(self, rank):
        if isinstance(rank, slice):
            return self.take(range(*rank.indices(len(self))))
        return self.take([rank])[0]

    def take(self, ranks: Sequence[int]) -> list[int]:
        """The anchors of the candidates at ``ranks``."""
        if not len(ranks):
            return []
        if self._anchors.size == 1:  # one anchor (the `last` source): every candidate's
            return [int(self._anchors[0])] * len(ranks)
        targets = self._cand[np.asarray(ranks)]  # (s,)
        # (s, terms): each candidate's terms in anchor order, -1 elsewhere (terms are >= 0)
        t = np.where(targets[:, None] == self._js, self._terms, -1.0)
        floor = tie_floor(t.max(axis=1))  # (s,)
        first = (t >= floor[:, None]).argmax(axis=1)  # the first term tied with the largest
        # the matrix column holds 0 for the anchors that do not reach the candidate: with a largest
        # term tied with 0 (decayed away), the first anchor is the first tied one over the column
        which = np.where(floor > 0, self._which[first], 0)
        return self._anchors[which].tolist()
