"""Which source the served lists credit, and how often those slots are the user's next item.

    python benchmarks/credited_sources.py --run out/refresh-ml --dataset $DATA/ml-latest-small [--limit N]

Reads the ``recommendations.jsonl`` of a ``tailcast evaluate --mode offline`` run and the dataset it ran on,
pairs each event with the user's latest list made before it (``user_event_count`` at most the user's events
before it: the evaluation's fresh pairing) and counts, per arm and per credited source (each slot's
``source``, the ranker's gradient x input attribution), the top-k slots and the slots that held the paired
event's item. A source whose slots hit less often than the list's other slots is one the ranker trusts more
than it earns. Prints one JSON object: ``{arm: {source: {"slots", "hits", "hit_rate", "share"}}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.datasets import load_dataset, synthetic_dataset  # noqa: E402


def credited(lists: Iterable[dict], events: Sequence[tuple[str, str]], k: int = 10) -> dict[str, dict]:
    """Per arm and credited source: top-``k`` slots, hits, hit rate and share of the arm's slots, over the
    ``events`` (user, item) in stream order, each paired with its user's latest list from before it.

    >>> lists = [{"arm": "a", "user_id": "u", "user_event_count": 1,
    ...           "items": [{"item_id": "x", "source": "mf"}, {"item_id": "y", "source": "covisit"}]}]
    >>> credited(lists, [("u", "x"), ("u", "y")])["a"]["covisit"]
    {'slots': 1, 'hits': 1, 'hit_rate': 1.0, 'share': 0.5}
    """
    by_key: dict[str, dict[tuple[str, int], list[tuple[str, str]]]] = {}
    for rec in lists:  # a later list for the same (user, count) replaces the earlier (a re-score after a swap)
        slots = [(i["item_id"], i["source"]) for i in rec["items"][:k]]
        by_key.setdefault(rec["arm"], {})[(rec["user_id"], int(rec["user_event_count"]))] = slots
    out: dict[str, dict] = {}
    for arm, lists_of in by_key.items():
        latest: dict[str, list[tuple[str, str]]] = {}
        seen: Counter[str] = Counter()
        slots: Counter[str] = Counter()
        hits: Counter[str] = Counter()
        for user, item in events:
            shown = latest.get(user)  # the list made after the user's previous event, or an older one
            if shown is not None:
                for candidate, source in shown:
                    slots[source] += 1
                    hits[source] += candidate == item
            seen[user] += 1
            made = lists_of.get((user, seen[user]))
            if made is not None:
                latest[user] = made
        total = sum(slots.values()) or 1
        out[arm] = {s: {"slots": slots[s], "hits": hits[s], "hit_rate": round(hits[s] / slots[s], 4),
                        "share": round(slots[s] / total, 4)} for s in sorted(slots)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the evaluation's --out folder (recommendations.jsonl)")
    p.add_argument("--dataset", required=True, help="the dataset it ran on: a folder, or 'synthetic'")
    p.add_argument("--limit", type=int, default=None, help="the evaluation's --limit")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    if args.dataset == "synthetic":
        dataset = synthetic_dataset(limit=args.limit)
    else:
        dataset = load_dataset(args.dataset, limit=args.limit)
    with open(Path(args.run) / "recommendations.jsonl") as f:
        lists = (json.loads(line) for line in f)
        print(json.dumps(credited(lists, [(e.user, e.item) for e in dataset.events], args.k)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
