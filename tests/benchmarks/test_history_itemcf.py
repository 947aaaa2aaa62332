"""benchmarks/history_itemcf.py: whole-history item-CF and the transition counter, scored with fresh pairing."""

from __future__ import annotations

import math

from benchmarks.history_itemcf import main, run


def test_item_cf_reads_the_whole_history_and_the_counter_only_the_last_five_items():
    b, a = 0, 6
    # u0 consumed b six items before a: its history pairs them for item-CF, the counter's five-item lookback does not
    events = [(0, b), *((0, y) for y in range(1, 6)), (0, a), (1, a), (1, b)]
    out = run(events, 7, (10,))
    scored = len(events) - 2  # every event but u0's and u1's first
    assert {name: n for name, (_, n) in out.items()} == dict.fromkeys(out, scored)
    # u0's next item is always the lowest unconsumed index, first in every list (no evidence yet: ties by index);
    # u1's b after a: item-CF ties b with u0's other items, first by index; the counter scores only the five
    # items before a (backward 0.5) and tops up with b, sixth
    assert math.isclose(out["ItemCF-history[10]"][0] * scored, 6.0 + 1.0)
    assert math.isclose(out["CoVisit-raw"][0] * scored, 6.0 + 1.0 / math.log2(7))


def test_consumed_items_are_never_recommended_and_most_pop_ranks_by_count():
    a, b, c = 0, 1, 2
    events = [(0, a), (0, b), (1, a), (1, b), (2, c), (4, c), (5, c), (3, a), (3, b)]
    out = run(events, 3, (10,))
    # scored: u0's b and u1's b (a, the most popular, consumed), then u3's b: after u3's a, MostPop has c (3 events)
    # before b (2), the co-visitation systems b first
    ndcg, n = out["MostPop"]
    assert n == 3 and math.isclose(ndcg, (2.0 + 1.0 / math.log2(3)) / 3)
    assert out["CoVisit-raw"] == (1.0, 3) and out["ItemCF-history[10]"] == (1.0, 3)


def test_main_prints_a_table_with_the_ratio_to_the_counter(capsys):
    assert main(["--dataset", "synthetic:60,40,800,2", "--windows", "5"]) == 0
    out = capsys.readouterr().out
    assert "| CoVisit-raw |" in out and "| 1.000 |" in out
    assert "| ItemCF-history[5,1/r] |" in out
