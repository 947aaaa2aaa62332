"""Freshness (docs/design.md §7): event-to-recommendation latency and the highest sustained rate, live pipeline.

One fresh embedded broker, one ``tailcast worker`` and one ``tailcast scorer`` subprocess, with
``TAILCAST_TEXT_ENCODER=hashing`` (the token-hashing item encoder instead of MiniLM, to measure the
pipeline rather than the text model). The items are published first; a short warm-up waits until the
first recommendations come back; then ``streams.tools.replay`` publishes the synthetic stream at each
fixed rate (500, 1000, 2000 events/s, ~20 s each), with a drain pause between rates.

* latency of a recommendation = ``generated_at - ingested_at`` (fields of the ``recommendations``
  contract: scorer wall time at publication minus the Kafka time of the oldest event it newly reflects),
  over the recommendations whose ``ingested_at`` falls inside the rate's window: p50 and p99;
* lag = events published - events reflected (sum over users of the highest ``user_event_count`` seen in
  the recommendations), sampled every second. A rate is *sustained* when the lag at the end of the run
  is at most the lag at one third of it plus a margin of half a second of events (each lag the median of
  the samples around that point, see ``_sustained``).

Also reported per rate: CPU share (1.0 = one full core) and CPU per event of the worker, the scorer, the broker
and this process (``load``: the replay's producer and the consumer of the lists), so a miss names its bottleneck
on a machine whose cores they share. ``--env TAILCAST_NAME=VALUE`` (repeatable) gives the worker and the scorer a
setting, e.g. ``TAILCAST_METRICS_INTERVAL_S=0`` to run the scorer without its exposure and impressions agents.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from benchmarks.common import fresh_broker, median, percentile, pipeline_setup, python, wait_until, workdir
from streams.broker import free_port

__all__ = ["run"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class Tracker:
    """What the consumer has seen: per-user reflected counts, and per recommendation its ``ingested_at``,
    end-to-end latency and the two stages (worker: ``requested_at - ingested_at`` of the score request it
    answers, scorer: ``generated_at - requested_at``)."""

    reflected: dict[str, int] = field(default_factory=dict)
    total: int = 0
    requested: dict[tuple[str, int], float] = field(default_factory=dict)
    # (ingested_at, end-to-end, worker stage, scorer stage); stages NaN when the request was not seen
    latencies: list[tuple[float, float, float, float]] = field(default_factory=list)

    def observe_request(self, req: dict) -> None:
        self.requested[(req["user_id"], req["event_count"])] = req["requested_at"]

    def observe(self, rec: dict) -> None:
        user, count = rec["user_id"], rec["user_event_count"]
        prev = self.reflected.get(user, 0)
        if count > prev:
            self.reflected[user] = count
            self.total += count - prev
        requested = self.requested.pop((user, count), float("nan"))
        ingested, generated = rec["ingested_at"], rec["generated_at"]
        self.latencies.append((ingested, generated - ingested, requested - ingested, generated - requested))


async def _follow(settings, tracker: Tracker, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka import client_kwargs
    from streams.topics import RECOMMENDATIONS, SCORE_REQUESTS

    # a short fetch wait: the embedded broker answers a fetch only when its wait expires (see the report)
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for topic in (SCORE_REQUESTS, RECOMMENDATIONS)
               for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            # requests first: a recommendation fetched with the request it answers finds it
            for tp in sorted(batch, key=lambda tp: tp.topic != SCORE_REQUESTS):
                observe = tracker.observe_request if tp.topic == SCORE_REQUESTS else tracker.observe
                for r in batch[tp]:
                    observe(orjson.loads(r.value))
    finally:
        await consumer.stop()


async def _wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def _sustained(samples: list[tuple[float, int]], duration: float, rate: float) -> tuple[bool, float, float]:
    """(sustained, lag at 1/3, lag at the end) from (seconds since start, lag) samples.

    Each lag is the median of the samples within 1.5 s of the point (the end: the last 3 s), which smooths
    the saw-tooth that fetch waits and micro-batches put on it; the margin is half a second of events.
    """
    if not samples:
        return False, float("nan"), float("nan")

    def around(t0: float, t1: float) -> float:
        near = [lag for t, lag in samples if t0 <= t <= t1]
        return median(near) if near else min(samples, key=lambda s: abs(s[0] - t0))[1]

    third = around(duration / 3 - 1.5, duration / 3 + 1.5)
    end = around(duration - 3.0, duration)
    return end <= third + 0.5 * rate, float(third), float(end)


async def _phases(settings, events: list[dict], rates: list[float], duration: float, pids: dict[str, int],
                  log) -> dict[str, float]:
    from streams.tools import ReplaySource, replay

    tracker = Tracker()
    stop = asyncio.Event()
    follower = asyncio.create_task(_follow(settings, tracker, stop))
    figures: dict[str, float] = {}
    try:
        # warm-up: both consumer groups joined, models warm, first recommendations back
        offset = 0
        warm = events[:400]
        offset = len(warm)
        await replay(settings.kafka, ReplaySource("warm-up", [], warm), rate=200)
        if not await _wait_for(lambda: tracker.total >= offset, timeout=120):
            raise TimeoutError(f"warm-up: {tracker.total} of {offset} events reflected after 120 s; "
                               "are the worker and scorer running?")
        for rate in rates:
            n = int(rate * duration)
            chunk = events[offset:offset + n]
            if len(chunk) < n:
                raise ValueError(f"need {n} more events, have {len(chunk)}")
            base_sent = offset
            samples: list[tuple[float, int]] = []
            started = time.monotonic()
            wall_start = time.time()
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}

            sent_now = [0]

            def progress(sent: int, elapsed: float) -> None:
                sent_now[0] = sent

            async def sample(base_sent=base_sent, samples=samples, started=started) -> None:
                while True:
                    await asyncio.sleep(0.25)
                    # `sent` is known from the paced rate between the replay's 1 s progress reports
                    t = time.monotonic() - started
                    sent = max(sent_now[0], min(n, int(rate * t)))
                    samples.append((t, base_sent + sent - tracker.total))

            sampler = asyncio.create_task(sample())
            try:
                sent = await replay(settings.kafka, ReplaySource(f"rate-{rate:g}", [], chunk), rate=rate,
                                    progress=progress)
            finally:
                sampler.cancel()
            elapsed = time.monotonic() - started
            wall_end = time.time()
            cpu = {name: (cpu_seconds(pid) - cpu0[name]) / elapsed for name, pid in pids.items()}
            offset += sent
            drained = await _wait_for(lambda: tracker.total >= offset, timeout=40)
            drain_s = time.monotonic() - started - elapsed
            # CPU spent on this rate's events (run + drain): load-independent cost per event
            cpu_used = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
            window = [x for x in tracker.latencies if wall_start <= x[0] <= wall_end]
            lat = [x[1] for x in window]
            worker_stage = [x[2] for x in window if x[2] == x[2]]
            scorer_stage = [x[3] for x in window if x[3] == x[3]]
            ok, lag_third, lag_end = _sustained(samples, elapsed, rate)
            key = f"{rate:g}"
            figures[f"rate_{key}_achieved_events_per_s"] = sent / elapsed
            figures[f"rate_{key}_p50_ms"] = 1000 * percentile(lat, 50)
            figures[f"rate_{key}_p99_ms"] = 1000 * percentile(lat, 99)
            figures[f"rate_{key}_recommendations"] = float(len(lat))
            figures[f"rate_{key}_worker_stage_p50_ms"] = 1000 * percentile(worker_stage, 50)
            figures[f"rate_{key}_worker_stage_p99_ms"] = 1000 * percentile(worker_stage, 99)
            figures[f"rate_{key}_scorer_stage_p50_ms"] = 1000 * percentile(scorer_stage, 50)
            figures[f"rate_{key}_scorer_stage_p99_ms"] = 1000 * percentile(scorer_stage, 99)
            figures[f"rate_{key}_lag_third"] = lag_third
            figures[f"rate_{key}_lag_end"] = lag_end
            figures[f"rate_{key}_sustained"] = 1.0 if ok else 0.0
            figures[f"rate_{key}_drain_s"] = drain_s if drained else float("nan")
            for name, share in cpu.items():
                figures[f"rate_{key}_{name}_cpu_share"] = share
                figures[f"rate_{key}_{name}_cpu_us_per_event"] = 1e6 * cpu_used[name] / sent
            # the rate each role could take with a whole core to itself (the load generator is not a role)
            figures[f"rate_{key}_cpu_bound_events_per_s"] = sent / max(c for name, c in cpu_used.items()
                                                                       if name != "load")
            log(f"  {rate:>6g}/s for {elapsed:.0f}s: p50 {figures[f'rate_{key}_p50_ms']:.0f} ms, "
                f"p99 {figures[f'rate_{key}_p99_ms']:.0f} ms over {len(lat)} lists (worker stage p50/p99 "
                f"{figures[f'rate_{key}_worker_stage_p50_ms']:.0f}/{figures[f'rate_{key}_worker_stage_p99_ms']:.0f} ms, "
                f"scorer stage {figures[f'rate_{key}_scorer_stage_p50_ms']:.0f}/"
                f"{figures[f'rate_{key}_scorer_stage_p99_ms']:.0f} ms); lag {lag_third:.0f} at 1/3 -> "
                f"{lag_end:.0f} at end ({'sustained' if ok else 'GROWING'}); "
                f"drained in {drain_s:.1f}s{'' if drained else ' (NOT drained)'}; CPU share "
                + ", ".join(f"{name} {share:.2f}" for name, share in cpu.items())
                + "; CPU per event " + ", ".join(f"{name} {1e6 * c / sent:.0f} us" for name, c in cpu_used.items())
                + f" (one core each: {figures[f'rate_{key}_cpu_bound_events_per_s']:,.0f} events/s)")
            if not drained:
                log("  stopping: the pipeline did not drain, later rates would measure the backlog")
                break
        sustained = [r for r in rates if figures.get(f"rate_{r:g}_sustained") == 1.0]
        figures["max_sustained_events_per_s"] = float(max(sustained)) if sustained else 0.0
        return figures
    finally:
        stop.set()
        await follower


def run(*, quick: bool = False, rates: list[float] | None = None, duration: float | None = None,
        extra_env: dict[str, str] | None = None, log=print) -> dict[str, float]:
    """The figures of the module doc; ``extra_env``: settings given to the worker and the scorer (``--env``)."""
    from streams.tools import synthetic_source

    rates = rates or ([500.0] if quick else [500.0, 1000.0, 2000.0])
    duration = duration or (8.0 if quick else 20.0)
    source = synthetic_source(n_users=2000, n_items=1000, n_events=int(sum(rates) * duration * 1.05) + 1000, seed=1)
    work = workdir("freshness")
    log(f"freshness: worker + scorer on one embedded broker, TAILCAST_TEXT_ENCODER=hashing; rates "
        f"{', '.join(f'{r:g}' for r in rates)} events/s, {duration:g}s each; logs in {work}")
    with fresh_broker(work) as broker:
        env, settings = pipeline_setup(broker, work, source.items)
        env.update(extra_env or {})
        procs: dict[str, subprocess.Popen] = {}
        ports: dict[str, int] = {}
        try:
            for role in ("worker", "scorer"):
                ports[role] = free_port()
                out = (work / f"{role}.log").open("ab")
                procs[role] = subprocess.Popen(
                    [python(), "-m", "streams.cli", role], env={**env, "TAILCAST_METRICS_PORT": str(ports[role])},
                    stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
            wait_until(lambda: _metric(ports["scorer"], "tailcast_scorer_catalog_items") >= len(source.items)
                       or _exited(procs), timeout=120, message="the scorer to load the item catalogue")
            if _exited(procs):
                raise RuntimeError(f"{_exited(procs)} exited early; see {work}")
            # the broker's CPU too (on 2 cores it competes with the scorer), and this process's: the replay's
            # producer and the recommendations' consumer ("load")
            pids = {**{role: p.pid for role, p in procs.items()}, "broker": broker.pid, "load": os.getpid()}
            figures = asyncio.run(_phases(settings, source.events, rates, duration, pids, log))
            count = _metric(ports["scorer"], "tailcast_scorer_batch_latency_seconds_count")
            if count:
                figures["scorer_batch_ms_mean"] = 1000 * _metric(
                    ports["scorer"], "tailcast_scorer_batch_latency_seconds_sum") / count
                figures["scorer_users_per_batch_mean"] = _metric(
                    ports["scorer"], "tailcast_scorer_batch_size_users_sum") / count
            return figures
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _exited(procs: dict[str, subprocess.Popen]) -> str:
    return ", ".join(name for name, p in procs.items() if p.poll() is not None)


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rates", default=None, help="comma-separated events/s (default 500,1000,2000)")
    p.add_argument("--duration", type=float, default=None, help="seconds per rate (default 20)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the worker and the scorer, e.g. TAILCAST_METRICS_INTERVAL_S=0 (repeatable)")
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")] if args.rates else None
    extra = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("TAILCAST_"):
            p.error(f"--env takes TAILCAST_NAME=VALUE, got {item!r}")
        extra[name] = value
    print(json.dumps(run(quick=args.quick, rates=rates, duration=args.duration, extra_env=extra), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
