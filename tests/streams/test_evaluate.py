"""``tailcast evaluate``: the harness arithmetic on hand-made streams, exact-once evaluation, the report files,
determinism. Small synthetic data only (never /work/shared)."""

from __future__ import annotations

import argparse
import collections
import doctest
import json
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from online.arms import ArmAssigner
from online.base import Candidate
from online.synthetic import generate
from streams.agents.scorer import ScorerCore
from streams.config import load_settings
from streams.datasets import Event
from streams.evaluate import add_arguments, run_evaluate
from streams.evaluation import harness as harness_mod
from streams.evaluation import systems as systems_mod
from streams.evaluation.harness import SystemResult, prepare_events, run_offline
from streams.evaluation.report import tradeoff_verdicts, write_report
from streams.evaluation.systems import PerUserRecommender, SystemSpec, WindowMostPop, build_core, default_systems

SETTINGS = load_settings({"TAILCAST_TEXT_ENCODER": "hashing"})
CONTRACT = {"user_id", "items", "user_event_count", "model_version", "arm", "event_ts", "generated_at"}


class FixedLists(PerUserRecommender):
    """A fake recommender: learns nothing, always shows the same list."""

    def __init__(self, items: list[str]) -> None:
        self.items = items

    def learn_one(self, user, item, ts, history) -> None:
        pass

    def recommend(self, user, history, user_event_count, *, arm, extra=None):
        return [Candidate(item, 1.0 / (n + 1), "covisit") for n, item in enumerate(self.items)]


def _fake(name: str, items: list[str]) -> ScorerCore:
    return ScorerCore(recommender=FixedLists(items), arms=ArmAssigner({name: 1.0}), k=10, online_version="fake")


def _stream(rows: list[tuple[str, str]]):
    return prepare_events([Event(1000.0 + n, u, i) for n, (u, i) in enumerate(rows)])


def _run_fake(rows, *, batch: int):
    spec = SystemSpec("mostpop")  # the name only: the core is the fake
    res = run_offline(_stream(rows), [spec], SETTINGS, batch=batch, progress_every=0,
                      cores={spec.name: _fake(spec.name, ["a", "b"])})
    return res[spec.name].metrics


# Nine events, one list ["a", "b"] after every event (batch=1). By hand:
#   pos 0-5: first events of u1..u6 -> "none" (misses); pos 6 u1 b: list 1 of u1, rank 1 -> hit, gain 1/log2(3);
#   pos 7 u2 a: rank 0 -> hit, gain 1; pos 8 u3 z: miss.
#   head (top floor(0.2 * active) by count, ties by id): none while < 5 items are active, {a} from pos 4 on.
ROWS = [("u1", "a"), ("u2", "b"), ("u3", "c"), ("u4", "d"), ("u5", "e"), ("u6", "a"),
        ("u1", "b"), ("u2", "a"), ("u3", "z")]


def test_consumed_share_is_exact_on_a_hand_made_stream():
    rows = [("u1", "a"), ("u1", "c"), ("u2", "b"), ("u1", "b"), ("u2", "z")]
    spec = SystemSpec("mostpop")  # the name only: the core is the fake, always showing [a, b]
    # lists after each event (batch 1), consumed slots by hand: u1@1 {a}: 1, u1@2 {a, c}: 1, u2@1 {b}: 1,
    # u1@3 {a, c, b}: 2, u2@2 {b, z}: 1 -> 6 of 10 slots
    for warmup, want in ((0, (6, 10)), (2, (4, 6))):    # warm-up events count as consumed, their lists do not
        m = run_offline(_stream(rows), [spec], SETTINGS, batch=1, warmup_events=warmup, progress_every=0,
                        cores={spec.name: _fake(spec.name, ["a", "b"])})[spec.name].metrics
        assert (m["consumed_slots"], m["slots"]) == want
        assert m["consumed_share"] == pytest.approx(want[0] / want[1])


def test_hand_computed_hr_ndcg_and_pairing_counts():
    m = _run_fake(ROWS, batch=1)
    assert (m["evaluated"], m["exact"], m["stale"], m["none"]) == (9, 3, 0, 6)
    assert (m["none_first_event"], m["none_later"]) == (6, 0)
    assert m["hr"] == pytest.approx(2 / 9)
    assert m["ndcg"] == pytest.approx((1 / math.log2(3) + 1) / 9)
    assert m["hr_by_bucket"] == {"<=5": pytest.approx(2 / 9), "6-20": 0.0, ">20": 0.0}
    # tail targets: every target but the two "a" events resolved once a is head (pos 5 and pos 7): 7,
    # of which pos 6 (b, tail) is a hit
    assert m["tail_evaluated"] == 7
    assert m["tail_hr"] == pytest.approx(1 / 7)


def test_hand_computed_exposure_metrics():
    m = _run_fake(ROWS, batch=1)
    # lists after pos 0-3: no head, both slots tail (4 x 2); after pos 4-8: head {a}, one tail slot (5 x 1)
    assert m["lists"] == 9
    assert m["tail_share"] == pytest.approx(13 / 18)
    assert m["aplt"] == pytest.approx(13 / 18)
    # active items a b c d e z; a and b recommended -> coverage 2/6; exposure counts [0,0,0,0,9,9]
    assert m["coverage"] == pytest.approx(2 / 6)
    assert m["gini"] == pytest.approx((7 - 2 * (2 * 9 + 1 * 9) / 18) / 6)
    # novelty: -log2(share) of a and b when each list was published (after the event it reflects)
    bits = [0 + 1, 1 + 1, 2 * math.log2(3), 2 + 2, 2 * math.log2(5), math.log2(3) + math.log2(6),
            2 * math.log2(3.5), math.log2(8 / 3) + 2, math.log2(3) + math.log2(4.5)]
    assert m["novelty"] == pytest.approx(sum(bits) / 18)


def test_coalesced_events_pair_stale():
    # batch 2: [u1 x, u2 q] [u1 y, u1 z]: y pairs with u1's list 1 (exact), z too, but it needs list 2 (stale)
    m = _run_fake([("u1", "x"), ("u2", "q"), ("u1", "y"), ("u1", "z")], batch=2)
    assert (m["evaluated"], m["exact"], m["stale"], m["none"]) == (4, 1, 1, 2)
    assert m["none_first_event"] == 2 and m["hr"] == 0.0


def test_first_micro_batch_events_pair_none_later():
    m = _run_fake([("u1", "a"), ("u1", "b"), ("u1", "a")], batch=2)   # u1's event 2 has no list before it
    assert (m["none_first_event"], m["none_later"], m["exact"]) == (1, 1, 1)
    assert m["hr"] == pytest.approx(1 / 3)    # event 3 (a) is rank 0 of list 2


@pytest.fixture(scope="module")
def synthetic_stream():
    data = generate(n_users=60, n_items=100, n_events=500, seed=3)
    return prepare_events([Event(ts, u, i, e) for ts, u, i, e in data.events])


@pytest.fixture(scope="module")
def offline_results(synthetic_stream):
    specs = default_systems([0.0, 0.5], [1.0], transformer=False)
    return run_offline(synthetic_stream, specs, SETTINGS, batch=32, progress_every=0)


SYSTEMS = {"tailcast[s=0.00]", "tailcast[s=0.50]", "MostPop", "RecentPop", "ItemCF", "TailBoost[λ=1]", "CoVisit-raw",
           "CoVisit-raw+TailBoost[λ=1]", "MF"}


def test_every_event_evaluated_exactly_once(synthetic_stream, offline_results):
    n = len(synthetic_stream.events)
    assert set(offline_results) == SYSTEMS
    for name, r in offline_results.items():
        m = r.metrics
        assert m["evaluated"] == n, name
        assert m["exact"] + m["stale"] + m["none"] == m["evaluated"], name
        assert m["none_first_event"] == len(synthetic_stream.final_counts)
        assert m["none_first_event"] + m["none_later"] == m["none"]
        assert m["unattributed"] == 0 and m["learned_events"] == n
        assert sum(c["events"] for c in r.chunks) == n
        assert sum(m["bucket_counts"].values()) == n
        assert 0.0 <= m["ndcg"] <= m["hr"] <= 1.0


def test_pairing_counts_do_not_depend_on_the_system(offline_results):
    counts = {(r.metrics["exact"], r.metrics["stale"], r.metrics["none"]) for r in offline_results.values()}
    assert len(counts) == 1    # same micro-batching, same pairing for every system


def test_offline_run_is_deterministic(synthetic_stream, offline_results):
    again = run_offline(synthetic_stream, default_systems([0.0, 0.5], [1.0], transformer=False), SETTINGS,
                        batch=32, progress_every=0)
    drop = {"scorer_seconds"}
    for name, r in offline_results.items():
        assert {k: v for k, v in r.metrics.items() if k not in drop} == \
            {k: v for k, v in again[name].metrics.items() if k not in drop}
        assert r.chunks == again[name].chunks and r.exposure == again[name].exposure


def test_warmup_events_are_not_scored(synthetic_stream):
    specs = [SystemSpec("mostpop")]
    res = run_offline(synthetic_stream, specs, SETTINGS, batch=32, warmup_events=200, progress_every=0)
    m = res["MostPop"].metrics
    assert m["evaluated"] == len(synthetic_stream.events) - 200
    assert m["exact"] + m["stale"] + m["none"] == m["evaluated"]


def test_tailcast_system_is_the_live_recommender_with_one_forced_arm():
    core = build_core(SystemSpec("tailcast", 0.25), SETTINGS)
    assert list(core.recommender.arms) == ["tailcast[s=0.25]"]
    assert core.recommender.arms["tailcast[s=0.25]"].rerank_strength == 0.25
    assert core.arms.assign("anyone") == "tailcast[s=0.25]"
    assert core.recommender.popularity.window_events == SETTINGS.longtail.window_events


def test_systems_doctests_and_window_mostpop():
    assert doctest.testmod(systems_mod).failed == 0
    pop = WindowMostPop(window_events=3, k=2, head_share=0.2)
    for item in "abbc":            # window keeps b b c
        pop.learn_one("u", item, 0.0, [])
    assert [c.item for c in pop.recommend("v", [], 0, arm="x")] == ["b", "c"]
    assert [c.item for c in pop.recommend("u", [], 4, arm="x")] == []     # u consumed a, b and c


def _result(name, kind, param, ndcg, tail, **extra):
    return SystemResult(name, kind, param, {"hr": ndcg, "ndcg": ndcg, "tail_share": tail, "tail_hr": tail,
                                            "hr_by_bucket": {"<=5": tail}, **extra}, [], [])


def test_tradeoff_verdicts_interpolate_each_tailboost_curve():
    res = {"a": _result("a", "tailcast", 0.0, 0.15, 0.5), "b": _result("b", "tailcast", 0.5, 0.10, 0.3),
           "cf": _result("cf", "itemcf", None, 0.20, 0.2), "tb": _result("tb", "tailboost", 2.0, 0.10, 0.6),
           "raw": _result("raw", "covisit-raw", None, 0.12, 0.1),
           "rawtb": _result("rawtb", "covisit-raw-boost", 1.0, 0.08, 0.2)}
    v = tradeoff_verdicts(res)["tradeoff"]["tail_share"]
    assert set(v["curves"]) == {"TailBoost (ItemCF)", "TailBoost (CoVisit-raw)"} and v["missing_curves"] == []
    a, b = v["curves"]["TailBoost (ItemCF)"]["points"]
    assert a["curve_at_same_ndcg"] == pytest.approx(0.4) and a["above"]   # midway 0.2 -> 0.6
    assert b["curve_at_same_ndcg"] == pytest.approx(0.6) and not b["above"]
    a, b = v["curves"]["TailBoost (CoVisit-raw)"]["points"]
    assert a["above"] and "nearest end raw" in a["how"]     # beyond the curve: higher NDCG and tail share
    assert b["curve_at_same_ndcg"] == pytest.approx(0.15) and b["above"]   # between 0.08 -> 0.2 and 0.12 -> 0.1
    assert v["curves"]["TailBoost (CoVisit-raw)"]["above_at_every_setting"]
    assert not v["above_at_every_setting"]     # not above ItemCF's curve at b
    lt = tradeoff_verdicts(res)["long_tail_users"]
    assert lt["a"]["vs"] == {"cf": True, "tb": False, "raw": True, "rawtb": True}
    # without CoVisit-raw rows, the check says so
    only_cf = {n: r for n, r in res.items() if not n.startswith("raw")}
    assert tradeoff_verdicts(only_cf)["tradeoff"]["tail_hr"]["missing_curves"] == ["TailBoost (CoVisit-raw)"]


def test_quality_check_takes_the_best_single_system_and_consumed_share_the_limit():
    res = {"a": _result("a", "tailcast", 0.0, 0.25, 0.5, consumed_share=0.004),
           "b": _result("b", "tailcast", 0.5, 0.10, 0.3, consumed_share=0.01),
           "pop": _result("pop", "mostpop", None, 0.05, 0.0), "cf": _result("cf", "itemcf", None, 0.19, 0.2),
           "raw": _result("raw", "covisit-raw", None, 0.20, 0.1),
           "nv": _result("nv", "tailcast-novae", 0.0, 0.3, 0.1, consumed_share=0.0)}
    v = tradeoff_verdicts(res)
    assert list(v["quality"]) == ["a"]     # knob 0 only; the "no VAE" row is not a single system
    q = v["quality"]["a"]
    assert q["best_single"] == "raw" and q["ratio"] == pytest.approx(1.25) and q["meets"]
    assert {n: c["meets"] for n, c in v["consumed"].items()} == {"a": True, "b": False, "nv": True}


def test_report_checks_name_both_tailboost_curves(tmp_path):
    res = {"tailcast[s=0.00]": _result("tailcast[s=0.00]", "tailcast", 0.0, 0.15, 0.5, consumed_share=0.0),
           "ItemCF": _result("ItemCF", "itemcf", None, 0.20, 0.2),
           "TailBoost[λ=2]": _result("TailBoost[λ=2]", "tailboost", 2.0, 0.10, 0.6),
           "CoVisit-raw": _result("CoVisit-raw", "covisit-raw", None, 0.12, 0.1),
           "CoVisit-raw+TailBoost[λ=1]": _result("CoVisit-raw+TailBoost[λ=1]", "covisit-raw-boost", 1.0, 0.08, 0.2)}
    write_report(tmp_path, res, command="test", title="t", plots=False)
    md = (tmp_path / "report.md").read_text()
    for y in ("tail_share", "tail_hr"):
        assert (f"- tailcast's curve above TailBoost (ItemCF) and TailBoost (CoVisit-raw) ({y} at equal NDCG@10) "
                "at every setting: **yes**") in md
    assert "vs TailBoost (ItemCF) 0.4000 -> above" in md and "vs TailBoost (CoVisit-raw) 0.1000 -> above" in md
    assert "vs the best single system, ItemCF 0.2000: ratio 0.750 < 1.05: **no**" in md
    assert "0.00% of recommended slots are items the user already consumed, <= 0.5%: **yes**" in md
    run = json.loads((tmp_path / "run.json").read_text())
    assert set(run["verdicts"]["tradeoff"]["tail_hr"]["curves"]) == {"TailBoost (ItemCF)", "TailBoost (CoVisit-raw)"}


def _csv(path: Path, n_events: int = 400) -> Path:
    data = generate(n_users=50, n_items=80, n_events=n_events, seed=5)
    lines = ["user_id,item_id,ts"] + [f"{u},{i},{ts}" for ts, u, i, _e in data.events]
    path.write_text("\n".join(lines) + "\n")
    return path


def _args(dataset: Path, out: Path, **extra) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p, base=True)
    argv = ["--dataset", str(dataset), "--out", str(out), "--mode", extra.pop("mode", "offline"),
            "--strengths", "0,0.5", "--boosts", "1", "--batch", str(extra.pop("batch", 32)), "--chunks", "4",
            "--workers", str(extra.pop("workers", 1))]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    args = p.parse_args(argv)
    args.command_line = "tailcast evaluate --dataset data.csv (test)"
    return args


def test_report_files_are_written(tmp_path):
    out = tmp_path / "out"
    assert run_evaluate(SETTINGS, _args(_csv(tmp_path / "d.csv"), out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == SYSTEMS
    for m in report.values():
        for key in ("hr", "ndcg", "tail_hr", "hr_by_bucket", "tail_share", "coverage", "gini", "aplt", "novelty",
                    "k", "evaluated", "exact", "stale", "none", "consumed_share"):
            assert key in m
        assert set(m["hr_by_bucket"]) == {"<=5", "6-20", ">20"} and m["k"] == 10
        assert m["evaluated"] == 400
    md = (out / "report.md").read_text()
    assert "tailcast evaluate --dataset data.csv (test)" in md and "| tailcast[s=0.50] |" in md
    assert "| consumed share |" in md and "| CoVisit-raw+TailBoost[λ=1] |" in md
    assert "above TailBoost (ItemCF) and TailBoost (CoVisit-raw) (tail_hr at equal NDCG@10)" in md
    for name in SYSTEMS - {"tailcast[s=0.00]", "tailcast[s=0.50]"}:
        assert report[name]["consumed_share"] == 0.0, name    # the baselines never repeat a consumed item
    assert "Transformer without tail re-ranking: SKIPPED" in md
    for name in ("tailcast[s=0.00]", "tailcast[s=0.50]"):  # the blender's AUC says how many clicks it rests on
        m = report[name]
        assert 0 < m["blender_window_clicks"] < m["blender_window_examples"] <= 10_000
        assert f"{m['blender_window_examples']:,} labelled examples, {m['blender_window_clicks']:,} of them clicked" in md
    for png in ("tradeoff.png", "hr_by_bucket.png", "lorenz.png", "over_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = json.loads((out / "run.json").read_text())
    assert len(run["chunks"]["MostPop"]) == 4
    lines = (out / "recommendations.jsonl").read_text().splitlines()
    assert lines
    for line in lines[:50]:
        rec = orjson.loads(line)
        assert CONTRACT <= set(rec)
        assert rec["arm"] in {"tailcast[s=0.00]", "tailcast[s=0.50]"}
        assert all({"item_id", "score", "source"} <= set(i) for i in rec["items"])
    # determinism under --seed: a second run gives the same report (timings aside)
    out2 = tmp_path / "out2"
    run_evaluate(SETTINGS, _args(tmp_path / "d.csv", out2))
    again = json.loads((out2 / "report.json").read_text())
    strip = lambda r: {s: {k: v for k, v in m.items() if k != "scorer_seconds"} for s, m in r.items()}  # noqa: E731
    assert strip(report) == strip(again)
    assert (out / "recommendations.jsonl").read_bytes() == (out2 / "recommendations.jsonl").read_bytes()
    # --seed 1: other training draws for the online models; tailcast's and MF's lists change, the other baselines'
    # do not
    out3 = tmp_path / "out3"
    run_evaluate(SETTINGS, _args(tmp_path / "d.csv", out3, seed=1))
    other = strip(json.loads((out3 / "report.json").read_text()))
    assert all(other[name] == strip(report)[name] for name in SYSTEMS if not name.startswith(("tailcast", "MF")))
    assert other["MF"] != strip(report)["MF"]
    assert (out3 / "recommendations.jsonl").read_bytes() != (out / "recommendations.jsonl").read_bytes()
    assert "--seed 1: the online models' training draws" in (out3 / "report.md").read_text()


def test_loo_mode_reports_baselines_and_tailcast(tmp_path):
    out = tmp_path / "loo"
    assert run_evaluate(SETTINGS, _args(_csv(tmp_path / "d.csv", 600), out, mode="loo", strengths="0")) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"MostPop", "ItemCF", "tailcast[s=0.00]"} <= set(report)
    for m in report.values():
        assert 0.0 <= m["ndcg"] <= m["hr"] <= 1.0 and m["users"] > 0
    assert report["MostPop"]["users"] == report["tailcast[s=0.00]"]["users"]
    served = {k: v for k, v in report["tailcast[s=0.00]"].items() if k.startswith("served_")}  # the source gate
    assert {f"served_{seg}_{src}" for seg in ("new", "regular", "heavy")
            for src in ("popularity", "covisit", "transitions", "last", "mf", "content", "fresh")} <= set(served)
    assert all(isinstance(v, bool) for v in served.values())
    assert "source gate at the end of the replay, sources left out per user segment: new: " in \
        (out / "report.md").read_text()


def test_harness_rejects_events_the_edge_would_dead_letter():
    stream = prepare_events([Event(1.0, "u1", "a"), Event(2.0, " ", "b"), Event(3.0, "u1", "c")])
    assert [e.item for e in stream.events] == ["a", "c"] and stream.index == [1, 2]
    assert stream.rejected == {"empty_id": 1}
    with pytest.raises(harness_mod.HarnessError):
        list(harness_mod.micro_batches([Event(1.0, " ", "b")], SETTINGS, 8))


def test_offline_with_a_mult_vae_compares_tailcast_with_and_without_it(tmp_path):
    out = tmp_path / "vae"
    args = _args(_csv(tmp_path / "d.csv", 600), out, strengths="0", train_transformer=3, train_vae=3,
                 lists="all")
    assert run_evaluate(SETTINGS, args) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"tailcast[s=0.00]", "tailcast[s=0.00] no VAE", "Transformer", "Mult-VAE"} <= set(report)
    assert len({m["evaluated"] for m in report.values()}) == 1  # every system scored on the same events
    sources = collections.defaultdict(set)
    for line in (out / "recommendations.jsonl").read_text().splitlines():
        rec = orjson.loads(line)
        sources[rec["arm"]].update(i["source"] for i in rec["items"])
    assert sources["Mult-VAE"] <= {"vae", "popularity"} and "vae" in sources["Mult-VAE"]
    assert "vae" not in sources["tailcast[s=0.00] no VAE"]
    assert "trained here as the trainer does on the first 120 events" in (out / "report.md").read_text()
    assert "; Mult-VAE " in (out / "report.md").read_text()


def test_loo_mode_reports_mult_vae_rows(tmp_path):
    out = tmp_path / "loo"
    args = _args(_csv(tmp_path / "d.csv", 600), out, mode="loo", strengths="0", train_transformer=3, train_vae=3)
    assert run_evaluate(SETTINGS, args) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"MostPop", "ItemCF", "Transformer", "Mult-VAE", "tailcast[s=0.00]", "tailcast[s=0.00] no VAE"} <= set(report)
    assert len({m["users"] for m in report.values()}) == 1 and report["Mult-VAE"]["epochs"] >= 1
    md = (out / "report.md").read_text()
    assert "as its batch candidate sources" in md and "the validation lists' batch models: trained on the train part" in md


def test_loo_batch_models_meet_the_ranker_only_on_events_they_were_not_trained_on(tmp_path, monkeypatch):
    """In leave-one-out tailcast's replay asks the batch models for candidates only once the train part is over
    (the states before the validation and the test events), never for a state inside it, where their candidates
    would be in-sample; the validation lists, which teach the ranker their weight, come from models trained
    without the validation events, and the test lists from models refreshed with them."""
    from models.loo import leave_one_out
    from models.scoring import BatchScorer
    from streams.evaluation.transformer import Refresher

    seen: list[tuple[int, tuple[str, ...]]] = []  # (the encoder asked, a history it was asked for)
    trained: dict[int, set[tuple[str, str, float]]] = {}  # an encoder -> the events it was trained on
    candidates, refresh = BatchScorer.candidates, Refresher.__call__

    def spy_candidates(self, histories, *args, **kwargs):
        seen.extend((id(self.model), tuple(h)) for h in histories)
        return candidates(self, histories, *args, **kwargs)

    def spy_refresh(self, events):
        scorer = refresh(self, events)
        trained[id(scorer.model)] = {(e.user, e.item, e.ts) for e in events}
        return scorer

    monkeypatch.setattr(BatchScorer, "candidates", spy_candidates)
    monkeypatch.setattr(Refresher, "__call__", spy_refresh)
    data = _csv(tmp_path / "d.csv", 600)
    args = _args(data, tmp_path / "loo", mode="loo", strengths="0", train_transformer=2, train_vae=2)
    assert run_evaluate(SETTINGS, args) == 0
    rows = [(u, i, float(ts)) for u, i, ts in (line.split(",") for line in data.read_text().splitlines()[1:])]
    split = leave_one_out(rows)
    per_user = collections.defaultdict(list)
    for u, i, ts in rows:
        per_user[u].append((u, i, ts))
    valid_events = {evs[-2] for evs in per_user.values() if len(evs) >= 3}
    hl = SETTINGS.worker.history_len
    after_train = {tuple(split.train[u][-hl:]) for u in split.train}
    after_valid = {tuple((split.train[u] + [split.valid[u]])[-hl:]) for u in split.valid}
    inside = [h for _m, h in seen if h not in after_train | after_valid]
    assert seen and not inside, f"{len(inside)} of {len(seen)} candidate requests for states inside the train part"
    assert after_valid <= {h for _m, h in seen}  # the test lists used them
    assert len(trained) == 2 and len(valid_events) == len(split.valid) > 0
    validation_lists = {m for m, h in seen if h in after_train and h not in after_valid}
    assert len(validation_lists) == 1 and not trained[validation_lists.pop()] & valid_events  # out of sample
    assert valid_events <= trained[seen[-1][0]]  # the test lists, made last, after a refresh that saw them


def test_loo_validation_events_label_lists_made_after_the_train_part(tmp_path, monkeypatch):
    """The ranker learns on each user's validation event from a list made as that user's test list is: with the
    models of the whole train part (not the list made years earlier, after the user's previous event), online
    models only as with the batch models."""
    from models.loo import leave_one_out
    from online.recommender import OnlineRecommender

    learned: dict[int, int] = collections.Counter()  # per recommender: events learned so far
    per_user: dict[tuple[int, str], int] = collections.Counter()  # (recommender, user) -> their events learned
    listed: dict[tuple[int, str], int] = {}  # (recommender, user) -> events learned when their newest list was made
    at_validation: list[int] = []
    recommend_many, learn_one = OnlineRecommender.recommend_many, OnlineRecommender.learn_one

    def spy_recommend(self, users, *args, **kwargs):
        for user in users:
            listed[id(self), user] = learned[id(self)]
        return recommend_many(self, users, *args, **kwargs)

    def spy_learn(self, user, item, ts, history):
        per_user[id(self), user] += 1
        if user in split.valid and per_user[id(self), user] == len(split.train[user]) + 1:
            at_validation.append(listed.get((id(self), user), -1))
        learned[id(self)] += 1
        return learn_one(self, user, item, ts, history)

    data = _csv(tmp_path / "d.csv", 600)
    rows = [line.split(",") for line in data.read_text().splitlines()[1:]]
    split = leave_one_out([(u, i, float(ts)) for u, i, ts in rows])
    n_train = len(rows) - len(split.test) - len(split.valid)
    monkeypatch.setattr(OnlineRecommender, "recommend_many", spy_recommend)
    monkeypatch.setattr(OnlineRecommender, "learn_one", spy_learn)
    assert run_evaluate(SETTINGS, _args(data, tmp_path / "loo", mode="loo", strengths="0")) == 0
    assert len(at_validation) == len(split.valid) > 0
    assert set(at_validation) == {n_train}


def test_loo_each_users_last_two_events_are_learned_in_seeded_shuffled_bursts(tmp_path, monkeypatch):
    """The validation lists are made as the test lists are: the online models learn every user's last train event
    in one burst after the rest of the train part, as they learn the validation events in one burst before the
    test lists. Both lists are all made at one model time, so each burst is a shuffle of the stream's order, the
    same in every row (the ablations learn what the served row learns) and at every run of a seed."""
    from models.loo import leave_one_out
    from online.recommender import OnlineRecommender

    per_user: dict[tuple[int, str], int] = collections.Counter()
    order: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)  # per recommender: (kind, user) learned
    learn_one = OnlineRecommender.learn_one

    def kind(user: str, count: int) -> str:
        if user not in split.valid or count < len(split.train[user]):
            return "train"
        return "last train" if count == len(split.train[user]) else "valid"

    def spy_learn(self, user, item, ts, history):
        per_user[id(self), user] += 1
        order[id(self)].append((kind(user, per_user[id(self), user]), user))
        return learn_one(self, user, item, ts, history)

    data = _csv(tmp_path / "d.csv", 600)
    rows = [line.split(",") for line in data.read_text().splitlines()[1:]]
    split = leave_one_out([(u, i, float(ts)) for u, i, ts in rows])
    count: collections.Counter = collections.Counter()
    in_stream_order = collections.defaultdict(list)  # kind -> users, in the order of those events in the stream
    for u, _i, _ts in rows:
        count[u] += 1
        if u in split.valid and count[u] <= len(split.train[u]) + 1:
            in_stream_order[kind(u, count[u])].append(u)
    monkeypatch.setattr(OnlineRecommender, "learn_one", spy_learn)
    runs = []
    for out in ("a", "b"):
        order.clear()
        per_user.clear()
        args = _args(data, tmp_path / out, mode="loo", strengths="0")
        args.ablate = True
        assert run_evaluate(SETTINGS, args) == 0
        assert len(order) > 1 and len({tuple(o) for o in order.values()}) == 1  # every row learns in one order
        learned = next(iter(order.values()))
        kinds = [k for k, _u in learned]
        n_train, n_last = kinds.count("train"), kinds.count("last train")
        assert kinds == ["train"] * n_train + ["last train"] * n_last + ["valid"] * len(split.valid)  # two bursts
        bursts = {k: [u for kk, u in learned if kk == k] for k in ("last train", "valid")}
        for k, users in bursts.items():
            assert sorted(users) == sorted(in_stream_order[k]) and users != in_stream_order[k]
        runs.append(bursts)
    assert runs[0] == runs[1]


def test_loo_ablation_rows_switch_one_source_off_each(tmp_path, monkeypatch):
    from online.recommender import OnlineRecommender

    offs = []
    blend = OnlineRecommender._blend_many

    def spy(self, users, appetites, counts, configs, all_lists, *args, **kwargs):
        out = blend(self, users, appetites, counts, configs, all_lists, *args, **kwargs)
        offs.append((self.off, {entry[0] for lists in all_lists for entry in lists if entry[1].size},
                     {c.source for shown in out for c in shown}))
        return out

    monkeypatch.setattr(OnlineRecommender, "_blend_many", spy)
    out = tmp_path / "loo"
    args = _args(_csv(tmp_path / "d.csv", 600), out, mode="loo", strengths="0", train_transformer=2, train_vae=2)
    args.ablate = True
    assert run_evaluate(SETTINGS, args) == 0
    report = json.loads((out / "report.json").read_text())
    ablated = {name.split(" no ")[1] for name in report if name.startswith("tailcast[s=0.00] no ")}
    assert ablated == {"popularity", "covisit", "transitions", "last", "mf", "content", "fresh", "transformer", "VAE"}
    assert {frozenset({s}) for s in ablated - {"VAE"}} <= {off for off, _, _ in offs}
    # a switched-off source is still proposed (its model still learns) but credited in no list
    assert all(not off & credited for off, _, credited in offs)
    for source in ("covisit", "transformer"):
        assert any(off == {source} and source in proposed for off, proposed, _ in offs)
    assert any(not off and "covisit" in credited for off, _, credited in offs)  # which the served lists credit
    md = (out / "report.md").read_text()
    assert "tailcast without any one source (9 measured" in md and "no covisit " in md.split("paired per-user")[1]
    # then each masked in the served ranker: its lists re-made with the source off, the ranker not retrained
    masked = md.split("masked in tailcast[s=0.00]'s ranker")[1].split("\n")[0]
    assert all(f"no {source} " in masked for source in ablated)
    assert {frozenset({s}) for s in ablated - {"VAE"}} | {frozenset({"vae"})} <= {off for off, _, _ in offs}


def test_offline_transformer_trained_on_augmented_sequences(tmp_path):
    out = tmp_path / "aug"
    args = _args(_csv(tmp_path / "d.csv", 600), out, strengths="0", boosts="", train_transformer=2, train_vae=2,
                 augment_cap=2)
    assert run_evaluate(SETTINGS, args) == 0
    assert "Transformer" in json.loads((out / "report.json").read_text())
    assert "augmented from the Mult-VAE trained with it: up to 2 items" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="--train-vae"):
        run_evaluate(SETTINGS, _args(tmp_path / "d.csv", tmp_path / "x", train_transformer=2, augment_cap=2))


def test_item_text_vectors_are_cached_between_runs_and_keyed_by_the_texts(tmp_path, monkeypatch):
    from streams import evaluate as ev

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    settings = load_settings({"TAILCAST_TEXT_ENCODER": "hashing"})
    lines: list[str] = []
    texts = {"i1": "Golden jazz. jazz, piano", "i2": "Red metal. metal, riff"}
    ids, first = ev.item_text_vectors(settings, texts, lines.append)
    assert ids == ["i1", "i2"] and "encoded 2 item texts" in lines[-1]
    assert len(list((tmp_path / "tailcast" / "text-vectors").glob("*.npy"))) == 1
    ids, again = ev.item_text_vectors(settings, texts, lines.append)
    assert "read from" in lines[-1] and (again == first).all()
    ev.item_text_vectors(settings, {**texts, "i2": "Red doom. metal, doom"}, lines.append)  # a changed text
    assert "encoded 2 item texts" in lines[-1]
    assert len(list((tmp_path / "tailcast" / "text-vectors").glob("*.npy"))) == 2


class _Recording(FixedLists):
    """A fixed-list recommender that records which users it learned events of, and which it served."""

    def __init__(self) -> None:
        super().__init__(["a", "b"])
        self.users: set[str] = set()
        self.served: set[str] = set()

    def learn_one(self, user, item, ts, history) -> None:
        self.users.add(user)

    def recommend(self, user, history, user_event_count, *, arm, extra=None):
        self.served.add(user)
        return super().recommend(user, history, user_event_count, arm=arm, extra=extra)


def test_partitioned_scorers_serve_each_user_from_the_scorer_of_its_partition_and_all_learn_every_user(
        synthetic_stream):
    from streams.evaluation.harness import PartitionedCores, micro_batches
    from streams.topics import partition_for

    cores = [ScorerCore(recommender=_Recording(), arms=ArmAssigner({"x": 1.0}), k=10) for _ in range(2)]
    partitioned = PartitionedCores(cores, SETTINGS.kafka.partitions)
    listed = set()
    for _start, _end, requests in micro_batches(synthetic_stream.events, SETTINGS, 16):
        listed |= {r.user_id for r in partitioned.process(requests).recommendations}
    users = set(synthetic_stream.final_counts)
    assert listed == users and cores[0].recommender.users == cores[1].recommender.users == users
    for n, core in enumerate(cores):
        served = core.recommender.served
        assert served and all(partition_for(u.encode(), SETTINGS.kafka.partitions) % 2 == n for u in served)
    with pytest.raises(ValueError, match="5 scorers for 4 partitions"):
        PartitionedCores([cores[0]] * 5, 4)


def test_offline_run_with_several_scorers_learns_and_scores_every_event_once(synthetic_stream):
    specs = [SystemSpec("tailcast", 0.0), SystemSpec("mostpop")]
    res = run_offline(synthetic_stream, specs, SETTINGS, batch=32, progress_every=0, scorers=2)
    n = len(synthetic_stream.events)
    for r in res.values():
        assert r.metrics["evaluated"] == n and r.metrics["learned_events"] == n and r.metrics["unattributed"] == 0


def test_loo_scores_a_batch_model_through_its_own_vocabulary():
    """The leave-one-out rows score a trained model whose vocabulary orders (and lacks) items differently
    from the split's index: histories go through its vocabulary, scores come back by item; an item it does
    not know scores -inf."""
    import torch

    from models.vocab import ItemVocab
    from streams.evaluation.loo import _in_index

    class Model:  # scores each vocabulary row by its index, and records the histories it was given
        vocab = ItemVocab.from_ids(["c", "a", "b"])
        max_len, device, vae, seen = 50, "cpu", None, []

        def score_encoded(self, seqs):
            self.seen.append(seqs.tolist())
            return torch.arange(4, dtype=torch.float32).repeat(len(seqs), 1)

    index = {"a": 1, "b": 2, "d": 3, "c": 4}
    model = Model()
    out = _in_index(model, index)([[1, 3], [4]])
    assert out.shape == (2, 5) and model.seen == [[[2], [1]]]   # "d" is unknown: dropped from the history
    assert out[0].tolist() == [-np.inf, 2.0, 3.0, -np.inf, 1.0]  # by index: a, b, d (unknown), c
