"""The scorer over a million-item catalogue and a million users, fed at a fixed rate (issue #16's ``scale`` entry).

    python -m benchmarks.scale_scorer [--items 1000000] [--users 1000000] [--warm-events 500000] [--rate 1000]
                                      [--duration 30] [--exact] [--ann-min-items N] [--out FILE.json]

What runs: the scorer's core as the live scorer builds it (``streams.agents.serving.build_recommender`` with
the default settings, so from ``ANN_MIN_ITEMS`` items on content and MF retrieve through their faiss indexes,
built in threads; ``--exact`` scans instead), in this process, without Kafka or Faust: what the scorer itself adds to an event's
latency at that size. The broker's and Faust's share are the freshness benchmark's (``benchmarks/freshness.py``),
measured on the small catalogue.

The stream: ``--items`` items with 384-dimensional unit content vectors (MiniLM's dimension) around
``2 sqrt(n)`` cluster centres (cluster sizes Zipf-like), item popularity Zipf (exponent 1) over a random
ranking; ``--users`` users, each with a taste cluster, active by log-normal weights; an event is an item of the
user's cluster (by popularity, 80%) or of the whole catalogue (by popularity). ``--warm-events`` events are
learned first (``learn_one``, untimed); the catalogue's vectors are set before, so the first served batch
starts the index builds, waited for before the clock starts (``index_build_s``); an MF rebuild during the
run (after an eighth of its items' worth of SGD updates) runs in its thread, as live.

Served: events arrive at ``--rate`` a second (evenly spaced, wall clock) for ``--duration`` seconds; they are
taken as the scorer agent takes its stream (``SCORER_BATCH`` requests, or what arrived within
``SCORER_BATCH_WAIT_S`` of the first), one score request an event with the user's last 50 items, and
``ScorerCore.process`` runs on each batch. An event's latency is from its arrival to the end of the ``process``
call that published its list. Reported: p50/p99/max latency, whether the rate was sustained (the last
second's events served within a second of the end), CPU per event, batch sizes, the process's peak RSS,
and the build time of the index; BLAS and faiss on one thread (the scorer's core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from online.arms import ArmAssigner  # noqa: E402
from streams.agents.scorer import ScorerCore  # noqa: E402
from streams.agents.serving import SCORER_BATCH, SCORER_BATCH_WAIT_S, build_recommender  # noqa: E402
from streams.config import LIST_DEPTH, load_settings  # noqa: E402
from streams.records import ScoreRequest  # noqa: E402

__all__ = ["catalogue", "events", "run"]

DIM = 384
HIST = 50
TASTE = 0.8


def catalogue(n_items: int, n_users: int, *, seed: int = 0):
    """(item cluster (n,), item popularity (n,), user cluster (m,), cluster centres (C, DIM))."""
    rng = np.random.default_rng(seed)
    c = max(2, round(2 * math.sqrt(n_items)))
    centres = rng.standard_normal((c, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, c + 1) ** 0.8
    p /= p.sum()
    cluster = rng.choice(c, size=n_items, p=p)
    popularity = 1.0 / (1.0 + rng.permutation(n_items))
    return cluster, popularity, rng.choice(c, size=n_users, p=p), centres


def vectors(cluster: np.ndarray, centres: np.ndarray, lo: int, hi: int, *, seed: int = 1) -> np.ndarray:
    """The content vectors of items ``lo..hi-1``: their centre plus noise (unit rows are set)."""
    rng = np.random.default_rng([seed, lo])
    return centres[cluster[lo:hi]] + 0.5 * rng.standard_normal((hi - lo, DIM)) / math.sqrt(DIM)


def events(n: int, cluster: np.ndarray, popularity: np.ndarray, user_cluster: np.ndarray, *, seed: int = 2):
    """(users (n,), items (n,)) of ``n`` events (see the module docstring), drawn without a Python loop."""
    rng = np.random.default_rng(seed)
    m = len(user_cluster)
    activity = rng.lognormal(0.0, 1.4, size=m)
    users = np.searchsorted(np.cumsum(activity), rng.uniform(0, activity.sum(), size=n), side="right")
    users = np.minimum(users, m - 1)
    # items sorted by cluster; key = cluster + cumulative popularity share within it, so that a draw in cluster
    # g is searchsorted(key, g + u) for u uniform in [0, 1)
    order = np.argsort(cluster, kind="stable")
    pops, clus = popularity[order], cluster[order]
    start = np.searchsorted(clus, np.arange(clus.max() + 2))
    cum = np.cumsum(pops)
    before = np.concatenate([[0.0], cum])[start[clus]]
    total = (np.concatenate([[0.0], cum])[start[clus + 1]] - before)
    key = clus + (cum - before) / total
    g = user_cluster[users]
    in_taste = np.searchsorted(key, g + rng.uniform(0, 1, size=n) * (1 - 1e-12), side="right")
    anywhere = np.searchsorted(cum, rng.uniform(0, cum[-1], size=n), side="right")
    items = np.where(rng.uniform(size=n) < TASTE, order[np.minimum(in_taste, len(order) - 1)],
                     order[np.minimum(anywhere, len(order) - 1)])
    # a cluster with no item (possible for tiny catalogues) falls through to a neighbour's: harmless here
    return users, items


def run(*, n_items: int, n_users: int, warm_events: int, rate: float, duration: float, exact: bool = False,
        ann_min_items: int | None = None, log=print) -> dict[str, float]:
    """The benchmark (module docstring); ``ann_min_items``: both indexes' threshold (default the scorer's)."""
    t0 = time.perf_counter()
    cluster, popularity, user_cluster, centres = catalogue(n_items, n_users)
    settings = load_settings({})
    recommender = build_recommender(settings, text_dim=DIM)
    for model in (recommender.content, recommender.mf):
        if exact:
            model.ann.factory = None
        if ann_min_items is not None:
            model.ann.min_rows = ann_min_items
    ids = [f"i{j}" for j in range(n_items)]
    for lo in range(0, n_items, 100_000):
        hi = min(n_items, lo + 100_000)
        recommender.content.set_vectors(ids[lo:hi], vectors(cluster, centres, lo, hi))
    n_serve = int(rate * duration)
    users, items = events(warm_events + n_serve, cluster, popularity, user_cluster)
    log(f"catalogue and stream: {time.perf_counter() - t0:.0f} s")
    core = ScorerCore(recommender=recommender, arms=ArmAssigner.from_configs(settings.scorer.arms),
                      k=settings.scorer.k, depth=LIST_DEPTH)
    hist: dict[int, list[str]] = {}  # user -> last HIST items
    count: dict[int, int] = {}  # user -> events so far
    t = time.perf_counter()
    ts = 1_700_000_000.0
    for n in range(warm_events):
        u, item = int(users[n]), ids[items[n]]
        h = hist.setdefault(u, [])
        recommender.learn_one(f"u{u}", item, ts + n * 1e-3, h)
        h.append(item)
        del h[:-HIST]
        count[u] = count.get(u, 0) + 1
    for u, c in count.items():
        core.warm(f"u{u}", c)
    warm_s = time.perf_counter() - t
    log(f"learned {warm_events:,} events in {warm_s:.0f} s ({len(hist):,} users)")

    def request(n: int, now: float) -> ScoreRequest:
        u, item = int(users[n]), ids[items[n]]
        h = hist.setdefault(u, [])
        h.append(item)
        del h[:-HIST]
        count[u] = count.get(u, 0) + 1
        return ScoreRequest(f"u{u}", list(h), [(item, ts + n * 1e-3, "click")], count[u], ts + n * 1e-3, now, now)

    # the first batch starts the content and MF index builds (in threads, as the scorer does): timed apart,
    # waited for before the clock starts
    t = time.perf_counter()
    core.process([request(warm_events, 0.0)], now=0.0)
    for model in (recommender.content, recommender.mf):
        model.ann.wait()
    build_s = time.perf_counter() - t
    log(f"first batch and index builds: {build_s:.1f} s")

    mf_builds, mf_index = 0, recommender.mf.ann.index
    arrival = np.arange(1, n_serve) / rate  # event warm_events + 1 + i arrives at arrival[i]
    latencies = np.empty(len(arrival))
    sizes = []
    cpu0, start = time.process_time(), time.perf_counter()
    i = 0
    while i < len(arrival):
        now = time.perf_counter() - start
        if arrival[i] > now:
            time.sleep(arrival[i] - now)
            continue
        # take(SCORER_BATCH, within=SCORER_BATCH_WAIT_S): full, or the wait after the first is over
        close = max(now, min(arrival[i] + SCORER_BATCH_WAIT_S, arrival[min(i + SCORER_BATCH, len(arrival)) - 1]))
        if close > now:
            time.sleep(close - now)
        now = time.perf_counter() - start
        j = min(i + SCORER_BATCH, int(np.searchsorted(arrival, now, side="right")), len(arrival))
        j = max(j, i + 1)
        batch = [request(warm_events + 1 + n, float(arrival[n])) for n in range(i, j)]
        core.process(batch, now=now)
        latencies[i:j] = (time.perf_counter() - start) - arrival[i:j]
        sizes.append(j - i)
        i = j
        if recommender.mf.ann.index is not mf_index:
            mf_builds, mf_index = mf_builds + 1, recommender.mf.ann.index
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - start
    last = latencies[arrival >= arrival[-1] - 1.0]
    out = {
        "items": float(n_items), "users": float(n_users), "warm_events": float(warm_events),
        "users_with_history": float(len(hist)), "rate": float(rate), "duration_s": float(duration),
        "p50_ms": float(np.percentile(latencies, 50) * 1e3), "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "max_ms": float(latencies.max() * 1e3), "sustained": float(bool(last.max() < 1.0)),
        "cpu_us_per_event": cpu / len(arrival) * 1e6, "wall_s": wall,
        "batch_mean": float(np.mean(sizes)), "batch_max": float(max(sizes)),
        "index_build_s": build_s, "warm_learn_us_per_event": warm_s / max(1, warm_events) * 1e6,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "content_index": float(recommender.content.ann.index is not None),
        "mf_index": float(recommender.mf.ann.index is not None), "mf_items": float(len(recommender.mf.item_index)),
        "mf_index_rebuilds": float(mf_builds),
        # the indexes' serialized bytes over the catalogue's items: what they add to the scorer's bytes an item
        "online_index_bytes_per_item": sum(m.ann.index.nbytes() for m in (recommender.content, recommender.mf)
                                           if m.ann.index is not None) / n_items,
    }
    log(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--warm-events", type=int, default=500_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--exact", action="store_true", help="scan the content vectors instead of the index")
    ap.add_argument("--ann-min-items", type=int, help="the content and MF indexes' threshold (default: the scorer's)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    out = run(n_items=args.items, n_users=args.users, warm_events=args.warm_events, rate=args.rate,
              duration=args.duration, exact=args.exact, ann_min_items=args.ann_min_items, log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
