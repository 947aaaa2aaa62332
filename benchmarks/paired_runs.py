"""Two evaluation runs of one stream, compared event by event: NDCG@10 of each and the paired difference.

    python benchmarks/paired_runs.py --before out/a --after out/b --dataset $DATA/ml-latest-small [--limit N]
                                     [--arm 'tailcast[s=0.00]']

Reads each run's ``recommendations.jsonl`` (``tailcast evaluate --mode offline``, fresh pairing) and the dataset
it ran on, scores every event against its user's latest list from before it (as the report does: no list is a
miss) and prints one JSON object: each run's NDCG@10 and the mean per-event difference ``after - before`` with
its standard error (:func:`streams.evaluation.report.paired_difference`). Two versions of the code, or two
``--seed`` values, replayed on the same stream share each event's difficulty, so a small gap is judged against
its own noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.datasets import load_dataset, synthetic_dataset  # noqa: E402
from streams.evaluation.report import paired_difference  # noqa: E402


def event_ndcg(lists: Iterable[dict], events: Sequence[tuple[str, str]], arm: str, k: int = 10) -> np.ndarray:
    """NDCG@``k`` of each (user, item) event in stream order against the user's latest list of ``arm`` made
    before it (0 without one).

    >>> lists = [{"arm": "a", "user_id": "u", "user_event_count": 1, "items": [{"item_id": "x"}, {"item_id": "y"}]}]
    >>> event_ndcg(lists, [("u", "z"), ("u", "y"), ("u", "q")], "a").round(4).tolist()
    [0.0, 0.6309, 0.0]
    """
    made: dict[tuple[str, int], list[str]] = {}
    for rec in lists:  # a later list for the same (user, count) replaces the earlier (a re-score after a swap)
        if rec["arm"] == arm:
            made[(rec["user_id"], int(rec["user_event_count"]))] = [i["item_id"] for i in rec["items"][:k]]
    latest: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    out = np.zeros(len(events))
    for n, (user, item) in enumerate(events):
        shown = latest.get(user)
        if shown is not None and item in shown:
            out[n] = 1.0 / math.log2(shown.index(item) + 2)
        seen[user] += 1
        new = made.get((user, seen[user]))
        if new is not None:
            latest[user] = new
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the first run's --out folder (recommendations.jsonl)")
    p.add_argument("--after", required=True, help="the second run's --out folder")
    p.add_argument("--dataset", required=True, help="the dataset both ran on: a folder, or 'synthetic'")
    p.add_argument("--limit", type=int, default=None, help="the runs' --limit")
    p.add_argument("--arm", default="tailcast[s=0.00]", help="the system compared (its lists' arm)")
    args = p.parse_args(argv)
    dataset = synthetic_dataset(limit=args.limit) if args.dataset == "synthetic" else \
        load_dataset(args.dataset, limit=args.limit)
    events = [(e.user, e.item) for e in dataset.events]
    gains = {}
    for side in ("before", "after"):
        with open(Path(getattr(args, side)) / "recommendations.jsonl") as f:
            gains[side] = event_ndcg((json.loads(line) for line in f), events, args.arm)
    diff = paired_difference(gains["after"], gains["before"])
    print(json.dumps({"before_ndcg": round(float(gains["before"].mean()), 5),
                      "after_ndcg": round(float(gains["after"].mean()), 5),
                      **{k: round(v, 6) if isinstance(v, float) else v for k, v in diff.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
