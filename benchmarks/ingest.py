"""Ingest throughput (docs/design.md §7): the real worker against a bare Faust agent and raw aiokafka, one broker.

Each round starts a fresh embedded broker, pre-publishes N synthetic events keyed by user (aiokafka's
default murmur2 partitioner, the partitioner the worker routes by, so nothing is re-routed), then
consumes all of them three ways, back to back on that broker:

* ``raw``: an ``AIOKafkaConsumer`` assigned every partition, ``getmany`` + ``orjson.loads`` per record;
* ``bare``: a Faust agent built with the worker's own app settings (``streams.app.faust_app``, the
  same raw topics, ``stream.take_events(WORKER_BATCH, within=WORKER_BATCH_WAIT_S)`` of ``streams.config``)
  that only decodes;
* ``worker``: the real worker, ``create_app(settings, role="worker")``, run in a child process exactly as
  ``tailcast worker`` runs it (``faust.Worker``): validation, the ``user_state`` table and its changelog,
  score requests. Its progress is read from ``tailcast_worker_events_valid_total``.

Rate = events / (time the last event is done - time the first batch reached user code), so start-up
and the consumer-group join are excluded alike. Rounds alternate the order of ``bare`` and ``worker``;
figures are medians over rounds, ratios are computed within each round and then their median taken.

``python -m benchmarks.ingest --profile`` also runs the worker once under cProfile and prints where the
time goes (the profiler slows it down: read shares, not rates).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.common import (bench_env, ensure_topics, fresh_broker, median, publish, python, rss_bytes,
                               settings_from_env, synthetic_records, workdir)

__all__ = ["run", "raw_consume"]

POLL_S = 0.02  # progress polling interval of the Faust children (same for bare and worker)


# ------------------------------------------------------------------------------------------------ raw
async def _raw_consume(settings, n: int, passes: int) -> dict[str, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka import client_kwargs
    from streams.topics import EVENTS

    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(EVENTS, p) for p in sorted(consumer.partitions_for_topic(EVENTS) or ())]
        consumer.assign(tps)
        loads = orjson.loads
        rates, cpu = [], []
        for _ in range(passes):
            await consumer.seek_to_beginning(*tps)
            count = 0
            deadline = time.monotonic() + 120 + n / 1000
            # aiokafka prefetches in the background, so the clock starts before the first fetch (not at
            # the first delivery, as for the Faust agents, which are far slower than their fetcher)
            start, cpu_start = time.perf_counter(), time.process_time()
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw consumer read {count} of {n} events")
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for r in records:
                        loads(r.value)
                    count += len(records)
            rates.append(count / (time.perf_counter() - start))
            cpu.append(1e6 * (time.process_time() - cpu_start) / count)
        return {"events": count, "events_per_s": median(rates), "cpu_us_per_event": median(cpu)}
    finally:
        await consumer.stop()


def raw_consume(settings, n: int, *, passes: int = 3) -> dict[str, float]:
    """Consume-and-decode the ``n`` events of the ``events`` topic with aiokafka, ``passes`` times from the
    beginning; the median events/s."""
    return asyncio.run(_raw_consume(settings, n, passes))


# ----------------------------------------------------------------------------------- faust children
def _child(kind: str, n: int, out: Path, profile: Path | None) -> None:
    """Run the bare agent or the real worker until ``n`` events are done; write timings to ``out``."""
    import cProfile
    import logging

    from streams.app import create_app, declare_topics, faust_app, faust_worker
    from streams.cli import freeze_startup_heap
    from streams.config import WORKER_BATCH, WORKER_BATCH_WAIT_S, load_settings
    from streams.topics import EVENTS, ensure_topics

    settings = load_settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)  # as `tailcast worker` does
    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    counts = loop.run_until_complete(ensure_topics(settings.kafka))
    mark: dict[str, Any] = {"first": None, "count": 0, "batches": 0}
    profiler = cProfile.Profile() if profile else None

    def first_batch() -> None:
        if mark["first"] is None:
            mark["first"] = time.perf_counter()
            mark["cpu_first"] = time.process_time()
            mark["rss_first"] = rss_bytes()
            if profiler is not None:
                profiler.enable()

    extra: dict[str, Any] = {}
    if kind == "bare":
        app = faust_app(settings, f"bench-bare-{os.getpid()}")
        topics = declare_topics(app, settings)

        @app.agent(topics[EVENTS], name="bare")
        async def bare(stream):
            loads = orjson.loads
            async for events in stream.take_events(WORKER_BATCH, within=WORKER_BATCH_WAIT_S):
                first_batch()
                for e in events:
                    loads(e.message.value)
                mark["count"] += len(events)
                mark["batches"] += 1

        def progress() -> float:
            return mark["count"]

        extra["figures"] = lambda: {"batches": mark["batches"]}
    elif kind == "worker":
        role = create_app(settings, role="worker", partitions=counts)
        app = role.app
        processor = role.parts["processor"]
        process = processor.process

        def timed_process(records, get_state, **kwargs):
            first_batch()
            return process(records, get_state, **kwargs)

        processor.process = timed_process  # one timestamp at the first batch; the worker is otherwise untouched

        def progress() -> float:
            return role.registry.get_sample_value("tailcast_worker_events_valid_total") or 0.0

        def worker_figures() -> dict[str, float]:
            get = role.registry.get_sample_value
            return {"rerouted": get("tailcast_worker_rerouted_total") or 0.0,
                    "score_requests": get("tailcast_worker_score_requests_total") or 0.0,
                    "duplicates": get("tailcast_worker_duplicates_skipped_total") or 0.0,
                    "user_states": get("tailcast_worker_user_states") or 0.0,
                    "consumed": get("tailcast_worker_events_consumed_total") or 0.0,
                    "batches": get("tailcast_worker_batch_size_events_count") or 0.0}
        extra["figures"] = worker_figures
    else:
        raise SystemExit(f"unknown child kind {kind!r}")

    @app.task
    async def monitor() -> None:
        while progress() < n:
            await asyncio.sleep(POLL_S)
        end, cpu_end = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.disable()
        result = {"events": progress(), "seconds": end - mark["first"],
                  "events_per_s": progress() / (end - mark["first"]),
                  "cpu_us_per_event": 1e6 * (cpu_end - mark["cpu_first"]) / progress(),
                  "rss_first": mark.get("rss_first", 0), "rss_end": rss_bytes()}
        if "figures" in extra:
            result.update(extra["figures"]())
        out.write_text(json.dumps(result))
        if profiler is not None:
            _write_profile(profiler, profile)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # a benchmark child: no graceful Faust shutdown (seconds) needed, its broker goes away

    freeze_startup_heap()  # as `tailcast worker` does after start-up (both kinds alike)
    faust_worker(app, settings, loop).execute_from_commandline()


def _write_profile(profiler, path: Path) -> None:
    """Top functions by own time and a per-package summary of own time, as text."""
    import io
    import pstats

    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values()) or 1.0
    by_package: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():
        by_package[_package(filename)] = by_package.get(_package(filename), 0.0) + tt
    lines = [f"own time by package (total {total:.2f}s profiled):"]
    for pkg, tt in sorted(by_package.items(), key=lambda kv: -kv[1])[:14]:
        lines.append(f"  {100 * tt / total:5.1f}%  {pkg}")
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
    lines += ["", "top functions by own time:", _trim_pstats(buf.getvalue())]
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(30)
    lines += ["", "top functions by cumulative time:", _trim_pstats(buf.getvalue())]
    path.write_text("\n".join(lines))


def _trim_pstats(text: str) -> str:
    out, started = [], False
    for line in text.splitlines():
        if line.strip().startswith("ncalls"):
            started = True
        if started and line.strip():
            out.append(line.replace(str(Path(sys.prefix)), "<venv>"))
    return "\n".join(out)


def _package(filename: str) -> str:
    if filename.startswith("<") or filename == "~":
        return "builtins (C: orjson, dict, socket, ...)"
    parts = Path(filename).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            rest = parts[i + 1:]
            if anchor == "lib" and rest and rest[0].startswith("python"):
                rest = rest[1:]
                if rest and rest[0] != "site-packages":
                    return f"stdlib/{rest[0].removesuffix('.py')}"
                continue
            if rest:
                return rest[0].removesuffix(".py")
    if "streams" in parts:
        return "streams/" + "/".join(parts[parts.index("streams") + 1:])
    return Path(filename).name


def run_child(kind: str, env: dict[str, str], n: int, work: Path, *, profile: Path | None = None) -> dict:
    out = work / f"{kind}-{time.monotonic_ns()}.json"
    cmd = [python(), "-m", "benchmarks.ingest", "--child", kind, "--events", str(n), "--child-out", str(out)]
    if profile is not None:
        cmd += ["--profile-out", str(profile)]
    log = (work / f"{kind}.log").open("ab")
    try:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                              timeout=90 + n / 500, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{kind} did not consume {n} events in time; see {work / (kind + '.log')}") from None
    finally:
        log.close()
    if not out.exists():
        raise RuntimeError(f"{kind} exited with {proc.returncode} without a result; see {work / (kind + '.log')}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------- run
def run(*, quick: bool = False, rounds: int | None = None, n_events: int | None = None,
        profile: bool | None = None, log=print) -> dict[str, float]:
    # the raw consumer's CPU time is this (parent) process's, measured around its consume loop only
    """Measure and return the ingest figures (events/s, ratios); print progress through ``log``."""
    from streams.topics import EVENTS

    n = n_events or (20_000 if quick else 100_000)
    rounds = rounds or (1 if quick else 3)
    records = synthetic_records(n_events=n, n_users=max(1000, n // 10), n_items=5000, seed=0)
    log(f"ingest: {n} events over {records.users} users, {rounds} round(s), fresh broker per round")
    per: dict[str, list[float]] = {"raw": [], "bare": [], "worker": []}
    cpu: dict[str, list[float]] = {"raw": [], "bare": [], "worker": []}
    ratios: dict[str, list[float]] = {"worker_vs_bare": [], "worker_vs_raw": [], "bare_vs_raw": []}
    worker_extra: list[dict] = []
    publish_rates: list[float] = []
    base = workdir("ingest")
    for r in range(rounds):
        work = base / f"round{r}"
        with fresh_broker(work) as broker:
            env = bench_env(broker, work)
            settings = settings_from_env(env)
            ensure_topics(settings)
            seconds = asyncio.run(publish(settings, EVENTS, records.events))
            publish_rates.append(n / seconds)
            got: dict[str, float] = {}
            order = ("raw", "bare", "worker") if r % 2 == 0 else ("raw", "worker", "bare")
            for kind in order:
                result = raw_consume(settings, n) if kind == "raw" else run_child(kind, env, n, work)
                got[kind] = result["events_per_s"]
                per[kind].append(result["events_per_s"])
                cpu[kind].append(result["cpu_us_per_event"])
                if kind == "worker":
                    worker_extra.append(result)
            log(f"  round {r + 1}: published {n / seconds:,.0f}/s; raw {got['raw']:,.0f}/s, "
                f"bare Faust {got['bare']:,.0f}/s, worker {got['worker']:,.0f}/s "
                f"(worker/bare {got['worker'] / got['bare']:.2f}); CPU per event: raw {cpu['raw'][-1]:.1f} us, "
                f"bare {cpu['bare'][-1]:.0f} us, worker {cpu['worker'][-1]:.0f} us")
            ratios["worker_vs_bare"].append(got["worker"] / got["bare"])
            ratios["worker_vs_raw"].append(got["worker"] / got["raw"])
            ratios["bare_vs_raw"].append(got["bare"] / got["raw"])
    last = worker_extra[-1]
    if any(x["rerouted"] for x in worker_extra):
        log(f"  WARNING: the worker re-routed {last['rerouted']:.0f} events: the pre-published keys do not "
            "match its partitioning, so it did extra work")
    figures = {
        "events": float(n),
        "rounds": float(rounds),
        "raw_aiokafka_events_per_s": median(per["raw"]),
        "bare_faust_events_per_s": median(per["bare"]),
        "worker_events_per_s": median(per["worker"]),
        "worker_vs_bare_ratio": median(ratios["worker_vs_bare"]),
        "worker_vs_raw_ratio": median(ratios["worker_vs_raw"]),
        "bare_vs_raw_ratio": median(ratios["bare_vs_raw"]),
        # CPU time per event of each consumer process: what the rates would be with a core each, which a
        # shared machine does not give (wall rates above are what the targets name)
        "raw_cpu_us_per_event": median(cpu["raw"]),
        "bare_cpu_us_per_event": median(cpu["bare"]),
        "worker_cpu_us_per_event": median(cpu["worker"]),
        "worker_vs_bare_cpu_ratio": median([b / w for b, w in zip(cpu["bare"], cpu["worker"])]),
        "worker_events_per_cpu_s": 1e6 / median(cpu["worker"]),
        "worker_score_requests_per_event": last["score_requests"] / max(1.0, last["events"]),
        "publish_events_per_s": median(publish_rates),
    }
    missed = figures["worker_events_per_s"] < 10_000 or figures["worker_vs_bare_ratio"] < 0.75
    if profile or (profile is None and missed and not quick):
        path = base / "worker-profile.txt"
        n_prof = min(n, 30_000)  # cProfile slows the worker ~4x
        with fresh_broker(base / "profile") as broker:
            env = bench_env(broker, base / "profile")
            settings = settings_from_env(env)
            ensure_topics(settings)
            asyncio.run(publish(settings, EVENTS, records.events[:n_prof]))
            result = run_child("worker", env, n_prof, base / "profile", profile=path)
        log(f"  worker under cProfile: {result['events_per_s']:,.0f}/s (profiler overhead included); {path}")
        log("\n".join("    " + line for line in path.read_text().splitlines()[:60]))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--profile", action="store_true", help="also profile the worker with cProfile")
    p.add_argument("--child", choices=("bare", "worker"), help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--profile-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.events, args.child_out, args.profile_out)
        return 0
    figures = run(quick=args.quick, rounds=args.rounds, n_events=args.events, profile=args.profile or None)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
