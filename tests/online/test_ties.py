"""Scores equal up to rounding are tied, and ties go by a stable rule (issue #18).

Two scores that are equal by construction come out of float arithmetic a few units in the last place
apart, by an amount that depends on the BLAS kernel, the thread count and the processor. Every test
here builds such scores (one ulp apart, or the same value computed along different float paths) in
random arrangements, and checks that the outcome is the rule's, whatever the arrangement: lower index
first in a top k, the most recent history item as an anchor. An exact comparison fails each of them.
"""

from __future__ import annotations

import numpy as np
import pytest

from online.base import TIE_RTOL, TIE_RTOL_F64, tie_floor, top_k, top_k_rows
from online.content import ContentNeighbours
from online.covisit import _LazyAnchors as CovisitAnchors
from online.mf import OnlineMF


def _reference_top_k(s: np.ndarray, k: int) -> list[int]:
    """The tie rule as defined: the best score and its ties (by index), then the best of the rest..."""
    rtol = TIE_RTOL if s.dtype == np.float32 else TIE_RTOL_F64
    rest = sorted((i for i in range(s.size) if np.isfinite(s[i])), key=lambda i: (-float(s[i]), i))
    out: list[int] = []
    while rest and len(out) < k:
        floor = float(tie_floor(float(s[rest[0]]), rtol))
        out += sorted(i for i in rest if s[i] >= floor)
        rest = [i for i in rest if s[i] < floor]
    return out[:k]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_puts_scores_one_ulp_apart_in_index_order(dtype) -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = (rng.random(40) * 0.5).astype(dtype)  # all below the tied value
        tied = np.sort(rng.choice(40, 6, replace=False))
        x = dtype(0.7)
        s[tied] = x
        s[rng.choice(tied, 2, replace=False)] = np.nextafter(x, dtype(1))  # the same score, rounded up
        s[rng.choice(tied, 1)] = np.nextafter(x, dtype(0))  # and down
        assert top_k(s, 3).tolist() == tied[:3].tolist()
        assert top_k(s, 8)[:6].tolist() == tied.tolist()
        for row in top_k_rows(np.stack([s, s]), 4):
            assert row.tolist() == tied[:4].tolist()


def test_top_k_ties_sums_of_the_same_terms_in_another_order() -> None:
    rng = np.random.default_rng(1)
    terms = rng.random(12)
    sums = [sum(terms[rng.permutation(12)].tolist()) for _ in range(30)]  # one value, several roundings
    assert len(set(sums)) > 1  # (else the test proves nothing)
    s = np.concatenate([np.array(sums), rng.random(30)])  # the 30 sums beat every other score
    perm = rng.permutation(s.size)
    assert sorted(top_k(s[perm], 30).tolist()) == top_k(s[perm], 30).tolist()  # one group, by index
    assert set(perm[top_k(s[perm], 30)].tolist()) == set(range(30))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_follows_the_reference_definition(dtype) -> None:
    rng = np.random.default_rng(2)
    rtol = TIE_RTOL if dtype == np.float32 else TIE_RTOL_F64
    for it in range(1500):
        n, k = int(rng.integers(1, 70)), int(rng.integers(1, 40))
        s = rng.random(n) * rng.choice([1e-3, 1.0, 1e3, 1e7])
        if it % 3 == 0:
            s = np.round(s, int(rng.integers(0, 3)))
        if it % 4 < 2:  # near-ties up to, around and past one tolerance (runs wider than one)
            s += rng.choice([0.0, 0.03, 0.6, 0.9, 1.2, 3.0], n) * rtol * np.maximum(1.0, np.abs(s))
        if it % 7 == 0:
            s[rng.random(n) < 0.2] = -np.inf
        s = s.astype(dtype)
        want = _reference_top_k(s, k)
        assert top_k(s, k).tolist() == want, it
        assert top_k(s, k + 5)[:k].tolist() == want, it  # a smaller k is a prefix
        rows = np.stack([s, s[::-1].copy(), s[rng.permutation(n)]])
        assert [r.tolist() for r in top_k_rows(rows, k)] == [_reference_top_k(r, k) for r in rows], it


def test_content_candidates_and_anchors_tied_up_to_rounding() -> None:
    """Items pointing the same way (vectors scaled differently: their float32 unit vectors differ by rounding
    only) come out by index, and two history items pointing the same way anchor a candidate as the more recent
    one, whatever the scales: normalised in float64, they are stored as the same 16-bit row."""
    rng = np.random.default_rng(3)
    dim = 24
    u = rng.normal(size=dim)
    rounding_differed = 0
    for _ in range(30):
        cn = ContentNeighbours(dim=dim)
        others = rng.normal(size=(30, dim))
        others -= np.outer(others @ u, u) / (u @ u) * 1.2  # every other item points further away from u
        cn.set_vectors([f"o{j}" for j in range(30)], others)
        tied = np.outer(rng.uniform(0.3, 3.0, 6), u).astype(np.float32)
        cn.set_vectors([f"t{j}" for j in range(6)], tied)  # tied with each other
        cn.set_vectors(["h-old", "h-new"], np.outer(rng.uniform(0.3, 3.0, 2), u + 0.3 * rng.normal(size=dim)))
        history = ["h-old", "h-new"]
        best, sims, anchors = cn.candidates_many([history, history[::-1]], 8)[0]
        unit32 = tied / np.linalg.norm(tied, axis=1, keepdims=True)
        rounding_differed += len({r.tobytes() for r in unit32}) > 1
        assert len({r.tobytes() for r in cn.rows(np.arange(30, 36))}) == 1
        assert [cn._index.names[j] for j in best[:6].tolist()] == [f"t{j}" for j in range(6)]
        assert [cn._index.names[a] for a in anchors.tolist()] == ["h-new"] * 8
        recs = cn.recommend("u", history, 3)
        assert [(c.item, c.anchor) for c in recs] == [("t0", "h-new"), ("t1", "h-new"), ("t2", "h-new")]
    assert rounding_differed > 5  # (else the test proves nothing)


def test_mf_candidates_tied_up_to_rounding() -> None:
    rng = np.random.default_rng(4)
    mf = OnlineMF(dim=8, seed=0)
    for n in range(40):
        mf.learn_one(f"u{n % 5}", f"i{n}", float(n), [])
    mf.flush()
    q = rng.normal(size=8).astype(np.float32)
    idx = {f"i{n}": mf._items.get(f"i{n}") for n in range(40)}
    tied = [idx[f"i{n}"] for n in (3, 11, 17, 25, 31)]
    rounding_differed = 0
    for _ in range(30):
        mf._q[:40] = -q  # every item scores low...
        mf._b[:40] = 0.0
        mf._q[idx["i0"]] = q  # the user's history
        for j in rng.permutation(tied).tolist():  # ...but the tied ones: q, each nudged by about one ulp
            mf._q[j] = q * np.float32(1 + rng.integers(-2, 3) * 6e-8)
        top, scores = mf.candidates_many(["nobody", "nobody"], [["i0"], ["i0"]], 5)[1]
        rounding_differed += len(set(scores.tolist())) > 1
        assert top.tolist() == sorted(tied)
        assert [c.item for c in mf.recommend("nobody", ["i0"], 5)] == ["i3", "i11", "i17", "i25", "i31"]
    assert rounding_differed > 5


def test_covisit_anchor_of_terms_tied_up_to_rounding_is_the_most_recent() -> None:
    """Candidates 7 and 9 get their largest terms from anchors 1 and 2 (anchor 0 the most recent), equal up
    to rounding: anchor 1 wins, whichever term rounded up (anchor 0 reaches neither: term 0)."""
    rng = np.random.default_rng(5)
    js = np.array([4, 7, 9, 7, 9])  # the neighbour of each term, anchor by anchor
    which = np.array([0, 1, 1, 2, 2])  # the anchor position of each term
    for _ in range(20):
        terms = np.array([0.1, 0.3, 0.2, 0.3, 0.2])
        for t in (1, 2, 3, 4):
            terms[t] = np.nextafter(terms[t], [0.0, 1.0][int(rng.integers(0, 2))])
        lazy = CovisitAnchors(np.array([7, 9]), js, terms, which, np.array([100, 101, 102]))
        assert lazy.take([0, 1]) == lazy.take([1, 0]) == [101, 101]
        assert lazy.take([1]) == [lazy[1]] == [101]
