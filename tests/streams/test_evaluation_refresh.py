"""``tailcast evaluate --refresh-every N``: batch models evaluated as deployed (docs/design.md §5).

The model is retrained at each refresh point on the events before it only, swapped into every system that
serves it between micro-batches and followed by ``rescore_active``; the frozen mode is unchanged; the
report has the online-only rows and the docs/design.md §7 check. Small synthetic data only (never /work/shared)."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from online.synthetic import generate
from streams.config import load_settings
from streams.datasets import Event
from streams.evaluate import add_arguments, run_evaluate
from streams.evaluation.harness import SystemResult, micro_batches, prepare_events, run_offline
from streams.evaluation.report import paired_difference, tradeoff_verdicts, write_report
from streams.evaluation.systems import MODEL_KINDS, SystemSpec, default_systems

SETTINGS = load_settings({"TAILCAST_TEXT_ENCODER": "hashing"})
ALL_KINDS = ("tailcast", "tailcast-novae", "tailcast-online", "transformer", "vae", "mostpop")


class FakeModel:
    """A batch model whose lists are the same items in the same order for everyone; ``version`` names it."""

    def __init__(self, version: str, items: list[str], *, vae: bool = True) -> None:
        self.version = version
        self.items = items
        self.vocab = set(items)
        self.vae = object() if vae else None

    def candidates(self, histories, k, exclude):
        lists = [[(i, 1.0 / (n + 1)) for n, i in enumerate(self.items) if i not in ex][:k] for ex in exclude]
        out = {"transformer": lists}
        if self.vae is not None:
            out["vae"] = [list(reversed(lst)) for lst in lists]
        return out

    def without_vae(self) -> FakeModel:
        other = copy.copy(self)
        other.vae = None
        return other


class RecordingRefresher:
    """Records the events each refresh is given (and where it happened in the stream of published lists)."""

    def __init__(self, items: list[str], log: list) -> None:
        self.items = items
        self.log = log
        self.trained_on: list[list[Event]] = []

    def __call__(self, events):
        self.trained_on.append(list(events))
        version = f"refresh-{len(events)}ev"
        self.log.append(("refresh", version))
        return FakeModel(version, self.items)


@pytest.fixture(scope="module")
def stream():
    data = generate(n_users=40, n_items=60, n_events=400, seed=7)
    return prepare_events([Event(ts, u, i, e) for ts, u, i, e in data.events])


def _specs() -> list[SystemSpec]:
    return default_systems([0.0], [], transformer=True, vae=True)


def _replay_with_refresh(stream, *, batch: int, every: int):
    log: list = []
    items = sorted({e.item for e in stream.events})[:30]
    refresher = RecordingRefresher(items, log)
    refreshes: list = []
    res = run_offline(stream, _specs(), SETTINGS, batch=batch, progress_every=0,
                      lists_sink=lambda rec: log.append(("list", rec)), sink_kinds=ALL_KINDS,
                      refresh_every=every, refresher=refresher, refreshes=refreshes, log=lambda line: None)
    return res, refresher, refreshes, log


@pytest.mark.parametrize("batch,points", [(1, [100, 200, 300]), (32, [128, 224, 320])])
def test_model_is_trained_on_the_events_before_each_refresh_point_only(stream, batch, points):
    res, refresher, refreshes, _log = _replay_with_refresh(stream, batch=batch, every=100)
    # batch 1: exactly at N, 2N, 3N; batch 32: at the first micro-batch boundary at or after each
    assert [len(ev) for ev in refresher.trained_on] == points
    assert [r.at for r in refreshes] == points
    for at, ev in zip(points, refresher.trained_on):
        assert ev == stream.events[:at]       # all events so far, none at or after the swap point
    for name, r in res.items():
        if r.kind in MODEL_KINDS:
            assert r.metrics["model_refreshes"] == 3, name
            assert r.metrics["rescored_lists"] > 0, name
        else:
            assert "model_refreshes" not in r.metrics, name
        assert r.metrics["evaluated"] == len(stream.events)


def test_every_model_system_serves_the_new_model_from_its_swap_on(stream):
    _res, _refresher, refreshes, log = _replay_with_refresh(stream, batch=1, every=100)
    names = {s.name: s.kind for s in _specs()}
    serving = "before"
    swapped: dict[str, set[str]] = {}
    for entry in log:
        if entry[0] == "refresh":
            serving = entry[1]
            continue
        rec = entry[1]
        kind = names[rec.arm]
        if kind in MODEL_KINDS:
            # before the first refresh: the online version; after refresh k: exactly model k
            if serving == "before":
                assert not rec.model_version.startswith("refresh-"), rec
            else:
                assert rec.model_version == serving, (rec.arm, rec.model_version, serving)
                swapped.setdefault(serving, set()).add(rec.arm)
        else:  # the online-only rows and the baselines never get a batch model
            assert not rec.model_version.startswith("refresh-"), rec
    assert set(swapped) == {r.version for r in refreshes}
    model_rows = {n for n, k in names.items() if k in MODEL_KINDS}
    assert all(arms == model_rows for arms in swapped.values())


def test_rescore_after_a_swap_publishes_lists_for_the_active_users(stream):
    _res, _refresher, refreshes, log = _replay_with_refresh(stream, batch=1, every=100)
    first = log.index(("refresh", refreshes[0].version))
    n = sum(refreshes[0].rescored.values())
    rescored = [e[1] for e in log[first + 1: first + 1 + n] if e[1].arm == "Transformer"]
    assert len(rescored) == refreshes[0].rescored["Transformer"]
    # the lists right after the swap re-score every user active before it, at the count they had
    counts: dict[str, int] = {}
    for entry in log[:first]:
        if entry[0] == "list" and entry[1].arm == "Transformer":
            counts[entry[1].user_id] = entry[1].user_event_count
    assert {r.user_id: r.user_event_count for r in rescored} == counts
    assert all(r.model_version == refreshes[0].version for r in rescored)


def test_without_a_refresh_the_frozen_replay_is_unchanged(stream):
    items = sorted({e.item for e in stream.events})[:30]
    frozen = FakeModel("frozen", items)
    specs = _specs()
    plain = run_offline(stream, specs, SETTINGS, batch=16, progress_every=0, model=frozen)
    # a refresh schedule that never fires leaves every result as it was
    inert = run_offline(stream, specs, SETTINGS, batch=16, progress_every=0, model=frozen,
                        refresh_every=10 * len(stream.events), refresher=RecordingRefresher(items, []))
    drop = {"scorer_seconds", "model_refreshes", "rescored_lists"}
    for name, r in plain.items():
        assert {k: v for k, v in r.metrics.items() if k not in drop} == \
            {k: v for k, v in inert[name].metrics.items() if k not in drop}, name
        assert "model_refreshes" not in r.metrics


def test_online_only_rows_differ_from_the_batch_model_rows_after_the_first_refresh(stream):
    res, *_ = _replay_with_refresh(stream, batch=1, every=100)
    assert {"tailcast[s=0.00]", "tailcast[s=0.00] no VAE", "tailcast[s=0.00] online only", "Transformer",
            "Mult-VAE"} <= set(res)
    assert res["tailcast[s=0.00] online only"].kind == "tailcast-online"
    # the same recommender before the first refresh, and only the batch model differs after it
    assert res["tailcast[s=0.00]"].metrics["ndcg"] != res["tailcast[s=0.00] online only"].metrics["ndcg"]
    for r in res.values():  # the per-event gains are the reported NDCG@10, event by event
        assert np.nanmean(r.gains) == pytest.approx(r.metrics["ndcg"], rel=1e-9)
        assert np.count_nonzero(~np.isnan(r.gains)) == r.metrics["evaluated"]
    v = tradeoff_verdicts(res)["batch_models"]["tailcast[s=0.00]"]
    both, online = res["tailcast[s=0.00]"].gains, res["tailcast[s=0.00] online only"].gains
    assert v["paired_diff"] == pytest.approx(np.nanmean(both - online)) and v["paired_se"] > 0
    assert v["paired_events"] == len(stream.events)


def test_paired_difference_is_the_mean_and_standard_error_of_per_event_differences():
    a, b = np.array([1.0, 0.5, np.nan, 0.0, 1.0]), np.array([0.0, 0.5, 1.0, 0.0, np.nan])
    d = paired_difference(a, b)  # events 0, 1, 3: differences 1, 0, 0
    assert d["paired_events"] == 3 and d["paired_diff"] == pytest.approx(1 / 3)
    assert d["paired_se"] == pytest.approx(np.std([1.0, 0.0, 0.0], ddof=1) / np.sqrt(3))
    assert paired_difference(a, None) == {} and paired_difference(a[:1], b[:1]) == {}


def test_harness_rejects_a_half_given_refresh(stream):
    with pytest.raises(ValueError, match="refresh_every"):
        run_offline(stream, _specs(), SETTINGS, refresh_every=100)


def test_micro_batches_honour_the_worker_consumed_settings(stream):
    events = stream.events[:50]
    full = [r for _s, _e, reqs in micro_batches(events, SETTINGS, 10) for r in reqs]
    assert any(r.consumed for r in full)
    recent = load_settings({"TAILCAST_TEXT_ENCODER": "hashing", "TAILCAST_EXCLUDE_CONSUMED": "recent"})
    assert all(r.consumed == b"" for _s, _e, reqs in micro_batches(events, recent, 10) for r in reqs)
    capped = load_settings({"TAILCAST_TEXT_ENCODER": "hashing", "TAILCAST_CONSUMED_MAX": "2"})
    longest = max(len(r.consumed) for _s, _e, reqs in micro_batches(events, capped, 10) for r in reqs)
    assert longest <= 4 * (2 + 2 // 8)   # 4-byte hashes, compacted past the cap by an eighth


def _result(name, kind, param, ndcg):
    return SystemResult(name, kind, param, {"hr": ndcg, "ndcg": ndcg, "tail_share": 0.1, "tail_hr": 0.1,
                                            "hr_by_bucket": {"<=5": 0.1}, "consumed_share": 0.0}, [], [])


def test_report_checks_that_the_batch_models_add_accuracy(tmp_path):
    res = {"tailcast[s=0.00]": _result("tailcast[s=0.00]", "tailcast", 0.0, 0.12),
           "tailcast[s=0.50]": _result("tailcast[s=0.50]", "tailcast", 0.5, 0.09),
           "tailcast[s=0.00] online only": _result("tailcast[s=0.00] online only", "tailcast-online", 0.0, 0.10),
           "tailcast[s=0.50] online only": _result("tailcast[s=0.50] online only", "tailcast-online", 0.5, 0.10),
           "ItemCF": _result("ItemCF", "itemcf", None, 0.08)}
    v = tradeoff_verdicts(res)["batch_models"]
    assert v["tailcast[s=0.00]"]["meets"] and v["tailcast[s=0.00]"]["ratio"] == pytest.approx(1.2)
    assert not v["tailcast[s=0.50]"]["meets"]
    assert "tailcast[s=0.00] online only" not in tradeoff_verdicts(res)["quality"]   # not a single system
    write_report(tmp_path, res, command="test", title="t", plots=False,
                 meta={"batch_models": "refreshed every 100 events (as deployed)"})
    md = (tmp_path / "report.md").read_text()
    assert ("- the batch models add accuracy (batch models refreshed every 100 events (as deployed)): "
            "tailcast[s=0.00] NDCG@10 0.1200 > tailcast[s=0.00] online only 0.1000 (ratio 1.200): **yes**") in md
    assert ("tailcast[s=0.50] NDCG@10 0.0900 <= tailcast[s=0.50] online only 0.1000 (ratio 0.900): **no**") in md


def _csv(path: Path, n_events: int = 600) -> Path:
    data = generate(n_users=50, n_items=80, n_events=n_events, seed=5)
    path.write_text("\n".join(["user_id,item_id,ts"] + [f"{u},{i},{ts}" for ts, u, i, _e in data.events]) + "\n")
    return path


def _args(dataset: Path, out: Path, *extra: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p, base=True)
    args = p.parse_args(["--dataset", str(dataset), "--out", str(out), "--mode", "offline", "--strengths", "0",
                         "--boosts", "", "--batch", "16", "--chunks", "2", "--workers", "1", *extra])
    args.command_line = "tailcast evaluate (test)"
    return args


def test_evaluate_refresh_every_end_to_end(tmp_path):
    out = tmp_path / "refresh"
    args = _args(_csv(tmp_path / "d.csv"), out, "--train-transformer", "1", "--train-vae", "1",
                 "--refresh-every", "250")
    assert run_evaluate(SETTINGS, args) == 0
    report = json.loads((out / "report.json").read_text())
    assert {"tailcast[s=0.00]", "tailcast[s=0.00] no VAE", "tailcast[s=0.00] online only", "Transformer",
            "Mult-VAE", "CoVisit-raw"} <= set(report)
    assert all(m["evaluated"] == 600 for m in report.values())     # no warm-up by default in this mode
    assert report["Transformer"]["model_refreshes"] == 2
    run = json.loads((out / "run.json").read_text())
    assert run["batch_models"] == "refreshed every 250 events (as deployed)"
    assert [(r["at"], r["events"], r["variant"]) for r in run["refreshes"]] == [(256, 256, "ids"), (512, 512, "ids")]
    assert "batch_models" in run["verdicts"]
    md = (out / "report.md").read_text()
    assert "batch models AS DEPLOYED (--refresh-every 250)" in md
    assert "- the batch models add accuracy (batch models refreshed every 250 events (as deployed)): " in md
    assert "paired per-event difference" in md and "600 events" in md
    assert "refresh at event 512: refresh-512ev on 512 events" in md and "the ids encoder kept" in md


def test_refresh_every_needs_a_training_budget_and_offline_mode(tmp_path):
    data = _csv(tmp_path / "d.csv", 200)
    with pytest.raises(SystemExit, match="--train-transformer"):
        run_evaluate(SETTINGS, _args(data, tmp_path / "a", "--refresh-every", "100"))
    with pytest.raises(SystemExit, match="--mode offline"):
        args = _args(data, tmp_path / "b", "--refresh-every", "100", "--train-transformer", "1")
        args.mode = "loo"
        run_evaluate(SETTINGS, args)


def test_a_refresh_trains_as_the_trainer_and_names_catalogue_items_through_their_text():
    """With item texts, each refresh trains an ids-only and a text encoder from scratch (``fit_refresh``, the
    trainer's function) and keeps the better; a text encoder's vocabulary holds catalogue items that have no
    event yet. Without texts: ids only."""
    from streams.evaluation.transformer import Refresher

    data = generate(n_users=30, n_items=50, n_events=400, seed=2)
    events = [Event(ts, u, i, e) for ts, u, i, e in data.events]
    rng = np.random.default_rng(0)
    catalogue = {f"i{i}": rng.normal(size=8).astype(np.float32) for i in range(50)}
    seen = {e.item for e in events[:150]}
    lines: list[str] = []
    with_text = Refresher(seconds=0.2, seed=0, device="cpu", text_vectors=catalogue, log_line=lines.append)
    first = with_text(events[:150])
    assert set(with_text.history[0]["variants_valid_ndcg"]) == {"ids", "text"}
    kept = with_text.history[0]["variant"]
    assert set(first.vocab.ids) == (set(catalogue) | seen if kept == "text" else seen)
    assert first.version == "refresh-150ev" and any(f"kept the {kept} encoder" in line for line in lines)
    ids_only = Refresher(seconds=0.2, seed=0, device="cpu", log_line=lines.append)
    model = ids_only(events)
    assert [h["variant"] for h in ids_only.history] == ["ids"] and set(model.vocab.ids) == {e.item for e in events}
    with pytest.raises(ValueError, match="vae_seconds"):
        Refresher(seconds=1, augment_cap=2)


def test_strengths_of_one_kind_share_one_replay_and_publish_what_separate_replays_would():
    """tailcast at several strengths is replayed once (the followers' lists are the primary's candidates
    re-ranked): every list and every metric equals that of a replay per system, refreshes included. The
    stream is long enough for a head refresh (every 1,000 events), so that the strengths really re-rank."""
    data = generate(n_users=40, n_items=60, n_events=1200, seed=7)
    stream = prepare_events([Event(ts, u, i, e) for ts, u, i, e in data.events])
    specs = [SystemSpec("tailcast", s) for s in (0.0, 0.5, 1.0)] + \
        [SystemSpec("tailcast-online", s) for s in (0.0, 1.0)]
    items = sorted({e.item for e in stream.events})[:30]

    def replay(chosen):
        lists: list = []
        res = run_offline(stream, chosen, SETTINGS, batch=1, progress_every=0, lists_sink=lists.append,
                          sink_kinds=ALL_KINDS, refresh_every=400, refresher=RecordingRefresher(items, []),
                          log=lambda line: None)
        return res, lists

    def key(rec):
        return (rec.user_id, rec.user_event_count, rec.list_id, rec.refresh, rec.model_version,
                [(i.item_id, i.score, i.source, i.reason) for i in rec.items])

    together, together_lists = replay(specs)
    for spec in specs:
        alone, alone_lists = replay([spec])
        mine = [key(r) for r in together_lists if r.arm == spec.name]
        assert mine == [key(r) for r in alone_lists], spec.name
        a, b = alone[spec.name].metrics, together[spec.name].metrics
        assert {m: v for m, v in a.items() if m != "scorer_seconds"} == \
            {m: v for m, v in b.items() if m != "scorer_seconds"}, spec.name
    by_arm = {s.name: [key(r)[5] for r in together_lists if r.arm == s.name] for s in specs[:3]}
    assert by_arm[specs[0].name] != by_arm[specs[2].name]  # the strengths really re-rank
