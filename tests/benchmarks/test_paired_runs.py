"""benchmarks/paired_runs.py: two runs' lists scored on the same events, and their paired difference."""

from __future__ import annotations

import json
import math

from benchmarks.paired_runs import event_ndcg, main


def _list(user, count, *items, arm="a"):
    return {"arm": arm, "user_id": user, "user_event_count": count, "items": [{"item_id": i} for i in items]}


def test_each_event_is_scored_against_its_users_latest_list_of_the_arm():
    lists = [_list("u", 1, "x", "y"), _list("u", 1, "z", "x"),  # a re-score of the same list replaces it
             _list("u", 1, "x", arm="b"), _list("v", 1, "q")]
    events = [("u", "x"), ("v", "q"), ("u", "x"), ("v", "q"), ("u", "x")]
    # u: no list before its 1st event, then the re-scored list (x at rank 2) for the 2nd and 3rd; v: q at rank 1
    assert event_ndcg(lists, events, "a").tolist() == [0.0, 0.0, 1 / math.log2(3), 1.0, 1 / math.log2(3)]
    assert event_ndcg(lists, events, "a", k=1).tolist() == [0.0, 0.0, 0.0, 1.0, 0.0]


def test_main_prints_both_runs_and_the_paired_difference(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("user_id,item_id,ts\nu,x,1\nu,y,2\nv,x,3\nv,y,4\n")
    for name, second in (("before", "z"), ("after", "y")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "recommendations.jsonl").write_text(
            "\n".join(json.dumps(_list(user, 1, second, arm="tailcast[s=0.00]")) for user in ("u", "v")) + "\n")
    assert main(["--before", str(tmp_path / "before"), "--after", str(tmp_path / "after"),
                 "--dataset", str(data)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["before_ndcg"] == 0.0 and out["after_ndcg"] == 0.5  # the 2nd event of each user: y first
    assert out["paired_diff"] == 0.5 and out["paired_events"] == 4
