"""``tailcast demo``: the whole pipeline on one machine, with live progress.

Starts the embedded broker (unless TAILCAST_KAFKA names one), a worker and a scorer as child processes
(``tailcast worker`` / ``tailcast scorer``), replays the synthetic stream (or ``--dataset``) at ``--rate``,
and prints once a second: events/s produced, recommendations/s, event→recommendation latency p50/p99,
tail exposure share per arm (from the ``longtail-metrics`` topic), and a few fresh recommendations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from streams.broker import EmbeddedBroker, free_port
from streams.config import Settings
from streams.tools import format_recommendation, iterate_topic, replay
from streams.topics import LONGTAIL_METRICS, RECOMMENDATIONS

__all__ = ["run_demo", "spawn_role"]


def spawn_role(role: str, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``tailcast ROLE`` as a child process with its output in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "streams.cli", role], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def _watch(settings: Settings, *, sent: list[int], stop: asyncio.Event, started: float,
                 duration: float | None, procs: dict[str, subprocess.Popen], workdir: Path) -> dict:
    recs = deque(maxlen=5000)  # (arrival time, latency)
    latest_longtail: dict[str, dict] = {}
    samples: deque[str] = deque(maxlen=3)
    stats = {"recommendations": 0, "first_recommendation_s": None, "failed": None}

    async def consume(topic: str) -> None:
        async for r in iterate_topic(settings.kafka, topic, from_beginning=True, stop=stop):
            if topic == RECOMMENDATIONS:
                now = time.time()
                recs.append((now, r["generated_at"] - r.get("ingested_at", r["generated_at"])))
                stats["recommendations"] += 1
                if stats["first_recommendation_s"] is None:
                    stats["first_recommendation_s"] = time.monotonic() - started
                samples.append(format_recommendation(r))
            else:
                latest_longtail[r["arm"]] = r

    tasks = [asyncio.create_task(consume(RECOMMENDATIONS)), asyncio.create_task(consume(LONGTAIL_METRICS))]
    last_sent, last_recs, last_t = 0, 0, time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
            now = time.monotonic()
            dt = max(now - last_t, 1e-9)
            window = [lat for t, lat in recs if t >= time.time() - 10]
            p50, p99 = (np.percentile(window, [50, 99]) * 1000 if window else (float("nan"),) * 2)
            tails = " ".join(f"{arm}={rec['tail_share']:.2f}" for arm, rec in sorted(latest_longtail.items()))
            print(f"[{now - started:5.0f}s] events {sent[0]:>7} ({(sent[0] - last_sent) / dt:5.0f}/s)  "
                  f"recs {stats['recommendations']:>7} ({(stats['recommendations'] - last_recs) / dt:5.0f}/s)  "
                  f"latency p50 {p50:5.0f} ms p99 {p99:5.0f} ms  tail share {tails or '-'}", flush=True)
            while samples:
                print("    " + samples.popleft(), flush=True)
            last_sent, last_recs, last_t = sent[0], stats["recommendations"], now
            if duration is not None and now - started >= duration:
                stop.set()
            for role, proc in procs.items():
                if proc.poll() is not None:
                    log_tail = (workdir / f"{role}.log").read_text(errors="replace")[-2000:]
                    print(f"the {role} exited with code {proc.returncode}; end of its log:\n{log_tail}", flush=True)
                    stats["failed"] = role
                    stop.set()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {**stats, "longtail": latest_longtail}


async def _demo(settings: Settings, args: argparse.Namespace, started: float, procs: dict[str, subprocess.Popen],
                workdir: Path) -> dict:
    from streams.cli import _source

    source = _source(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sent = [0]

    def progress(n: int, _elapsed: float) -> None:
        sent[0] = n

    watcher = asyncio.create_task(_watch(settings, sent=sent, stop=stop, started=started, duration=args.duration,
                                         procs=procs, workdir=workdir))
    await replay(settings.kafka, source, rate=args.rate, progress=progress, stop=stop)
    print(f"replay finished: {sent[0]} events; still showing recommendations (Ctrl-C to stop)", flush=True)
    return await watcher


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tailcast-demo-"))
    broker = None
    env = dict(os.environ)
    if settings.kafka.embedded:
        broker = EmbeddedBroker(port=free_port(), log_path=workdir / "broker.log").start()
        env["TAILCAST_KAFKA"] = broker.address
        settings = replace(settings, kafka=replace(settings.kafka, bootstrap=broker.address))
        print(f"embedded broker on {broker.address} (memory only)", flush=True)
    env.setdefault("TAILCAST_STATE_DIR", str(workdir / "state"))
    env.setdefault("TAILCAST_METRICS_INTERVAL_S", "2")
    procs: dict[str, subprocess.Popen] = {}
    try:
        from streams.topics import ensure_topics

        asyncio.run(ensure_topics(settings.kafka))
        for role in ("worker", "scorer"):
            procs[role] = spawn_role(role, env, workdir / f"{role}.log")
        print(f"worker and scorer started (logs in {workdir}); metrics on :{settings.metrics_port_for('worker')} "
              f"and :{settings.metrics_port_for('scorer')}", flush=True)
        stats = asyncio.run(_demo(settings, args, started, procs, workdir))
        first = stats["first_recommendation_s"]
        print(f"demo done: {stats['recommendations']} recommendations; first after "
              f"{'-' if first is None else f'{first:.1f}s'}", flush=True)
        return 0 if stats["recommendations"] and not stats["failed"] else 1
    finally:
        _stop(list(procs.values()))
        if broker is not None:
            broker.stop()
