"""The read API's latency under load (docs/design.md §7: p99 < 10 ms at 1,000 requests/s beside a running stream).

    python -m benchmarks.api [--quick] [--rate 1000] [--duration 20] [--stream-rate 300]

A broker, a worker, a scorer and one ``tailcast api`` instance (it owns every partition: nothing is
forwarded); a feeder process publishes synthetic events at ``--stream-rate`` all along, so the api stores
new lists while it answers. Once the api answers 200 for every user of the first events, this process fires
``GET /recommendations/{user}?n=10`` open loop: a 2 s ramp up to ``--rate`` (not measured: the client's
connections open), then ``--rate`` for ``--duration`` seconds. Each request is sent at its planned time,
whatever the answers before it did, and its latency runs from that planned time, so queueing in the client or
the server is counted, not hidden by a client that waits. One request in ten asks for an unknown user (404,
a valid answer, counted apart from errors).

The client (aiohttp, one session of at most 64 keep-alive connections) runs in this process and shares the
machine's cores with the broker, the feeder and the three roles; ``send_lag`` says how late it sent (part of
every latency). Figures: ``rps`` (answers per second over the window), ``p50_ms``, ``p99_ms``, ``p999_ms``,
``max_ms``, counts by outcome, ``server_mean_ms`` (the api's own handling time, from its latency histogram), CPU
shares of the roles and the client, the api's CPU per request (its share with the stream alone, measured for 3 s
before the load, taken out), the share of time the api's and the client's main threads waited for a core while
runnable (``*_runqueue_wait_share``, from /proc/PID/schedstat), how busy the whole machine was
(``machine_busy_cores``, other people's processes included: on a shared machine they take CPU the api needs),
the stream's rate during the window (events the worker read, lists the api stored), and ``bare_`` figures: the
same load right after on a bare aiohttp server answering a stored list's body, beside the same stream (the floor
that the framework and the machine set at that moment; the api's cost is what it adds to it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import fresh_broker, percentile, pipeline_setup, wait_until, workdir
from benchmarks.freshness import CLK_TCK, cpu_seconds
from streams.broker import free_port
from streams.metrics import read_metric
from streams.processes import spawn_role, stop_processes

__all__ = ["run"]

#: Share of the requests that ask for a user without a list (answered 404).
UNKNOWN_SHARE = 0.1
#: A request not answered within this many seconds counts as an error (its latency as this long).
REQUEST_TIMEOUT_S = 5.0
#: The client's keep-alive connections to the api, at most: well above what 1,000 requests/s of ~1 ms need.
CONNECTIONS = 64
#: Seconds the api's CPU is measured with the stream running and no requests, before the load.
IDLE_S = 3.0


def _feed(kafka, events: list[dict], rate: float) -> None:
    """The running stream (in its own process, so that it takes no time from the client's event loop)."""
    from streams.tools import ReplaySource, replay

    asyncio.run(replay(kafka, ReplaySource("api-bench-stream", [], events), rate=rate))


def _bare_server(port: int, body: bytes) -> None:
    """The floor the api is compared with: a bare aiohttp server answering every GET with ``body``."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/recommendations/{user_id}", answer)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@dataclass(slots=True)
class Outcome:
    """One request: planned send time (s since the load started), how late it was sent, status (0: failed)
    and latency from the planned time."""

    planned: float
    send_lag: float
    status: int
    latency: float


async def _load(base: str, users: list[str], rate: float, ramp_s: float, seconds: float) -> list[Outcome]:
    """GET ``/recommendations/{user}?n=10`` for ``users[i % len(users)]``, open loop: the rate climbs from 0 to
    ``rate`` over ``ramp_s`` seconds (the client's connections open), then holds for ``seconds``."""
    import aiohttp
    from yarl import URL

    n_ramp = int(rate * ramp_s / 2)
    n = n_ramp + int(rate * seconds)
    # planned send times (s): i requests by t = rate t^2 / (2 ramp_s) on the ramp, then one every 1/rate
    plan = [(2 * i * ramp_s / rate) ** 0.5 if i < n_ramp else ramp_s + (i - n_ramp) / rate for i in range(n)]
    urls = [URL(f"{base}/recommendations/{users[i % len(users)]}?n=10", encoded=True) for i in range(n)]
    outcomes: list[Outcome | None] = [None] * n
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)  # a request finding all busy waits (counted: it is late)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        start = loop.time() + 0.1

        async def one(i: int) -> None:
            planned = start + plan[i]
            sent = loop.time()
            try:
                async with session.get(urls[i]) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            outcomes[i] = Outcome(plan[i] - ramp_s, sent - planned, status, loop.time() - planned)

        tasks: set[asyncio.Task] = set()
        i = 0
        while i < n:
            now = loop.time()
            while i < n and start + plan[i] <= now:  # every request due by now, each timed from its plan
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < n:
                await asyncio.sleep(start + plan[i] - loop.time())
        await asyncio.gather(*tasks)
    return [o for o in outcomes if o is not None]


def _figures(outcomes: list[Outcome]) -> dict[str, float]:
    window = [o for o in outcomes if o.planned >= 0]
    answered = [o for o in window if o.status in (200, 404)]
    lat = [o.latency for o in window]
    span = max(o.planned + o.latency for o in window) - min(o.planned for o in window)
    return {
        "rps": len(answered) / span,
        "p50_ms": 1000 * percentile(lat, 50),
        "p99_ms": 1000 * percentile(lat, 99),
        "p999_ms": 1000 * percentile(lat, 99.9),
        "max_ms": 1000 * max(lat),
        "requests": float(len(window)),
        "ok_200": float(sum(o.status == 200 for o in window)),
        "not_found_404": float(sum(o.status == 404 for o in window)),
        "errors": float(len(window) - len(answered)),
        "send_lag_p50_ms": 1000 * percentile([o.send_lag for o in window], 50),
        "send_lag_p99_ms": 1000 * percentile([o.send_lag for o in window], 99),
    }


def run(*, quick: bool = False, rate: float = 1000.0, duration: float | None = None, stream_rate: float = 300.0,
        log=print) -> dict[str, float]:
    from streams.tools import synthetic_source

    duration = duration or (3.0 if quick else 20.0)
    ramp_s = 2.0
    n_warm = 600 if quick else 1500  # the users of these first events are the known ones
    source = synthetic_source(n_users=2000, n_items=1000, seed=2,
                              n_events=n_warm + int(stream_rate * (duration + ramp_s + 200)))
    work = workdir("api")
    log(f"api: {rate:g} requests/s for {duration:g}s (after a {ramp_s:g}s ramp) on one api instance, beside "
        f"a stream of {stream_rate:g} events/s through a worker and a scorer; logs in {work}")
    with fresh_broker(work) as broker:
        env, settings = pipeline_setup(broker, work, source.items)
        ports = {role: free_port() for role in ("worker", "scorer", "api")}
        procs: dict[str, subprocess.Popen] = {}
        feeder = None
        try:
            for role in ("worker", "scorer"):
                procs[role] = spawn_role(role, {**env, "TAILCAST_METRICS_PORT": str(ports[role])},
                                         work / f"{role}.log")
            procs["api"] = spawn_role("api", {**env, "TAILCAST_API_PORT": str(ports["api"])}, work / "api.log")
            base = f"http://127.0.0.1:{ports['api']}"
            metrics = {"worker": f"http://127.0.0.1:{ports['worker']}/metrics",
                       "scorer": f"http://127.0.0.1:{ports['scorer']}/metrics", "api": f"{base}/metrics"}

            def up() -> bool:
                if any(p.poll() is not None for p in procs.values()):
                    raise RuntimeError(f"a role exited early; see the logs in {work}")
                try:
                    loaded = read_metric(metrics["scorer"], "tailcast_scorer_catalog_items") >= len(source.items)
                except OSError:
                    return False
                return loaded and _status(f"{base}/healthz") == 200

            wait_until(up, timeout=180, message="the scorer's catalogue and the api serving (/healthz 200)")
            feeder = multiprocessing.get_context("spawn").Process(
                target=_feed, args=(settings.kafka, source.events, stream_rate), daemon=True)
            feeder.start()
            known = sorted({e["user_id"] for e in source.events[:n_warm]})
            pending = set(known)

            def stored() -> bool:
                pending.difference_update([u for u in list(pending)
                                           if _status(f"{base}/recommendations/{u}?n=1") == 200])
                return not pending

            wait_until(stored, timeout=180, interval=0.5,
                       message=f"the api to answer 200 for each of the {len(known)} users of the first events")
            rng = random.Random(0)
            users = [f"unknown-{k}" if rng.random() < UNKNOWN_SHARE else rng.choice(known)
                     for k in range(int(rate * (duration + ramp_s)))]
            pids = {role: p.pid for role, p in procs.items()}
            idle0, t0 = cpu_seconds(pids["api"]), time.monotonic()
            time.sleep(IDLE_S)  # a measuring window: the api's CPU with the stream running and no requests
            idle_share = (cpu_seconds(pids["api"]) - idle0) / (time.monotonic() - t0)
            before = _snapshot(metrics, pids)
            t0 = time.monotonic()
            outcomes = asyncio.run(_load(base, users, rate, ramp_s, duration))
            elapsed = time.monotonic() - t0
            after = _snapshot(metrics, pids)
            with urllib.request.urlopen(f"{base}/recommendations/{known[0]}?n=10", timeout=5) as response:
                body = response.read()
            bare = _bare(body, users, rate, ramp_s, duration)
            if not feeder.is_alive():
                raise RuntimeError("the stream ended before the load did: give the feeder more events")
        finally:
            if feeder is not None and feeder.is_alive():
                feeder.terminate()
                feeder.join(10)
            stop_processes(procs.values())
    figures = _figures(outcomes)
    delta = {k: after[k] - before[k] for k in before}
    figures.update({
        "offered_rps": rate,
        "known_users": float(len(known)),
        "stream_events_per_s": delta["worker_events"] / elapsed,
        "stream_lists_per_s": delta["api_lists"] / elapsed,
        "server_mean_ms": 1000 * delta["api_latency_sum"] / delta["api_latency_count"]
        if delta["api_latency_count"] else float("nan"),
        **{f"{role}_cpu_share": delta[f"{role}_cpu"] / elapsed for role in ("api", "worker", "scorer", "client")},
        "api_idle_cpu_share": idle_share,
        "api_runqueue_wait_share": delta["api_wait"] / elapsed,
        "client_runqueue_wait_share": delta["client_wait"] / elapsed,
        # the api's CPU per answer, its CPU for the stream alone (the idle share) taken out
        "api_cpu_us_per_request": 1e6 * (delta["api_cpu"] - idle_share * elapsed) / (delta["api_latency_count"] or 1),
        "machine_busy_cores": delta["machine_cpu"] / elapsed,
        "cores": float(os.cpu_count() or 1),
        "load_1m": os.getloadavg()[0],
        **bare,
    })
    log(f"  {figures['rps']:,.0f} answers/s: p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms, "
        f"max {figures['max_ms']:.1f} ms over {figures['requests']:,.0f} requests ({figures['ok_200']:,.0f} 200, "
        f"{figures['not_found_404']:,.0f} 404, {figures['errors']:,.0f} errors); api's own handling "
        f"{figures['server_mean_ms']:.2f} ms mean, {figures['api_cpu_us_per_request']:.0f} us CPU a request; "
        f"client sent p99 {figures['send_lag_p99_ms']:.2f} ms late; "
        f"stream {figures['stream_events_per_s']:.0f} events/s, {figures['stream_lists_per_s']:.0f} lists/s "
        "stored; CPU share " + ", ".join(f"{role} {figures[f'{role}_cpu_share']:.2f}"
                                          for role in ("api", "worker", "scorer", "client"))
        + f"; the machine {figures['machine_busy_cores']:.2f} of {figures['cores']:.0f} cores busy (all processes), "
        f"load {figures['load_1m']:.1f}; the api waited for a core {figures['api_runqueue_wait_share']:.2f} s a second")
    log(f"  bare aiohttp server, same load and stream: p50 {figures['bare_p50_ms']:.2f} ms, "
        f"p99 {figures['bare_p99_ms']:.2f} ms, {figures['bare_cpu_us_per_request']:.0f} us CPU a request, "
        f"waited for a core {figures['bare_runqueue_wait_share']:.2f} s a second")
    return figures


def _bare(body: bytes, users: list[str], rate: float, ramp_s: float, duration: float) -> dict[str, float]:
    """The same load on :func:`_bare_server` answering ``body``, beside the same stream: the framework's floor
    on this machine at this moment (``bare_`` figures)."""
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_bare_server, args=(port, body), daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(f"{url}/recommendations/x") == 200 or not server.is_alive(), timeout=60,
                   message="the bare aiohttp server")
        cpu0, wait0, t0 = cpu_seconds(server.pid), _runqueue_wait_seconds(server.pid), time.monotonic()
        outcomes = asyncio.run(_load(url, users, rate, ramp_s, duration))
        cpu, elapsed = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
        wait = _runqueue_wait_seconds(server.pid) - wait0
        figures = _figures(outcomes)
    finally:
        server.terminate()
        server.join(10)
    return {"bare_p50_ms": figures["p50_ms"], "bare_p99_ms": figures["p99_ms"], "bare_rps": figures["rps"],
            "bare_cpu_share": cpu / elapsed, "bare_cpu_us_per_request": 1e6 * cpu / len(outcomes),
            "bare_runqueue_wait_share": wait / elapsed}


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every process: ours and anyone else's), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait


def _runqueue_wait_seconds(pid: int) -> float:
    """Seconds the main thread of ``pid`` has been runnable but waiting for a core (/proc/PID/schedstat; 0.0
    where the kernel does not keep it): a role the machine starves waits there, not in its own code."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _snapshot(metrics: dict[str, str], pids: dict[str, int]) -> dict[str, float]:
    """Counters read before and after the load: the stream's progress, the api's own latency, CPU seconds."""
    label = 'endpoint="recommendations"'
    return {
        "worker_events": read_metric(metrics["worker"], "tailcast_worker_events_consumed_total"),
        "api_lists": read_metric(metrics["api"], "tailcast_api_lists_received_total"),
        "api_latency_sum": read_metric(metrics["api"], "tailcast_api_request_latency_seconds_sum", label),
        "api_latency_count": read_metric(metrics["api"], "tailcast_api_request_latency_seconds_count", label),
        "client_cpu": time.process_time(),
        "machine_cpu": _machine_busy_seconds(),
        "client_wait": _runqueue_wait_seconds(os.getpid()),
        "api_wait": _runqueue_wait_seconds(pids["api"]),
        **{f"{role}_cpu": cpu_seconds(pid) for role, pid in pids.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 s of load instead of 20")
    p.add_argument("--rate", type=float, default=1000.0, help="requests/s (default 1000)")
    p.add_argument("--duration", type=float, default=None, help="seconds of load after the warm-up (default 20)")
    p.add_argument("--stream-rate", type=float, default=300.0, help="events/s of the running stream (default 300)")
    args = p.parse_args(argv)
    print(json.dumps(run(quick=args.quick, rate=args.rate, duration=args.duration, stream_rate=args.stream_rate),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
