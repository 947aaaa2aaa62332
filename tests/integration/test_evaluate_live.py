"""``tailcast evaluate --mode live`` end to end: embedded broker, worker and scorer processes, a replayed CSV."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import orjson
import pytest

from online.synthetic import generate
from streams.config import load_settings
from streams.evaluate import add_arguments, run_evaluate

pytestmark = pytest.mark.integration  # under pyproject's 300 s wall limit: it waits on the lists, not on a clock

CONTRACT = {"user_id", "items", "user_event_count", "model_version", "arm", "event_ts", "generated_at"}


def test_live_evaluation_scores_every_event_once(tmp_path, monkeypatch):
    data = generate(n_users=120, n_items=200, n_events=1500, seed=7)
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,ts\n" + "".join(f"{u},{i},{ts}\n" for ts, u, i, _e in data.events))
    for key in [k for k in os.environ if k.startswith("TAILCAST_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TAILCAST_TEXT_ENCODER", "hashing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = load_settings()
    out = tmp_path / "out"
    p = add_arguments(argparse.ArgumentParser(), base=True)
    args = p.parse_args(["--dataset", str(csv), "--out", str(out), "--mode", "live", "--rate", "3000",
                         "--timeout", "45", "--strengths", "0", "--boosts", "", "--batch", "64",
                         "--workdir", str(tmp_path / "work")])
    assert run_evaluate(settings, args) == 0

    report = json.loads((out / "report.json").read_text())
    live = {name: m for name, m in report.items() if name.startswith("live ")}
    assert live, report.keys()
    # every event is scored exactly once, in its user's arm
    assert sum(m["evaluated"] for m in live.values()) == 1500
    for m in live.values():
        assert m["exact"] + m["stale"] + m["none"] == m["evaluated"]
        assert m["unattributed"] == 0
    users = Counter(u for _ts, u, _i, _e in data.events)
    assert sum(m["none_first_event"] for m in live.values()) == len(users)
    assert report["MostPop"]["evaluated"] == 1500  # the offline baselines ran on the same stream

    recs = [orjson.loads(line) for line in (out / "recommendations.jsonl").read_text().splitlines()]
    assert recs
    for rec in recs:
        assert CONTRACT <= set(rec)
        assert all({"item_id", "score", "source"} <= set(i) for i in rec["items"])
    latest = {}
    for rec in recs:
        latest[rec["user_id"]] = max(latest.get(rec["user_id"], 0), rec["user_event_count"])
    assert latest == dict(users)  # every user's final state got its list
    run = json.loads((out / "run.json").read_text())
    assert run["live"]["complete"] is True
