"""Approximate nearest-neighbour retrieval for the batch models (issue #16): which library, and what it buys.

    python benchmarks/ann.py [--items 100000] [--libs hnswlib,hnswlib-l2aug,usearch,voyager,faiss-hnsw,faiss-ivf,served]
                             [--scale-items 1000000] [--vae-items 0] [--content-items 0] [--ef 128] [--nprobe 16]
                             [--queries 1000] [--out FILE.json]

Both batch models retrieve by maximum inner product: the Transformer scores ``u @ e_i`` (``d_model`` = 64 by
default, ``models.sequence.SeqEncoderConfig``/``models.refresh.RefreshConfig``), the Mult-VAE's last decoder
layer ``tanh(h) @ W_i + b_i`` (600 hidden units: ``[tanh(h), 1] @ [W_i, b_i]``, 601 dimensions). Each library
is asked for the scorer's candidate depth, 100 (``ScorerCore(n_candidates=100)``), and the fetched items are
re-ranked by their exact inner products, as ``BatchScorer`` does. ``--content-items``: the content model's
index (``models.ann.ContentIndex``) on unit 384-dimensional vectors (cosines), fetching 1,000 for the best 100,
as ``online.content.ContentNeighbours`` does.

Item vectors (:func:`clustered_items`): trained item embeddings are clustered and popular items have larger
norms, so an i.i.d. Gaussian catalogue would flatter or misjudge an index. Here: ``2 * sqrt(n)`` cluster
centres (unit norm), cluster sizes Zipf-like (p ~ rank^-0.8), each item its centre plus isotropic noise of
norm ~0.5, normalised, then scaled by a Zipf-like norm, ``(1 + popularity rank) ^ -0.2`` (the most popular
item 1.0, the 100,000th 0.1, the 1,000,000th 0.06). Users (:func:`clustered_users`): a random mix of two
centres drawn by cluster size, plus noise of norm ~0.5.

Measured for each library on one thread (the scorer serves with one torch thread; the build runs single
threaded as ``models.ann`` builds, so that it is deterministic): build time; query time per user (batches of
64 users, the candidate depth 100 fetched); recall@10, @50 and @100 of the re-ranked fetch against exact
search (torch, float32); the index's serialized size per item; and exact search's time per user on the same
thread (torch ``users @ items.T`` and ``topk``) for the speed-up. ``--scale-items`` builds the chosen library
(through ``models.ann.MipsIndex``, what ``BatchScorer`` serves with; ``make bench``'s ``scale`` figures) at
that size too; ``--vae-items`` builds it
on Mult-VAE-shaped vectors (601 dimensions) at that size.

HNSW settings are the same for every library: M = 16 links, ef_construction = 64, ef_search = 128 (>= the
fetch). faiss IVF: 4 sqrt(n) lists (k-means on 64 sqrt(n) samples, seed 0), nprobe = 16, on the
augmented vectors. ``-l2aug``: the inner product turned into L2 by the usual augmentation
(``x -> [x, sqrt(M^2 - |x|^2)]``, ``q -> [q, 0]``); the others use the library's inner-product metric.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, as the scorer serves

import numpy as np

__all__ = ["LIBRARIES", "clustered_items", "clustered_users", "exact_topk", "measure"]

D_TRANSFORMER = 64  # models.sequence.SeqEncoderConfig.d_model
D_VAE = 601  # Mult-VAE decoder input (600 hidden units) + its bias
D_CONTENT = 384  # all-MiniLM-L6-v2: the content model's vectors
FETCH = 100  # the scorer's candidate depth (streams.agents.scorer.ScorerCore n_candidates)
BATCH = 64  # users per query batch
M, EF_CONSTRUCTION = 16, 64
EF_SEARCH = 128  # --ef
NPROBE = 16  # --nprobe


# ---------------------------------------------------------------------------------------- data
def clustered_items(n: int, d: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, d) float32 item vectors, the (C, d) cluster centres and the clusters' probabilities (see the
    module docstring).

    >>> x, c, p = clustered_items(1000, 8)
    >>> x.shape, c.shape, round(float(p.sum()), 6), round(float(np.linalg.norm(x, axis=1).max()), 3)
    ((1000, 8), (63, 8), 1.0, 1.0)
    """
    rng = np.random.default_rng(seed)
    c = max(2, int(round(2 * math.sqrt(n))))
    centres = rng.standard_normal((c, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, c + 1) ** 0.8
    p /= p.sum()
    x = np.empty((n, d), dtype=np.float32)
    rank = rng.permutation(n)  # popularity rank of each item
    for lo in range(0, n, 100_000):  # in chunks: float64 temporaries stay small at 1M items
        hi = min(n, lo + 100_000)
        v = centres[rng.choice(c, size=hi - lo, p=p)] + 0.5 * rng.standard_normal((hi - lo, d)) / math.sqrt(d)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        x[lo:hi] = v * (1.0 + rank[lo:hi, None]) ** -0.2
    return x, centres, p


def clustered_users(m: int, centres: np.ndarray, p: np.ndarray, *, seed: int = 1) -> np.ndarray:
    """(m, d) float32 user vectors: a random mix of two centres drawn by cluster size, plus noise."""
    rng = np.random.default_rng(seed)
    c, d = centres.shape
    a, b = rng.choice(c, size=m, p=p), rng.choice(c, size=m, p=p)
    w = rng.uniform(size=(m, 1))
    q = w * centres[a] + (1 - w) * centres[b] + 0.5 * rng.standard_normal((m, d)) / math.sqrt(d)
    return q.astype(np.float32)


def augment(x: np.ndarray) -> np.ndarray:
    """Items for L2 search by inner product: ``[x, sqrt(max|x|^2 - |x|^2)]``."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    return np.hstack([x, np.sqrt(np.maximum(sq.max() - sq, 0.0))[:, None].astype(np.float32)])


def augment_queries(q: np.ndarray) -> np.ndarray:
    return np.hstack([q, np.zeros((q.shape[0], 1), dtype=np.float32)])


# ---------------------------------------------------------------------------------------- exact search
def exact_topk(items: np.ndarray, users: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """(m, k) exact top-k rows (torch float32 product and ``topk``, one thread, batches of :data:`BATCH`)
    and the seconds per user it took."""
    import torch

    torch.set_num_threads(1)
    x = torch.from_numpy(items)
    out = np.empty((len(users), k), dtype=np.int64)
    t = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(users), BATCH):
            s = torch.from_numpy(users[lo:lo + BATCH]) @ x.T
            out[lo:lo + BATCH] = torch.topk(s, k, dim=1).indices.numpy()
    return out, (time.perf_counter() - t) / len(users)


# ---------------------------------------------------------------------------------------- libraries
class _Hnswlib:
    def __init__(self, space: str = "ip") -> None:
        self.space = space

    def build(self, x: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index(space=self.space, dim=x.shape[1])
        self.index.init_index(max_elements=len(x), M=M, ef_construction=EF_CONSTRUCTION, random_seed=0)
        self.index.set_num_threads(1)
        self.index.add_items(x, np.arange(len(x)))
        self.index.set_ef(EF_SEARCH)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(q, k=k, num_threads=1)[0].astype(np.int64)

    def nbytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.bin"
            self.index.save_index(str(path))
            return path.stat().st_size


class _Usearch:
    def build(self, x: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(ndim=x.shape[1], metric="ip", dtype="f32", connectivity=M,
                           expansion_add=EF_CONSTRUCTION, expansion_search=EF_SEARCH)
        self.index.add(np.arange(len(x)), x, threads=1)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        found = self.index.search(q, k, threads=1)
        keys = np.asarray(found.keys, dtype=np.int64)
        keys[np.arange(k)[None, :] >= np.asarray(found.counts)[:, None]] = -1
        return keys

    def nbytes(self) -> int:
        return len(self.index.save())


class _Voyager:
    def build(self, x: np.ndarray) -> None:
        import voyager

        self.index = voyager.Index(voyager.Space.InnerProduct, num_dimensions=x.shape[1], M=M,
                                   ef_construction=EF_CONSTRUCTION, random_seed=0, max_elements=len(x))
        self.index.add_items(x, ids=list(range(len(x))), num_threads=1)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.query(q, k=k, num_threads=1, query_ef=EF_SEARCH)[0], dtype=np.int64)

    def nbytes(self) -> int:
        buf = io.BytesIO()
        self.index.save(buf)
        return buf.tell()


class _FaissHnsw:
    def build(self, x: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        self.index = faiss.IndexHNSWFlat(x.shape[1], M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION
        self.index.add(x)
        self.index.hnsw.efSearch = EF_SEARCH

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k)[1]

    def nbytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)


class _FaissIvf:
    def build(self, x: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        x = augment(x)
        n, d = x.shape
        nlist = int(4 * math.sqrt(n))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist, faiss.METRIC_L2)
        self.index.cp.seed = 0
        sample = np.random.default_rng(0).choice(n, size=min(n, 64 * int(math.sqrt(n))), replace=False)
        self.index.train(x[np.sort(sample)])
        self.index.add(x)
        self.index.nprobe = NPROBE

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(augment_queries(q), k)[1]

    def nbytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)


class _Augmented:
    """An L2 index over the augmented vectors."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def build(self, x: np.ndarray) -> None:
        self.inner.build(augment(x))

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.inner.search(augment_queries(q), k)

    def nbytes(self) -> int:
        return self.inner.nbytes()


class _Content:
    """``models.ann.ContentIndex``: the content model's index (unit vectors, fetching ``rowindex.FETCH`` x 100)."""

    def __init__(self) -> None:
        from online.rowindex import FETCH as PER_CANDIDATE

        self.fetch = PER_CANDIDATE * FETCH

    def build(self, x: np.ndarray) -> None:
        from models.ann import ContentIndex

        self.index = ContentIndex(lambda rows: x[rows], len(x), x.shape[1])

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k)

    def nbytes(self) -> int:
        return self.index.nbytes()


class _Served:
    """``models.ann.MipsIndex``: the index ``BatchScorer`` serves with."""

    def build(self, x: np.ndarray) -> None:
        from models.ann import MipsIndex

        self.index = MipsIndex(x)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(q, k)

    def nbytes(self) -> int:
        return self.index.nbytes()


LIBRARIES = {
    "hnswlib": lambda: _Hnswlib("ip"),
    "hnswlib-l2aug": lambda: _Augmented(_Hnswlib("l2")),
    "usearch": _Usearch,
    "voyager": _Voyager,
    "faiss-hnsw": _FaissHnsw,
    "faiss-ivf": _FaissIvf,
    "served": _Served,
    "content": _Content,
}


# ---------------------------------------------------------------------------------------- measurement
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(name: str, items: np.ndarray, users: np.ndarray, truth: np.ndarray, exact_s: float) -> dict[str, float]:
    """Build ``name``'s index on ``items``, query ``users`` (fetch :data:`FETCH`, exact re-rank) and compare
    with ``truth`` (exact top-100 rows)."""
    lib = LIBRARIES[name]()
    fetch = getattr(lib, "fetch", FETCH)
    rss = _rss()
    t = time.perf_counter()
    lib.build(items)
    build_s = time.perf_counter() - t
    rss_delta = _rss() - rss
    fetched = np.empty((len(users), fetch), dtype=np.int64)
    t = time.perf_counter()
    for lo in range(0, len(users), BATCH):
        fetched[lo:lo + BATCH] = lib.search(users[lo:lo + BATCH], fetch)
    query_s = (time.perf_counter() - t) / len(users)
    row = {"items": float(len(items)), "dim": float(items.shape[1]), "build_s": build_s,
           "query_ms_per_user": query_s * 1e3, "exact_ms_per_user": exact_s * 1e3, "speedup": exact_s / query_s,
           "index_bytes_per_item": lib.nbytes() / len(items), "rss_delta_mb": rss_delta / 2**20}
    for k in (10, 50, 100):
        hits = 0
        for b in range(len(users)):
            got = fetched[b][fetched[b] >= 0]
            scores = items[got] @ users[b]
            top = got[np.argsort(-scores, kind="stable")[:k]]
            hits += len(np.intersect1d(top, truth[b, :k]))
        row[f"recall_at_{k}"] = hits / (k * len(users))
    return row


def _case(n: int, d: int, names: list[str], n_queries: int, log, unit: bool = False) -> dict[str, dict[str, float]]:
    items, centres, p = clustered_items(n, d, seed=0)
    if unit:  # content vectors: cosines
        items /= np.linalg.norm(items, axis=1, keepdims=True)
    if d == D_VAE:  # [W_i, b_i] with a bias column like a trained decoder's (small, item-specific)
        items[:, -1] = np.random.default_rng(2).normal(0.0, 0.05, size=n).astype(np.float32)
    users = clustered_users(n_queries, centres, p, seed=1)
    if d == D_VAE:
        users[:, -1] = 1.0  # the query's bias coordinate
    if unit:
        users /= np.linalg.norm(users, axis=1, keepdims=True)
    truth, exact_s = exact_topk(items, users, FETCH)
    out = {}
    for name in names:
        row = measure(name, items, users, truth, exact_s)
        out[name] = row
        log(f"{n:>9,} x {d:<3} {name:<14} build {row['build_s']:7.1f} s  query {row['query_ms_per_user']:6.3f} ms/user"
            f" (exact {row['exact_ms_per_user']:6.2f}, x{row['speedup']:5.1f})  recall@10 {row['recall_at_10']:.4f}"
            f" @50 {row['recall_at_50']:.4f} @100 {row['recall_at_100']:.4f}  {row['index_bytes_per_item']:6.0f} B/item"
            f"  RSS +{row['rss_delta_mb']:.0f} MiB")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--libs", default="hnswlib,hnswlib-l2aug,usearch,voyager,faiss-hnsw,faiss-ivf")
    ap.add_argument("--scale-items", type=int, default=0, help="also the served index at this size (0: no)")
    ap.add_argument("--vae-items", type=int, default=0, help="also the served index on 601-d Mult-VAE vectors")
    ap.add_argument("--content-items", type=int, default=0,
                    help="also the content model's index (models.ann.ContentIndex) on 384-d unit vectors")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--ef", type=int, default=EF_SEARCH, help="HNSW ef_search")
    ap.add_argument("--nprobe", type=int, default=NPROBE, help="faiss IVF lists probed")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    globals().update(EF_SEARCH=args.ef, NPROBE=args.nprobe)
    names = [s.strip() for s in args.libs.split(",") if s.strip()]
    unknown = sorted(set(names) - set(LIBRARIES))
    if unknown:
        ap.error(f"unknown libraries {unknown}; choose from {sorted(LIBRARIES)}")
    started = time.perf_counter()
    report: dict[str, dict] = {"transformer": {}, "scale": {}, "vae": {}, "content": {}}

    def log(s: str) -> None:
        print(s, flush=True)

    if names and args.items:
        report["transformer"] = _case(args.items, D_TRANSFORMER, names, args.queries, log)
    if args.scale_items:
        report["scale"] = _case(args.scale_items, D_TRANSFORMER, ["served"], args.queries, log)
    if args.vae_items:
        report["vae"] = _case(args.vae_items, D_VAE, ["served"], args.queries, log)
    if args.content_items:
        report["content"] = _case(args.content_items, D_CONTENT, ["content"], args.queries, log, unit=True)
    log(f"(total {time.perf_counter() - started:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
