from __future__ import annotations

import numpy as np
import pytest

from online.base import Candidate
from online.rerank import TailReranker, tail_appetite


def fixture(seed: int = 0, n: int = 40, tail_share: float = 0.6, tail_rel: float = 0.6):
    """Candidates where relevance favours head items (the usual case): tail relevance is scaled down."""
    rng = np.random.default_rng(seed)
    tail = rng.random(n) < tail_share
    rel = rng.random(n) * np.where(tail, tail_rel, 1.0)
    cands = [
        Candidate(f"{'t' if t else 'h'}{i}", float(r), "covisit" if t else "mf", anchor=f"a{i}")
        for i, (r, t) in enumerate(zip(rel, tail))
    ]
    return cands, {c.item for c in cands if c.item.startswith("t")}


def n_tail(cands, tail) -> int:
    return sum(c.item in tail for c in cands)


def test_strength_zero_is_exactly_the_relevance_order() -> None:
    cands, tail = fixture()
    cands = cands + [Candidate("tie-a", 0.5, "mf"), Candidate("tie-b", 0.5, "mf")]
    out = TailReranker(strength=0.0, k=15).rerank(cands, is_tail=tail, tail_appetite=0.9)
    assert out == sorted(cands, key=lambda c: -c.score)[:15]  # sorted() is stable: ties keep input order


@pytest.mark.parametrize("appetite", [0.3, 0.5, 0.8])
def test_more_strength_never_means_fewer_tail_items(appetite: float) -> None:
    cands, tail = fixture()
    counts = [
        n_tail(TailReranker(strength=s, k=10).rerank(cands, is_tail=tail, tail_appetite=appetite), tail)
        for s in np.linspace(0.0, 1.0, 11)
    ]
    assert counts == sorted(counts), counts
    assert counts[-1] > counts[0]


def test_higher_appetite_means_more_tail_items() -> None:
    cands, tail = fixture(seed=1)
    counts = [
        n_tail(TailReranker(strength=0.5, k=10).rerank(cands, is_tail=tail, tail_appetite=a), tail)
        for a in (0.0, 0.2, 0.5, 0.8, 1.0)
    ]
    assert counts == sorted(counts) and counts[-1] > counts[0]


@pytest.mark.parametrize("strength", [0.2, 0.3, 0.5])
def test_irrelevant_tail_item_is_not_promoted(strength: float) -> None:
    relevant = [Candidate(f"h{i}", 1.0 - 0.02 * i, "mf") for i in range(20)]  # relevance 1.0 .. 0.62
    junk = Candidate("t-junk", 0.001, "fresh")
    out = TailReranker(strength=strength, k=10).rerank([*relevant, junk], is_tail={"t-junk"}, tail_appetite=0.5)
    assert junk not in out
    # ... while a relevant tail item is promoted
    good = Candidate("t-good", 0.7, "covisit", anchor="h0")
    out = TailReranker(strength=strength, k=10).rerank([*relevant, junk, good], is_tail={"t-junk", "t-good"}, tail_appetite=0.5)
    assert good in out and junk not in out


def test_low_appetite_user_is_calibrated_toward_head() -> None:
    """xQuAD serves P(tail|u): a head-loving user with a tail-heavy candidate list gets more head."""
    cands, tail = fixture(seed=2, tail_share=0.8, tail_rel=1.0)
    base = n_tail(TailReranker(strength=0.0).rerank(cands, is_tail=tail, tail_appetite=0.0), tail)
    calibrated = n_tail(TailReranker(strength=0.6).rerank(cands, is_tail=tail, tail_appetite=0.0), tail)
    assert calibrated < base


def test_keeps_candidates_and_accepts_a_predicate() -> None:
    cands, tail = fixture(seed=3)
    by_set = TailReranker(strength=0.4, k=7).rerank(cands, is_tail=tail, tail_appetite=0.4)
    by_fn = TailReranker(strength=0.4, k=7).rerank(cands, is_tail=tail.__contains__, tail_appetite=0.4)
    assert by_set == by_fn and len(by_set) == 7 and len(set(by_set)) == 7
    assert all(c in cands for c in by_set)  # same objects: score, source and anchor kept
    assert TailReranker(strength=0.4, k=7).rerank([], is_tail=tail, tail_appetite=0.4) == []
    short = TailReranker(strength=0.4, k=70).rerank(cands[:5], is_tail=tail, tail_appetite=0.4)
    assert sorted(c.item for c in short) == sorted(c.item for c in cands[:5])


def test_binary_variant_boosts_each_category_at_most_once() -> None:
    cands, tail = fixture(seed=4)
    base = n_tail(TailReranker(strength=0.0).rerank(cands, is_tail=tail, tail_appetite=0.5), tail)
    binary = n_tail(TailReranker(strength=0.9, smooth=False).rerank(cands, is_tail=tail, tail_appetite=0.5), tail)
    smooth = n_tail(TailReranker(strength=0.9).rerank(cands, is_tail=tail, tail_appetite=0.5), tail)
    assert base <= binary <= max(base, 1) + 1 and smooth >= binary


def test_tail_appetite() -> None:
    assert tail_appetite([], set()) == pytest.approx(0.2)
    assert tail_appetite(["t"] * 20, {"t"}) == pytest.approx((20 + 1) / 25)
    assert tail_appetite(["h"] * 5, {"t"}, prior=0.4, prior_weight=5) == pytest.approx(0.2)
    assert tail_appetite(["t", "h"], lambda i: i == "t", prior_weight=0.0) == 0.5
    with pytest.raises(ValueError, match="prior"):
        tail_appetite([], set(), prior=1.5)


def test_rejects_bad_strength() -> None:
    with pytest.raises(ValueError, match="strength"):
        TailReranker(strength=1.5)
