"""``tailcast evaluate``'s baselines and consumed share on hand-made streams: CoVisit-raw's counter, the
exact consumed sets, the share of slots holding consumed items, two workers. Small synthetic data only."""

from __future__ import annotations

import numpy as np
import pytest

from online.base import CandidateList
from online.synthetic import generate
from streams.config import load_settings
from streams.datasets import Event
from streams.evaluation.harness import Scoreboard, prepare_events, run_offline
from streams.evaluation.systems import SystemSpec, TransformerOnly, build_core, default_systems

SETTINGS = load_settings({"TAILCAST_TEXT_ENCODER": "hashing"})
BASELINES = [SystemSpec("mostpop"), SystemSpec("itemcf"), SystemSpec("tailboost", 2.0), SystemSpec("covisit-raw"),
             SystemSpec("covisit-raw-boost", 2.0), SystemSpec("mf")]


def _stream(rows: list[tuple[str, str]]):
    return prepare_events([Event(1000.0 + n, u, i) for n, (u, i) in enumerate(rows)])


def _lists(rows, specs, *, batch: int = 1) -> tuple[dict, list]:
    recs = []
    res = run_offline(_stream(rows), specs, SETTINGS, batch=batch, progress_every=0, lists_sink=recs.append,
                      sink_kinds=tuple(s.kind for s in specs))
    return res, recs


# CoVisit-raw by the counter's definition: when a user consumes j, each distinct h among their previous 5
# items gains W[h][j] += 1 and W[j][h] += 0.5 (no decay, no distance weighting, no normalisation).
COVISIT_ROWS = [("u1", "A"), ("u1", "B"), ("u1", "C"), ("u2", "A"), ("u2", "B"), ("u2", "D"), ("u3", "B"),
                ("u3", "C"), ("u4", "A"), ("u5", "C"), ("u5", "A")]


def test_covisit_raw_scores_are_the_transition_counts():
    res, recs = _lists(COVISIT_ROWS, [SystemSpec("covisit-raw")])
    by = {(r.user_id, r.user_event_count): r for r in recs}
    # u4 after A: W[A][B] = 2 (u1, u2), W[A][C] = 1 (u1, two back), W[A][D] = 1 (u2); C before D: ties by
    # first appearance; A is consumed; no other item to top up with
    u4 = by["u4", 1]
    assert [(i.item_id, i.score, i.source) for i in u4.items] == [("B", 2.0, "transitions"), ("C", 1.0, "transitions"),
                                                                   ("D", 1.0, "transitions")]
    assert u4.items[0].reason == "often next after A" and u4.arm == "CoVisit-raw"
    # u5 after C, A: anchors A (r = 1) and C (r = 2); W[A][B] + W[C][B] / 2 = 2 + (0.5 + 0.5) / 2 (C followed B
    # for u1 and u3: backward halves), W[A][D] = 1; C and A are consumed
    u5 = by["u5", 2]
    assert [(i.item_id, i.score) for i in u5.items] == [("B", 2.5), ("D", 1.0)]
    assert res["CoVisit-raw"].metrics["consumed_share"] == 0.0
    # the decayed, distance-weighted, normalised ItemCF ranks the same items differently
    _, cf = _lists(COVISIT_ROWS, [SystemSpec("itemcf")])
    u4_cf = {(r.user_id, r.user_event_count): r for r in cf}["u4", 1]
    assert [i.item_id for i in u4_cf.items] == ["B", "D", "C"] and u4_cf.items[0].score != 2.0


def test_covisit_raw_tailboost_reranks_its_top_by_the_tail():
    core = build_core(SystemSpec("covisit-raw-boost", 4.0), SETTINGS)
    rec = core.recommender
    rows = COVISIT_ROWS + [("u6", "E"), ("u7", "B"), ("u8", "B")]
    for n, (u, i) in enumerate(rows):
        rec.learn_one(u, i, float(n), [x for v, x in rows[:n] if v == u][-50:])
    # 5 active items, one head item: B (count 5). u4's raw scores after A: B 2, C 1.5 (u5's A after C adds
    # a backward half), D 1; boosted: B 2, C 1.5 * 5, D 1 * 5; E from MostPop
    shown = rec.recommend("u4", ["A"], 1, arm="x")
    assert [(c.item, c.score, c.source) for c in shown] == [("C", 1.5, "transitions"), ("D", 1.0, "transitions"),
                                                            ("B", 2.0, "transitions"), ("E", 1.0, "popularity")]
    assert [c.anchor for c in shown] == ["A", "A", "A", None]


def test_consumed_share_counts_only_events_up_to_the_lists_count():
    board = Scoreboard("x", 2, 10)
    board.observe_event(0, "u", "a", 1)
    board.observe_event(1, "u", "b", 2)
    board.observe_event(2, "u", "a", 3)                          # a repeat: a's first index stays 1
    board.observe_list(0, "u", 1, ["b", "a", "c"])   # made after event 1: only a was consumed; c is beyond k
    assert (board.consumed_slots, board.slots) == (1, 2)
    board.observe_list(1, "u", 2, ["b", "c"])
    assert (board.consumed_slots, board.slots) == (2, 4)


def _heavy_rows() -> list[tuple[str, str]]:
    """'heavy' consumes i0..i59, then j0..j9; other users make each i_n follow j_n and make i0..i9 popular
    (and f0..f9 exist, so that ten items heavy never consumed are always there)."""
    rows = [("filler", f"f{n}") for n in range(10)] + [("heavy", f"i{n}") for n in range(60)]
    for n in range(10):
        for u in range(3):
            rows += [(f"o{n}_{u}", f"j{n}"), (f"o{n}_{u}", f"i{n}"), (f"p{n}_{u}", f"i{n}")]
    rows += [("heavy", f"j{n}") for n in range(10)]
    return rows


def test_baselines_never_recommend_an_item_consumed_before_the_last_50():
    rows = _heavy_rows()
    assert SETTINGS.worker.history_len == 50   # i0..i9 have left heavy's history by j0
    res, recs = _lists(rows, BASELINES)
    first = {item: n + 1 for n, (_u, item) in enumerate(r for r in rows if r[0] == "heavy")}
    heavy = [r for r in recs if r.user_id == "heavy" and r.user_event_count > 60]
    assert len(heavy) == 10 * len(BASELINES)
    for rec in heavy:
        items = [i.item_id for i in rec.items]
        assert len(items) == 10, rec.arm     # topped up with MostPop: j_n and items of the other users
        assert not [i for i in items if first.get(i, 10**9) <= rec.user_event_count], rec.arm
    for spec in BASELINES:
        assert res[spec.name].metrics["consumed_share"] == 0.0, spec.name
    # the test has teeth: co-visitation alone, excluding only the last 50, would show i0 after j0
    core = build_core(SystemSpec("itemcf"), SETTINGS)
    for n, (u, i) in enumerate(rows):
        core.recommender.learn_one(u, i, float(n), [x for v, x in rows[:n] if v == u][-50:])
    last50 = [x for v, x in rows if v == "heavy"][-50:]
    assert "i9" in core.recommender.covisit.ranked("someone else", last50, 10)[0]
    assert "i9" not in core.recommender.covisit.ranked("heavy", last50, 10)[0]


def test_content_alone_proposes_the_text_neighbours_of_the_history():
    # A, B, C share a topic and D, E another; u1 had A then D; u2 had B
    ids = ["A", "B", "C", "D", "E"]
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.8, 0, 0.2], [0, 1, 0], [0, 0.9, 0.1]], dtype=np.float32)
    rows = [("u1", "A"), ("u2", "B"), ("u1", "D"), ("u2", "E"), ("u3", "C")]
    recs = []
    run_offline(_stream(rows), [SystemSpec("content")], SETTINGS, batch=1, progress_every=0, lists_sink=recs.append,
                sink_kinds=("content",), text_vectors=(ids, vectors))
    by = {(r.user_id, r.user_event_count): [i.item_id for i in r.items] for r in recs}
    assert by["u1", 1][:2] == ["B", "C"]          # the neighbours of A, nearest first
    assert by["u1", 2][0] == "E" and "A" not in by["u1", 2] and "D" not in by["u1", 2]
    assert by["u3", 1][:2] == ["A", "B"]
    with pytest.raises(ValueError, match="text vectors"):
        build_core(SystemSpec("content"), SETTINGS)


def test_transformer_only_drops_consumed_items_and_tops_up():
    rec = TransformerOnly(k=3, window_events=100, head_share=0.2)
    for n, item in enumerate(["x", "y", "a", "z"]):
        rec.learn_one("u" if item != "z" else "v", item, float(n), [])
    extra = {"transformer": CandidateList(["x", "b", "y"], [0.9, 0.8, 0.7], "transformer")}
    shown = rec.recommend("u", ["a"], 3, arm="t", extra=extra)   # x and y are consumed, though not in history
    assert [(c.item, c.source) for c in shown] == [("b", "transformer"), ("z", "popularity")]


def test_two_workers_give_the_same_results():
    """Every system, Content included (the text vectors stay in the calling process), as with one worker."""
    data = generate(n_users=40, n_items=60, n_events=300, seed=11)
    stream = prepare_events([Event(ts, u, i, e) for ts, u, i, e in data.events])
    ids = sorted(data.items)
    text = (ids, np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32))
    specs = default_systems([0.0], [1.0], transformer=False, text=True)
    assert "Content" in [s.name for s in specs]
    one = run_offline(stream, specs, SETTINGS, batch=4, progress_every=0, workers=1, text_vectors=text)
    two = run_offline(stream, specs, SETTINGS, batch=4, progress_every=0, workers=2, log=lambda line: None,
                      text_vectors=text)
    assert list(one) == list(two) == [s.name for s in specs]
    drop = {"scorer_seconds"}
    for name, r in one.items():
        assert {k: v for k, v in r.metrics.items() if k not in drop} == \
            {k: v for k, v in two[name].metrics.items() if k not in drop}, name
        assert r.chunks == two[name].chunks and r.exposure == two[name].exposure


def test_the_calling_process_stops_its_replay_when_the_second_process_has_failed():
    """run_offline asks between micro-batches (``_replay``'s ``stop``) whether the second process failed."""
    from concurrent.futures import Future

    from streams.evaluation.harness import _raise_if_failed, _replay

    pending, ok, failed = Future(), Future(), Future()
    ok.set_result({})
    failed.set_exception(ValueError("no text vectors in the second process"))
    _raise_if_failed(pending)
    _raise_if_failed(ok)
    with pytest.raises(ValueError, match="no text vectors"):
        _raise_if_failed(failed)

    asked = []

    def stop() -> None:
        asked.append(len(asked))
        if len(asked) == 3:
            _raise_if_failed(failed)

    data = generate(n_users=20, n_items=30, n_events=200, seed=3)
    stream = prepare_events([Event(ts, u, i, e) for ts, u, i, e in data.events])
    with pytest.raises(ValueError, match="no text vectors"):
        _replay(stream, [SystemSpec("mostpop")], SETTINGS, batch=4, warmup_events=0, n_chunks=10, progress_every=0,
                stop=stop)
    assert asked == [0, 1, 2]  # raised before the third micro-batch: two of the 50 were replayed
