"""Item co-visitation neighbours, learned one event at a time (online item-to-item CF).

When a user touches item ``j`` and item ``h`` sits ``d`` positions back in their history (``d = 1`` the
most recent, up to ``lookback``), ``h -> j`` gains ``w / d`` and ``j -> h`` gains ``backward_weight`` times
that, ``w`` the event's decay weight (half-life ``half_life_s``, kept lazily: :class:`online.base.DecayClock`).
An item keeps at most ``max_neighbours`` neighbours: a row grows to twice that, then the strongest are kept
(amortised O(1) per update). A row is three columns, neighbour index (``array('i')``), weight (``array('f')``,
float32: the decay frame is rebased every :data:`MAX_EXPONENT` half-lives so that it cannot overflow) and key
byte (the index's low byte, a ``bytearray`` searched with ``find``, a C ``memchr``, then checked against the
index): 9 bytes a neighbour. The rows live in size classes of flat columns (:class:`_Rows`), not in Python
objects of their own. The recommender pairs this model with the transition counter (:meth:`CoVisitation.pair`):
both see the same pairs, so the rows hold one neighbour column and two weight columns, interleaved (13 bytes a
neighbour for both models; docs/decisions.md, "Co-visitation rows").

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

import bisect
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
        # Neighbours of item h, slot by slot (a prune keeps the order of its sort): neighbour j, its weight
        # (DecayClock frame) and key byte j & 255, in size-classed flat columns (_Rows). ``array.array``: a scalar
        # update costs what a list's does; a read copies the slices of the rows it needs.
        self._rows = _Rows(1, self._longest())
        self._count = array("d")  # decayed event count per item (same frame)
        # this model's weight column in the rows (1: paired as the second, see pair); the model whose learn_one
        # writes it (None: this one) and the model this one writes a second column for (None: none)
        self._col = 0
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
        if len(self._index) or len(mate._index) or self._rows.cols != 1 or mate._rows.cols != 1:
            raise ValueError("pair co-visitation models before either learns, and each once")
        same = ("lookback", "backward_weight", "max_neighbours")
        if any(getattr(self, a) != getattr(mate, a) for a in same):
            raise ValueError(f"paired co-visitation models need the same {', '.join(same)}")
        mate._index, self._rows = self._index, _Rows(2, self._longest())
        mate._rows = self._rows
        mate._col, mate._owner, self._mate = 1, self, mate

    def _idx(self, item: str, w: float, w2: float) -> int:
        idx = self._index.get(item)
        if idx < 0:
            idx = self._index.add(item)
            self._rows.add()
            self._count.append(w)  # seen only in a history so far: count it once, now
            if self._mate is not None:
                self._mate._count.append(w2)
        return idx

    def _longest(self) -> int:
        """The most neighbours a row holds: a row is pruned past twice ``max_neighbours``, the clicked item's
        row once its event is learned (up to ``lookback`` more)."""
        return 2 * self.max_neighbours + self.lookback

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
        rows = self._rows
        caps, cls, at, ln, key_of, nj_of, nw_of, cols = (rows.caps, rows.cls, rows.at, rows.n, rows.keys, rows.js,
                                                         rows.ws, rows.cols)
        decay = self.distance_decay
        decay2 = mate is not None and mate.distance_decay
        bw, bw2 = w * self.backward_weight, w2 * self.backward_weight
        kj = j & 255
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
            # first slot whose key byte is j's and whose index is j (-1: none); a full row moves up a class
            k, m, slot = cls[h], ln[h], -1
            if k != NO_ROW:
                base = at[h] * caps[k]
                keys, js, end = key_of[k], nj_of[k], base + m
                slot = keys.find(kj, base, end)
                while slot >= 0 and js[slot] != j:
                    slot = keys.find(kj, slot + 1, end)
            if slot < 0:
                if k == NO_ROW or m == caps[k]:
                    k = 0 if k == NO_ROW else k + 1
                    base = rows.move(h, k)
                p = base + m
                key_of[k][p], nj_of[k][p] = kj, j
                if cols == 1:
                    nw_of[k][p] = a
                else:
                    nw = nw_of[k]
                    nw[2 * p], nw[2 * p + 1] = a, b
                ln[h] = m + 1
                if m >= cap:
                    self._prune(h)
            elif cols == 1:
                nw_of[k][slot] += a
            else:
                nw = nw_of[k]
                nw[2 * slot] += a
                nw[2 * slot + 1] += b
            if not bw:
                continue
            # W[j][h]: j's row is pruned once the event is learned (at most `lookback` more slots)
            kh = h & 255
            k, m, slot = cls[j], ln[j], -1
            if k != NO_ROW:
                base = at[j] * caps[k]
                keys, js, end = key_of[k], nj_of[k], base + m
                slot = keys.find(kh, base, end)
                while slot >= 0 and js[slot] != h:
                    slot = keys.find(kh, slot + 1, end)
            if slot < 0:
                if k == NO_ROW or m == caps[k]:
                    k = 0 if k == NO_ROW else k + 1
                    base = rows.move(j, k)
                p = base + m
                key_of[k][p], nj_of[k][p] = kh, h
                if cols == 1:
                    nw_of[k][p] = ab
                else:
                    nw = nw_of[k]
                    nw[2 * p], nw[2 * p + 1] = ab, bb
                ln[j] = m + 1
            elif cols == 1:
                nw_of[k][slot] += ab
            else:
                nw = nw_of[k]
                nw[2 * slot] += ab
                nw[2 * slot + 1] += bb
        if ln[j] > cap:
            self._prune(j)

    def _prune(self, h: int) -> None:
        """Keep the ``max_neighbours`` strongest neighbours of ``h`` (ties: the earlier entry); paired, the
        union of each column's ``max_neighbours`` strongest, by best rank (ties: the earlier entry), at most
        1.5 times ``max_neighbours``."""
        cols, m = self._rows.cols, self.max_neighbours
        _, js, ws = self._rows.row(h)
        nw = np.array(ws).reshape(-1, cols)
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
        self._rows.put(h, np.array(js, dtype=np.intc)[keep], nw[keep])  # (the key bytes follow)

    def _rebase(self, ts: float) -> None:
        """Rescale this model's counts and weight column to a frame starting at ``ts``."""
        f = self._clock.rebase(ts)
        self._count = array("d", (np.frombuffer(self._count) * f).tolist())
        self._rows.scale(self._col, f)  # (a paired model reads the same rows)

    def _anchors(self, history: Sequence[str]) -> tuple[list[int], list[int]]:
        """The last ``history_window`` distinct history items, most recent first, as (this model's
        indices, -1 when unknown; their recency ranks ``r``, 1 = the most recent)."""
        idx = list(map(self._index.get, recent_distinct(history, self.history_window)))
        return idx, list(range(1, len(idx) + 1))

    def _terms(self, recent: Sequence[int], ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every (anchor, neighbour) term ``W[h_r][j] / (r * sqrt(n_h_r * n_j))`` of the score sums of
        ``recent``/``ranks`` (see :meth:`_anchors`): (neighbour indices, terms, anchor position of each term,
        anchors' indices), anchor by anchor, each row in stored order; anchors without a row are skipped."""
        count, rows = self._count, self._rows
        ln = rows.n
        anchors: list[int] = []
        scales: list[float] = []
        for h, r in zip(recent, ranks):
            if h < 0 or count[h] <= 0 or not ln[h]:
                continue
            anchors.append(h)
            scales.append(1.0 / (r * math.sqrt(count[h])) if self.normalise else 1.0 / r)
        if not anchors:
            return _EMPTY_J, _EMPTY_W, _EMPTY_J, _EMPTY_J
        caps, cls, at, nj_of, nw_of, cols = rows.caps, rows.cls, rows.at, rows.js, rows.ws, rows.cols
        lens = [ln[h] for h in anchors]
        starts = [at[h] * caps[cls[h]] for h in anchors]
        # the rows joined as bytes (slices are copies: no view of a row outlives the call)
        js = np.frombuffer(b"".join([nj_of[cls[h]][b:b + n] for h, b, n in zip(anchors, starts, lens)]),
                           dtype=np.intc).astype(np.int64)
        ws = np.frombuffer(b"".join([nw_of[cls[h]][cols * b:cols * (b + n)] for h, b, n in zip(anchors, starts, lens)]),
                           dtype=np.float32)[self._col::cols]
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
        state.setdefault("_col", 0)  # pickled before paired rows
        state.setdefault("_owner", None)
        state.setdefault("_mate", None)
        self.__dict__.update(state)
        if "_rows" not in state:  # pickled with a row of Python objects an item (one model's weights)
            _from_lists(self.__dict__, self._longest())

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


NO_ROW = 255  # _Rows.cls of an item without a row yet
GROWTH = 1.125  # _Rows: each size class holds this many times the slots of the one before


def _from_lists(state: dict, longest: int) -> None:
    """A pickled state with a row of Python objects an item (``_nj``, ``_nw``, ``_key``; before that a
    ``{neighbour: slot}`` dict a row, int64 indices; float64 weights in a frame up to 2^200, rebased so that
    its largest weight is at most 1 where the frame is past :data:`MAX_EXPONENT`) into :class:`_Rows`."""
    state.pop("_slot", None)
    state.pop("_key", None)
    nj, nw = state.pop("_nj"), [np.array(w, dtype=np.float64) for w in state.pop("_nw")]
    clock = state["_clock"]
    if clock.max_exponent != MAX_EXPONENT:
        clock.max_exponent = MAX_EXPONENT
        top = max((w.max() for w in nw if w.size), default=0.0)
        if top > 2.0**MAX_EXPONENT and clock.t0 is not None and math.isfinite(clock.half_life_s):
            f = clock.rebase(clock.t0 + math.floor(math.log2(top)) * clock.half_life_s)
            state["_count"] = array("d", (np.frombuffer(state["_count"]) * f).tolist())
            nw = [w * f for w in nw]
    state["_rows"] = _Rows.of([(np.asarray(j, dtype=np.int64), w) for j, w in zip(nj, nw)], 1, longest)


class _Rows:
    """Every item's neighbour row, in size classes: class ``k`` holds rows of up to ``caps[k]`` slots
    (4, then :data:`GROWTH` times more a class, up to ``longest``) in three flat columns, key bytes (``bytearray``),
    neighbour indices (``array('i')``) and ``cols`` float32 weights a slot (``array('f')``, interleaved),
    slot ``s`` of class row ``r`` at position ``r * caps[k] + s``. ``cls``/``at``/``n`` give an item's class
    (255: no row yet), class row and length; ``owner[k][r]`` the item of class row ``r``. A row that outgrows
    its class moves to the next; a freed class row takes the class's last row, so that every class stays
    dense (no holes, no free lists). 9 bytes an item and at most an eighth of a row's slots of slack (:data:`GROWTH`),
    instead of three Python objects a row (~190 bytes; docs/decisions.md, "Co-visitation rows")."""

    def __init__(self, cols: int, longest: int) -> None:
        caps = [4]
        while caps[-1] < longest:
            caps.append(min(longest, math.ceil(caps[-1] * GROWTH)))
        if len(caps) >= 255:
            raise ValueError(f"too many size classes for rows of {longest}")
        self.cols, self.caps = int(cols), caps
        self.keys = [bytearray() for _ in caps]
        self.js = [array("i") for _ in caps]
        self.ws = [array("f") for _ in caps]
        self.owner = [array("i") for _ in caps]
        self.peak = [0] * len(caps)  # the most class rows each class held since its columns were last copied
        self.cls = bytearray()
        self.at = array("i")
        self.n = array("i")

    def add(self) -> None:
        """A row for the next item (empty: it takes a class row on its first neighbour)."""
        self.cls.append(NO_ROW)
        self.at.append(-1)
        self.n.append(0)

    def move(self, h: int, k: int) -> int:
        """Move item ``h``'s row to class ``k`` (its neighbours must fit); return its first position there."""
        caps, cols = self.caps, self.cols
        cap, n = caps[k], self.n[h]
        r = len(self.owner[k])
        self.owner[k].append(h)
        self.peak[k] = max(self.peak[k], r + 1)
        self.keys[k].extend(bytes(cap))
        self.js[k].frombytes(bytes(4 * cap))
        self.ws[k].frombytes(bytes(4 * cap * cols))
        base = r * cap
        k0 = self.cls[h]
        if k0 != NO_ROW:
            old = self.at[h] * caps[k0]
            self.keys[k][base:base + n] = self.keys[k0][old:old + n]
            self.js[k][base:base + n] = self.js[k0][old:old + n]
            self.ws[k][cols * base:cols * (base + n)] = self.ws[k0][cols * old:cols * (old + n)]
            self._free(k0, self.at[h])
        self.cls[h], self.at[h] = k, r
        return base

    def _free(self, k: int, r: int) -> None:
        """Give up class row ``r`` of class ``k``: the class's last row moves into it."""
        cap, cols, owner = self.caps[k], self.cols, self.owner[k]
        last = len(owner) - 1
        if r != last:
            g = owner[last]
            n, dst, src = self.n[g], r * cap, last * cap
            self.keys[k][dst:dst + n] = self.keys[k][src:src + n]
            self.js[k][dst:dst + n] = self.js[k][src:src + n]
            self.ws[k][cols * dst:cols * (dst + n)] = self.ws[k][cols * src:cols * (src + n)]
            owner[r] = g
            self.at[g] = r
        del owner[last:]
        del self.keys[k][last * cap:]
        del self.js[k][last * cap:]
        del self.ws[k][cols * last * cap:]
        if 2 * last < self.peak[k]:  # copied to their size: a shrinking array keeps what it held (CPython)
            self.keys[k], self.js[k] = bytearray(self.keys[k]), array("i", self.js[k])
            self.ws[k], self.owner[k] = array("f", self.ws[k]), array("i", owner)
            self.peak[k] = last

    def fit(self, n: int) -> int:
        """The smallest class that holds ``n`` slots."""
        return bisect.bisect_left(self.caps, n)

    def row(self, h: int) -> tuple[bytes, array, array]:
        """Item ``h``'s (key bytes, neighbour indices, weights), copies."""
        k, n = self.cls[h], self.n[h]
        if k == NO_ROW:
            return b"", array("i"), array("f")
        base, cols = self.at[h] * self.caps[k], self.cols
        return bytes(self.keys[k][base:base + n]), self.js[k][base:base + n], self.ws[k][cols * base:cols * (base + n)]

    def put(self, h: int, js: np.ndarray, ws: np.ndarray) -> None:
        """Replace item ``h``'s row by neighbours ``js`` (int) and weights ``ws`` ((len(js), cols), float32),
        in the smallest class that holds them."""
        n = len(js)
        k = self.fit(max(n, 1))
        if self.cls[h] != k:
            self.n[h] = 0  # nothing to carry over
            self.move(h, k)
        base, cols = self.at[h] * self.caps[k], self.cols
        js = np.asarray(js, dtype=np.intc)
        self.keys[k][base:base + n] = (js & 255).astype(np.uint8).tobytes()
        self.js[k][base:base + n] = array("i", js.tobytes())
        self.ws[k][cols * base:cols * (base + n)] = array("f", np.asarray(ws, dtype=np.float32).tobytes())
        self.n[h] = n

    def scale(self, col: int, f: float) -> None:
        """Multiply weight column ``col`` of every row by ``f``."""
        for k, ws in enumerate(self.ws):
            w = np.array(ws, dtype=np.float64)
            w[col::self.cols] *= f
            self.ws[k] = array("f", w.astype(np.float32).tobytes())

    @classmethod
    def of(cls, rows: Sequence[tuple[Sequence[int], np.ndarray]], cols: int, longest: int) -> _Rows:
        """Rows from (neighbour indices, weights) per item (the layout before size classes)."""
        out = cls(cols, longest)
        for h, (js, ws) in enumerate(rows):
            out.add()
            if len(js):
                out.put(h, np.asarray(js), np.asarray(ws).reshape(len(js), cols))
        return out


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
