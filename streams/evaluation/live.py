"""``--mode live``: :func:`run_live` runs the real broker, worker and scorer on a replayed dataset until
every user's final state has its list; :func:`score_live` pairs the lists with the events per A/B arm.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.agents.ingest import pseudonymize
from streams.config import Settings
from streams.kafka import client_kwargs
from streams.processes import spawn_role, start_broker, stop_processes
from streams.tools import ReplaySource, events_source, replay
from streams.topics import RECOMMENDATIONS, ensure_topics

from .harness import PreparedStream, Scoreboard, SystemResult

__all__ = ["LiveError", "run_live", "score_live"]


class LiveError(RuntimeError):
    """The live pipeline failed (a process died, or nothing came back); the message has the log tail."""


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


async def _drive(settings: Settings, stream: PreparedStream, source: ReplaySource, *, rate: float, timeout: float,
                 final: dict[str, int], procs: dict, workdir: Path,
                 log: Callable[[str], None]) -> tuple[list[dict], dict]:
    consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False)
    await consumer.start()
    consumed: list[dict] = []
    info = {"replayed": 0, "replay_seconds": None, "waited_seconds": None, "complete": False}
    try:
        parts = consumer.partitions_for_topic(RECOMMENDATIONS)
        if not parts:
            raise LiveError(f"topic {RECOMMENDATIONS!r} does not exist on {settings.kafka.servers}")
        tps = [TopicPartition(RECOMMENDATIONS, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)  # only this run's lists (a fresh embedded broker: offset 0)
        started = time.monotonic()

        shown = {"at": -10.0}

        def progress(sent: int, elapsed: float) -> None:
            info["replayed"] = sent
            if elapsed - shown["at"] >= 10 or sent == len(stream.events):
                shown["at"] = elapsed
                log(f"  replayed {sent}/{len(stream.events)} events in {elapsed:.0f}s; {len(consumed)} lists consumed")

        replay_task = asyncio.create_task(replay(settings.kafka, source, rate=rate, progress=progress))
        latest: dict[str, int] = {}
        missing = len(final)
        replay_done_at = None
        last_line = time.monotonic()
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    if r.value is None:  # a tombstone: an erased user's lists
                        continue
                    rec = orjson.loads(r.value)
                    consumed.append(rec)
                    u, c = rec["user_id"], rec["user_event_count"]
                    target = final.get(u)
                    if target is not None and latest.get(u, 0) < target <= c:
                        missing -= 1
                    latest[u] = max(latest.get(u, 0), c)
            if missing <= 0:
                info["complete"] = True
                break
            if replay_task.done():
                replay_task.result()  # re-raise a replay error
                if replay_done_at is None:
                    replay_done_at = time.monotonic()
                    info["replay_seconds"] = round(replay_done_at - started, 1)
                elif time.monotonic() - replay_done_at > timeout:
                    log(f"  timeout: {missing} users still without a list for their final state")
                    break
            for name, p in procs.items():
                if p.poll() is not None:
                    raise LiveError(f"tailcast {name} exited with {p.returncode}:\n{_tail(workdir / f'{name}.log')}")
            if time.monotonic() - last_line > 10:
                last_line = time.monotonic()
                log(f"  {len(consumed)} lists consumed, {missing} users without their final list yet")
        if not replay_task.done():
            replay_task.cancel()
        info["waited_seconds"] = round(time.monotonic() - (replay_done_at or started), 1)
        info["users_without_final_list"] = max(missing, 0)
    finally:
        await consumer.stop()
    return consumed, info


def run_live(settings: Settings, stream: PreparedStream, item_text: dict[str, str], *, rate: float = 1000.0,
             timeout: float = 120.0, workdir: Path | None = None,
             log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Run the pipeline on ``stream``; return every consumed ``recommendations`` message and run info."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tailcast-evaluate-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TAILCAST_STATE_DIR"] = str(workdir / "state")
    env["TAILCAST_METRICS_PORT"] = "0"
    broker = None
    procs: dict = {}
    try:
        broker, settings = start_broker(settings, env, workdir)
        if broker is not None:
            log(f"  embedded broker on {broker.address} (memory only); logs in {workdir}")
        asyncio.run(ensure_topics(settings.kafka))
        for role in ("worker", "scorer"):
            procs[role] = spawn_role(role, env, workdir / f"{role}.log")
        key = settings.worker.pseudonymize_key
        final = stream.final_counts
        if key:
            final = {pseudonymize(u, key): c for u, c in final.items()}
        source = events_source("evaluate", stream.events, item_text)
        consumed, info = asyncio.run(_drive(settings, stream, source, rate=rate, timeout=timeout, final=final,
                                            procs=procs, workdir=workdir, log=log))
        info["workdir"] = str(workdir)
        return consumed, info
    finally:
        stop_processes(procs.values())
        if broker is not None:
            broker.stop()


def score_live(stream: PreparedStream, consumed: list[dict], settings: Settings, *, n_chunks: int = 10,
               pseudonymize_key: str | None = None) -> tuple[dict[str, SystemResult], dict]:
    """Pair the consumed lists with the replayed events: one :class:`SystemResult` per live arm."""
    events, index = stream.events, stream.index
    uid = (lambda u: pseudonymize(u, pseudonymize_key)) if pseudonymize_key else (lambda u: u)
    pos = {(uid(e.user), j): n for n, (e, j) in enumerate(zip(events, index))}
    at: dict[int, list[dict]] = {}
    arm_of: dict[str, str] = {}
    unknown = 0
    for rec in consumed:
        p = pos.get((rec["user_id"], rec["user_event_count"]))
        if p is None:
            unknown += 1
            continue
        at.setdefault(p, []).append(rec)
        arm_of.setdefault(rec["user_id"], rec["arm"])
    strengths = {a.name: a.rerank_strength for a in settings.scorer.arms}
    arms = sorted(set(arm_of.values()))
    k = settings.scorer.k
    boards = {a: Scoreboard(f"live tailcast[{a}, s={strengths.get(a, float('nan')):.2f}]", k, len(events),
                            n_chunks=n_chunks) for a in arms}
    unserved = 0
    for n, (e, j) in enumerate(zip(events, index)):
        u = uid(e.user)
        mine = arm_of.get(u)
        if mine is None:
            unserved += 1
        for a, board in boards.items():
            board.observe_event(n, u, e.item, j, pair=(a == mine))
        for rec in at.get(n, ()):
            boards[rec["arm"]].observe_list(n, rec["user_id"], rec["user_event_count"],
                                            [i["item_id"] for i in rec["items"]], arm=rec["arm"])
    results = {}
    for a, board in boards.items():
        r = board.finish(kind="live", param=strengths.get(a), arm=a, window_end=events[-1].ts if events else 0.0)
        results[board.name] = r
    return results, {"lists_not_matching_an_event": unknown, "events_of_users_never_served": unserved}
