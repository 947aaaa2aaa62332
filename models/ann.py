"""Approximate maximum-inner-product search over a large catalogue: what ``BatchScorer`` retrieves with
above ``models.scoring.ANN_MIN_ITEMS`` items.

Both batch models score by inner product (the Transformer ``u @ e_i``; the Mult-VAE's last decoder layer
``x @ W_i + b_i``, i.e. ``[x, 1] @ [W_i, b_i]``). :class:`MipsIndex` turns that into a nearest-neighbour
search by the usual augmentation, ``e -> [e, sqrt(R^2 - |e|^2)]`` (R the largest item norm) and
``u -> [u, 0]``, so that ``|u' - e'|^2 = |u|^2 + R^2 - 2 u.e``: the nearest item is the best-scoring one.
The index is faiss's IVF-Flat on those vectors: ``round(4 sqrt(n))`` k-means lists, ``nlist / 16`` of
them probed per query (more in catalogues under ~16k items, so that ~1,024 items are scanned), vectors
stored uncompressed. It returns candidates only; the caller re-scores them exactly. Why IVF-Flat and not
HNSW: docs/decisions.md, "#16 ANN".

Deterministic: k-means on a fixed sample with a fixed seed, built and searched on one OpenMP thread.

>>> rng = np.random.default_rng(0)
>>> items = rng.standard_normal((2000, 8)).astype(np.float32)
>>> index = MipsIndex(items)
>>> q = rng.standard_normal((3, 8)).astype(np.float32)
>>> found = index.search(q, 5)
>>> found.shape, bool((np.sort(found, axis=1) == np.sort(np.argsort(-(q @ items.T), axis=1)[:, :5], axis=1)).mean() > 0.8)
((3, 5), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import faiss
import numpy as np

__all__ = ["ContentIndex", "MipsIndex"]

LISTS_PER_SQRT_N = 4  # nlist = round(4 sqrt(n)): lists of ~sqrt(n) / 4 items
PROBE_SHARE = 16  # nprobe = ceil(nlist / 16): ~1/16 of the items scanned per query
MIN_SCAN = 1024  # ... and at least ~1024 items (small catalogues: a fetch of 100+ must find enough)
TRAIN_PER_LIST = 40  # k-means sample: 40 points per list (faiss warns below 39)
SEED = 0


class _Ivf:
    """What both indexes share: their lists (``nlist`` = 4 sqrt(n), ``nprobe`` = ``nlist / probe_share`` and
    enough for :data:`MIN_SCAN` items), the k-means sample, the query check and the serialized size."""

    def _lists(self, n: int, dim: int, probe_share: int) -> np.ndarray:
        """Sets the sizes; returns the sorted rows of the training sample (:data:`TRAIN_PER_LIST` a list)."""
        self.n, self.dim = int(n), int(dim)
        self.nlist = max(1, min(n, round(LISTS_PER_SQRT_N * math.sqrt(n))))
        self.nprobe = min(self.nlist, max(math.ceil(self.nlist / probe_share), math.ceil(self.nlist * MIN_SCAN / n)))
        sample = min(n, TRAIN_PER_LIST * self.nlist)
        return np.arange(n) if sample >= n else np.sort(np.random.default_rng(SEED).choice(n, size=sample, replace=False))

    def _clustering(self, index) -> None:
        """k-means with a fixed seed on our sample (faiss samples no further), quietly on small catalogues."""
        index.cp.seed = SEED
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        index.cp.min_points_per_centroid = 1

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got {q.shape}")
        faiss.omp_set_num_threads(1)
        return q

    def __len__(self) -> int:
        return self.n

    def nbytes(self) -> int:
        """The index's serialized size (what it stores of the vectors, ids, centroids, code books)."""
        return int(faiss.serialize_index(self._index).nbytes)


class MipsIndex(_Ivf):
    """Approximate top-k rows of ``vectors`` (n, d) by inner product with a query; ``labels`` (n,) name the
    rows in the results (default 0..n-1)."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray | None = None) -> None:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"MipsIndex needs a non-empty (n, d) matrix, got shape {x.shape}")
        n, d = x.shape
        labels = np.arange(n, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"{labels.shape[0] if labels.ndim else 0} labels for {n} vectors")
        rows = self._lists(n, d, PROBE_SHARE)
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        extra = np.sqrt(np.maximum(sq.max() - sq, 0.0)).astype(np.float32)
        xa = np.hstack([x, extra[:, None]])  # (n, d + 1)
        faiss.omp_set_num_threads(1)
        self._index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d + 1), d + 1, self.nlist, faiss.METRIC_L2)
        self._clustering(self._index)
        self._index.train(xa[rows])
        self._index.add_with_ids(xa, labels)
        self._index.nprobe = self.nprobe

    @classmethod
    def over(cls, vectors_of: Callable[[np.ndarray], np.ndarray], n: int, dim: int) -> MipsIndex:
        """The index of rows ``0..n-1`` of ``vectors_of``: an ``online.rowindex.IndexFactory`` (online MF's)."""
        return cls(vectors_of(np.arange(n)))

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(B, k) labels of each query's approximate best ``k`` rows, best first; -1 where fewer were found."""
        q = self._queries(queries)
        qa = np.hstack([q, np.zeros((len(q), 1), dtype=np.float32)])
        return self._index.search(qa, min(k, self.n))[1]


CODE_DIMS = 2  # ContentIndex: dimensions per 4-bit code (d / 2 codes a vector)
CONTENT_PROBE_SHARE = 4  # ContentIndex: a quarter of the lists probed (history means lie between clusters)
ADD_BLOCK = 65_536  # rows encoded and added at a time (no float32 copy of a whole million-row catalogue)


class ContentIndex(_Ivf):
    """Approximate top-k rows by cosine over unit content vectors: what ``online.content.ContentNeighbours``
    retrieves with from its ``ann_min_items`` on (handed to it as ``index_factory``; ``online/`` does not import
    faiss). faiss IVF-PQ fast scan: ``nlist`` as :class:`MipsIndex`, a quarter of the lists probed, each vector
    ``d / 2`` sub-vector codes of 4 bits (scanned with SIMD), ~116 bytes an item at 384 dimensions where IVF-Flat takes
    1,564. The codes only choose what to fetch; the caller re-scores what it fetched with the exact vectors
    (why this index: docs/decisions.md, "#16 MF and content from 50,000 items").

    ``vectors_of(rows)`` gives the float32 unit vectors of row indices ``rows``; rows ``0..n-1`` are indexed,
    read :data:`ADD_BLOCK` at a time. Deterministic: a fixed sample and seeds, one OpenMP thread.

    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((3000, 16)).astype(np.float32)
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> index = ContentIndex(lambda rows: x[rows], len(x), 16)
    >>> found = index.search(x[:4], 40)
    >>> found.shape, bool(all(j in row for j, row in enumerate(found)))
    ((4, 40), True)
    """

    def __init__(self, vectors_of: Callable[[np.ndarray], np.ndarray], n: int, dim: int) -> None:
        if n <= 0 or dim <= 0:
            raise ValueError(f"ContentIndex needs rows and dimensions, got {n} x {dim}")
        rows = self._lists(n, dim, CONTENT_PROBE_SHARE)
        m = max(s for s in range(1, max(1, dim // CODE_DIMS) + 1) if dim % s == 0)  # a divisor of d
        faiss.omp_set_num_threads(1)
        self._index = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(dim), dim, self.nlist, m, 4, faiss.METRIC_INNER_PRODUCT)
        self._clustering(self._index)
        self._index.pq.cp.seed = SEED
        self._index.train(np.ascontiguousarray(vectors_of(rows), dtype=np.float32))
        for lo in range(0, n, ADD_BLOCK):
            ids = np.arange(lo, min(n, lo + ADD_BLOCK), dtype=np.int64)
            self._index.add_with_ids(np.ascontiguousarray(vectors_of(ids), dtype=np.float32), ids)
        self._index.nprobe = self.nprobe

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(B, k) rows of each query's approximate best ``k`` by inner product, best first; -1 where fewer."""
        return self._index.search(self._queries(queries), min(k, self.n))[1]
