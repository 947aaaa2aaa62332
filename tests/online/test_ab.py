"""online.ab: the impression ledger against a brute-force reading of its attribution rule."""

from __future__ import annotations

import random

import pytest
from scipy.stats import binomtest

from online.ab import ArmCounts, Impression, ImpressionLedger, wilson


def _tail(item: str) -> bool:
    return int(item[1:]) % 3 == 0


def reference(impressions: list[Impression], clicks: list[tuple[str, str, float]], window_s: float) -> dict:
    """Every impression known before every click: last touch, one click per slot, per arm."""
    counts: dict[str, ArmCounts] = {}
    clicked: set[tuple[int, str]] = set()
    for imp in impressions:
        c = counts.setdefault(imp.arm, ArmCounts())
        c.impressions += 1
        c.slots += len(set(imp.items))
        c.tail_slots += sum(_tail(i) for i in set(imp.items))
    for user, item, ts in clicks:
        shown = [(imp.ts, n, imp) for n, imp in enumerate(impressions)
                 if imp.user == user and imp.ts <= ts <= imp.ts + window_s]
        # the latest impression before the click that shows the item (ties: the later one)
        for _, n, imp in sorted(shown, key=lambda t: (t[0], t[1]), reverse=True):
            if item in imp.items:
                if (n, item) not in clicked:
                    clicked.add((n, item))
                    counts[imp.arm].clicks += 1
                    counts[imp.arm].tail_clicks += _tail(item)
                break
    return {arm: c.record() for arm, c in counts.items()}


def _stream(seed: int, n_users: int = 30, n_imps: int = 300, n_clicks: int = 600):
    rng = random.Random(seed)
    impressions, clicks = [], []
    for n in range(n_imps):
        user = f"u{rng.randrange(n_users)}"
        items = tuple(dict.fromkeys(f"i{rng.randrange(40)}" for _ in range(5)))
        impressions.append(Impression(user, f"{user}:{n}:0", items, tuple(range(len(items))),
                                      float(rng.randrange(10_000)), "ab"[n % 2]))
    for _ in range(n_clicks):
        clicks.append((f"u{rng.randrange(n_users)}", f"i{rng.randrange(40)}", float(rng.randrange(10_000))))
    return impressions, sorted(clicks, key=lambda c: c[2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_rule_read_from_the_raw_records(seed):
    impressions, clicks = _stream(seed)
    ledger = ImpressionLedger(is_tail=_tail, window_s=600.0, max_impressions=1000)
    for imp in sorted(impressions, key=lambda i: i.ts):  # shown in time order, all before the clicks
        assert ledger.impression(imp) == []
    # the clicks in time order; the ledger keeps only what a click can still reach
    for user, item, ts in clicks:
        ledger.click(user, item, ts)
    got = {arm: c.record() for arm, c in ledger.counts.items()}
    assert got == reference(impressions, clicks, 600.0)
    assert sum(c.clicks for c in ledger.counts.values()) > 10


def test_impressions_arriving_out_of_order_are_kept_in_time_order():
    ledger = ImpressionLedger(is_tail=_tail)
    ledger.impression(Impression("u", "late", ("i1", "i2"), (0, 1), 200.0, "a"))
    ledger.impression(Impression("u", "early", ("i1",), (0,), 100.0, "b"))
    assert ledger.click("u", "i1", 250.0).list_id == "late"
    assert ledger.click("u", "i1", 150.0).list_id == "early"


def test_a_click_before_its_impression_arrives_is_credited_when_it_does():
    ledger = ImpressionLedger(is_tail=_tail)
    ledger.impression(Impression("u", "first", ("i1",), (0,), 100.0, "a"))
    assert ledger.click("u", "i3", 210.0) is None  # i3 is shown by an impression still on its way
    (credit,) = ledger.impression(Impression("u", "second", ("i3", "i4"), (0, 1), 200.0, "a"))
    assert credit == ("a", "second", "i3", 0, True)
    assert ledger.counts["a"].clicks == 1 and ledger.counts["a"].tail_clicks == 1


def test_windows_and_bounds():
    ledger = ImpressionLedger(is_tail=_tail, window_s=60.0, max_impressions=2, max_users=2)
    ledger.impression(Impression("u", "l1", ("i1",), (0,), 0.0, "a"))
    assert ledger.click("u", "i1", 61.0) is None  # outside the window
    for n in (2, 3):
        ledger.impression(Impression("u", f"l{n}", ("i9",), (0,), float(n), "a"))
    assert ledger.click("u", "i1", 10.0) is None  # l1 was the oldest of three: dropped
    ledger.impression(Impression("v", "v1", ("i1",), (0,), 0.0, "a"))
    ledger.impression(Impression("w", "w1", ("i1",), (0,), 0.0, "a"))
    assert ledger.n_users == 2 and ledger.click("u", "i9", 5.0) is None  # u was the least recent
    assert ledger.counts["a"].impressions == 5
    ledger.forget("w")
    assert ledger.n_users == 1 and ledger.click("w", "i1", 1.0) is None
    with pytest.raises(ValueError, match="window_s"):
        ImpressionLedger(is_tail=_tail, window_s=0)
    with pytest.raises(ValueError, match="2 items but 1 positions"):
        Impression("u", "x", ("i1", "i2"), (0,), 0.0, "a")


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (17, 200), (1, 1000)])
def test_wilson_interval_matches_scipy(k, n):
    p, low, high = wilson(k, n)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert p == pytest.approx(k / n)
    assert low == pytest.approx(ci.low, abs=1e-9) and high == pytest.approx(ci.high, abs=1e-9)
