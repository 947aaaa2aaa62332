"""Exposure metrics (docs/design.md §4): hand-computed fixtures, the step-by-step objects, the live windows."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from online.exposure import ExposureWindow, ItemWindow, SharedItemWindowError, gini, lorenz_curve
from online.metrics import APLT, NDCG, Coverage, ExposureGini, HitRate, Metrics, Novelty, Rolling, Shown, TailShare

SNAPSHOT_KEYS = {"tail_share", "coverage", "gini", "aplt", "novelty", "window_events", "k"}


# ------------------------------------------------------------------------------------------ gini


def test_gini_even_is_zero_and_one_item_is_n_minus_1_over_n():
    assert gini([1, 1, 1, 1]) == 0.0
    # sorted ascending [0,0,0,4]; sum_i (n+1-i) x_i = 1*4 = 4; (5 - 2*4/4) / 4 = 3/4
    assert gini([0, 0, 0, 4]) == pytest.approx(0.75)
    for n in range(2, 8):
        assert gini([0] * (n - 1) + [7]) == pytest.approx((n - 1) / n)


def test_gini_hand_values_and_order_invariance():
    # [1,2,3,4]: weights 4,3,2,1 -> 4+6+6+4 = 20; (5 - 2*20/10) / 4 = 1/4
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)
    # [0,1]: weights 2,1 -> 1; (3 - 2*1/1) / 2 = 1/2 = (n-1)/n
    assert gini([1, 0]) == pytest.approx(0.5)


def test_gini_degenerate_inputs():
    assert gini([]) == 0.0
    assert gini([3]) == 0.0
    assert gini([0, 0, 0]) == 0.0
    assert gini(np.array([2.0, 2.0])) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        gini([1, -1])


def test_gini_equals_mean_absolute_difference_and_lorenz_area():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 20, size=int(rng.integers(2, 30)))
        if x.sum() == 0:
            continue
        n = x.size
        mad = np.abs(x[:, None] - x[None, :]).sum() / (2 * n * n * x.mean())
        assert gini(x) == pytest.approx(mad, abs=1e-12)
        lx, ly = lorenz_curve(x)
        area = float(np.sum((ly[1:] + ly[:-1]) / 2 * np.diff(lx)))
        assert gini(x) == pytest.approx(1 - 2 * area, abs=1e-12)


def test_lorenz_curve_shape_and_degenerate():
    x, y = lorenz_curve([3, 1])
    assert x.tolist() == [0.0, 0.5, 1.0]
    assert y.tolist() == [0.0, 0.25, 1.0]
    x, y = lorenz_curve([0, 0])
    assert y.tolist() == x.tolist()
    x, y = lorenz_curve([])
    assert x.tolist() == [0.0, 1.0] and y.tolist() == [0.0, 1.0]


# ---------------------------------------------------- the list metrics (online.metrics), by hand

LISTS = [["h1", "t1", "t2"], ["t1", "h2"], ["h1", "h2", "t3", "t1"]]
TAIL = {"t1", "t2", "t3", "t4"}
HEAD = {"h1", "h2"}
ACTIVE = {"h1", "h2", "t1", "t2", "t3", "t4", "t5", "t6"}
SHARES = {"h1": 0.5, "h2": 0.25, "t1": 0.125, "t2": 1 / 16, "t3": 1 / 32}


def _run(metric, lists, *, k=None, head=HEAD, shares=SHARES):
    """Feed ``lists`` (each cut to ``k``) to ``metric``, judged against ``head`` and ``shares``; its value."""
    for items in lists:
        metric.update(Shown.judge(items[:k], head, shares.__getitem__))
    return metric.get()


def _reference(lists, tail, active, shares):
    """The §4 definitions written out over a static set of lists (the old offline functions)."""
    slots = [item for items in lists for item in items]
    shown = [items for items in lists if items]
    counts = {item: sum(item == s for s in slots) for item in active}
    return {
        "tail_share": sum(item in tail for item in slots) / len(slots) if slots else 0.0,
        "coverage": len(set(slots) & set(active)) / len(active) if active else 0.0,
        "gini": gini(counts.values()),
        "aplt": sum(sum(i in tail for i in items) / len(items) for items in shown) / len(shown) if shown else 0.0,
        "novelty": sum(-math.log2(shares[item]) for item in slots) / len(slots) if slots else 0.0,
    }


def test_tail_share_by_hand():
    # tail slots: 2 + 1 + 2 = 5 of 3 + 2 + 4 = 9
    assert _run(TailShare(), LISTS) == pytest.approx(5 / 9)
    # k=2: [h1,t1] [t1,h2] [h1,h2] -> 2 of 6
    assert _run(TailShare(), LISTS, k=2) == pytest.approx(2 / 6)
    assert _run(TailShare(), []) == 0.0


def test_coverage_by_hand():
    # distinct recommended {h1,t1,t2,h2,t3} all active: 5 of 8
    assert _run(Coverage(ACTIVE), LISTS) == pytest.approx(5 / 8)
    # k=1: {h1, t1} -> 2 of 8
    assert _run(Coverage(ACTIVE), LISTS, k=1) == pytest.approx(2 / 8)
    # inactive recommended items do not count
    assert _run(Coverage(ACTIVE), [["zz", "h1"]], shares={"zz": 0.1, "h1": 0.5}) == pytest.approx(1 / 8)
    assert _run(Coverage(set()), LISTS) == 0.0
    assert _run(Coverage(list(ACTIVE)), LISTS) == pytest.approx(5 / 8)


def test_aplt_by_hand():
    # per list: 2/3, 1/2, 2/4 -> mean = (2/3 + 1/2 + 1/2) / 3 = 5/9
    assert _run(APLT(), LISTS) == pytest.approx((2 / 3 + 1 / 2 + 1 / 2) / 3)
    # APLT differs from tail share when list lengths differ
    assert _run(APLT(), [["t1"], ["h1", "h2", "h1"]]) == pytest.approx(0.5)
    assert _run(TailShare(), [["t1"], ["h1", "h2", "h1"]]) == pytest.approx(0.25)
    assert _run(APLT(), [[], []]) == 0.0


def test_novelty_by_hand():
    # -log2: h1 1, h2 2, t1 3, t2 4, t3 5; slots: (1+3+4) + (3+2) + (1+2+5+3) = 24 over 9 slots
    assert _run(Novelty(), LISTS) == pytest.approx(24 / 9)
    # a zero share has no self-information: the item window gives unseen items 1 / (window length + 1)
    with pytest.raises(ValueError):
        Shown.judge(["cold"], HEAD, lambda item: 0.0)
    assert _run(Novelty(), [["cold", "h1"]], shares={"cold": 1 / 8, "h1": 0.5}) == pytest.approx((3 + 1) / 2)


def test_judge_rejects_non_ids_and_coverage_a_single_str():
    with pytest.raises(TypeError, match="item ids"):
        Shown.judge([["a", "b"]], HEAD, SHARES.__getitem__)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Coverage("h1")
    with pytest.raises(ValueError, match="k must"):
        HitRate(k=0)


# -------------------------------------------------------------- step-by-step objects and Rolling


def test_list_metrics_match_the_definitions_on_random_lists():
    rng = random.Random(3)
    catalog = [f"i{n}" for n in range(30)]
    head, tail = set(catalog[:6]), set(catalog[6:])
    active = set(catalog[:25])
    shares = {item: (n + 1) / 500 for n, item in enumerate(catalog)}
    lists = [rng.sample(catalog, rng.randint(0, 8)) for _ in range(200)]
    m = Metrics(tail_share=TailShare(), coverage=Coverage(active), gini=ExposureGini(active), aplt=APLT(),
                novelty=Novelty())
    got = _run(m, lists, head=head, shares=shares)
    assert got == pytest.approx(_reference(lists, tail, active, shares))


def test_rolling_reverts_to_the_window_and_rebuilds_without_drift():
    rng = random.Random(4)
    ranks = [rng.choice([None, 0, 1, 2, 3, 7]) for _ in range(1000)]
    for window in (1, 3, 37):
        hr, ndcg = Rolling(HitRate, window, k=4), Rolling(NDCG, window_size=window, k=4)
        for rank in ranks:
            hr.update(rank)
            ndcg.update(rank)
        last = ranks[-window:]
        assert len(hr) == window
        assert hr.get() == pytest.approx(sum(r is not None and r < 4 for r in last) / window)
        assert ndcg.get() == pytest.approx(sum(1 / math.log2(r + 2) for r in last if r is not None and r < 4)
                                           / window, abs=1e-15)
    everything = Rolling(HitRate, None, k=1)
    for rank in ranks:
        everything.update(rank)
    assert len(everything) == 1000 and everything.get() == pytest.approx(ranks.count(0) / 1000)
    with pytest.raises(ValueError, match="window_size"):
        Rolling(HitRate, 0)


def test_step_metrics_empty_and_repr():
    assert TailShare().get() == 0.0
    assert Coverage(set()).get() == 0.0
    assert ExposureGini().get() == 0.0
    assert APLT().get() == 0.0
    assert Novelty().get() == 0.0
    assert HitRate().get() == NDCG().get() == 0.0
    assert repr(TailShare().update(Shown(("t",), 1, 0.0))) == "TailShare: 1.0000"
    assert repr(Metrics(hr=HitRate())) == "Metrics: {'hr': 0.0}"


def test_exposure_gini_without_active_is_over_recommended_items_only():
    g = ExposureGini()
    g.update(Shown(("a", "a", "a", "b"), 0, 0.0))
    # [1, 3]: (3 - 2*(2*1 + 1*3)/4) / 2 = 0.25
    assert g.get() == pytest.approx(0.25)
    # with active items, never-recommended ones count as zeros: [0, 0, 1, 3]
    # weights 4,3,2,1 -> 2*1 + 1*3 = 5; (5 - 2*5/4) / 4 = 0.625
    g2 = ExposureGini(active={"a", "b", "c", "d"})
    g2.update(Shown(("a", "a", "a", "b", "not-active"), 0, 0.0))
    assert g2.get() == pytest.approx(0.625)
    g2.revert(Shown(("a", "not-active"), 0, 0.0))  # [0, 0, 1, 2]: (5 - 2*4/3) / 4
    assert g2.get() == pytest.approx((5 - 8 / 3) / 4) and g2.counts == {"a": 2, "b": 1}


def test_step_metrics_read_a_live_oracle():
    w = ItemWindow(window_events=10, refresh_events=1)
    cov = Coverage(w.active_items)
    cov.update(Shown(("a",), 1, 0.0))
    assert cov.get() == 0.0  # nothing active yet
    w.observe_event("u", "a").observe_event("u", "b")
    assert cov.get() == pytest.approx(0.5)  # active read at get() time
    ts = TailShare().update(Shown.judge(["a"], w.head_items(), w.pop_share))
    assert ts.get() == 1.0  # 2 active items -> floor(0.4) = 0 head items


# ---------------------------------------------------------------------------------- ItemWindow


def test_item_window_head_is_top_share_with_id_ties_and_floor():
    w = ItemWindow(window_events=100, head_share=0.2, refresh_events=1)
    # counts: e 3, d 3, c 2, b 1, a 1, f 1, g 1, h 1, i 1, j 1 -> 10 active, 2 head: d, e (3 each)
    for item in "eeedddccbafghij":
        w.observe_event("u", item)
    assert w.head_items() == {"d", "e"}
    # tie at the boundary broken by item id: c 2 vs a 2 -> "a" wins the 2nd slot after "e"
    # (10 active items: e c a b f g h i j k)
    w2 = ItemWindow(window_events=100, head_share=0.2, refresh_events=1)
    for item in "eeecca" + "a" + "bfghijk":
        w2.observe_event("u", item)
    assert w2.head_items() == {"e", "a"}
    # 9 active items: floor(1.8) = 1
    w3 = ItemWindow(window_events=100, head_share=0.2, refresh_events=1)
    for item in "aabcdefgh":
        w3.observe_event("u", item)
    assert w3.head_items() == {"a"}
    assert w3.is_tail("b") and w3.is_tail("unseen") and not w3.is_tail("a")


def test_item_window_slides_and_shares():
    w = ItemWindow(window_events=3, refresh_events=1)
    for item in ["a", "b", "a", "c"]:
        w.observe_event("u", item)
    # window = [b, a, c]
    assert (w.n_events, w.n_active, w.count("a"), w.count("b")) == (3, 3, 1, 1)
    assert sorted(w.active_items()) == ["a", "b", "c"]
    w.observe_event("u", "c")  # window = [a, c, c]
    assert w.count("b") == 0 and "b" not in w.active_items()
    assert w.pop_share("c") == pytest.approx(2 / 3)
    assert w.pop_share("b") == pytest.approx(1 / 4)


def test_item_window_head_staleness_is_bounded_by_refresh_events():
    w = ItemWindow(window_events=1000, head_share=0.5, refresh_events=3)
    for item in ["a", "a", "b"]:
        w.observe_event("u", item)
    assert w.head_items() == {"a"}  # 2 active -> 1 head
    for _ in range(2):  # 2 events < refresh_events: cache kept even though "b" now leads
        w.observe_event("u", "b")
    assert w.head_items() == {"a"}
    w.observe_event("u", "b")  # 3rd event since the last computation -> recomputed
    assert w.head_items() == {"b"}


def test_item_window_validates_settings():
    with pytest.raises(ValueError, match="window_events"):
        ItemWindow(window_events=0)
    with pytest.raises(ValueError, match="head_share"):
        ItemWindow(head_share=1.5)
    assert ItemWindow(window_events=100_000).refresh_events == 1000
    assert ItemWindow(window_events=50).refresh_events == 1


# ------------------------------------------------------------------------------ ExposureWindow


def _fill(w, items):
    for item in items:
        w.observe_event("u", item)
    return w


def test_exposure_window_snapshot_by_hand():
    # window of 10 events: a x4, b x2, c, d, e, f -> 6 active, head = floor(1.2) = 1 item = {a}
    w = _fill(ExposureWindow(window_events=10, head_share=0.2, k=3, refresh_events=1), "aaaabbcdef")
    w.observe_recommendation(["a", "b", "c", "d"])  # cut to a b c: 2 tail
    w.observe_recommendation(["b", "new"])  # 2 tail, "new" is inactive (and tail)
    s = w.snapshot()
    assert set(s) == SNAPSHOT_KEYS
    assert s["tail_share"] == pytest.approx(4 / 5)
    assert s["aplt"] == pytest.approx((2 / 3 + 2 / 2) / 2)
    # distinct recommended & active: a, b, c -> 3 of 6
    assert s["coverage"] == pytest.approx(3 / 6)
    # exposure over active items a..f: [1, 2, 1, 0, 0, 0] sorted [0,0,0,1,1,2]
    # weights 6..1 -> 3*1 + 2*1 + 1*2 = 7; (7 - 2*7/4) / 6 = 3.5/6
    assert s["gini"] == pytest.approx(3.5 / 6)
    # shares: a .4, b .2, c .1, new 1/11: -log2 -> 1.3219, 2.3219, 3.3219, 2.3219, 3.4594
    expected = -(math.log2(0.4) + 2 * math.log2(0.2) + math.log2(0.1) + math.log2(1 / 11)) / 5
    assert s["novelty"] == pytest.approx(expected)
    assert (s["window_events"], s["k"]) == (10, 3)
    json.dumps(s, allow_nan=False)


def test_exposure_window_empty_snapshot_is_zeros():
    s = ExposureWindow().snapshot()
    assert s == {"tail_share": 0.0, "coverage": 0.0, "gini": 0.0, "aplt": 0.0, "novelty": 0.0,
                 "window_events": 0, "k": 10}


def test_exposure_window_recommendation_window_slides():
    w = ExposureWindow(window_events=10, head_share=0.2, k=10, rec_window=2, refresh_events=1)
    _fill(w, "aaaabbcdef")
    w.observe_recommendation(["a"])  # 0 tail
    w.observe_recommendation(["b", "c"])  # 2 tail
    w.observe_recommendation([])  # ignored
    assert w.n_lists == 2
    assert w.snapshot()["tail_share"] == pytest.approx(2 / 3)
    w.observe_recommendation(["d"])  # evicts ["a"]
    assert w.n_lists == 2
    s = w.snapshot()
    assert s["tail_share"] == 1.0 and s["aplt"] == 1.0
    assert w.exposure_counts() == {"b": 1, "c": 1, "d": 1}
    assert s["coverage"] == pytest.approx(3 / 6)


def test_exposure_window_tail_is_judged_when_the_list_is_observed():
    w = ExposureWindow(window_events=5, head_share=0.2, k=5, refresh_events=1)
    _fill(w, "aaabc")  # 3 active: no head
    w.observe_recommendation(["a"])
    _fill(w, "aaaaa")  # window: a x5, 1 active -> still floor(0.2) = 0 head
    _fill(w, "bcdef")  # window: b c d e f -> 5 active, head {b}
    w.observe_recommendation(["b"])
    # the first list keeps its tail verdict (a was tail then), the second is head
    assert w.snapshot()["tail_share"] == pytest.approx(0.5)


def test_exposure_window_matches_the_definitions_on_a_random_stream():
    rng = random.Random(11)
    catalog = [f"i{n}" for n in range(60)]
    weights = [1 / (n + 1) for n in range(60)]  # Zipf-like
    w = ExposureWindow(window_events=500, head_share=0.2, k=5, rec_window=40, refresh_events=1)
    for item in rng.choices(catalog, weights, k=800):
        w.observe_event("u", item)
    head = set(w.items.head_items())
    active = set(w.items.active_items())
    shares = {item: w.items.pop_share(item) for item in catalog}
    lists = [rng.sample(catalog, rng.randint(0, 8)) for _ in range(300)]
    for items in lists:
        w.observe_recommendation(items)
    kept = [items[:5] for items in lists if items][-40:]
    tail = set(catalog) - head
    s = w.snapshot()
    assert {m: s[m] for m in _reference(kept, tail, active, shares)} == pytest.approx(
        _reference(kept, tail, active, shares))
    assert s["window_events"] == 500


def test_exposure_window_running_sums_do_not_drift():
    rng = random.Random(5)
    w = ExposureWindow(window_events=50, k=3, rec_window=7, refresh_events=1)
    _fill(w, [f"i{n % 13}" for n in range(50)])
    lists = [rng.sample([f"i{n}" for n in range(20)], 3) for _ in range(5000)]
    for items in lists:
        w.observe_recommendation(items)
    shares = {f"i{n}": w.items.pop_share(f"i{n}") for n in range(20)}
    tail = {f"i{n}" for n in range(20) if w.items.is_tail(f"i{n}")}
    expected = _reference(lists[-7:], tail, set(w.items.active_items()), shares)
    assert w.snapshot()["novelty"] == pytest.approx(expected["novelty"], abs=1e-12)
    assert w.snapshot()["aplt"] == pytest.approx(expected["aplt"], abs=1e-12)


def test_shared_item_window_refuses_events():
    items = ItemWindow(window_events=10)
    a = ExposureWindow.shared(items, k=2)
    b = ExposureWindow.shared(items, k=2)
    items.observe_event("u", "x")
    a.observe_recommendation(["x"])
    assert a.snapshot()["coverage"] == 1.0 and b.snapshot()["coverage"] == 0.0
    assert a.snapshot()["window_events"] == b.snapshot()["window_events"] == 1
    with pytest.raises(SharedItemWindowError):
        a.observe_event("u", "x")


def test_exposure_window_validates():
    with pytest.raises(ValueError, match="k must"):
        ExposureWindow(k=0)
    with pytest.raises(TypeError):
        ExposureWindow().observe_recommendation("abc")
