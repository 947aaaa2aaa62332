"""Is a whole-history item-to-item CF a stronger simple baseline? Fresh pairing, as `tailcast evaluate` pairs.

The classic item-based CF (Sarwar et al. 2001; Linden et al. 2003): the cosine of two items over the users who
consumed both, ``|U_i & U_j| / sqrt(|U_i| |U_j|)``, from each user's whole history, learned event by event; a user's
list sums the rows of their last ``L`` distinct items (weights 1, or 1, 1/2, 1/3, ... by recency), excluding every
item they consumed. Beside it, the issue's raw transition counter (``CoVisit-raw``: j after h within the last 5
items, forward 1, backward 0.5, the last 5 items weighted 1 / (1 + position)) and MostPop, scored the same way so
that the ratios compare. Each event is scored against the list made right after the user's previous event (users'
first events have none and are left out); ties by popularity, then by first appearance. Dense (items x items)
counts: for catalogues of up to ~20,000 items.

    .venv/bin/python -m benchmarks.history_itemcf --dataset $DATA/ml-latest-small --windows 10,50
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.datasets import load_dataset  # noqa: E402

K = 10
_DISCOUNT = 1.0 / np.log2(np.arange(2, K + 2))
LOOKBACK = 5


def _top(scores: np.ndarray, pop: np.ndarray, consumed: np.ndarray) -> np.ndarray:
    """The top K items by score, then popularity, then index; consumed items never."""
    order = np.lexsort((np.arange(scores.size), -pop, -scores))
    return order[~consumed[order]][:K]


def run(events: list[tuple[int, int]], n_items: int, windows: tuple[int, ...]) -> dict[str, tuple[float, int]]:
    """NDCG@K of each system over the events whose user had a previous list: ``{system: (ndcg, events)}``."""
    co = np.zeros((n_items, n_items), np.float32)  # users who consumed both
    trans = np.zeros((n_items, n_items), np.float32)  # raw transitions
    users_of = np.zeros(n_items, np.float32)
    pop = np.zeros(n_items, np.float32)
    names = ["MostPop", "CoVisit-raw", *(f"ItemCF-history[{w}{r}]" for w in windows for r in ("", ",1/r"))]
    gains: dict[str, list[float]] = {n: [] for n in names}
    seq: dict[int, list[int]] = {}
    distinct: dict[int, list[int]] = {}
    consumed: dict[int, np.ndarray] = {}
    lists: dict[int, dict[str, np.ndarray]] = {}
    for u, j in events:
        for name, top in lists.get(u, {}).items():
            at = np.flatnonzero(top == j)
            gains[name].append(float(_DISCOUNT[at[0]]) if at.size else 0.0)
        s, d, c = seq.setdefault(u, []), distinct.setdefault(u, []), consumed.setdefault(u, np.zeros(n_items, bool))
        if not c[j]:
            if d:
                co[j, d] += 1.0
                co[d, j] += 1.0
            users_of[j] += 1.0
            c[j] = True
            d.append(j)
        for h in s[-LOOKBACK:]:
            trans[h, j] += 1.0
            trans[j, h] += 0.5
        s.append(j)
        pop[j] += 1.0
        raw = sum(trans[h] / (1.0 + p) for p, h in enumerate(reversed(s[-LOOKBACK:])))
        out = {"MostPop": _top(np.zeros(n_items), pop, c), "CoVisit-raw": _top(raw, pop, c)}
        inv = 1.0 / np.sqrt(np.maximum(users_of, 1.0))
        for w in windows:
            recent = np.array(d[-w:][::-1])
            rows = co[recent] * inv[recent, None]
            out[f"ItemCF-history[{w}]"] = _top(rows.sum(axis=0) * inv, pop, c)
            out[f"ItemCF-history[{w},1/r]"] = _top((1.0 / (1.0 + np.arange(recent.size))) @ rows * inv, pop, c)
        lists[u] = out
    return {n: (float(np.mean(g)) if g else float("nan"), len(g)) for n, g in gains.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a dataset path, or synthetic[:USERS,ITEMS,EVENTS[,SEED]]")
    p.add_argument("--limit", type=int, default=None, help="the first N events")
    p.add_argument("--windows", default="10,50", help="last L distinct items a list sums over (comma list)")
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, limit=args.limit)
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    events = [(users.setdefault(e.user, len(users)), items.setdefault(e.item, len(items))) for e in ds.events]
    started = time.perf_counter()
    results = run(events, len(items), tuple(int(w) for w in args.windows.split(",")))
    print(f"{ds.name}: {len(events)} events, {len(users)} users, {len(items)} items "
          f"({time.perf_counter() - started:.0f} s)\n\n| system | NDCG@10 | events scored | ÷ CoVisit-raw |\n|---|---:|---:|---:|")
    base = results["CoVisit-raw"][0]
    for name, (ndcg, n) in results.items():
        print(f"| {name} | {ndcg:.4f} | {n} | {ndcg / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
