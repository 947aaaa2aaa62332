from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from online.covisit import CoVisitation


def row(cv: CoVisitation, item: str):
    """``item``'s row: (key bytes, neighbour indices, weights)."""
    return cv._rows.row(cv.item_index.get(item))


def list_layout(cv: CoVisitation) -> dict:
    """``cv``'s pickled state in the layout before size classes: three Python objects a row."""
    state = dict(cv.__getstate__())
    rows = state.pop("_rows")
    state.update(_key=[], _nj=[], _nw=[])
    for h in range(len(cv.item_index)):
        keys, js, ws = rows.row(h)
        state["_key"].append(bytearray(keys))
        state["_nj"].append(js)
        state["_nw"].append(ws)
    return state


def neighbours(cv: CoVisitation, item: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` items most similar to ``item`` alone (a history of one), with their similarity."""
    return [(c.item, c.score) for c in cv.recommend("probe", [item], k)]

def test_learns_planted_sequential_pattern() -> None:
    """Among 50 noise items, B always follows A: after A, B is the top neighbour and A its anchor."""
    rng = np.random.default_rng(0)
    cv = CoVisitation(lookback=5, half_life_s=1e6)
    ts = 0.0
    for u in range(300):
        hist: list[str] = []
        seq = [f"n{j}" for j in rng.integers(0, 50, 6)]
        if u % 2 == 0:
            pos = int(rng.integers(0, 5))
            seq[pos : pos + 2] = ["A", "B"]
        for item in seq:
            cv.learn_one(f"u{u}", item, ts, tuple(hist))
            hist.append(item)
            ts += 1.0
    recs = cv.recommend("someone", ["n3", "n7", "A"], 5)
    assert recs[0].item == "B" and recs[0].anchor == "A" and recs[0].reason() == "co-visited with A"
    assert neighbours(cv, "A", 1)[0][0] == "B"
    # the sequential direction counts more than the backward one
    assert dict(neighbours(cv, "A", 60))["B"] > dict(neighbours(cv, "B", 60))["A"]


def test_normalisation_keeps_popular_items_from_swamping() -> None:
    """P (500 events) follows A 30 times, T (20 events) follows A 20 times: T is the better neighbour."""
    cv = CoVisitation(lookback=1, half_life_s=1e9, backward_weight=0.0)
    ts = 0.0
    for n in range(500):
        prev = "A" if n < 30 else f"x{n % 40}"
        cv.learn_one(f"p{n}", prev, ts, ())
        cv.learn_one(f"p{n}", "P", ts, (prev,))
        ts += 1
    for n in range(20):
        cv.learn_one(f"t{n}", "A", ts, ())
        cv.learn_one(f"t{n}", "T", ts, ("A",))
    sims = dict(neighbours(cv, "A", 10))
    # cosine: W / sqrt(n_A * n_j), n_A = 50: T = 20 / sqrt(50 * 20), P = 30 / sqrt(50 * 500)
    assert sims["T"] == pytest.approx(20 / np.sqrt(50 * 20))
    assert sims["P"] == pytest.approx(30 / np.sqrt(50 * 500))
    assert [c.item for c in cv.recommend("u", ["A"], 2)] == ["T", "P"]


def test_recent_history_counts_more() -> None:
    cv = CoVisitation(lookback=1, half_life_s=1e9, backward_weight=0.0)
    for n in range(10):
        cv.learn_one(f"a{n}", "A", 0.0, ())
        cv.learn_one(f"a{n}", "B", 0.0, ("A",))
        cv.learn_one(f"c{n}", "C", 0.0, ())
        cv.learn_one(f"c{n}", "D", 0.0, ("C",))
    recs = cv.recommend("u", ["A", "C"], 2)  # C is the most recent
    assert [(c.item, c.anchor) for c in recs] == [("D", "C"), ("B", "A")]
    assert recs[0].score == pytest.approx(2 * recs[1].score)  # weights 1 and 1/2
    np.testing.assert_allclose(cv.score("u", ["A", "C"], ["D", "B", "zz"]), [recs[0].score, recs[1].score, 0.0])


def test_decay_prefers_recent_pairs() -> None:
    cv = CoVisitation(lookback=1, half_life_s=10.0, backward_weight=0.0)
    for n in range(5):
        cv.learn_one(f"x{n}", "A", 0.0, ())
        cv.learn_one(f"x{n}", "X", 0.0, ("A",))
    for n in range(2):
        cv.learn_one(f"y{n}", "A", 100.0, ())  # ten half-lives later
        cv.learn_one(f"y{n}", "Y", 100.0, ("A",))
    assert [c.item for c in cv.recommend("u", ["A"], 2)] == ["Y", "X"]


def test_neighbour_lists_are_bounded() -> None:
    cv = CoVisitation(lookback=1, max_neighbours=10)
    for n in range(500):
        cv.learn_one(f"u{n}", f"i{n}", float(n), ("A",))
    _, js, ws = row(cv, "A")
    assert len(js) <= 20 and len(ws) <= 20
    assert len(neighbours(cv, "A", 100)) <= 20
    # the strongest neighbour survives pruning
    for n in range(5):
        cv.learn_one(f"v{n}", "strong", 600.0, ("A",))
    for n in range(500, 700):
        cv.learn_one(f"u{n}", f"i{n}", 700.0, ("A",))
    assert neighbours(cv, "A", 1)[0][0] == "strong"


def test_survives_very_long_streams() -> None:
    cv = CoVisitation(lookback=1, half_life_s=1.0)
    cv.learn_one("u", "A", 0.0, ())
    cv.learn_one("u", "B", 0.0, ("A",))
    cv.learn_one("v", "A", 10_000.0, ())  # 10k half-lives later: rebased, no overflow
    cv.learn_one("v", "C", 10_000.0, ("A",))
    recs = cv.recommend("u", ["A"], 2)
    assert recs[0].item == "C" and all(np.isfinite(c.score) for c in recs)


def _stream_model(seed: int = 0, n_events: int = 6000):
    rng = np.random.default_rng(seed)
    cv = CoVisitation(max_neighbours=15, half_life_s=500.0)
    hist: dict[str, list[str]] = {}
    for n in range(n_events):
        user = f"u{int(rng.integers(0, 120))}"
        item = f"i{min(int(rng.zipf(1.3)), 300)}"
        h = hist.setdefault(user, [])
        cv.learn_one(user, item, float(n), tuple(h[-50:]))
        h.append(item)
    return cv, hist


def test_top_equals_the_term_matrix_definition() -> None:
    """top()/candidates() (scratch-array sums, lazy anchors) = the (anchors, candidates) term matrix:
    column sums, top k by (score desc, index asc), anchor = argmax of the candidate's column."""
    from online.base import top_k

    cv, hist = _stream_model()
    rng = np.random.default_rng(1)
    checked = 0
    for user, h in list(hist.items())[:60]:
        h = h[-50:] + ["never-seen"]
        uniq, acc, M, anchors = cv._aggregate(h)
        banned = cv._index.indices([f"i{j}" for j in rng.integers(0, 40, 4)] + ["nope"])
        ban = np.concatenate([cv._index.indices(h), banned])
        ban = ban[ban >= 0]
        acc = np.where(np.isin(uniq, ban), -np.inf, acc)
        for k in (1, 7, 50):
            top = top_k(acc, k)
            idx, scores, anchor_idx = cv.candidates(h, k, banned)
            assert idx.tolist() == uniq[top].tolist()
            assert scores.tolist() == acc[top].tolist()  # the same additions, bit for bit
            assert anchor_idx.tolist() == anchors[M[:, top].argmax(axis=0)].tolist()
            lazy = cv.top(*cv._anchors(h), k, ban)[2]
            picks = list(range(0, len(lazy), 3))
            assert lazy.take(picks) == [int(a) for a in anchor_idx[picks]] == [lazy[r] for r in picks]
            checked += idx.size
    assert checked > 1000


def test_serving_scratch_is_not_pickled() -> None:

    cv, hist = _stream_model(n_events=800)
    h = next(h for h in hist.values() if len(h) > 5)
    before = cv.candidates(h, 10)
    assert cv._acc.size >= len(cv)
    again = pickle.loads(pickle.dumps(cv))
    assert again._acc.size == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, again.candidates(h, 10)))


def test_rows_find_neighbours_whose_key_bytes_collide() -> None:
    """A row finds a neighbour's slot by its key byte (index & 255), then checks the index: neighbours
    256 apart share a key byte, and each keeps its own weight; pruning keeps the strongest, ties to the
    earlier entry, and the key bytes follow their neighbours."""
    cv = CoVisitation.transitions(max_neighbours=3)
    for n in range(1, 1025):
        cv.learn_one("u", f"i{n}", float(n), ())  # indices 0..1023
    a = "i1"
    for rep, item in enumerate(["i257", "i513", "i769", "i257", "i513", "i257"]):  # all key byte 0
        cv.learn_one(f"v{rep}", item, 0.0, (a,))
    assert neighbours(cv, a, 5) == [("i257", 3.0), ("i513", 2.0), ("i769", 1.0)]
    for rep, item in enumerate(["i2", "i258", "i3", "i4"]):  # the row reaches 7 > 2 x 3: pruned to 3
        cv.learn_one(f"w{rep}", item, 0.0, (a,))
    keys, js, _ = row(cv, a)
    assert [cv._index.names[j] for j in js] == ["i257", "i513", "i769"]
    assert keys == bytes(j & 255 for j in js)
    cv.learn_one("x", "i769", 0.0, (a,))
    cv.learn_one("x", "i2", 0.0, (a,))  # pruned away before: a new entry
    assert neighbours(cv, a, 5) == [("i257", 3.0), ("i513", 2.0), ("i769", 2.0), ("i2", 1.0)]


def test_unpickles_the_layout_before() -> None:
    """A snapshot of the layout before (a {neighbour: slot} dict a row, int64 indices) loads as this one."""
    from array import array

    cv, hist = _stream_model(n_events=800)
    state = list_layout(cv)
    old = dict(state, _slot=[{j: s for s, j in enumerate(nj)} for nj in state["_nj"]],
               _nj=[array("q", nj) for nj in state["_nj"]], _nw=[array("d", nw) for nw in state["_nw"]])
    del old["_key"]
    again = CoVisitation.__new__(CoVisitation)
    again.__setstate__(old)
    n = len(cv.item_index)
    assert not hasattr(again, "_slot") and [again._rows.row(h) for h in range(n)] == [cv._rows.row(h) for h in range(n)]
    for h in list(hist.values())[:20]:
        assert all(np.array_equal(a, b) for a, b in zip(cv.candidates(h, 10), again.candidates(h, 10)))
    h = next(iter(hist.values()))
    cv.learn_one("z", "i1", 801.0, h)
    again.learn_one("z", "i1", 801.0, h)
    assert [again._rows.row(h) for h in range(n)] == [cv._rows.row(h) for h in range(n)]


def test_unpickles_float64_weights() -> None:
    """A snapshot with float64 weight rows and the frame up to 2^200 loads as float32 rows, the lists the same;
    weights past 2^64 are rebased first, so that they fit float32."""
    from array import array

    from online.covisit import MAX_EXPONENT

    cv, hist = _stream_model(n_events=800)
    state = list_layout(cv)
    for factor in (1.0, 2.0**150):
        old = dict(state, _nw=[array("d", (np.array(nw, dtype=np.float64) * factor).tolist()) for nw in state["_nw"]],
                   _count=array("d", (np.array(state["_count"]) * factor).tolist()))
        old["_clock"] = pickle.loads(pickle.dumps(state["_clock"]))
        old["_clock"].max_exponent = 200.0
        again = CoVisitation.__new__(CoVisitation)
        again.__setstate__(old)
        assert again._clock.max_exponent == MAX_EXPONENT and {nw.typecode for nw in again._rows.ws} == {"f"}
        assert max(max(nw) for nw in again._rows.ws if len(nw)) <= 2.0**MAX_EXPONENT
        for h in list(hist.values())[:20]:
            (a_i, a_s, _), (b_i, b_s, _) = cv.candidates(h, 10), again.candidates(h, 10)
            np.testing.assert_allclose(b_s, a_s, rtol=1e-5)
            assert a_i.tolist() == b_i.tolist()  # the factors are powers of two: the same float32 weights


def _stream(n_events: int, n_items: int, seed: int):
    """(user, item, ts, last 5 items) over Zipf-like items, a day of events."""
    rng = np.random.default_rng(seed)
    items = (rng.zipf(1.3, size=n_events) % n_items).tolist()
    users = rng.integers(0, 60, size=n_events).tolist()
    hist: dict[int, list[str]] = {}
    for n, (u, i) in enumerate(zip(users, items)):
        h = hist.setdefault(u, [])
        yield f"u{u}", f"i{i}", n * 60.0, h[-5:]
        h.append(f"i{i}")


def test_paired_models_give_the_lists_of_two_models() -> None:
    """Paired (one neighbour column, two weight columns), each model's lists and scores are the lists of the
    model alone while no row is full; the transitions model's own learn_one adds nothing."""
    kw = {"half_life_s": 3600.0, "max_neighbours": 1000}
    alone = (CoVisitation(**kw), CoVisitation.transitions(max_neighbours=1000))
    cv, tr = CoVisitation(**kw), CoVisitation.transitions(max_neighbours=1000)
    cv.pair(tr)
    for user, item, ts, hist in _stream(3000, 400, seed=1):
        for model in (*alone, cv, tr):
            model.learn_one(user, item, ts, hist)
    assert cv._rows is tr._rows and tr.item_index is cv.item_index
    assert 100 < max(cv._rows.n) < 2 * cv.max_neighbours  # no prune yet
    for hist in (["i1"], ["i3", "i0", "i7"], ["i250", "i2"]):
        for model, ref in zip((cv, tr), alone):
            got, want = model.recommend("u", hist, 20), ref.recommend("u", hist, 20)
            assert [(c.item, c.anchor) for c in got] == [(c.item, c.anchor) for c in want]
            np.testing.assert_allclose([c.score for c in got], [c.score for c in want], rtol=1e-6)
            np.testing.assert_allclose(model.score("u", hist, ["i5", "i9"]), ref.score("u", hist, ["i5", "i9"]),
                                       rtol=1e-6)


def test_paired_rows_keep_each_columns_strongest() -> None:
    """A full paired row keeps the union of each column's strongest: a neighbour strong only in the
    transition counts (old, so decayed away for the co-visitation model) stays for the transitions model."""
    cv, tr = CoVisitation(lookback=1, max_neighbours=10, half_life_s=10.0), CoVisitation.transitions(max_neighbours=10)
    with pytest.raises(ValueError, match="same"):
        cv.pair(tr)  # lookback 1 against 5
    cv = CoVisitation(lookback=5, max_neighbours=10, half_life_s=10.0)
    cv.pair(tr)
    for n in range(30):
        cv.learn_one(f"o{n}", "old", 0.0, ("A",))  # 30 transitions, long ago
    for n in range(100):  # a hundred half-lives later
        cv.learn_one(f"u{n}", f"i{n}", 1000.0 + n, ("A",))
    _, js, ws = row(cv, "A")
    assert len(js) <= 20 and len(ws) == 2 * len(js)
    assert neighbours(tr, "A", 1)[0][0] == "old" and [n for n, _ in neighbours(cv, "A", 1)] == ["i99"]
    with pytest.raises(ValueError, match="before"):
        cv.pair(CoVisitation.transitions())
    # a snapshot keeps the pairing: the two models still read one set of rows
    again_cv, again_tr = pickle.loads(pickle.dumps((cv, tr)))
    assert again_cv._rows is again_tr._rows and again_tr._owner is again_cv
    again_cv.learn_one("z", "B", 2000.0, ("A",))
    assert "B" in [n for n, _ in neighbours(again_tr, "A", 20)]


def test_rows_hold_every_pair_through_class_moves() -> None:
    """Rows move up size classes and freed class rows take the class's last row: every item's row still
    holds exactly its pairs, with their weights (a dict of dicts computed apart, no decay, no prune)."""
    cv = CoVisitation(half_life_s=math.inf, max_neighbours=1000, distance_decay=True)
    want: dict[str, dict[str, float]] = {}
    for user, item, ts, hist in _stream(4000, 300, seed=3):
        cv.learn_one(user, item, ts, hist)
        for d in range(1, min(cv.lookback, len(hist)) + 1):
            h = hist[-d]
            if h != item:
                want.setdefault(h, {}).setdefault(item, 0.0)
                want[h][item] += 1.0 / d
                want.setdefault(item, {}).setdefault(h, 0.0)
                want[item][h] += 0.5 / d
    rows = cv._rows
    assert len({rows.cls[h] for h in range(len(cv.item_index))}) > 5  # rows in many classes
    names = cv.item_index.names
    for h, name in enumerate(names):
        keys, js, ws = rows.row(h)
        assert keys == bytes(j & 255 for j in js)
        got = {names[j]: w for j, w in zip(js, ws)}
        assert got.keys() == want.get(name, {}).keys()
        np.testing.assert_allclose([got[n] for n in got], [want[name][n] for n in got], rtol=1e-5)
    for k, owner in enumerate(rows.owner):  # dense classes, each class row owned by the item that points at it
        assert len(rows.js[k]) == len(owner) * rows.caps[k] and all(rows.at[g] == r for r, g in enumerate(owner))
        assert rows.peak[k] <= 2 * len(owner)  # a class that shrank to half its rows was copied to its size
    assert rows.peak[0] == len(rows.owner[0]) == 0  # every row outgrew the smallest class
