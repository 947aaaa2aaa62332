"""CPU per score request of the scorer's core (``ScorerCore.process``) on the synthetic stream.

    python benchmarks/scorer_core.py [--items 1000] [--runs 5] [--serve-events 5000] [--chunk 50]
                                     [--extras] [--depth 50] [--profile] [--dump FILE.pkl] [--out FILE.json]
                                     [--root DIR] [--compare-with DIR [--rounds 5]]

Setup (the scorer of the freshness benchmark, without a Kafka in between):
``online.synthetic.generate(n_users=2000, n_items=N, n_events=50_000, seed=0)``; an
``OnlineRecommender`` with item vectors from ``TagVectoriser(dim=256)`` over titles and tags (the
``hashing`` text encoder), arms ``control:0.5:0.0,tail:0.5:0.5``, k = 10, inside a ``ScorerCore``.
The first 40k events are learned directly (``learn_one``), the next 2,000 are served through
``ScorerCore.process`` untimed (so that the blender has feedback and is past its warm-up). Each run
builds that warm state afresh (deterministic; not a pickled copy: an array unpickled in numpy 2.x
carries a non-canonical float64 descriptor, and ``np.ufunc.at`` on it runs ~15x slower, which a live
scorer never sees) and serves the next ``--serve-events`` events, timed:
the events are cut into chunks of ``--chunk`` events (a worker micro-batch), each chunk becomes one
score request per distinct user (``new`` = the user's events of the chunk, ``sequence`` = their last
50 items, as the worker sends them) and one ``process`` call.

Reported: CPU time (``time.process_time``, BLAS limited to one thread, so that figures taken on a
shared box are comparable) per request and per event, best and median over ``--runs`` runs (every
run serves the same requests from the same state). ``--extras`` installs a deterministic stand-in
batch model (``transformer`` and ``vae`` lists of 100 candidates per user, no torch), so the
``extras`` path is timed too. ``--profile`` prints a cProfile of one extra run (top functions by
internal time). ``--dump`` pickles every published list (item, score, source, reason) of one run, to
compare two versions of the code on identical input.

``--root DIR`` imports ``online``/``streams`` from another checkout (this script's own otherwise).
``--compare-with DIR`` times another checkout against this one on the same machine, alternately:
``--rounds`` rounds of one fresh process each (``--runs 1``), the baseline's first, and reports each
side's best and median and the ratio of the bests, and whether the two published the same lists
(first round, compared exactly). The before/after figures of the vectorised serving path were taken
this way against the commit before it::

    git archive 3b75920 | (mkdir -p /tmp/tailcast-before && tar -x -C /tmp/tailcast-before)
    .venv/bin/python benchmarks/scorer_core.py --compare-with /tmp/tailcast-before
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pickle
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # the scorer gets one core: so does the benchmark

ROOT = Path(__file__).resolve().parents[1]
if "--root" in sys.argv[:-1]:  # before the imports below: they come from that checkout
    ROOT = Path(sys.argv[sys.argv.index("--root") + 1]).resolve()
sys.path.insert(0, str(ROOT))

from online.arms import ArmAssigner, parse_arms  # noqa: E402
from online.content import TagVectoriser  # noqa: E402
from online.recommender import OnlineRecommender  # noqa: E402
from online.synthetic import generate  # noqa: E402
from streams.agents.scorer import ScorerCore  # noqa: E402
from streams.records import ScoreRequest  # noqa: E402

ARMS = "control:0.5:0.0,tail:0.5:0.5"
HIST = 50
K = 10
N_WARM = 40_000
N_SERVE_WARM = 2_000
_clock = time.process_time

__all__ = ["FakeBatchModel", "build_core", "requests_for", "serve"]


class FakeBatchModel:
    """A deterministic stand-in for ``models.scoring.BatchScorer`` (no torch): ``transformer`` and
    ``vae`` lists that depend on the user's last item only, precomputed per item, so that the stand-in
    itself costs little of the timed process (a real model's cost is its own, see scorer_throughput.py)."""

    version = "fake-batch-model"

    def __init__(self, item_ids: list[str]) -> None:
        self.item_ids = item_ids
        self.pos = {item: n for n, item in enumerate(item_ids)}
        self.vocab = self.pos
        self._lists: dict[tuple[int, int], dict[str, list[tuple[str, float]]]] = {}

    def _for(self, j: int, k: int) -> dict[str, list[tuple[str, float]]]:
        found = self._lists.get((j, k))
        if found is None:
            n_items = len(self.item_ids)
            found = self._lists[j, k] = {
                source: [(self.item_ids[(j * step + 3 * n + 1) % n_items], scale * (2.0 - n / k)) for n in range(k)]
                for source, step, scale in (("transformer", 7, 1.0), ("vae", 13, 0.3))}
        return found

    def candidates(self, histories, k, exclude):
        out = {"transformer": [], "vae": []}
        for history, ex in zip(histories, exclude):
            lists = self._for(self.pos.get(history[-1], 0) if history else 0, k)
            for source, lst in lists.items():
                out[source].append([pair for pair in lst if pair[0] not in ex])
        return out


def build_core(data, *, arms: str = ARMS, k: int = K, depth: int | None = None) -> ScorerCore:
    """A fresh ``ScorerCore`` around an ``OnlineRecommender`` with tag-hashing item vectors (``depth``: the
    records' items in all, ``items`` and ``more``, as the served scorer's ``LIST_DEPTH``)."""
    configs = parse_arms(arms)
    rec = OnlineRecommender.create(arms=configs, content_dim=256, seed=0, k=k)
    items = list(data.items)
    tv = TagVectoriser(dim=256)
    rec.content.set_vectors(items, tv.transform_many([data.items[i].title for i in items],
                                                     [data.items[i].tags for i in items]))
    return ScorerCore(recommender=rec, arms=ArmAssigner.from_configs(configs), k=k, depth=depth)


def requests_for(events, hist: dict[str, list[str]], chunk: int) -> list[list[ScoreRequest]]:
    """The events as micro-batches of score requests (one per distinct user of each ``chunk`` events);
    ``hist`` (user -> all items so far) is advanced."""
    batches = []
    for start in range(0, len(events), chunk):
        new: dict[str, list[tuple[str, float, str]]] = {}
        first_ts: dict[str, float] = {}
        for ts, user, item, kind in events[start : start + chunk]:
            new.setdefault(user, []).append((item, ts, kind))
            first_ts.setdefault(user, ts)
            hist.setdefault(user, []).append(item)
        batches.append([
            ScoreRequest(user, hist[user][-HIST:], evs, len(hist[user]), evs[-1][1], first_ts[user], evs[-1][1])
            for user, evs in new.items()
        ])
    return batches


def prepare(n_items: int, serve_events: int, chunk: int, extras: bool, depth: int | None = None):
    """(a function that builds the warm ScorerCore, the timed micro-batches)."""
    data = generate(n_users=2000, n_items=n_items, n_events=50_000, seed=0)
    end = N_WARM + N_SERVE_WARM + serve_events
    if end > len(data.events):
        raise SystemExit(f"--serve-events {serve_events} exceeds the stream ({len(data.events)} events)")

    def warm_core() -> tuple[ScorerCore, dict[str, list[str]]]:
        core = build_core(data, depth=depth)
        if extras:
            core.swap_model(FakeBatchModel(list(data.items)))
        hist: dict[str, list[str]] = {}
        for ts, user, item, _kind in data.events[:N_WARM]:
            h = hist.setdefault(user, [])
            core.recommender.learn_one(user, item, ts, h[-HIST:])
            h.append(item)
        # the scorer's high-water marks for the directly learned events; a --root checkout older than
        # ScorerCore.warm goes without (no figure changes: every request below carries only later events)
        warm = getattr(core, "warm", None)
        for user, h in hist.items() if warm is not None else ():
            warm(user, len(h))
        for batch in requests_for(data.events[N_WARM : N_WARM + N_SERVE_WARM], hist, chunk):
            core.process(batch, now=0.0)
        return core, hist

    _, hist = warm_core()
    return (lambda: warm_core()[0]), requests_for(data.events[N_WARM + N_SERVE_WARM : end], hist, chunk)


def serve(core: ScorerCore, batches: list[list[ScoreRequest]]) -> tuple[float, list]:
    """CPU seconds to process every batch; the published lists."""
    published = []
    t_total = 0.0
    for batch in batches:
        t = _clock()
        out = core.process(batch, now=0.0)
        t_total += _clock() - t
        published.append(out.recommendations)
    return t_total, published


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--serve-events", type=int, default=5000)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--extras", action="store_true", help="a stand-in batch model adds transformer/vae lists")
    ap.add_argument("--depth", type=int, default=None,
                    help="items a published record holds in all (items, then more): the served scorer's 50")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--dump", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--root", type=Path, help="import online/streams from this checkout")
    ap.add_argument("--compare-with", type=Path, metavar="DIR", help="time this checkout against DIR, alternately")
    ap.add_argument("--rounds", type=int, default=5, help="with --compare-with: processes per side")
    args = ap.parse_args(argv)
    if args.compare_with:
        return compare(args)
    make_core, batches = prepare(args.items, args.serve_events, args.chunk, args.extras, args.depth)
    n_req = sum(len(b) for b in batches)
    times = []
    for _ in range(args.runs):
        t, published = serve(make_core(), batches)
        times.append(t)
    res = {
        "items": args.items, "serve_events": args.serve_events, "chunk": args.chunk, "extras": args.extras,
        "depth": args.depth,
        "requests": n_req, "runs": args.runs,
        "ms_per_request_best": min(times) / n_req * 1e3,
        "ms_per_request_median": statistics.median(times) / n_req * 1e3,
        "us_per_event_best": min(times) / args.serve_events * 1e6,
    }
    print(f"{args.items} items, {args.serve_events} events -> {n_req} requests in {len(batches)} batches "
          f"(chunk {args.chunk}{', extras' if args.extras else ''}): ScorerCore.process "
          f"{res['ms_per_request_best']:.3f} ms/request best, {res['ms_per_request_median']:.3f} median "
          f"({res['us_per_event_best']:.0f} us/event best) over {args.runs} runs", flush=True)
    if args.dump:
        lists = [[(r.user_id, r.user_event_count, r.arm,
                   [(i.item_id, i.score, i.source, i.reason) for i in r.items + getattr(r, "more", [])])
                  for r in recs] for recs in published]
        args.dump.write_bytes(pickle.dumps(lists))
    if args.profile:
        core = make_core()
        prof = cProfile.Profile()
        prof.enable()
        serve(core, batches)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        print(buf.getvalue())
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return res


def compare(args) -> dict:
    """Alternate fresh processes of the baseline checkout and this one; best/median of each side."""
    workload = ["--items", str(args.items), "--serve-events", str(args.serve_events), "--chunk", str(args.chunk),
                *(["--extras"] if args.extras else []), *(["--depth", str(args.depth)] if args.depth else [])]
    sides = {"baseline": args.compare_with.resolve(), "current": Path(__file__).resolve().parents[1]}
    times: dict[str, list[float]] = {name: [] for name in sides}
    same = None
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name, root in sides.items():
                out, dump = Path(tmp, f"{name}.json"), Path(tmp, f"{name}.pkl")
                cmd = [sys.executable, __file__, "--root", str(root), "--runs", "1", "--out", str(out), *workload,
                       *(["--dump", str(dump)] if rnd == 0 else [])]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                times[name].append(json.loads(out.read_text())["ms_per_request_best"])
            if rnd == 0:
                same = (pickle.loads(Path(tmp, "baseline.pkl").read_bytes())
                        == pickle.loads(Path(tmp, "current.pkl").read_bytes()))
    res = {name: {"ms_per_request_best": min(t), "ms_per_request_median": statistics.median(t), "runs": t}
           for name, t in times.items()}
    res["speedup_best"] = res["baseline"]["ms_per_request_best"] / res["current"]["ms_per_request_best"]
    res["identical_lists"] = same
    for name in sides:
        print(f"{name:8s} {res[name]['ms_per_request_best']:.3f} ms/request best, "
              f"{res[name]['ms_per_request_median']:.3f} median over {args.rounds} processes ({sides[name]})")
    print(f"speed-up {res['speedup_best']:.2f}x (bests); identical published lists: {same}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
