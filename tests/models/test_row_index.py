"""Content and MF retrieval through their indexes (``models.ann.ContentIndex`` and ``MipsIndex.over`` handed to
``online.content.ContentNeighbours`` and ``online.mf.OnlineMF``, kept by ``online.rowindex.RowIndex``), forced on
by a small ``ann_min_items``: on a clustered catalogue the lists of exact search, with the same exclusions; items
added or moved since the build are found; the index is rebuilt as the catalogue grows, in a thread when asked
(exact scans until it is ready; a failed build turns it off) and never pickled."""

import pickle

import numpy as np
import pytest

from models.ann import ContentIndex, MipsIndex
from online.base import TIE_RTOL
from online.content import ContentNeighbours
from online.mf import OnlineMF
from online.rowindex import REBUILD_SHARE

N, D, CLUSTERS, K = 4000, 64, 40, 20


def clustered(n: int, seed: int) -> np.ndarray:
    """(n, D) items around 40 random unit centres, spread enough that a user's best items are not all tied."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres[rng.integers(CLUSTERS, size=n)] + 0.6 / np.sqrt(D) * rng.standard_normal((n, D))


@pytest.fixture(scope="module")
def vectors():
    return clustered(N, 0)


def models(vectors, n=N):
    ids = [f"i{j}" for j in range(n)]
    exact = ContentNeighbours(dim=D)
    ann = ContentNeighbours(dim=D, index_factory=ContentIndex, ann_min_items=1000)
    for m in (exact, ann):
        m.set_vectors(ids, vectors[:n])
    return exact, ann


def requests(n_items: int, users: int = 60, seed: int = 1, longest: int = 5):
    rng = np.random.default_rng(seed)
    recent = [rng.choice(n_items, size=int(rng.integers(1, longest + 1)), replace=False) for _ in range(users)]
    bans = [np.concatenate([r, rng.choice(n_items, size=10)]) for r in recent]
    return recent, bans


def recall(got, want) -> float:
    return float(np.mean([len(set(g[0].tolist()) & set(w[0].tolist())) / max(1, w[0].size) for g, w in zip(got, want)]))


def test_the_lists_of_exact_search_with_the_same_exclusions(vectors):
    exact, ann = models(vectors)
    recent, bans = requests(N)
    want, got = exact.top_many(recent, K, bans), ann.top_many(recent, K, bans)
    assert ann.ann.index is not None and exact.ann.index is None
    # 4-bit codes of 4 dimensions each fetch 80 rows a user here; at 384 dimensions and a million items the
    # same index finds .99 of the best 10 (docs/results.md)
    assert recall(got, want) >= 0.9
    assert recall([(g[0][:10],) for g in got], [(w[0][:10],) for w in want]) >= 0.9
    for (items, sims, _), ban in zip(got, bans):
        assert items.size == K and not np.isin(items, ban).any()
        assert np.all(np.diff(sims) <= TIE_RTOL)  # best first (near-ties by index)
    # the cosines are the stored vectors', as a scan gives them
    for (items, sims, _), (w_items, w_sims, _) in zip(got, want):
        common, gi, wi = np.intersect1d(items, w_items, return_indices=True)
        np.testing.assert_allclose(sims[gi], w_sims[wi], rtol=1e-5, atol=1e-6)


def test_small_catalogues_are_scanned(vectors):
    exact, ann = models(vectors, n=999)
    recent, bans = requests(999)
    want, got = exact.top_many(recent, K, bans), ann.top_many(recent, K, bans)
    assert ann.ann.index is None
    assert all(np.array_equal(g[0], w[0]) and np.array_equal(g[1], w[1]) for g, w in zip(got, want))


def test_items_added_or_moved_after_the_build_are_found(vectors):
    exact, ann = models(vectors)
    recent, bans = requests(N, users=10, longest=1)
    ann.top_many(recent, K, bans)  # builds the index over N rows
    built = ann.ann.index
    # a new item next to each user's item, and an old item moved there: both come first
    latest = [int(r[0]) for r in recent]
    moved = [f"i{j}" for j in range(N - 10, N)]
    fresh = [f"new{b}" for b in range(10)]
    for m in (exact, ann):
        m.set_vectors(fresh, vectors[latest] + 1e-3)
        m.set_vectors(moved, vectors[latest] - 1e-3)
    assert ann.ann.index is built and ann.ann._stale.count == 10  # 20 changed rows of 4,000: no rebuild yet
    bans = [np.setdiff1d(ban, np.arange(N - 10, N)) for ban in bans]
    want, got = exact.top_many(recent, K, bans), ann.top_many(recent, K, bans)
    for b, (items, _, _) in enumerate(got):
        assert set(items[:2].tolist()) == {N + b, N - 10 + b}
    assert recall(got, want) >= 0.9


def test_rebuilt_when_an_eighth_of_the_rows_are_new(vectors):
    n0 = 3000
    _, ann = models(vectors, n=n0)
    recent, bans = requests(n0, users=5)
    ann.top_many(recent, K, bans)
    assert ann.ann.n == n0
    grow = int(REBUILD_SHARE * n0)
    ann.set_vectors([f"i{j}" for j in range(n0, n0 + grow)], vectors[n0:n0 + grow])
    ann.top_many(recent, K, bans)
    assert ann.ann.n == n0  # exactly an eighth: the index holds on, the new rows are scanned
    ann.set_vectors([f"i{n0 + grow}"], vectors[n0 + grow:n0 + grow + 1])
    ann.top_many(recent, K, bans)
    assert ann.ann.n == n0 + grow + 1 and ann.ann._stale.count == 0


def test_the_index_is_not_pickled_and_comes_back(vectors):
    _, ann = models(vectors)
    recent, bans = requests(N, users=20)
    before = ann.top_many(recent, K, bans)
    state = pickle.dumps(ann)
    assert len(state) < 2 * N * D * 2 + 100_000  # the 16-bit rows, not the index
    back = pickle.loads(state)
    assert back.ann.index is None and back.ann.factory is ContentIndex
    after = back.top_many(recent, K, bans)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(after, before))  # the same build, the same lists


def test_the_index_fetches_its_own_rows_first(vectors):
    x = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    index = ContentIndex(lambda rows: x[rows], N, D)
    found = index.search(x[:50], 10)  # 4-bit codes: coarse, re-scored by the caller
    assert found.shape == (50, 10) and np.mean([j in row for j, row in enumerate(found)]) >= 0.95
    assert index.nbytes() < N * D * 4  # codes, not the float32 vectors
    with pytest.raises(ValueError, match="queries must be"):
        index.search(x[:2, :8], 10)


def trained_mf(**kw) -> OnlineMF:
    """MF over 3,000 items after 6,000 events of 300 users with cluster tastes (so the factors mean something)."""
    mf = OnlineMF(dim=16, seed=0, **kw)
    rng = np.random.default_rng(5)
    taste = rng.integers(30, size=300)
    for n in range(6000):
        u = int(rng.integers(300))
        mf.learn_one(f"u{u}", f"i{int(taste[u]) * 100 + int(rng.integers(100))}", float(n), [])
    for j in range(3000):  # every item known, in the same order in both models
        mf._item_row(f"i{j}")
    mf.flush()
    return mf


def test_mf_through_its_index_gives_the_exact_candidates():
    exact, ann = trained_mf(), trained_mf(index_factory=MipsIndex.over, ann_min_items=1000)
    users = [f"u{u}" for u in range(0, 300, 5)]
    recent = [np.array([u % 3000, (7 * u) % 3000]) for u in range(0, 300, 5)]
    bans = [r.copy() for r in recent]
    want, got = exact.top_many(users, recent, K, bans), ann.top_many(users, recent, K, bans)
    assert ann.ann.index is not None and exact.ann.index is None
    assert recall(got, want) >= 0.95
    for (items, scores), (w_items, w_scores), ban in zip(got, want, bans):
        assert not np.isin(items, ban).any()
        common, gi, wi = np.intersect1d(items, w_items, return_indices=True)
        np.testing.assert_allclose(scores[gi], w_scores[wi], rtol=1e-4, atol=1e-5)  # exact p.q + b
    # SGD steps move the factors: the rows they moved are scanned exactly, and once they are more than an
    # eighth of the indexed rows the index is rebuilt
    before = ann.ann.index
    for m in (exact, ann):
        for n in range(64):
            m.learn_one("u1", f"i{n}", 1e4 + n, [])
        m.flush()
    assert 64 <= ann.ann._stale.count <= 64 * 5 and ann.ann.index is before
    want, got = exact.top_many(users, recent, K, bans), ann.top_many(users, recent, K, bans)
    assert recall(got, want) >= 0.95
    while ann.ann._stale.count <= REBUILD_SHARE * 3000:
        for n in range(64):
            ann.learn_one("u2", f"i{(n * 37) % 3000}", 2e4 + n, [])
        ann.flush()
    ann.top_many(users[:2], recent[:2], K, bans[:2])
    assert ann.ann.index is not before and ann.ann._stale.count == 0


def test_a_background_build_serves_exact_lists_until_it_is_ready(vectors):
    exact, _ = models(vectors)
    ann = ContentNeighbours(dim=D, index_factory=ContentIndex, ann_min_items=1000, background=True)
    ann.set_vectors([f"i{j}" for j in range(N)], vectors)
    recent, bans = requests(N, users=20)
    want = exact.top_many(recent, K, bans)
    first = ann.top_many(recent, K, bans)  # starts the build; scans meanwhile (or the build was that quick)
    assert ann.ann.index is not None or all(np.array_equal(f[0], w[0]) for f, w in zip(first, want))
    ann.ann.wait()
    assert ann.ann.index is not None and ann.ann.n == N
    assert recall(ann.top_many(recent, K, bans), want) >= 0.9


def test_a_failed_build_turns_the_index_off():
    def broken(vectors_of, n, dim):
        raise MemoryError("no room for the index")

    for background in (False, True):
        x = clustered(2000, 1)
        cn = ContentNeighbours(dim=D, index_factory=broken, ann_min_items=1000, background=background)
        exact = ContentNeighbours(dim=D)
        for m in (cn, exact):
            m.set_vectors([f"i{j}" for j in range(2000)], x)
        recent, bans = requests(2000, users=5)
        if not background:
            with pytest.raises(MemoryError):
                cn.top_many(recent, K, bans)
            continue
        cn.top_many(recent, K, bans)
        cn.ann.wait()
        assert isinstance(cn.ann.error, MemoryError) and cn.ann.factory is None
        got, want = cn.top_many(recent, K, bans), exact.top_many(recent, K, bans)
        assert all(np.array_equal(g[0], w[0]) for g, w in zip(got, want))
