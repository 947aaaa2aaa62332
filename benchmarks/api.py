"""The read API's latency under load (docs/design.md §7: p99 < 10 ms at 1,000 requests/s beside a running stream).

    python -m benchmarks.api [--quick] [--rate 1000] [--duration 20] [--stream-rate 300]

A broker, a worker, a scorer and one ``tailcast api`` instance (it owns every partition: nothing is
forwarded); a feeder process publishes synthetic events at ``--stream-rate`` all along, so the api stores
new lists while it answers. Once the api answers 200 for every user of the first events, this process fires
``GET /recommendations/{user}?n=10`` open loop: a 2 s ramp up to ``--rate`` (not measured: the client's
connections open), then ``--rate`` for ``--duration`` seconds. Each request is sent at its planned time,
whatever the answers before it did, and its latency runs from that planned time, so queueing in the client or
the server is counted, not hidden by a client that waits. One request in ten asks for an unknown user (404,
a valid answer, counted apart from errors). The load runs twice: first with every process at the same CPU
priority (``equal_priority_*``), then, for the headline figures, with the stream's roles (worker, scorer,
feeder) at nice :data:`STREAM_NICE`, the serving path first, as docker-compose's ``cpu_shares`` deploy it.

The client (:class:`_Client`: raw asyncio transports, at most 64 keep-alive connections) runs in a process of
its own session and shares the machine's cores with the broker, the feeder and the three roles; ``send_lag`` says how late it sent (part of
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
import collections
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.parse
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
#: The CPU priority (nice) of the stream's roles (worker, scorer, feeder) in the headline measurement: CFS
#: weight 110 against the api's 1024, the serving path first, as docker-compose's ``cpu_shares`` give it. The
#: same load at equal priority is measured first (``equal_priority_*``).
STREAM_NICE = 10
#: Seconds the api's CPU is measured with the stream running and no requests, before the load.
IDLE_S = 3.0


def _feed(kafka, events: list[dict], rate: float) -> None:
    """The running stream (in its own process, so that it takes no time from the client's event loop)."""
    from streams.tools import ReplaySource, replay

    asyncio.run(replay(kafka, ReplaySource("api-bench-stream", [], events), rate=rate))


def _bare_server(port: int, body: bytes) -> None:
    """The floor the api is compared with: a bare aiohttp server answering every GET with ``body`` (in a session of
    its own, as the api is)."""
    from aiohttp import web

    os.setsid()

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


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection of :class:`_Client`, one request at a time."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.current: int | None = None  # the request in flight

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.client.ready(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.current is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                eol = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : eol if eol >= 0 else len(head)])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            i, self.current = self.current, None
            self.client.answered(self, i, int(head[9:12]))

    def connection_lost(self, exc) -> None:
        self.client.lost(self)


class _Client:
    """An open-loop HTTP/1.1 load client on asyncio's transports: requests are bytes made beforehand and an
    answer is read by its Content-Length, so the client spends a few tens of µs of CPU a request (aiohttp's
    client, measured on this machine, several hundred: on two cores, that CPU is taken from the server it
    measures). At most :data:`CONNECTIONS` keep-alive connections; a request finding all busy waits for one
    (counted: its latency runs from its planned time)."""

    def __init__(self, host: str, port: int, requests: list[bytes], plan: list[float]) -> None:
        self.host, self.port, self.requests, self.plan = host, port, requests, plan
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Connection] = []
        self.waiting: collections.deque[int] = collections.deque()
        self.opening = 0
        self.open = 0
        self.start = 0.0
        self.sent = [0.0] * len(requests)
        self.outcomes: list[Outcome | None] = [None] * len(requests)
        self.left = len(requests)
        self.done = asyncio.Event()

    def _connect(self) -> None:
        self.opening += 1
        task = self.loop.create_task(self.loop.create_connection(lambda: _Connection(self), self.host, self.port))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task) -> None:
        self.opening -= 1
        if task.exception() is not None:
            while self.waiting and not self.open and not self.opening:  # nothing will ever take them
                self._finish(self.waiting.popleft(), 0)

    def ready(self, conn: _Connection) -> None:
        self.open += 1
        self._next(conn)

    def _write(self, conn: _Connection, i: int) -> None:
        conn.current = i
        self.sent[i] = self.loop.time()
        conn.transport.write(self.requests[i])

    def _next(self, conn: _Connection) -> None:
        if self.waiting:
            self._write(conn, self.waiting.popleft())
        else:
            self.idle.append(conn)

    def send(self, i: int) -> None:
        if self.idle:
            self._write(self.idle.pop(), i)
            return
        self.waiting.append(i)
        if self.open + self.opening < CONNECTIONS:
            self._connect()

    def answered(self, conn: _Connection, i: int, status: int) -> None:
        self._finish(i, status)
        self._next(conn)

    def lost(self, conn: _Connection) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.current is not None:
            self._finish(conn.current, 0)

    def _finish(self, i: int, status: int) -> None:
        if self.outcomes[i] is not None:
            return
        planned = self.start + self.plan[i]
        sent = self.sent[i] or self.loop.time()
        self.outcomes[i] = Outcome(self.plan[i], sent - planned, status, self.loop.time() - planned)
        self.left -= 1
        if not self.left:
            self.done.set()

    async def run(self, warm_connections: int) -> None:
        for _ in range(warm_connections):
            self._connect()
        while self.opening:
            await asyncio.sleep(0.01)
        self.start = self.loop.time() + 0.1
        n, i = len(self.requests), 0
        while i < n:
            now = self.loop.time()
            while i < n and self.start + self.plan[i] <= now:  # every request due by now, each timed from its plan
                self.send(i)
                i += 1
            if i < n:
                await asyncio.sleep(self.start + self.plan[i] - self.loop.time())
        try:
            await asyncio.wait_for(self.done.wait(), REQUEST_TIMEOUT_S)
        except asyncio.TimeoutError:
            for j in range(n):
                self._finish(j, 0)  # not answered in time: an error
        for conn in list(self.idle):
            conn.transport.close()


async def _load(base: str, users: list[str], rate: float, ramp_s: float, seconds: float) -> list[Outcome]:
    """GET ``/recommendations/{user}?n=10`` for ``users[i % len(users)]``, open loop: the rate climbs from 0 to
    ``rate`` over ``ramp_s`` seconds, then holds for ``seconds``. Latencies run from each request's planned
    send time; the figures count from the end of the ramp (``Outcome.planned`` >= 0)."""
    url = urllib.parse.urlsplit(base)
    n_ramp = int(rate * ramp_s / 2)
    n = n_ramp + int(rate * seconds)
    # planned send times (s): i requests by t = rate t^2 / (2 ramp_s) on the ramp, then one every 1/rate
    plan = [(2 * i * ramp_s / rate) ** 0.5 if i < n_ramp else ramp_s + (i - n_ramp) / rate for i in range(n)]
    requests = [f"GET /recommendations/{users[i % len(users)]}?n=10 HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
                for i in range(n)]
    client = _Client(url.hostname, url.port, requests, plan)
    await client.run(warm_connections=8)
    return [Outcome(o.planned - ramp_s, o.send_lag, o.status, o.latency) for o in client.outcomes if o is not None]


def _client_process(base: str, users: list[str], rate: float, ramp_s: float, seconds: float, conn) -> None:
    """:func:`_load` in a process of its own session (its own autogroup, where the kernel groups sessions, at
    the default priority), sending back the outcomes, its CPU seconds and its seconds waiting for a core."""
    os.setsid()
    cpu0, wait0 = time.process_time(), _runqueue_wait_seconds(os.getpid())
    outcomes = asyncio.run(_load(base, users, rate, ramp_s, seconds))
    conn.send((outcomes, time.process_time() - cpu0, _runqueue_wait_seconds(os.getpid()) - wait0))
    conn.close()


def _load_apart(base: str, users: list[str], rate: float, ramp_s: float, seconds: float
                ) -> tuple[list[Outcome], float, float]:
    """:func:`_client_process` run to its end: (outcomes, client CPU seconds, client core-wait seconds)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_client_process, args=(base, users, rate, ramp_s, seconds, send), daemon=True)
    proc.start()
    send.close()
    try:
        return receive.recv()
    finally:
        proc.join(30)


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
                              n_events=n_warm + int(stream_rate * (2 * (duration + ramp_s) + 200)))
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

            def measure() -> tuple[list[Outcome], dict[str, float], float]:
                before = _snapshot(metrics, pids)
                t0 = time.monotonic()
                outcomes, client_cpu, client_wait = _load_apart(base, users, rate, ramp_s, duration)
                elapsed = time.monotonic() - t0
                after = _snapshot(metrics, pids)
                return outcomes, {**{k: after[k] - before[k] for k in before}, "client_cpu": client_cpu,
                                  "client_wait": client_wait}, elapsed

            equal = measure()  # every process at the same CPU priority
            for role in ("worker", "scorer"):  # each in its own session: its threads and its autogroup
                _lower_priority(pids[role], STREAM_NICE, autogroup=True)
            # the broker and the feeder: their threads, and this process's session's autogroup, which holds them
            # (the client and the bare server run in sessions of their own)
            for pid in (feeder.pid, broker.pid):
                _lower_priority(pid, STREAM_NICE, autogroup=False)
            _lower_priority(os.getpid(), STREAM_NICE, autogroup=True, threads=False)
            outcomes, delta, elapsed = measure()
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
    eq_outcomes, eq_delta, eq_elapsed = equal
    eq_figures = _figures(eq_outcomes)
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
        "stream_nice": float(STREAM_NICE),
        **{f"equal_priority_{k}": eq_figures[k] for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "errors")},
        "equal_priority_stream_events_per_s": eq_delta["worker_events"] / eq_elapsed,
        "equal_priority_api_runqueue_wait_share": eq_delta["api_wait"] / eq_elapsed,
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
    log(f"  at equal CPU priority (before the stream's roles got nice {STREAM_NICE}): "
        f"p50 {figures['equal_priority_p50_ms']:.2f} ms, p99 {figures['equal_priority_p99_ms']:.2f} ms, "
        f"stream {figures['equal_priority_stream_events_per_s']:.0f} events/s; the api waited for a core "
        f"{figures['equal_priority_api_runqueue_wait_share']:.2f} s a second")
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
        outcomes, _client_cpu, _client_wait = _load_apart(url, users, rate, ramp_s, duration)
        cpu, elapsed = cpu_seconds(server.pid) - cpu0, time.monotonic() - t0
        wait = _runqueue_wait_seconds(server.pid) - wait0
        figures = _figures(outcomes)
    finally:
        server.terminate()
        server.join(10)
    return {"bare_p50_ms": figures["p50_ms"], "bare_p99_ms": figures["p99_ms"], "bare_rps": figures["rps"],
            "bare_cpu_share": cpu / elapsed, "bare_cpu_us_per_request": 1e6 * cpu / len(outcomes),
            "bare_runqueue_wait_share": wait / elapsed}


def _lower_priority(pid: int, nice: int, *, autogroup: bool, threads: bool = True) -> None:
    """Give every thread of ``pid`` the CPU priority ``nice`` (``threads``) and its session's autogroup (with
    ``autogroup``, where the kernel groups sessions: there the group's nice is what weighs against other
    sessions). Raising a nice value needs no privilege."""
    for task in Path(f"/proc/{pid}/task").iterdir() if threads else ():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile
    if autogroup:
        try:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
        except OSError:
            pass  # no autogroups on this kernel: the threads' nice is what counts


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
        "machine_cpu": _machine_busy_seconds(),
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
