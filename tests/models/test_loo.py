import math

import numpy as np
import pytest

from models.loo import (ItemCF, MostPop, evaluate_split, item_index, leave_one_out, metrics_from_ranks,
                        ranks_from_scores, tail_items, train_counts)

# u1: a b c d e (test e, valid d); u2: b c a (test a, valid c); u3: a b (train only); ties in time keep input order
EVENTS = [("u1", "a", 1), ("u1", "b", 2), ("u2", "b", 2), ("u1", "c", 3), ("u2", "c", 3), ("u1", "d", 4),
          ("u2", "a", 5), ("u1", "e", 5), ("u3", "a", 9), ("u3", "b", 9)]


def test_split_by_time_with_short_users_in_train_only():
    s = leave_one_out(EVENTS)
    assert s.train == {"u1": ["a", "b", "c"], "u2": ["b"], "u3": ["a", "b"]}
    assert s.valid == {"u1": "d", "u2": "c"} and s.test == {"u1": "e", "u2": "a"}
    shuffled = leave_one_out([EVENTS[i] for i in (7, 0, 5, 1, 3)])  # order of distinct times does not matter
    assert shuffled.train["u1"] == ["a", "b", "c"] and shuffled.test["u1"] == "e"


def test_ranks_exclude_history_but_never_the_target():
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]])  # items 1..5
    assert ranks_from_scores(scores, [4], [[1, 2]]).tolist() == [1]  # 1, 2 excluded; 3 beats 4
    assert ranks_from_scores(scores, [4], [[1, 2, 4]]).tolist() == [1]  # the target stays rankable
    assert ranks_from_scores(scores, [1], [[]]).tolist() == [0]
    ties = np.zeros((2000, 6))
    r = ranks_from_scores(ties, [3] * 2000, [[]] * 2000)
    assert set(r.tolist()) == {0, 1, 2, 3, 4} and abs(r.mean() - 2.0) < 0.15  # random tie-break


def test_metric_arithmetic():
    m = metrics_from_ranks(np.array([0, 1, 9, 10, 50]), k=10)
    assert m["hr"] == pytest.approx(3 / 5)
    assert m["ndcg"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)


def test_tail_items_bottom_80_percent():
    counts = np.array([0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=float)  # 10 items, head = top 2
    assert tail_items(counts).nonzero()[0].tolist() == [3, 4, 5, 6, 7, 8, 9, 10]


def test_evaluate_split_groups_and_mostpop():
    s = leave_one_out(EVENTS)
    index = item_index(s)  # a1 b2 c3 d4 e5
    assert index == {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    counts = train_counts(s.train_sequences(index), 5)
    assert counts.tolist() == [0, 2, 3, 1, 0, 0]
    r = evaluate_split(MostPop(s.train_sequences(index), n_items=5), s, index, stage="test", k=1)
    # u1 history a b c d -> only e left -> hit; u2 history b c -> a (2) beats d, e (0) -> hit
    assert r["hr"] == 1.0 and r["users"] == 2
    # 3 items seen in training: head = floor(0.2 * 3) = 0; targets e, a are tail; both users <= 5 events
    assert r["tail_users"] == 2 and r["short_users"] == 2


def test_item_cf_matches_brute_force_cosine():
    train = [[1, 2, 3], [2, 3], [3, 4], [1, 4, 5]]
    cf = ItemCF(train, n_items=5)
    X = np.zeros((4, 6))
    for u, s in enumerate(train):
        X[u, s] = 1
    n = X.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.nan_to_num((X.T @ X) / np.sqrt(np.outer(n, n)))
    hist = [[1, 3], [4]]
    expected = np.stack([S[h].sum(0) for h in hist])
    assert np.allclose(cf(hist), expected, atol=1e-6)
