"""The one head/tail definition (docs/design.md §4) against a brute-force sort, and its users agreeing on it."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from models.loo import tail_items
from online.headtail import ItemWindow, head_positions, head_size
from online.popularity import DecayedPopularity
from streams.evaluation.window import WindowPopularity


def _brute_head(counts: list[int], share: float, ids: list[str]) -> set[int]:
    active = [i for i, c in enumerate(counts) if c > 0]
    ranked = sorted(active, key=lambda i: (-counts[i], ids[i]))
    return set(ranked[: math.floor(share * len(active) + 1e-9)])


@pytest.mark.parametrize("share", [0.0, 0.1, 0.2, 0.5, 0.99, 1.0])
def test_head_positions_is_the_sorted_definition(share):
    rng = random.Random(int(share * 100))
    for _ in range(200):
        n = rng.randint(0, 30)
        counts = [rng.choice([0, 0, 1, 1, 2, 3, 5]) for _ in range(n)]
        ids = [f"i{rng.randrange(1000):03d}-{j}" for j in range(n)]  # distinct, not in position order
        got = head_positions(np.array(counts, dtype=np.int64), share, ids).tolist()
        assert len(got) == len(set(got)) and set(got) == _brute_head(counts, share, ids)
        by_position = head_positions(np.array(counts, dtype=np.int64), share).tolist()
        assert set(by_position) == _brute_head(counts, share, [f"{j:04d}" for j in range(n)])


def test_head_size_floors_with_slack():
    assert [head_size(n, 0.2) for n in (0, 4, 5, 9, 10, 14, 15)] == [0, 0, 1, 1, 2, 2, 3]
    assert head_size(10, 0.3) == 3  # 0.3 * 10 is 2.9999999999999996 in floats


def test_loo_tail_is_floor_over_items_seen_in_training():
    # 10 catalogue items, 2 seen in training: floor(0.2 * 2) = 0 head items (ceil over the catalogue gave 2)
    assert tail_items(np.array([0, 5, 3, 0, 0, 0, 0, 0, 0, 0, 0], dtype=float)).nonzero()[0].tolist() == list(
        range(1, 11))
    # 5 seen, head 1; ties by item index: 2 and 4 have 7 events, 2 is head
    tail = tail_items(np.array([0, 1, 7, 1, 7, 2, 0], dtype=float))
    assert tail.nonzero()[0].tolist() == [1, 3, 4, 5, 6] and not tail[0]


def test_every_user_of_the_split_agrees_on_one_stream():
    rng = random.Random(5)
    catalog = [f"i{n}" for n in range(80)]
    weights = [1 / (n + 1) for n in range(80)]
    window = ItemWindow(window_events=300, head_share=0.2, refresh_events=1)
    pop = DecayedPopularity(window_events=300, head_share=0.2, refresh_every=1)
    baseline = WindowPopularity(window_events=300, head_share=0.2)
    for n, item in enumerate(rng.choices(catalog, weights, k=1500)):
        window.observe_event("u", item)
        pop.learn_one("u", item, float(n))
        baseline.observe(item)
        if n % 50 == 0:
            assert pop.head_items() == window.head_items() == {i for i in catalog if not baseline.is_tail(i)}
            assert len(window.head_items()) == head_size(window.n_active, 0.2)
