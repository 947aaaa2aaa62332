"""``tailcast demo``: the broker (unless TAILCAST_KAFKA is set) and the :data:`ROLES` on one machine, the
synthetic stream (or ``--dataset``) replayed, live figures and lists printed every second, and a client
that displays every list (``impressions``), so later events are its clicks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from streams.agents.scorer import BATCH_SOURCES
from streams.broker import free_port
from streams.config import Settings
from streams.processes import spawn_role, start_broker, stop_processes
from streams.tools import format_recommendation, iterate_topic, replay, source_from_args
from streams.kafka import client_kwargs
from streams.topics import IMPRESSIONS, LONGTAIL_METRICS, RECOMMENDATIONS, ensure_topics

__all__ = ["run_demo", "DEMO_TRAINER_ENV", "ROLES"]

#: The child processes the demo starts, in order.
ROLES = ("worker", "scorer", "trainer", "api")

#: The trainer's and the model watch's settings in the demo: a checkpoint hot-swapped every 25 s or so.
DEMO_TRAINER_ENV = {
    "TAILCAST_TRAIN_INTERVAL_S": "10",  # the pace at low --rate
    "TAILCAST_TRAIN_MAX_SECONDS": "5",  # each encoder's training budget
    "TAILCAST_TRAIN_VAE_MAX_SECONDS": "4",  # the Mult-VAE's
    "TAILCAST_MODEL_POLL_S": "1",  # the scorer looks for a new checkpoint every second
}


def source_shares(lists: Iterable[dict]) -> dict[str, float]:
    """Share of each candidate source in the slots of ``lists`` (``recommendations`` records), largest first.

    >>> source_shares([{"items": [{"source": "mf"}, {"source": "vae"}]}, {"items": [{"source": "mf"}]}])
    {'mf': 0.6666666666666666, 'vae': 0.3333333333333333}
    """
    counts = Counter(item["source"] for rec in lists for item in rec["items"])
    total = sum(counts.values())
    return {source: n / total for source, n in counts.most_common()}


def _trained(version: str) -> bool:
    """Whether a list's ``model_version`` names a trained checkpoint rather than the online models."""
    return version != "online"


def impression(rec: dict) -> bytes:
    """The ``impressions`` record of a client that displayed ``rec`` right after the event it reflects."""
    return orjson.dumps({"user_id": rec["user_id"], "list_id": rec["list_id"], "ts": rec["event_ts"],
                         "items": [{"item_id": i["item_id"], "position": n} for n, i in enumerate(rec["items"])]})


def _ctr(ab: dict | None) -> str:
    if not ab:
        return "-"
    ctr = ab["ctr"]
    return f"{ctr['value']:.1%} [{ctr['low']:.1%}, {ctr['high']:.1%}]"


def _api_serves(url: str) -> bool:
    """Whether ``GET url`` answers 200 with a list that has items (the read API serves the user's list)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200 and bool(orjson.loads(response.read())["items"])
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
        return False


async def _watch(settings: Settings, *, sent: list[int], stop: asyncio.Event, started: float,
                 duration: float | None, procs: dict[str, subprocess.Popen], workdir: Path, api_url: str) -> dict:
    recs = deque(maxlen=5000)  # (arrival time, latency)
    recent: deque[tuple[float, dict]] = deque(maxlen=5000)  # (arrival time, list): the sources' shares
    latest_longtail: dict[str, dict] = {}
    samples: deque[str] = deque(maxlen=3)
    with_items: deque[str] = deque(maxlen=1)  # the newest user whose list has items
    stats = {"recommendations": 0, "first_recommendation_s": None, "failed": None, "serving": None,
             "first_trained_s": None, "trained_lists": 0, "batch_items": Counter(), "curl": None}

    # the client: with pseudonymised ids the lists carry pseudonyms, which a client does not see; no impressions
    client = None if settings.worker.pseudonymize_key else AIOKafkaProducer(**client_kwargs(settings.kafka),
                                                                             linger_ms=20)
    if client is not None:
        await client.start()

    async def consume(topic: str) -> None:
        async for r in iterate_topic(settings.kafka, topic, from_beginning=True, stop=stop):
            if r.get("tombstone"):
                continue  # an erased user's lists
            if topic == RECOMMENDATIONS:
                if client is not None and r["items"] and r.get("refresh") == "event":
                    await client.send(IMPRESSIONS, impression(r), key=r["user_id"].encode())
                now = time.time()
                recs.append((now, r["generated_at"] - r.get("ingested_at", r["generated_at"])))
                recent.append((now, r))
                stats["recommendations"] += 1
                if stats["first_recommendation_s"] is None:
                    stats["first_recommendation_s"] = time.monotonic() - started
                stats["serving"] = r["model_version"]
                if _trained(r["model_version"]):
                    stats["trained_lists"] += 1
                    if stats["first_trained_s"] is None:
                        stats["first_trained_s"] = time.monotonic() - started
                    stats["batch_items"].update(i["source"] for i in r["items"] if i["source"] in BATCH_SOURCES)
                samples.append(format_recommendation(r))
                if r["items"]:
                    with_items.append(r["user_id"])
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
            ctrs = " ".join(f"{arm}={_ctr(rec.get('ab'))}" for arm, rec in sorted(latest_longtail.items()))
            shares = source_shares(rec for t, rec in recent if t >= time.time() - 10)
            sources = " ".join(f"{source} {share:.0%}" for source, share in shares.items())
            print(f"[{now - started:5.0f}s] events {sent[0]:>7} ({(sent[0] - last_sent) / dt:5.0f}/s)  "
                  f"recs {stats['recommendations']:>7} ({(stats['recommendations'] - last_recs) / dt:5.0f}/s)  "
                  f"latency p50 {p50:5.0f} ms p99 {p99:5.0f} ms  tail share {tails or '-'}\n"
                  f"        model {stats['serving'] or '-'}  sources {sources or '-'}\n"
                  f"        CTR of displayed lists {ctrs or '-'}", flush=True)
            while samples:
                print("    " + samples.popleft(), flush=True)
            if stats["curl"] is None and with_items:
                url = f"{api_url}/recommendations/{urllib.parse.quote(with_items[0], safe='')}?n=5"
                if await asyncio.to_thread(_api_serves, url):
                    stats["curl"] = f"curl '{url}'"
                    print(f"read API: {stats['curl']}", flush=True)
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
        if client is not None:
            await client.stop()
    return {**stats, "longtail": latest_longtail}


async def _demo(settings: Settings, args: argparse.Namespace, started: float, procs: dict[str, subprocess.Popen],
                workdir: Path, api_url: str) -> dict:
    source = source_from_args(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sent = [0]

    def progress(n: int, _elapsed: float) -> None:
        sent[0] = n

    watcher = asyncio.create_task(_watch(settings, sent=sent, stop=stop, started=started, duration=args.duration,
                                         procs=procs, workdir=workdir, api_url=api_url))
    await replay(settings.kafka, source, rate=args.rate, progress=progress, stop=stop)
    print(f"replay finished: {sent[0]} events; still showing recommendations (Ctrl-C to stop)", flush=True)
    return await watcher


def _where_metrics_are(settings: Settings, api_url: str) -> str:
    """Where to look at the metrics while the demo runs."""
    ports = {role: settings.metrics_port_for(role) for role in ROLES}
    endpoints = ", ".join([*(f"{role} http://127.0.0.1:{port}/metrics" for role, port in ports.items() if port),
                           f"api {api_url}/metrics"])
    return (f"metrics: {endpoints or 'Prometheus endpoints off (TAILCAST_METRICS_PORT=0)'}; long-tail records on "
            f"the {LONGTAIL_METRICS} topic (tailcast tail --topic {LONGTAIL_METRICS}); Prometheus and Grafana: "
            "infra/prometheus/prometheus.local.yml and infra/grafana (README, Deployment)")


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tailcast-demo-"))
    env = dict(os.environ)
    broker, settings = start_broker(settings, env, workdir)
    if broker is not None:
        print(f"embedded broker on {broker.address} (memory only)", flush=True)
    env.setdefault("TAILCAST_STATE_DIR", str(workdir / "state"))
    env.setdefault("TAILCAST_METRICS_INTERVAL_S", "2")
    env.setdefault("TAILCAST_CHECKPOINT_DIR", str(workdir / "checkpoints"))  # a fresh start: no old checkpoint
    for name, value in DEMO_TRAINER_ENV.items():
        env.setdefault(name, value)
    env.setdefault("TAILCAST_API_PORT", str(free_port()))
    api_url = f"http://127.0.0.1:{env['TAILCAST_API_PORT']}"
    procs: dict[str, subprocess.Popen] = {}
    try:
        asyncio.run(ensure_topics(settings.kafka))
        for role in ROLES:
            procs[role] = spawn_role(role, env, workdir / f"{role}.log")
        print(f"worker, scorer, trainer and api started (logs in {workdir}); checkpoints in "
              f"{env['TAILCAST_CHECKPOINT_DIR']}; read API on {api_url}", flush=True)
        print(_where_metrics_are(settings, api_url), flush=True)
        stats = asyncio.run(_demo(settings, args, started, procs, workdir, api_url))
        first, trained = stats["first_recommendation_s"], stats["first_trained_s"]
        print(f"demo done: {stats['recommendations']} recommendations; first after "
              f"{'-' if first is None else f'{first:.1f}s'}", flush=True)
        if stats["curl"] is None:
            print(f"the read API served no list while the demo ran (see {workdir / 'api.log'})", flush=True)
        if trained is None:
            print("no list from a trained checkpoint yet: the trainer needed longer than the demo ran "
                  f"(see {workdir / 'trainer.log'})", flush=True)
        else:
            batch = ", ".join(f"{n} {source}" for source, n in sorted(stats["batch_items"].items())) or "none"
            print(f"first list from a trained checkpoint after {trained:.1f}s; {stats['trained_lists']} lists "
                  f"from checkpoints, newest {stats['serving']}; their batch-model items: {batch}", flush=True)
        for arm, rec in sorted(stats["longtail"].items()):
            if rec.get("ab"):
                ab = rec["ab"]
                print(f"A/B {arm}: {ab['impressions']} lists displayed, CTR {_ctr(ab)}, tail CTR "
                      f"{_ctr({'ctr': ab['tail_ctr']})}, tail share of clicks {_ctr({'ctr': ab['tail_click_share']})}",
                      flush=True)
        return 0 if stats["recommendations"] and not stats["failed"] else 1
    finally:
        stop_processes(procs.values())
        if broker is not None:
            broker.stop()
