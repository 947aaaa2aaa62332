"""The vectorised serving paths against the straightforward definitions they replace (same results)."""

from __future__ import annotations


import numpy as np
import pytest

from online.arms import parse_arms
from online.base import Candidate, CandidateList, tie_floor, top_k, top_k_rows
from online.blender import FeedbackBlender
from online.content import ContentNeighbours
from online.recommender import OnlineRecommender


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_rows_equals_top_k_per_row(dtype) -> None:
    rng = np.random.default_rng(0)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for it in range(900):
        rows, n, k = int(rng.integers(2, 7)), int(rng.integers(1, 80)), int(rng.integers(0, 25))
        s = rng.random((rows, n))
        if it % 6 == 1:
            s = np.round(s, 1)  # ties at the boundary
        elif it % 6 == 2:
            s[rng.random(s.shape) < 0.2] = np.nan
        elif it % 6 == 3:  # (+inf is not covered: top_k counts it out of k but still ranks it first)
            s[rng.random(s.shape) < 0.3] = -np.inf
        elif it % 6 == 4:  # near-ties: equal up to rounding, up to a tolerance, a little more (wide runs)
            s = np.round(s, 1) + rng.choice([0.0, 0.03, 0.6, 0.9, 1.2], s.shape) * rtol * rng.choice([-1, 1], s.shape)
        elif it % 6 == 5:  # more ties at the k-th score than top_k_rows partitions off
            s = np.round(s * 2) / 2
        s = s.astype(dtype)
        bans = [rng.integers(-1, n, int(rng.integers(0, 6))) if rng.random() < 0.7 else None for _ in range(rows)]
        got = top_k_rows(s.copy(), k, bans)
        for r in range(rows):
            want = top_k(s[r], k, bans[r])
            assert got[r].tolist() == want.tolist() and got[r].dtype == np.int64, (it, r)


@pytest.mark.parametrize("warm", [False, True])
def test_blender_entries_equal_the_dense_feature_matrix(warm: bool) -> None:
    rng = np.random.default_rng(0)
    sources = ["popularity", "covisit", "mf", "content", "fresh", "transformer"]
    blender = FeedbackBlender(sources=sources, warmup=50)
    if warm:
        X = rng.random((400, blender.n_features))
        blender.learn_matrix(X, rng.random(400) < 0.3)
        blender.flush()
        assert blender.warmed_up
    n, per_row = 300, 2
    rows = np.repeat(np.arange(n), per_row)
    cols = np.concatenate([rng.choice(len(sources), per_row, replace=False) for _ in range(n)])
    values = rng.normal(size=rows.size) * 50
    values[::17] = 0.0
    ranks = rng.integers(0, 100, rows.size)
    tail = rng.random(n) < 0.5
    counts = rng.integers(0, 500, n)
    bounds = [0, 40, 40, 170, 299, 300]
    scores = np.zeros((n, len(sources)))
    rank_m = np.full((n, len(sources)), np.inf)
    scores[rows, cols] = values
    rank_m[rows, cols] = ranks
    X = blender.feature_matrix(scores, rank_m, tail, counts)
    assert np.array_equal(blender.feature_entries(n, rows, cols, values, ranks, tail, counts), X)
    want = np.concatenate([blender.logits(X[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
    got = blender.logits_entries(n, rows, cols, values, ranks, tail, counts, bounds)
    assert np.array_equal(got, want)  # bit for bit: the product still runs per block
    assert np.array_equal(blender.logits_blocks(X, bounds), want)


def test_content_anchors_and_candidates_are_those_of_the_full_product() -> None:
    """The lazy anchors (a product of the candidates read) = the full (history, candidates) product's
    first row tied with the column's largest cosine (most recent first; duplicate vectors: exact ties)."""
    rng = np.random.default_rng(0)
    cn = ContentNeighbours(dim=16)
    vecs = rng.normal(size=(300, 16)).astype(np.float32)
    vecs[150:160] = vecs[140]  # duplicate vectors: exact ties between anchors
    cn.set_vectors([f"i{j}" for j in range(300)], vecs)
    histories = [[f"i{j}" for j in rng.integers(0, 300, int(rng.integers(0, 15)))] for _ in range(25)]
    histories[3] = ["i140", "i150", "i151"]
    histories[4] = ["unknown-a", "unknown-b"]
    got = cn.candidates_many(histories, 20, [cn._index.indices(["i1", "i2"])] * len(histories))
    for history, (best, sims, anchors) in zip(histories, got):
        rec = cn.recent(history)
        rows = rec[rec >= 0]
        if not rows.size:
            assert best.size == 0
            continue
        sims = cn.rows(rows) @ cn.rows(best).T  # (A, k) every history row against every candidate
        assert anchors.tolist() == rows[(sims >= tie_floor(sims.max(axis=0))).argmax(axis=0)].tolist()
        one = cn.recommend("u", history, 20, exclude=["i1", "i2"])
        assert [c.item for c in one] == [f"i{j}" for j in best.tolist()]
        assert [c.anchor for c in one] == [f"i{j}" for j in anchors.tolist()]


def test_content_vectors_in_16_bits_rank_as_the_float32_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-bit fixed-point rows keep the float32 vectors' cosines to 1e-6 and nearly all of their top 10; the
    scan in blocks of rows is the whole product; models pickled with float32 or float16 rows load in 16 bits."""
    import pickle

    from online import content

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 384)).astype(np.float32)
    items = [f"i{j}" for j in range(3000)]
    cn = ContentNeighbours(dim=384)
    cn.set_vectors(items, vecs)
    assert cn._v.dtype == np.int16 and cn._v.nbytes == 768 * cn._v.shape[0]
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = cn.rows(np.arange(3000))
    assert ((unit * rows).sum(axis=1) / np.linalg.norm(rows, axis=1)).min() > 1 - 1e-6
    histories = [[f"i{j}" for j in rng.integers(0, 3000, 3)] for _ in range(100)]
    got = cn.candidates_many(histories, 10)
    for history, (best, _, _) in zip(histories, got):
        q = sum(unit[int(i[1:])] / r for r, i in enumerate(reversed(history), 1))
        sims = unit @ q
        sims[[int(i[1:]) for i in history]] = -np.inf
        assert len(set(best.tolist()) & set(np.argsort(-sims)[:10].tolist())) >= 9
    monkeypatch.setattr(content, "_SCAN_BYTES", 7 * 4 * 384)  # blocks of 7 rows
    blocks = cn.candidates_many(histories, 10)
    assert all(np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], rtol=1e-5) for a, b in zip(got, blocks))
    for before in (unit, unit.astype(np.float16)):  # the layouts before: float32 rows, then float16 (stop 32)
        old = pickle.loads(pickle.dumps(cn)).__getstate__()
        old["_v"] = before
        del old["_buf"]
        again = ContentNeighbours.__new__(ContentNeighbours)
        again.__setstate__(old)
        assert again._v.dtype == np.int16  # each component rounded to the 16-bit grid, half a step at most
        np.testing.assert_allclose(again.rows(np.arange(3000)), rows, rtol=2.0**-11, atol=2.0**-15)  # + a float16 rounding


def test_candidate_list_reads_as_candidates() -> None:
    cl = CandidateList(["a", "b", "c"], [0.5, np.float32(0.25), 1], "vae")
    assert list(cl) == [Candidate("a", 0.5, "vae"), Candidate("b", 0.25, "vae"), Candidate("c", 1.0, "vae")]
    assert cl[-1] == Candidate("c", 1.0, "vae") and cl[:2] == list(cl)[:2] and len(cl) == 3
    assert cl == list(cl) and isinstance(cl[0].score, float)
    with pytest.raises(ValueError):
        CandidateList(["a"], [], "vae")


def test_extras_as_candidate_lists_or_candidates_give_the_same_lists() -> None:
    import pickle

    arms = parse_arms("control:0.5:0.0,tail:0.5:0.6")
    rec = OnlineRecommender.create(arms=arms, content_dim=8, seed=0)
    rng = np.random.default_rng(0)
    hist: dict[str, list[str]] = {}
    for n in range(2000):
        user, item = f"u{int(rng.integers(0, 80))}", f"i{min(int(rng.zipf(1.3)), 150)}"
        h = hist.setdefault(user, [])
        rec.learn_one(user, item, float(n), tuple(h[-50:]))
        h.append(item)
    users = list(hist)[:20]
    histories = [hist[u][-50:] for u in users]
    extras_l, extras_c = [], []
    for b, h in enumerate(histories):
        items = [f"i{j}" for j in rng.permutation(160)[:30]] + [f"new-{b}-{j}" for j in range(3)] + h[-2:]
        if b % 5 == 0:
            items += items[:4]  # listed twice: the first score, at the later place
        scores = rng.random(len(items)).tolist()
        extras_l.append({"transformer": CandidateList(items, scores, "transformer"),
                         "vae": CandidateList(items[::-1], scores, "vae")})
        extras_c.append({s: list(cl) for s, cl in extras_l[-1].items()})
    twin = pickle.loads(pickle.dumps(rec))
    counts = [len(hist[u]) for u in users]
    arms_of = [rec.assign_arm(u) for u in users]
    a = rec.recommend_many(users, histories, counts, arms=arms_of, extras=extras_l)
    b = twin.recommend_many(users, histories, counts, arms=arms_of, extras=extras_c)
    assert [[(c.item, c.source, c.anchor, c.score) for c in x] for x in a] == \
        [[(c.item, c.source, c.anchor, c.score) for c in x] for x in b]
    assert any(c.source in ("transformer", "vae") for x in a for c in x)
    assert not any(c.item in h for x, h in zip(a, histories) for c in x)
