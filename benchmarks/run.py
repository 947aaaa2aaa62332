"""``make bench``: run the benchmarks, print one table with the docs/design.md §7 targets, write the JSON.

    python -m benchmarks.run [--quick] [--only ingest,freshness,api,memory,scorer,scorer_core,online_recommender,scale]
                             [--out bench-results.json]

The JSON is ``{benchmark: {figure: value}}`` (docs/design.md §6), plus ``targets``: for each
docs/design.md §7 target the measured value divided by the required one (oriented so that >= 1 means met). Figures that are not
finite numbers are left out of the JSON (and said so). ``scorer``, ``scorer_core`` and ``online_recommender`` run the
scripts of the same names in this folder when they exist (they are owned elsewhere; a failure there is
reported, not fatal). ``api`` is the read API's latency at 1,000 requests/s beside a running stream
(``benchmarks/api.py``). ``--quick`` uses small sizes (the smoke test: ingest and memory in < 2 minutes).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["BENCHMARKS", "main", "targets"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _ingest(quick: bool) -> dict[str, float]:
    from benchmarks import ingest

    return ingest.run(quick=quick)


def _freshness(quick: bool) -> dict[str, float]:
    from benchmarks import freshness

    return freshness.run(quick=quick)


def _api(quick: bool) -> dict[str, float]:
    from benchmarks import api

    return api.run(quick=quick)


@functools.cache
def _memory(quick: bool) -> dict[str, float]:
    """(cached: ``scale`` reads the same figures)"""
    from benchmarks import memory

    return memory.run(quick=quick)


def _script(name: str, args: list[str], timeout: float) -> dict:
    """Run ``benchmarks/<name>.py ARGS --out TMP`` and return its JSON report."""
    path = HERE / f"{name}.py"
    if not path.exists():
        raise SkipBenchmark(f"{path.relative_to(ROOT)} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
               "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, str(path), *args, "--out", str(out)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{path.name} exited with {proc.returncode}: {' | '.join(tail)}")
        return json.loads(out.read_text())


def _serving_threads() -> int:
    """The scorer's torch thread count as it serves (``TAILCAST_TORCH_THREADS``, default 1)."""
    from streams.config import load_settings

    return load_settings().scorer.torch_threads


def _scorer_figures(report: dict, prefix: str = "") -> dict[str, float]:
    machine, model = report["machine"], report["model"]
    figures = {f"{prefix}cpu_matmul_fp32_gflops": machine["cpu_matmul_fp32_flops"] / 1e9,
               f"{prefix}threads": float(machine["threads"])}
    if not prefix:
        figures["model_mflop_per_user"] = model["flops_per_user"]["total"] / 1e6
    if "cuda_matmul_fp32_flops" in machine:
        figures["cuda_matmul_fp32_gflops"] = machine["cuda_matmul_fp32_flops"] / 1e9
    best: dict[str, dict] = {}
    for row in report["results"]:
        key = f"{row['device']}_{row['mode']}"
        if key not in best or row["users_per_s"] > best[key]["users_per_s"]:
            best[key] = row
    for key, row in best.items():
        if prefix and not key.startswith("cpu"):
            continue
        figures[f"{prefix}{key}_best_users_per_s"] = row["users_per_s"]
        figures[f"{prefix}{key}_best_batch"] = float(row["batch"])
        figures[f"{prefix}{key}_ratio_to_flop_bound"] = row["ratio"]
    for key, q in report.get("quality", {}).items():
        figures[f"{prefix}{key.replace('/', '_')}_loo_ndcg"] = q["ndcg"]
    return figures


def _scorer(quick: bool) -> dict[str, float]:
    """The scorer at its serving thread count (the target's figure; the bound is the matmul rate on as many
    threads) and, for comparison, on every core (``all_cores_`` figures)."""
    budget = ["--budget", "0.3" if quick else "1.5"]
    threads = _serving_threads()
    figures = _scorer_figures(_script("scorer_throughput", [*budget, "--threads", str(threads)], timeout=600))
    cores = os.cpu_count() or 1
    if cores != threads:
        figures.update(_scorer_figures(_script("scorer_throughput", [*budget, "--threads", str(cores)], timeout=600),
                                       prefix="all_cores_"))
    return figures


def _online_recommender(quick: bool) -> dict[str, float]:
    args = ["--runs", "1", "--items", "1000", "--serve-events", "500"] if quick else \
        ["--runs", "2", "--items", "1000,10000"]
    report = _script("online_recommender", args, timeout=900)
    figures: dict[str, float] = {}

    def flatten(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            figures[prefix] = float(value)

    flatten("", report)
    return figures


def _scorer_core(quick: bool) -> dict[str, float]:
    """CPU per score request of ``ScorerCore.process`` (no Kafka), without and with a batch model's lists."""
    base = ["--runs", "1", "--serve-events", "1000"] if quick else ["--runs", "3"]
    figures: dict[str, float] = {}
    for label, extra in (("", []), ("extras_", ["--extras"])):
        report = _script("scorer_core", [*base, *extra], timeout=900)
        figures[f"{label}ms_per_request_best"] = report["ms_per_request_best"]
        figures[f"{label}ms_per_request_median"] = report["ms_per_request_median"]
        figures[f"{label}us_per_event_best"] = report["us_per_event_best"]
    return figures


def _scale(quick: bool) -> dict[str, float]:
    """Retrieval over 1,000,000 items (100,000 with ``--quick``): ``models.ann.MipsIndex``, the index the
    batch models serve with above ``ANN_MIN_ITEMS``, against exact search, one thread
    (``benchmarks/ann.py``, in its own process: it runs on one OpenMP/BLAS thread). Bytes per item and per
    user are the scorer's online models' (``memory``'s figures: items 10k -> 200k, users 10k -> 100k), and
    ``scorer_gib_at_scale`` / ``worker_gib_at_scale`` what they, the index and the user states come to at
    this many items and users (a projection from the measured unit costs, not a run at that size).
    ``p99_ms_at_1k``, ``online_index_bytes_per_item`` (online MF's and content's faiss indexes, not in
    ``bytes_per_item``, as the batch models' index is not) and the ``scorer_*`` figures: the scorer's core over
    that catalogue and as many users, fed
    1,000 events/s for 30 s in process (``benchmarks/scale_scorer.py``: no broker, no Faust; its peak RSS is
    the scorer's memory at that size, measured)."""
    n = 100_000 if quick else 1_000_000
    row = _script("ann", ["--items", "0", "--scale-items", str(n)], timeout=900)["scale"]["served"]
    live = _script("scale_scorer", ["--items", str(n), "--users", str(n), "--rate", "1000",
                                    "--duration", "10" if quick else "30"], timeout=1800)
    mem = _memory(quick)
    per_item, per_user = mem["recommender_bytes_per_item"], \
        mem["recommender_bytes_per_user"] + mem["scorer_core_bytes_per_user"]
    return {"items": float(n), "users": float(n), "ann_recall_at_10": row["recall_at_10"],
            "ann_recall_at_50": row["recall_at_50"], "ann_recall_at_100": row["recall_at_100"],
            "ann_speedup": row["speedup"], "ann_query_ms_per_user": row["query_ms_per_user"],
            "exact_query_ms_per_user": row["exact_ms_per_user"], "ann_build_s": row["build_s"],
            "ann_index_bytes_per_item": row["index_bytes_per_item"], "bytes_per_item": per_item,
            "bytes_per_user": per_user,
            "online_index_bytes_per_item": live["online_index_bytes_per_item"],
            "scorer_gib_at_scale": n * (per_item + per_user + row["index_bytes_per_item"]
                                        + live["online_index_bytes_per_item"]) / 2**30,
            "worker_gib_at_scale": n * mem["user_state_table_entry_bytes"] / 2**30,
            "p99_ms_at_1k": live["p99_ms"], "p50_ms_at_1k": live["p50_ms"], "sustained_at_1k": live["sustained"],
            "scorer_cpu_us_per_event_at_1k": live["cpu_us_per_event"], "scorer_peak_rss_gib": live["peak_rss_gib"],
            "content_index_build_s": live["index_build_s"]}


class SkipBenchmark(RuntimeError):
    """A benchmark that cannot run here (e.g. its script does not exist); reported, not a failure."""


BENCHMARKS: dict[str, Callable[[bool], dict[str, float]]] = {
    "ingest": _ingest,
    "freshness": _freshness,
    "api": _api,
    "memory": _memory,
    "scorer": _scorer,
    "scorer_core": _scorer_core,
    "online_recommender": _online_recommender,
    "scale": _scale,
}


def targets(results: dict[str, dict[str, float]]) -> dict[str, tuple[float, str]]:
    """docs/design.md §7 targets found in ``results``: name -> (measured / required, >= 1 means met; description)."""
    out: dict[str, tuple[float, str]] = {}
    ing = results.get("ingest", {})
    if "worker_events_per_s" in ing:
        v = ing["worker_events_per_s"]
        out["ingest_worker_vs_10k_events_per_s"] = (v / 10_000, f"worker {v:,.0f} events/s >= 10,000")
    if "worker_vs_bare_ratio" in ing:
        v = ing["worker_vs_bare_ratio"]
        out["ingest_worker_vs_0.75_bare_faust"] = (v / 0.75, f"worker/bare Faust {v:.2f} >= 0.75")
    if "worker_events_per_cpu_s" in ing:  # the same two targets with each process given a whole core
        v = ing["worker_events_per_cpu_s"]
        out["ingest_worker_cpu_bound_vs_10k_events_per_s"] = (
            v / 10_000, f"worker {v:,.0f} events per CPU-second >= 10,000 (CPU time, load-independent)")
    if "worker_vs_bare_cpu_ratio" in ing:
        v = ing["worker_vs_bare_cpu_ratio"]
        out["ingest_worker_vs_0.75_bare_faust_cpu"] = (
            v / 0.75, f"bare CPU/event / worker CPU/event {v:.2f} >= 0.75 (load-independent)")
    fr = results.get("freshness", {})
    if "rate_1000_p99_ms" in fr:
        v = fr["rate_1000_p99_ms"]
        out["freshness_250ms_vs_p99_at_1k"] = (250.0 / v, f"p99 at 1k events/s {v:,.0f} ms < 250 ms")
    api = results.get("api", {})
    if "p99_ms" in api:
        v, rps = api["p99_ms"], api.get("rps", float("nan"))
        out["api_10ms_vs_p99_at_1k_rps"] = (
            10.0 / v, f"read API p99 at {rps:,.0f} requests/s beside a running stream (at nice "
                      f"{api.get('stream_nice', 0):g}; equal priority: {api.get('equal_priority_p99_ms', float('nan')):.1f} ms) "
                      f"{v:.1f} ms < 10 ms")
    scale = results.get("scale", {})
    if "bytes_per_item" in scale:
        v = scale["bytes_per_item"]
        out["scale_bytes_per_item_vs_2048"] = (2048.0 / v, f"scorer's online models {v:,.0f} bytes an item <= 2,048")
    if "ann_recall_at_10" in scale:
        v = scale["ann_recall_at_10"]
        out["scale_ann_recall_at_10_vs_0.95"] = (v / 0.95, f"ANN recall@10 over {scale['items']:,.0f} items {v:.3f} >= 0.95")
    if "p99_ms_at_1k" in scale:
        v = scale["p99_ms_at_1k"]
        out["scale_scorer_p99_at_1k_vs_250ms"] = (
            250.0 / v, f"scorer (in process) p99 {v:,.0f} ms at 1,000 events/s over {scale['items']:,.0f} items < 250")
    sc = results.get("scorer", {})
    if "cpu_none_ratio_to_flop_bound" in sc:
        v = sc["cpu_none_ratio_to_flop_bound"]
        t = int(sc.get("threads", 0))
        out["scorer_cpu_fp32_vs_0.30_flop_bound"] = (
            v / 0.30, f"CPU fp32 users/s = {v:.2f} x FLOP bound >= 0.30 ({t} thread{'s' if t != 1 else ''}, as served)")
    return out


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def table(results: dict[str, dict[str, float]], notes: dict[str, str],
          checks: dict[str, tuple[float, str]]) -> str:
    width = max([len(f) for figs in results.values() for f in figs] + [30])
    lines = []
    for name, figures in results.items():
        lines.append(f"== {name} ==")
        for figure, value in figures.items():
            lines.append(f"  {figure:<{width}}  {_fmt(value):>14}")
    for name, note in notes.items():
        lines.append(f"== {name} == {note}")
    if checks:
        lines.append("== docs/design.md §7 targets (measured / required; >= 1 met) ==")
        for key, (ratio, text) in checks.items():
            lines.append(f"  {key:<{width}}  {ratio:>14.2f}  {'MET   ' if ratio >= 1 else 'MISSED'}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results.json"))
    p.add_argument("--quick", action="store_true", help="small sizes (< 2 minutes for ingest + memory)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    results: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    failed = False
    started = time.monotonic()
    for name in names:
        t = time.monotonic()
        print(f"--- {name}{' (quick)' if args.quick else ''}", flush=True)
        try:
            results[name] = BENCHMARKS[name](args.quick)
        except SkipBenchmark as exc:
            notes[name] = f"skipped: {exc}"
        except Exception as exc:  # noqa: BLE001 - one benchmark's failure is reported, the others still run
            notes[name] = f"FAILED: {type(exc).__name__}: {exc}"
            failed = True
        print(f"--- {name}: {time.monotonic() - t:.0f}s", flush=True)
    checks = targets(results)
    print()
    print(table(results, notes, checks))
    print(f"(total {time.monotonic() - started:.0f}s)")
    out: dict[str, dict[str, float]] = {}
    dropped = []
    for name, figures in results.items():
        out[name] = {}
        for figure, value in figures.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[name][figure] = float(value)
            else:
                dropped.append(f"{name}.{figure}")
    if checks:
        out["targets"] = {key: ratio for key, (ratio, _text) in checks.items() if math.isfinite(ratio)}
    if dropped:
        print(f"not finite, left out of {args.out}: {', '.join(dropped)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
