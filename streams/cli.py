"""``tailcast`` command line: broker, worker, scorer, api, trainer, forget, replay, tail, demo, evaluate, settings."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys

from streams.app import create_app, faust_worker, stopped_by_signal
from streams.broker import BrokerError, EmbeddedBroker, wait_for_kafka
from streams.config import EMBEDDED_PORT, ConfigError, Settings, load_settings, settings_table
from streams.demo import run_demo
from streams.evaluate import add_arguments as add_evaluate_arguments
from streams.evaluate import run_evaluate
from streams.kafka import UnreachableReporter
from streams.metrics import serve_metrics
from streams.records import BadEvent, Forget
from streams.tools import replay, source_from_args, tail
from streams.topics import EVENTS, ensure_topics

__all__ = ["main", "build_parser", "freeze_startup_heap", "request_erasure"]

#: Allocations between young-generation collections in a worker or scorer (Python's: 700; freeze_startup_heap).
GC_YOUNG_THRESHOLD = 20_000
#: Longest a worker or scorer spends stopping after SIGTERM/SIGINT (what it did not commit is redelivered).
SHUTDOWN_GRACE_S = 15.0

log = logging.getLogger("tailcast")


def _logging(settings: Settings) -> None:
    level = {"warn": "WARNING", "crit": "CRITICAL"}.get(settings.log_level, settings.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    aiokafka_log = logging.getLogger("aiokafka")
    if not any(isinstance(h, UnreachableReporter) for h in aiokafka_log.handlers):
        aiokafka_log.addHandler(UnreachableReporter(settings.kafka.servers))


def _connect(settings: Settings, *, timeout: float) -> None:
    """Wait (with backoff) for the configured broker; a clear error naming the address otherwise."""
    try:
        wait_for_kafka(settings.kafka.servers, timeout=timeout)
    except BrokerError as exc:
        hint = ("start one with `tailcast broker` or set TAILCAST_KAFKA" if settings.kafka.embedded
                else "check TAILCAST_KAFKA and the network")
        raise SystemExit(f"tailcast: {exc}; {hint}") from None


def cmd_broker(settings: Settings, args: argparse.Namespace) -> int:
    host, port = "127.0.0.1", EMBEDDED_PORT
    if settings.kafka.bootstrap:
        first = settings.kafka.bootstrap.split(",")[0]
        host, _, port_text = first.rpartition(":")
        port = int(port_text)
    broker = EmbeddedBroker(host=host, port=port).start()
    print(f"tailcast broker: Tansu on {broker.address} (MEMORY ONLY: all data is lost when it stops)",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    try:
        return broker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()


def _torch_threads(settings: Settings) -> None:
    """One knob for the scorer's and trainer's compute threads: torch's pool and numpy's BLAS pool."""
    import threadpoolctl
    import torch  # lazily: seconds to import, and only the scorer and the trainer need it

    torch.set_num_threads(settings.scorer.torch_threads)
    # numpy's BLAS: a thread per core would contend with torch and the event loop on a small box
    threadpoolctl.threadpool_limits(settings.scorer.torch_threads, user_api="blas")


def freeze_startup_heap(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Exempt every object alive after start-up from the cyclic garbage collector (``gc.freeze``), and
    collect the young generation every ``young_threshold`` allocations (0 keeps Python's): both pauses were
    the freshness p99 (docs/results.md)."""
    gc.collect()
    gc.freeze()
    if young_threshold:
        _young, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)


def _run_faust_role(settings: Settings, role: str, args: argparse.Namespace) -> int:
    _connect(settings, timeout=args.connect_timeout)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    counts = loop.run_until_complete(ensure_topics(settings.kafka))
    if role == "scorer":
        _torch_threads(settings)
    built = create_app(settings, role=role, partitions=counts)
    port = settings.metrics_port_for(role)  # 0 for the api: its web server serves /metrics
    serve_metrics(built.registry, port)
    freeze_startup_heap()
    if role == "api":
        log.info("api: Kafka %s, topics %s, HTTP (recommendations, healthz, metrics) on :%d as %s",
                 settings.kafka.servers, counts, settings.api_port, built.app.conf.canonical_url)
    else:
        log.info("%s: Kafka %s, topics %s, metrics on :%s", role, settings.kafka.servers, counts, port or "off")
    worker = faust_worker(built.app, settings, loop, shutdown_grace_s=SHUTDOWN_GRACE_S)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        if stopped_by_signal(worker) or exc.code in (0, None):
            raise
        # a crash while the broker is away, or soon after an outage (Faust's consumer thread can crash
        # on its way out of one after the broker is back: seen 50 s later in CI): restart
        reporter = next((h for h in logging.getLogger("aiokafka").handlers
                         if isinstance(h, UnreachableReporter)), None)
        after_outage = reporter is not None and reporter.seen_within(300.0)
        if _broker_answers(settings) and not after_outage:
            raise
        _restart_when_broker_returns(settings, role)
    return 0


def _role_command(role: str):
    """The command of a Faust role: ``tailcast worker``, ``scorer`` or ``api``."""
    return lambda settings, args: _run_faust_role(settings, role, args)


def _broker_answers(settings: Settings) -> bool:
    try:
        wait_for_kafka(settings.kafka.servers, timeout=2.0)
    except BrokerError:
        return False
    return True


def _restart_when_broker_returns(settings: Settings, role: str) -> None:
    """The broker went away under a running worker: wait for it with backoff, then restart this process
    (state comes back from the changelog and committed offsets, as after a crash)."""
    log.error("lost the Kafka broker at %s; the %s waits for it (backoff up to 5 s) and restarts",
              settings.kafka.servers, role)
    wait_for_kafka(settings.kafka.servers, timeout=None)
    log.warning("Kafka at %s answers again; restarting the %s", settings.kafka.servers, role)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "streams.cli", *sys.argv[1:]])


def cmd_trainer(settings: Settings, args: argparse.Namespace) -> int:
    from streams.trainer import run_trainer  # lazily: it imports torch (seconds)

    _connect(settings, timeout=args.connect_timeout)
    _torch_threads(settings)
    return run_trainer(settings, once=args.once, dataset=args.dataset)


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    if not args.dataset and not args.synthetic:
        raise SystemExit("tailcast replay: give --dataset PATH or --synthetic")
    _connect(settings, timeout=args.connect_timeout)
    source = source_from_args(args)
    print(f"replaying {source.name}: {len(source.items)} items, {len(source.events)} events "
          f"at {'max' if not args.rate else args.rate} events/s", flush=True)

    def progress(sent: int, elapsed: float) -> None:
        print(f"  {sent} events in {elapsed:.1f}s ({sent / max(elapsed, 1e-9):.0f}/s)", flush=True)

    sent = asyncio.run(replay(settings.kafka, source, rate=args.rate, progress=progress))
    print(f"done: {sent} events", flush=True)
    return 0


def cmd_tail(settings: Settings, args: argparse.Namespace) -> int:
    _connect(settings, timeout=args.connect_timeout)
    try:
        asyncio.run(tail(settings.kafka, args.topic, from_beginning=args.from_beginning, max_records=args.max,
                         idle_timeout=args.idle_timeout, raw=args.raw))
    except KeyboardInterrupt:
        pass
    return 0


async def request_erasure(kafka, user_id: str) -> tuple[int, int]:
    """Write ``user_id``'s erasure request to ``events`` and wait for the broker to have it; its (partition,
    offset). :class:`~streams.records.BadEvent` for an id the worker would reject."""
    from aiokafka import AIOKafkaProducer

    from streams.kafka import client_kwargs

    key, value = Forget.record(user_id)
    producer = AIOKafkaProducer(**client_kwargs(kafka), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(EVENTS, value, key=key)
    finally:
        await producer.stop()
    return sent.partition, sent.offset


def cmd_forget(settings: Settings, args: argparse.Namespace) -> int:
    try:
        Forget.record(args.user_id)
    except BadEvent as exc:
        raise SystemExit(f"tailcast forget: bad user id: {exc}") from None
    _connect(settings, timeout=args.connect_timeout)
    partition, offset = asyncio.run(request_erasure(settings.kafka, args.user_id))
    print(f"erasure of user {args.user_id.strip()} requested ({EVENTS}[{partition}]@{offset}): the worker deletes "
          "the user's state, the scorer their lists and model rows, the api its stored list, the trainer their "
          "events", flush=True)
    return 0


def cmd_settings(settings: Settings, args: argparse.Namespace) -> int:
    print(settings_table())
    return 0


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="MovieLens dir/file (ratings.csv, u.data, ratings.dat), or a CSV/TSV or JSON "
                                     "lines (.gz too) naming user_id,item_id,ts[,event] or a public set's names")
    p.add_argument("--synthetic", action="store_true", help="the built-in long-tail synthetic stream")
    p.add_argument("--limit", type=int, default=None, help="first N events (time order)")
    p.add_argument("--users", type=int, default=2000, help="synthetic: users")
    p.add_argument("--items", type=int, default=1000, help="synthetic: items")
    p.add_argument("--events", type=int, default=50_000, help="synthetic: events")
    p.add_argument("--seed", type=int, default=0, help="synthetic: seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailcast", description=(
        "Streaming long-tail recommender. Settings come from TAILCAST_* environment variables "
        "(`tailcast settings` lists them); unset TAILCAST_KAFKA means the embedded broker."))
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("--connect-timeout", type=float, default=30.0,
                       help="seconds to wait for the broker (retries with backoff)")
        return p

    add("broker", cmd_broker, "Run the embedded Kafka-compatible broker (Tansu, memory only) on "
                              f"TAILCAST_KAFKA's address or 127.0.0.1:{EMBEDDED_PORT}.")
    add("worker", _role_command("worker"),
        "Run an ingest worker: validate events, keep user state, emit score requests.")
    add("scorer", _role_command("scorer"),
        "Run a scorer: micro-batch score requests, publish recommendations and long-tail metrics.")
    add("api", _role_command("api"), "Run a read API instance: each user's latest list over HTTP on "
        "TAILCAST_API_PORT (GET /recommendations/USER_ID?n=10, /healthz, /metrics); instances split the users.")
    p = add("trainer", cmd_trainer, "Run the periodic batch refresh of the Transformer: read the event log, "
                                    "train, publish a versioned checkpoint.")
    p.add_argument("--once", action="store_true", help="train once and exit")
    p.add_argument("--dataset", help="train from a dataset file instead of the events topic")
    p = add("forget", cmd_forget, "Erase a user: write a control record to the events topic; the worker deletes "
                                  "the user's state, the scorer their lists and per-user model rows, the api its "
                                  "stored list (then 404), the trainer their events (with tombstones on the "
                                  "compacted topics).")
    p.add_argument("user_id", help="the user's id as producers send it (hashed when TAILCAST_PSEUDONYMIZE_KEY is set)")
    p = add("replay", cmd_replay, "Publish a dataset or the synthetic stream to the events and items topics.")
    _add_source_args(p)
    p.add_argument("--rate", type=float, default=0.0, help="events per second (0 = as fast as possible)")
    p = add("tail", cmd_tail, "Print records of a topic as they arrive (default: recommendations).")
    p.add_argument("--topic", default="recommendations")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--idle-timeout", type=float, default=None, help="stop after S seconds without records")
    p.add_argument("--raw", action="store_true", help="print JSON")
    p = add("demo", run_demo, "Start broker (if TAILCAST_KAFKA is unset), worker, scorer, trainer and api, replay "
                              "the synthetic stream (or --dataset) and show live progress.")
    _add_source_args(p)
    p.add_argument("--rate", type=float, default=500.0, help="events per second")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p = add("evaluate", run_evaluate, "Replay a dataset through the live pipeline and baselines; write a report.")
    add_evaluate_arguments(p, base=True)
    add("settings", cmd_settings, "Print every TAILCAST_* setting with its default.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"tailcast: configuration error: {exc}", file=sys.stderr)
        return 2
    _logging(settings)
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
