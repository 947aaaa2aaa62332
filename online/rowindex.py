"""Approximate top-k rows of a model's item matrix, through an index built outside ``online/``.

Content and MF retrieve by scanning every item for every user (one matrix product and a top k per row): at a
million items that is most of the scorer's time (docs/results.md, "A million items"). A model given an index
factory (``models.ann``: ``online/`` does not import faiss) keeps a :class:`RowIndex` over its first rows; from
``min_rows`` rows on, a user's candidates are the :data:`FETCH` ``* k`` rows the index returns plus the
rows it does not hold right (added, or changed, since its build: scanned exactly), re-scored exactly with the
model's own vectors and ranked with :func:`online.base.top_k`'s tie rule. The index is rebuilt once
:data:`REBUILD_SHARE` of its rows are missing or stale; with ``background`` the build runs in a thread (faiss works
without the GIL) and the model scans exactly until the first one is ready, so that a build never stalls the
scorer; without, it is built in the call (evaluations: the same lists on every run). The index is never
pickled: a loaded model builds its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from online.base import top_k, top_k_rows

__all__ = ["ANN_MIN_ITEMS", "FETCH", "IndexFactory", "REBUILD_SHARE", "RowIndex"]

#: ``(vectors_of(rows) -> (len(rows), dim) float32, n, dim) -> index`` with ``search(queries, k) -> (B, k)`` rows
#: (-1 padded), e.g. ``models.ann.ContentIndex``.
IndexFactory = Callable[[Callable[[np.ndarray], np.ndarray], int, int], Any]
#: From this many items on, a model given an index factory (and the batch models, ``models.scoring``) retrieves
#: through its index. Below it exact search is exact and under ~0.5 ms a user on one core; at 50k items the
#: batch models' index measured 7.8x faster at recall@10 0.989 (docs/results.md, "ANN retrieval").
ANN_MIN_ITEMS = 50_000
FETCH = 10  # rows fetched from the index per candidate wanted, re-scored exactly (docs/decisions.md)
REBUILD_SHARE = 0.125  # rebuild once this share of the indexed rows are missing or stale


class RowIndex:
    """The index of one model's rows and what it does not hold (see the module docstring)."""

    def __init__(self, factory: IndexFactory | None, *, min_rows: int = ANN_MIN_ITEMS, background: bool = False) -> None:
        self.factory = factory
        self.min_rows = int(min_rows)
        self.background = bool(background)
        self.index = None  # over rows [0, n)
        self.n = 0
        self._stale = _Rows()  # rows below n that changed since the build began
        self._build: tuple[threading.Thread, dict, int] | None = None  # a background build: thread, result, n
        self._stale_next = _Rows()  # rows that changed since the running build began
        self.error: BaseException | None = None  # a failed build's: the model scans exactly from then on

    def active(self, n: int) -> bool:
        """Whether ``n`` rows are served through an index (once one is ready)."""
        return self.factory is not None and n >= self.min_rows

    def mark(self, rows: np.ndarray) -> None:
        """Rows whose vectors changed (content set again, MF's SGD steps): scanned exactly until the next build."""
        if self.index is not None:
            self._stale.add(rows[rows < self.n])
        if self._build is not None:
            self._stale_next.add(rows)

    def ready(self, n: int, vectors_of: Callable[[np.ndarray], np.ndarray], dim: int) -> bool:
        """Whether an index serves ``n`` rows now; starts (or, not in the background, runs) a build when due."""
        self._swap()
        if not self.active(n):
            return False
        due = self.index is None or (n - self.n + self._stale.count) > REBUILD_SHARE * self.n
        if due and self._build is None:
            if self.background:
                result: dict = {}
                thread = threading.Thread(target=self._run, args=(vectors_of, n, dim, result), daemon=True,
                                          name="row-index-build")
                self._build, self._stale_next = (thread, result, n), _Rows()
                thread.start()
            else:
                self.index, self.n, self._stale = self.factory(vectors_of, n, dim), n, _Rows()
        return self.index is not None

    def _run(self, vectors_of, n: int, dim: int, result: dict) -> None:
        try:
            result["index"] = self.factory(vectors_of, n, dim)
        except Exception as exc:  # noqa: BLE001 - handed to the serving thread, which turns the index off
            result["error"] = exc

    def _swap(self) -> None:
        """Put a finished background build in place; after a failed one the model scans exactly (``error``)."""
        if self._build is None or self._build[0].is_alive():
            return
        _thread, result, n = self._build
        if "index" in result:
            self.index, self.n, self._stale = result["index"], n, self._stale_next.below(n)
        else:
            self.error, self.factory, self.index = result.get("error"), None, None
        self._build, self._stale_next = None, _Rows()

    def wait(self) -> None:
        """Block until a running background build is done and in place (tests, benchmarks)."""
        if self._build is not None:
            self._build[0].join()
        self._swap()

    def top(self, queries: np.ndarray, n: int, k: int, bans: Sequence[np.ndarray],
            scan_rows: Callable[[np.ndarray, np.ndarray], np.ndarray],
            score_rows: Callable[[np.ndarray, int], np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per query (after :meth:`ready`): (candidate rows ascending, their exact float32 scores, the positions
        of the best ``k`` of them, best first, none of ``bans``). ``scan_rows(queries, rows)`` scores rows
        exactly for every query (B, len(rows)); ``score_rows(rows, b)`` for query ``b`` alone."""
        fetched = self.index.search(queries, FETCH * k)
        extra = np.concatenate([self._stale.rows(), np.arange(self.n, n, dtype=np.int64)])  # ascending
        more = [extra[:0]] * len(queries)
        if extra.size:
            more = [extra[best] for best in top_k_rows(scan_rows(queries, extra), k,
                                                       [_positions(extra, ban) for ban in bans], overwrite=True)]
        out = []
        for b, (got, add, ban) in enumerate(zip(fetched, more, bans)):
            cand = np.union1d(got[got >= 0], add)  # ascending: ties go by row, as in a full scan
            scores = score_rows(cand, b)
            out.append((cand, scores, top_k(scores, k, np.flatnonzero(np.isin(cand, ban)))))
        return out

    def __getstate__(self) -> dict:
        return {"factory": self.factory, "min_rows": self.min_rows, "background": self.background}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["factory"], min_rows=state["min_rows"], background=state["background"])


class _Rows:
    """A set of row indices as a growable boolean mask (an MF step marks hundreds of rows)."""

    __slots__ = ("mask", "count")

    def __init__(self) -> None:
        self.mask = np.zeros(0, dtype=bool)
        self.count = 0

    def add(self, rows: np.ndarray) -> None:
        if not rows.size:
            return
        top = int(rows.max()) + 1
        if top > self.mask.size:
            grown = np.zeros(max(top, 2 * self.mask.size), dtype=bool)
            grown[: self.mask.size] = self.mask
            self.mask = grown
        new = np.unique(rows[~self.mask[rows]])
        self.mask[new] = True
        self.count += new.size

    def rows(self) -> np.ndarray:
        """The rows, ascending."""
        return np.flatnonzero(self.mask)

    def below(self, n: int) -> _Rows:
        out = _Rows()
        rows = self.rows()
        out.add(rows[rows < n])
        return out


def _positions(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The positions in ``rows`` (ascending) of those ``wanted`` it holds."""
    pos = np.searchsorted(rows, wanted)
    hit = pos < rows.size
    hit[hit] = rows[pos[hit]] == wanted[hit]
    return pos[hit]
