"""Content neighbours: items similar in content to what the user just consumed.

The only model that can recommend an item nobody has clicked yet: an item is recommendable once it has a
content vector (text encoder, or :class:`TagVectoriser`). Vectors are stored L2-normalised in 16-bit fixed point
(``2 D`` bytes an item, components times :data:`FIXED_SCALE`; products in float32: docs/decisions.md, "Content
vectors in 16 bits");
``recommend`` ranks the cosine of the recency-weighted mean of the last ``history_window`` history vectors
against every item (one matrix product per batch: :meth:`ContentNeighbours.candidates_many`); a candidate's
``anchor`` is the history item most similar to it. With an ``index_factory`` (the scorer's: faiss IVF-PQ,
``models.ann.ContentIndex``), catalogues from ``ann_min_items`` items on are not scanned
(:class:`~online.rowindex.RowIndex`). Cosines within :data:`online.base.TIE_RTOL` are tied:
candidates by index, anchors to the most recent item, so float32 rounding does not decide. ``learn_one``
is a no-op: this model learns from the catalogue, not from events.

>>> cn = ContentNeighbours(dim=3)
>>> cn.set_vectors(["a", "b", "c"], np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 0, 1]], dtype=np.float32))
>>> [(c.item, c.anchor) for c in cn.recommend("u", ["a"], k=2)]
[('b', 'a'), ('c', 'a')]
>>> tv = TagVectoriser(dim=16)
>>> v = tv.transform("The Matrix", ["sci-fi", "action"])
>>> v.shape, round(float(np.linalg.norm(v)), 5), bool((v == tv.transform("the matrix", ["action", "sci-fi"])).all())
((16,), 1.0, True)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Sequence

import numpy as np

from online.base import Candidate, IdIndex, ItemIndexed, must_be_at_least, recent_distinct, tie_floor, top_k_rows
from online.rowindex import ANN_MIN_ITEMS, IndexFactory, RowIndex

__all__ = ["ContentNeighbours", "ShapeMismatchError", "TagVectoriser"]


class ShapeMismatchError(ValueError):
    """A content vector does not have the model's dimension (or items and rows disagree)."""


class ContentNeighbours(ItemIndexed):
    """Cosine nearest neighbours over item content vectors. ``name = "content"``."""

    name = "content"

    def __init__(self, *, dim: int, history_window: int = 10, index_factory: IndexFactory | None = None,
                 ann_min_items: int = ANN_MIN_ITEMS, background: bool = False) -> None:
        must_be_at_least(1, dim=dim, ann_min_items=ann_min_items)
        self.dim = int(dim)
        self.history_window = int(history_window)
        self._index = IdIndex()
        self._v = np.zeros((0, dim), dtype=np.int16)  # (n_items_cap, D), L2-normalised rows times FIXED_SCALE
        self._buf = np.zeros((0, dim), dtype=np.float32)  # scan scratch, not state
        #: from ``ann_min_items`` items on, candidates through an index (e.g. ``models.ann.ContentIndex``)
        self.ann = RowIndex(index_factory, min_rows=ann_min_items, background=background)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The (L2-normalised) vectors of item indices ``rows``, in float32."""
        return np.multiply(self._v[rows], _UNIT, dtype=np.float32)

    def _scan(self, queries: np.ndarray, n: int) -> np.ndarray:
        """``queries @ V[:n].T`` (B, n) float32, the rows turned to float32 a block of :data:`_SCAN_BYTES` at a
        time (no float32 copy of the whole matrix; the block is multiplied while it is in cache; the fixed-point
        scale goes on the queries)."""
        out = np.empty((queries.shape[0], n), dtype=np.float32)
        queries = queries * _UNIT
        step = max(1, min(n, _SCAN_BYTES // (4 * self.dim)))
        if self._buf.shape[0] < step:
            self._buf = np.empty((step, self.dim), dtype=np.float32)
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            block = self._buf[: hi - lo]
            np.copyto(block, self._v[lo:hi], casting="unsafe")
            out[:, lo:hi] = queries @ block.T
        return out

    def _scan_rows(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``queries @ V[rows].T`` (B, len(rows)) float32, as :meth:`_scan` for a set of rows."""
        out = np.empty((queries.shape[0], rows.size), dtype=np.float32)
        queries = queries * _UNIT
        step = max(1, _SCAN_BYTES // (4 * self.dim))
        for lo in range(0, rows.size, step):
            block = self._v[rows[lo : lo + step]].astype(np.float32)
            out[:, lo : lo + block.shape[0]] = queries @ block.T
        return out

    def _rows(self, items: Sequence[str]) -> np.ndarray:
        rows = np.empty(len(items), dtype=np.int64)
        for n, item in enumerate(items):
            rows[n] = self._index.add(item)
        need = int(rows.max()) + 1 if rows.size else 0
        if need > self._v.shape[0]:
            cap = max(need, 2 * self._v.shape[0], 1024)
            v = np.zeros((cap, self.dim), dtype=np.int16)
            v[: self._v.shape[0]] = self._v
            self._v = v
        return rows

    def set_vectors(self, items: Sequence[str], matrix: np.ndarray) -> None:
        """Set (or replace) the vectors of ``items``; ``matrix`` is (len(items), dim), any scale."""
        m = np.asarray(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape != (len(items), self.dim):
            raise ShapeMismatchError(
                f"expected a ({len(items)}, {self.dim}) matrix for {len(items)} items, got {m.shape}"
            )
        # normalised in float64, so that a summation order (a CPU's) cannot move a 16-bit rounding: vectors
        # pointing the same way get the same row, exactly tied
        norms = np.sqrt((m * m).sum(axis=1, keepdims=True))
        m = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
        rows = self._rows(items)  # may grow self._v: index it only afterwards
        self._v[rows] = _fixed(m)
        self.ann.mark(rows)

    def vector(self, item: str) -> np.ndarray | None:
        idx = self._index.get(item)
        return None if idx < 0 else self.rows(np.array([idx]))[0]

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str] = ()) -> None:
        """No-op: content similarity does not learn from events."""

    def _query(self, recent: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """(the unit query vector, None when there is none; the known items' rows) of recent distinct history
        items (see :meth:`recent`): their vectors' mean weighted ``1 / r``, ``r`` = 1 the most recent."""
        recent = recent[: self.history_window]
        known = np.flatnonzero(recent >= 0)
        rows = recent[known]
        if not known.size:
            return None, rows
        q = (1.0 / (known + 1)).astype(np.float32) @ self.rows(rows)  # (D,)
        norm = float(np.sqrt(q.dot(q)))  # np.linalg.norm of a vector, without its checks
        return (q / norm if norm > 0 else None), rows

    def recent(self, history: Sequence[str]) -> np.ndarray:
        """Indices (-1 unknown) of the last ``history_window`` distinct history items, most recent first."""
        return self._index.indices(recent_distinct(history, self.history_window))

    def candidates_many(
        self, histories: Sequence[Sequence[str]], k: int, banned: Sequence[np.ndarray | None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Top ``k`` per history as index arrays (items, cosines, anchor items), best first (tied cosines by
        index, see :func:`online.base.top_k`).

        One (B, D) x (D, n_items) product for the whole batch; ``banned[b]`` are item indices excluded
        for history ``b`` (history items are always excluded). A history without any vector gets
        empty arrays.
        """
        bans = []
        for b, history in enumerate(histories):
            ban = self._index.indices(history)
            extra = banned[b] if banned is not None else None
            bans.append(ban if extra is None or not extra.size else np.concatenate([ban, extra]))
        tops = self.top_many([self.recent(h) for h in histories], k, bans)
        return [(best, sims, np.asarray(anchors[:], dtype=np.int64)) for best, sims, anchors in tops]

    def top_many(
        self, recent: Sequence[np.ndarray], k: int, banned: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray, Sequence[int]]]:
        """:meth:`candidates_many` from each user's recent distinct history items (this model's indices,
        -1 unknown, most recent first, see :meth:`recent`) and banned indices (the history's included,
        -1 ignored). The anchors come back lazily (computed for the candidates read)."""
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=np.int64))
        out: list[tuple[np.ndarray, np.ndarray, Sequence[int]]] = [empty] * len(recent)
        n = len(self._index)
        queries, rows_of, at, bans = [], [], [], []
        for b, rec in enumerate(recent):
            q, rows = self._query(rec)
            if q is None:
                continue
            queries.append(q)
            rows_of.append(rows)
            at.append(b)
            bans.append(banned[b])
        if not queries:
            return out
        if self.ann.ready(n, self.rows, self.dim):
            q = np.stack(queries)
            found = self.ann.top(q, n, k, bans, self._scan_rows, lambda cand, r: self.rows(cand) @ q[r])
            for b, rows, (cand, sims, top) in zip(at, rows_of, found):
                if top.size:
                    best = cand[top]
                    out[b] = (best, sims[top].astype(np.float64), _LazyAnchors(self, rows, best))
            return out
        sims = self._scan(np.stack(queries), n)  # (B', N) float32
        for r, (b, rows, best) in enumerate(zip(at, rows_of, top_k_rows(sims, k, bans, overwrite=True))):
            if not best.size:
                continue
            out[b] = (best, sims[r, best].astype(np.float64), _LazyAnchors(self, rows, best))
        return out

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        best, sims, anchors = self.candidates_many([history], k, [self._index.indices(exclude)])[0]
        names = self._index.names
        return [
            Candidate(names[j], s, "content", anchor=names[a])
            for j, s, a in zip(best.tolist(), sims.tolist(), anchors.tolist())
        ]

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        idx = self._index.indices(items)
        out = np.zeros(len(idx))
        q, _ = self._query(self.recent(history))
        known = idx >= 0
        if q is not None and known.any():
            out[known] = self.rows(idx[known]) @ q
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_buf"] = np.zeros((0, self.dim), dtype=np.float32)  # scratch, regrown on first use
        return state

    def __setstate__(self, state: dict) -> None:
        if state["_v"].dtype != np.int16:  # pickled with float16 rows (stop 32), float32 before
            state["_v"] = _fixed(state["_v"])
        state.setdefault("_buf", np.zeros((0, state["dim"]), dtype=np.float32))
        state.setdefault("ann", RowIndex(None))  # pickled before the index existed
        self.__dict__.update(state)


_SCAN_BYTES = 512 * 1024  # float32 rows turned at a time by ContentNeighbours._scan (341 rows at D = 384)
#: A stored component is ``round(x * FIXED_SCALE)`` in int16: unit rows' components lie in [-1, 1].
FIXED_SCALE = 32767.0
_UNIT = np.float32(1.0 / FIXED_SCALE)


def _fixed(m: np.ndarray) -> np.ndarray:
    """Unit rows (any float dtype) as :data:`FIXED_SCALE` fixed point, int16."""
    return np.rint(np.clip(np.asarray(m, dtype=np.float64), -1.0, 1.0) * FIXED_SCALE).astype(np.int16)


class _LazyAnchors(Sequence):
    """The anchor of each candidate of one list: the history row most similar to it, ties (cosines within
    :func:`~online.base.tie_floor` of the largest) to the most recent. Computed when read, from the
    (A, D) x (D, s) product of the candidates read only (:meth:`take`; the whole list by index).

    The tolerance is what makes the anchor a property of the vectors: with tag-hashed vectors two history
    items are often exactly as similar to a candidate, and the float32 product's rounding, which depends on
    its shape, the BLAS kernel and the processor, would otherwise pick one of them."""

    __slots__ = ("_model", "_rows", "_best", "_all")

    def __init__(self, model: ContentNeighbours, rows: np.ndarray, best: np.ndarray) -> None:
        self._model, self._rows, self._best = model, rows, best  # the item vectors, history rows, candidates
        self._all: np.ndarray | None = None

    def _of(self, cands: np.ndarray) -> np.ndarray:
        sims = self._model.rows(self._rows) @ self._model.rows(cands).T  # (A, s) float32
        return self._rows[(sims >= tie_floor(sims.max(axis=0))).argmax(axis=0)]  # (s,) the first tied

    def take(self, ranks: Sequence[int]) -> list[int]:
        """The anchors of the candidates at ``ranks``."""
        return self._of(self._best[np.asarray(ranks, dtype=np.int64)]).tolist()

    def __len__(self) -> int:
        return self._best.size

    def __getitem__(self, i):
        if self._all is None:
            self._all = self._of(self._best)
        return self._all[i]


_TOKEN = re.compile(r"\w+", re.UNICODE)


class TagVectoriser:
    """Hashed bag of title tokens and tags/genres, L2-normalised: the fallback item featuriser.

    Deterministic across processes (blake2b, not Python's salted ``hash``); signed hashing so that
    collisions cancel out on average. Tags weigh ``tag_weight`` (they are curated), title tokens 1.
    """

    def __init__(self, dim: int = 256, *, tag_weight: float = 2.0) -> None:
        must_be_at_least(1, dim=dim)
        self.dim = int(dim)
        self.tag_weight = float(tag_weight)
        self._cache: dict[str, tuple[int, float]] = {}

    def _slot(self, feature: str) -> tuple[int, float]:
        hit = self._cache.get(feature)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1_000_000:
                self._cache[feature] = hit
        return hit

    def transform(self, title: str = "", tags: Iterable[str] = ()) -> np.ndarray:
        """(dim,) float32 unit vector (all zeros when there is no token at all)."""
        v = np.zeros(self.dim, dtype=np.float32)
        for tok in _TOKEN.findall(title.lower()):
            slot, sign = self._slot("w:" + tok)
            v[slot] += sign
        for tag in tags:
            slot, sign = self._slot("t:" + tag.strip().lower())
            v[slot] += sign * self.tag_weight
        norm = float(np.linalg.norm(v))
        return v / norm if norm > 0 else v

    def transform_many(self, titles: Sequence[str], tags: Sequence[Iterable[str]] | None = None) -> np.ndarray:
        """(len(titles), dim) float32 matrix of :meth:`transform` rows."""
        tag_lists = tags if tags is not None else [()] * len(titles)
        if len(tag_lists) != len(titles):
            raise ShapeMismatchError(f"{len(titles)} titles but {len(tag_lists)} tag lists")
        out = np.zeros((len(titles), self.dim), dtype=np.float32)
        for n, (title, t) in enumerate(zip(titles, tag_lists)):
            out[n] = self.transform(title, t)
        return out

    def __getstate__(self) -> dict:
        return {"dim": self.dim, "tag_weight": self.tag_weight}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["dim"], tag_weight=state["tag_weight"])
