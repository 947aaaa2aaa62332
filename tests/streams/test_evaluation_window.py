"""The baselines' ranked item window against the plain definition, re-computed from scratch after every event."""

from __future__ import annotations

import doctest
import math
import random

import pytest

from online.exposure import ItemWindow
from streams.evaluation import window as window_mod
from streams.evaluation.window import WindowPopularity


def test_doctests():
    assert doctest.testmod(window_mod).failed == 0


def _ranked(counts: dict[str, int]) -> list[str]:
    return sorted(counts, key=lambda i: (-counts[i], i))


@pytest.mark.parametrize("head_share", [0.0, 0.2, 0.5, 1.0])
def test_top_and_head_match_the_definition_after_every_event(head_share):
    rng = random.Random(7)
    items = [f"i{n}" for n in range(40)]
    weights = [1 / (n + 1) for n in range(40)]  # a long tail
    w = WindowPopularity(window_events=60, head_share=head_share)
    ref = ItemWindow(window_events=60, head_share=head_share, refresh_events=1)  # exact at every read
    for _ in range(600):
        item = rng.choices(items, weights)[0]
        w.observe(item)
        ref.observe_event("u", item)
        counts = {i: ref.count(i) for i in ref.active_items()}
        ranked = _ranked(counts)
        n_head = math.floor(head_share * len(counts) + 1e-9)
        assert set(ranked[:n_head]) == ref.head_items()
        assert [i for i in items if w.is_tail(i)] == [i for i in items if ref.is_tail(i)]
        banned = set(rng.sample(ranked, min(3, len(ranked))))
        assert w.top(5, banned) == [(i, counts[i]) for i in ranked if i not in banned][:5]
        assert len(w) == len(counts) and w.count(item) == counts[item]


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="window_events"):
        WindowPopularity(window_events=0)
    with pytest.raises(ValueError, match="head_share"):
        WindowPopularity(window_events=5, head_share=1.5)
