"""Online recommender costs (learn_one, recommend) and prequential quality on the synthetic stream.

    python benchmarks/online_recommender.py [--runs 5] [--items 1000,10000] [--quality] [--sweep]
                                            [--serve-events 3000] [--out FILE.json]

**Timing** (per catalogue size, ``online.synthetic.generate(n_users=2000, n_items=N, n_events=50_000)``,
item vectors from ``TagVectoriser(dim=256)`` over titles and tags, arms ``control:0.5:0.0,tail:0.5:0.5``):
the first 40k events are learned (``learn_one`` without pending lists: "learn plain"), then the next
``--serve-events`` events are replayed the way the scorer does it, in micro-batches of 50 events:
``learn_one`` for every event (each labels the list its user was last shown: "learn fb", amortised
over all events, feedback included) then one recommendation per distinct user of the batch, either by
one ``recommend`` call per user ("recommend") or by one ``recommend_many`` call per batch
("recommend_many", when the recommender has it). Each figure is the median over ``--runs`` runs of
the run's mean cost; "p99" is the median over runs of the run's 99th percentile per-user cost.
Times are CPU time of the process (``time.process_time``, BLAS limited to one thread), so that
figures taken on a shared box are comparable; on an idle machine they equal wall time.

**Quality** (``--quality``, 1k items): every event of the stream is first predicted by the list
recommended for the user's previous state (``user_event_count`` = events so far), then learned:
HR@10 / NDCG@10 overall and per arm, tail HR@10 (tail target items), tail share of recommended slots,
coverage (distinct items recommended / distinct items in the stream) and the blender's running AUC.

**Knob sweep** (``--sweep``): the same replay with one arm per run at strength 0, 0.25, 0.5, 0.75, 1.0
through the recommender (tail share, coverage, HR@10, NDCG@10, tail HR@10), and the co-visitation +
``TailBoost`` baseline at the same strengths (when ``online.rerank.TailBoost`` exists).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the scorer gets one core: so does the benchmark

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from online.arms import parse_arms  # noqa: E402
from online.content import TagVectoriser  # noqa: E402
from online.recommender import OnlineRecommender  # noqa: E402
from online.synthetic import generate  # noqa: E402

ARMS = "control:0.5:0.0,tail:0.5:0.5"
_clock = time.process_time
HIST = 50
BATCH = 50
K = 10


def build(data, arms: str = ARMS, **kwargs) -> OnlineRecommender:
    rec = OnlineRecommender.create(arms=parse_arms(arms), content_dim=256, seed=0, **kwargs)
    items = list(data.items)
    tv = TagVectoriser(dim=256)
    rec.content.set_vectors(items, tv.transform_many([data.items[i].title for i in items],
                                                     [data.items[i].tags for i in items]))
    return rec


def stream(data):
    """(user, item, ts, history tuple, user_event_count before the event) in time order."""
    hist: dict[str, list[str]] = {}
    out = []
    for ts, user, item, _kind in data.events:
        h = hist.setdefault(user, [])
        out.append((user, item, ts, tuple(h[-HIST:]), len(h)))
        h.append(item)
    return out


def time_run(data, events, n_warm: int, n_serve: int, batched: bool) -> dict[str, float]:
    rec = build(data)
    t = _clock()
    for user, item, ts, h, _ in events[:n_warm]:
        rec.learn_one(user, item, ts, h)
    plain = (_clock() - t) / n_warm
    state: dict[str, tuple[tuple[str, ...], int]] = {}
    t_learn = 0.0
    per_user: list[float] = []
    serve = events[n_warm : n_warm + n_serve]
    for start in range(0, len(serve), BATCH):
        batch = serve[start : start + BATCH]
        t = _clock()
        for user, item, ts, h, n in batch:
            rec.learn_one(user, item, ts, h)
        t_learn += _clock() - t
        for user, item, ts, h, n in batch:
            state[user] = ((*h, item)[-HIST:], n + 1)
        users = list(dict.fromkeys(u for u, *_ in batch))
        if batched:
            t = _clock()
            rec.recommend_many(users, [state[u][0] for u in users], [state[u][1] for u in users],
                               arms=[rec.assign_arm(u) for u in users])
            dt = _clock() - t
            per_user.extend([dt / len(users)] * len(users))
        else:
            for u in users:
                t = _clock()
                rec.recommend(u, state[u][0], state[u][1], arm=rec.assign_arm(u))
                per_user.append(_clock() - t)
    return {
        "learn_plain_us": plain * 1e6,
        "learn_fb_us": t_learn / len(serve) * 1e6,
        "recommend_ms": float(np.mean(per_user)) * 1e3,
        "recommend_p99_ms": float(np.percentile(per_user, 99)) * 1e3,
    }


def timing(n_items: int, runs: int, n_serve: int) -> dict[str, float]:
    data = generate(n_users=2000, n_items=n_items, n_events=50_000)
    events = stream(data)
    out: dict[str, float] = {}
    modes = [False] + ([True] if hasattr(OnlineRecommender, "recommend_many") else [])
    for batched in modes:
        res = [time_run(data, events, 40_000, n_serve, batched) for _ in range(runs)]
        tag = "recommend_many" if batched else "recommend"
        med = {key: statistics.median(r[key] for r in res) for key in res[0]}
        if not batched:
            out["learn_plain_us"] = med["learn_plain_us"]
            out["learn_fb_us"] = med["learn_fb_us"]
        out[f"{tag}_ms"] = med["recommend_ms"]
        out[f"{tag}_p99_ms"] = med["recommend_p99_ms"]
        out[f"learn_fb_us[{tag}]"] = med["learn_fb_us"]
    return out


class Quality:
    def __init__(self) -> None:
        self.n = self.hits = self.tail_n = self.tail_hits = 0
        self.ndcg = 0.0
        self.slots = self.tail_slots = 0
        self.recommended: set[str] = set()

    def add(self, items: list[str], target: str, target_tail: bool, tails: list[bool]) -> None:
        self.n += 1
        self.tail_n += target_tail
        if target in items[:K]:
            r = items.index(target)
            self.hits += 1
            self.tail_hits += target_tail
            self.ndcg += 1.0 / math.log2(r + 2)
        self.slots += len(items)
        self.tail_slots += sum(tails)
        self.recommended.update(items)

    def get(self, n_items: int) -> dict[str, float]:
        return {
            "hr": self.hits / max(self.n, 1),
            "ndcg": self.ndcg / max(self.n, 1),
            "tail_hr": self.tail_hits / max(self.tail_n, 1),
            "tail_share": self.tail_slots / max(self.slots, 1),
            "coverage": len(self.recommended) / n_items,
        }


def replay(data, arms: str, **kwargs) -> dict[str, dict[str, float]]:
    """Prequential replay: recommend for the previous state, score it against the event, then learn."""
    rec = build(data, arms, **kwargs)
    n_items = len({item for _, _, item, _ in data.events})
    per_arm: dict[str, Quality] = {}
    total = Quality()
    for user, item, ts, h, n in stream(data):
        arm = rec.assign_arm(user)
        items = [c.item for c in rec.recommend(user, h, n, arm=arm)]
        tails = [rec.is_tail(i) for i in items]
        target_tail = rec.is_tail(item)
        total.add(items, item, target_tail, tails)
        per_arm.setdefault(arm, Quality()).add(items, item, target_tail, tails)
        rec.learn_one(user, item, ts, h)
    out = {"all": total.get(n_items), **{a: q.get(n_items) for a, q in sorted(per_arm.items())}}
    out["all"]["blender_auc"] = rec.blender.auc()["blend"]
    return out


def replay_boost(data, strength: float) -> dict[str, float]:
    """Co-visitation with TailBoost (the docs/design.md §7 baseline), same prequential replay."""
    from online.covisit import CoVisitation
    from online.popularity import DecayedPopularity
    from online.rerank import TailBoost

    cv, pop, boost = CoVisitation(), DecayedPopularity(), TailBoost(strength=strength, k=K)
    n_items = len({item for _, _, item, _ in data.events})
    q = Quality()
    for user, item, ts, h, n in stream(data):
        cands = cv.recommend(user, h, 100)
        items = [c.item for c in boost.rerank(cands, is_tail=pop.is_tail)]
        q.add(items, item, pop.is_tail(item), [pop.is_tail(i) for i in items])
        pop.learn_one(user, item, ts, h)
        cv.learn_one(user, item, ts, h)
    return q.get(n_items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--items", default="1000,10000")
    ap.add_argument("--serve-events", type=int, default=3000)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    results: dict[str, dict] = {}
    if not args.no_timing:
        for n_items in [int(x) for x in args.items.split(",")]:
            r = timing(n_items, args.runs, args.serve_events)
            results[f"timing_{n_items}_items"] = r
            print(f"{n_items:>6} items: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    data = generate(n_users=2000, n_items=1000, n_events=50_000) if (args.quality or args.sweep) else None
    if args.quality:
        q = replay(data, ARMS)
        results["quality"] = q
        for arm, m in q.items():
            print(f"quality[{arm}]: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
    if args.sweep:
        print("strength  system        tail_share  coverage  HR@10   NDCG@10  tailHR@10")
        for s in (0.0, 0.25, 0.5, 0.75, 1.0):
            m = replay(data, f"s:1:{s}")["all"]
            results[f"sweep_recommender_{s}"] = m
            print(f"{s:<8}  recommender   {m['tail_share']:.4f}      {m['coverage']:.4f}    {m['hr']:.4f}  "
                  f"{m['ndcg']:.4f}   {m['tail_hr']:.4f}", flush=True)
            try:
                b = replay_boost(data, s)
            except ImportError:
                continue
            results[f"sweep_tailboost_{s}"] = b
            print(f"{s:<8}  covisit+boost {b['tail_share']:.4f}      {b['coverage']:.4f}    {b['hr']:.4f}  "
                  f"{b['ndcg']:.4f}   {b['tail_hr']:.4f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
