"""Prequential replay of a dataset through the pipeline's own code, and the pairing every mode shares.

:func:`run_offline` runs micro-batches through the worker's :class:`~streams.agents.ingest.IngestProcessor`
and each system's :class:`~streams.agents.scorer.ScorerCore`. :class:`Scoreboard` pairs event ``j`` of a user
with their latest list with ``user_event_count <= j - 1``: ``exact``, ``stale`` (coalesced) or ``none`` (a
miss). ``refresh_every=N`` swaps a batch model trained on all earlier events into the
:data:`~streams.evaluation.systems.MODEL_KINDS` systems at each multiple of N, as deployed (:class:`Refresh`).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import orjson

from online.metrics import gain
from online.prequential import ArmMetrics, Outcome
from streams.agents.ingest import IngestProcessor, RawRecord
from streams.agents.scorer import BatchOutput, ScorerCore
from streams.config import Settings
from streams.datasets import Event
from streams.records import BadEvent, Recommendation, RecommendedItem, ScoreRequest, parse_event
from streams.topics import EVENTS, partition_for

from .systems import MODEL_KINDS, TAILCAST_KINDS, SystemSpec, batch_model_for, build_core

__all__ = ["HarnessError", "PreparedStream", "prepare_events", "micro_batches", "Scoreboard", "SystemResult",
           "Refresh", "PartitionedCores", "run_offline"]


class HarnessError(RuntimeError):
    """The replay broke an invariant of the harness (e.g. the ingest logic dropped or rerouted events)."""


@dataclass(slots=True)
class PreparedStream:
    """Validated events (ids and ts normalised exactly as the worker does), each with its user index."""

    events: list[Event]
    index: list[int]  # 1-based position of each event in its user's history
    rejected: dict[str, int]  # DLQ reason -> events the worker would dead-letter (not replayed)

    @property
    def final_counts(self) -> dict[str, int]:
        return {e.user: j for e, j in zip(self.events, self.index)}


def _value(e: Event) -> bytes:
    return orjson.dumps({"user_id": e.user, "item_id": e.item, "event": e.event, "ts": e.ts})


def prepare_events(events: Sequence[Event], *, max_event_bytes: int = 65_536) -> PreparedStream:
    """Validate each event with the edge's :func:`~streams.records.parse_event`; count the rejects."""
    kept: list[Event] = []
    index: list[int] = []
    counts: dict[str, int] = {}
    rejected: dict[str, int] = {}
    for e in events:
        try:
            v = parse_event(_value(e), max_bytes=max_event_bytes, default_ts=e.ts)
        except BadEvent as exc:
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
            continue
        j = counts[v.user_id] = counts.get(v.user_id, 0) + 1
        kept.append(Event(v.ts, v.user_id, v.item_id, v.event))
        index.append(j)
    return PreparedStream(kept, index, rejected)


def micro_batches(events: Sequence[Event], settings: Settings, batch: int) -> Iterator[tuple[int, int, list[ScoreRequest]]]:
    """``(start, end, score requests)`` per micro-batch of ``events[start:end]``, via the worker's logic."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n_parts = settings.kafka.partitions
    w = settings.worker
    proc = IngestProcessor(partitions=n_parts, history_len=w.history_len, max_event_bytes=w.max_event_bytes,
                           consumed_max=w.consumed_max, exclude_consumed=w.exclude_consumed)
    states: dict = {}
    offsets = [0] * n_parts
    for start in range(0, len(events), batch):
        chunk = events[start:start + batch]
        records = []
        for e in chunk:
            key = e.user.encode()
            p = partition_for(key, n_parts)
            records.append(RawRecord(EVENTS, p, offsets[p], e.ts, key, _value(e)))
            offsets[p] += 1
        out = proc.process(records, states.get, now=chunk[-1].ts)
        if out.dead_letters or out.reroutes or out.duplicates or out.applied != len(chunk):
            raise HarnessError(f"ingest applied {out.applied} of {len(chunk)} events at {start} "
                               f"({len(out.dead_letters)} dead letters, {len(out.reroutes)} reroutes, "
                               f"{out.duplicates} duplicates): give prepare_events() output to the harness")
        states.update(out.states)
        yield start, start + len(chunk), out.requests


@dataclass(frozen=True, slots=True)
class Refresh:
    """One model refresh of the replay: trained on ``events[:at]``, serving from the micro-batch at ``at``."""

    at: int  # position of the first event after the swap = the number of events trained on
    version: str
    train_seconds: float
    rescored: dict[str, int]  # system name -> lists ``rescore_active`` published right after the swap


@dataclass(slots=True)
class SystemResult:
    """What one system produced: the report metrics, the per-chunk series and the exposure counts."""

    name: str
    kind: str
    param: float | None
    metrics: dict
    chunks: list[dict]
    exposure: list[int]  # recommendation count per active item (zeros included), for Lorenz curves
    seconds: float = 0.0
    gains: np.ndarray | None = None  # NDCG@k gain per stream position (NaN: not scored), for paired differences


@dataclass
class Scoreboard:
    """One system's pairing and metrics (a single-arm :class:`ArmMetrics`) plus per-chunk series; positions
    before ``warmup`` (of an event, or of the last event a list reflects) are not scored."""

    name: str
    k: int
    n_events: int
    warmup: int = 0
    n_chunks: int = 10
    pos_of: dict[tuple[str, int], int] = field(default_factory=dict)
    #: user -> item -> index of the user's first event of it (shareable: the boards of one run fill it alike)
    first_index: dict[str, dict[str, int]] = field(default_factory=dict)
    metrics: ArmMetrics = field(init=False)

    def __post_init__(self) -> None:
        size = max(self.n_events, 1)
        self.metrics = ArmMetrics(k=self.k, window_events=size, max_pending_per_user=size,
                                  max_recs_per_user=size)
        n = max(1, min(self.n_chunks, self.n_events - self.warmup))
        self.n_chunks = n
        self.chunk_n = [0] * n
        self.chunk_hits = [0] * n
        self.chunk_slots = [0] * n
        self.chunk_tail_slots = [0] * n
        self.gains = np.full(self.n_events, np.nan)
        self.none_first = 0
        self.none_later = 0
        self.lists = 0
        self.slots = 0
        self.consumed_slots = 0

    def chunk(self, pos: int) -> int:
        span = max(self.n_events - self.warmup, 1)
        return min(self.n_chunks - 1, max(0, (pos - self.warmup) * self.n_chunks // span))

    def _take(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            pos = self.pos_of[(o.user, o.event_index)]
            self.gains[pos] = gain(o.rank, self.k)
            c = self.chunk(pos)
            self.chunk_n[c] += 1
            self.chunk_hits[c] += o.hit(self.k)
            if o.pairing == "none":
                if o.event_index == 1:
                    self.none_first += 1
                else:
                    self.none_later += 1

    def observe_event(self, pos: int, user: str, item: str, index: int, *, pair: bool = True) -> None:
        """One event; ``pair=False`` only counts it in the item window (another arm's user, live mode)."""
        seen = self.first_index.get(user)
        if seen is None:
            self.first_index[user] = {item: index}
        else:
            first = seen.get(item)
            if first is None or index < first:
                seen[item] = index
        if pos < self.warmup or not pair:
            self.metrics.items.observe_event(user, item)
            return
        self.pos_of[(user, index)] = pos
        self._take(self.metrics.observe_event(user, item, index))

    def observe_list(self, pos: int, user: str, count: int, items: list[str], arm: str | None = None) -> None:
        arm = arm or self.name
        if pos < self.warmup:
            self.metrics.pairer.observe_recommendation(user, count, items, arm)
            return
        self.lists += 1
        top = items[: self.k]
        c = self.chunk(pos)
        self.chunk_slots[c] += len(top)
        self.slots += len(top)
        seen = self.first_index.get(user)
        if seen:
            self.consumed_slots += sum(1 for i in top if seen.get(i, count + 1) <= count)
        self.chunk_tail_slots[c] += sum(1 for i in top if self.metrics.items.is_tail(i))
        self._take(self.metrics.observe_recommendation(user, count, items, arm))

    def finish(self, *, kind: str, param: float | None, seconds: float = 0.0, window_end: float = 0.0,
               arm: str | None = None, extra: dict | None = None) -> SystemResult:
        self._take(self.metrics.flush())
        arm = arm or self.name
        am = self.metrics
        if arm not in am.arms():  # a system that never published a list
            raise HarnessError(f"{self.name}: no list was ever observed for arm {arm!r}")
        rec = am.record(arm, window_end)
        q = am.quality(arm).get()
        counts = am.exposure(arm).exposure_counts()
        metrics = {
            "hr": rec["hr"], "ndcg": rec["ndcg"], "tail_hr": rec["tail_hr"], "hr_by_bucket": rec["hr_by_bucket"],
            "tail_share": rec["tail_share"], "coverage": rec["coverage"], "gini": rec["gini"], "aplt": rec["aplt"],
            "novelty": rec["novelty"], "k": rec["k"],
            "evaluated": q["evaluated"], "exact": q["exact"], "stale": q["stale"], "none": q["none"],
            "none_first_event": self.none_first, "none_later": self.none_later,
            "unattributed": am.unattributed, "tail_evaluated": q["tail_evaluated"],
            "bucket_counts": q["bucket_counts"], "lists": self.lists,
            "consumed_share": self.consumed_slots / self.slots if self.slots else 0.0,
            "consumed_slots": self.consumed_slots, "slots": self.slots,
        }
        if extra:
            metrics.update(extra)
        chunks = [{"chunk": c, "events": n, "hr": (h / n if n else 0.0),
                   "tail_share": (t / s if s else 0.0), "lists_slots": s}
                  for c, (n, h, s, t) in enumerate(zip(self.chunk_n, self.chunk_hits, self.chunk_slots,
                                                       self.chunk_tail_slots))]
        exposure = [counts.get(i, 0) for i in am.items.active_items()]
        return SystemResult(self.name, kind, param, metrics, chunks, exposure, seconds, self.gains)


class PartitionedCores:
    """N :class:`ScorerCore` behind one core's interface, splitting the partitions as ``tailcast scorer``
    instances do (``p % N``), each first learning the others' requests as ``learn_all`` does."""

    def __init__(self, cores: Sequence[ScorerCore], partitions: int) -> None:
        if not 1 <= len(cores) <= partitions:
            raise ValueError(f"{len(cores)} scorers for {partitions} partitions: need 1 to {partitions}")
        self.cores = list(cores)
        self.partitions = partitions

    @property
    def recommender(self):
        """The first scorer's recommender (its ranker's AUCs stand for the others')."""
        return self.cores[0].recommender

    def _owner(self, user: str) -> int:
        return partition_for(user.encode(), self.partitions) % len(self.cores)

    def process(self, requests: Sequence[ScoreRequest], *, now: float | None = None) -> BatchOutput:
        mine: list[list[ScoreRequest]] = [[] for _ in self.cores]
        for request in requests:
            mine[self._owner(request.user_id)].append(request)
        out = BatchOutput()
        for n, (core, part) in enumerate(zip(self.cores, mine)):
            core.learn([r for m, other in enumerate(mine) if m != n for r in other])
            if part:
                one = core.process(part, now=now)
                out.recommendations += one.recommendations
                out.events += one.events
                out.coalesced += one.coalesced
                out.stale += one.stale
        return out

    def swap_model(self, model) -> None:
        for core in self.cores:
            core.swap_model(model)

    def rescore_active(self, *, batch: int = 1024, now: float | None = None) -> Iterator[list[Recommendation]]:
        for core in self.cores:
            yield from core.rescore_active(batch=batch, now=now)


#: Kinds kept in the calling process: the batch model and the text vectors are not sent to a worker.
_PINNED_KINDS = (*MODEL_KINDS, "tailcast-online", "content")

#: Users re-scored per call after a swap (the live scorer's ``rescore_active(batch=256)``).
_RESCORE_BATCH = 256


def run_offline(
    stream: PreparedStream,
    specs: Sequence[SystemSpec],
    settings: Settings,
    *,
    batch: int = 1,
    warmup_events: int = 0,
    text_vectors=None,
    model=None,
    n_chunks: int = 10,
    progress_every: int = 20_000,
    lists_sink: Callable[[Recommendation], None] | None = None,
    sink_kinds: Sequence[str] = ("tailcast",),
    log: Callable[[str], None] = print,
    cores: Mapping[str, ScorerCore] | None = None,
    workers: int = 1,
    refresh_every: int = 0,
    refresher: Callable[[Sequence[Event]], object] | None = None,
    refreshes: list[Refresh] | None = None,
    scorers: int = 1,
    seed: int = 0,
) -> dict[str, SystemResult]:
    """Replay ``stream`` through every system in lockstep, micro-batch by micro-batch; score them all.

    ``cores`` (name -> :class:`ScorerCore`) replaces :func:`build_core` for those systems; ``workers=2`` replays
    the systems that need neither model nor sink in a spawned process; ``refreshes`` collects each refresh."""
    if workers not in (1, 2):
        raise ValueError(f"workers must be 1 or 2, got {workers}")
    if refresh_every < 0 or (refresh_every > 0) != (refresher is not None):
        raise ValueError("give both refresh_every (> 0) and refresher, or neither")
    given = dict(cores or {})
    here, there = list(specs), []
    if workers == 2 and len(specs) > 1:
        sink = tuple(sink_kinds) if lists_sink is not None else ()
        pinned = [s for s in specs if s.kind in _PINNED_KINDS or s.kind in sink or s.name in given]
        free = [s for s in specs if s not in pinned]
        if not pinned:  # nothing tied to this process: halve the rest
            pinned, free = free[: len(free) // 2], free[len(free) // 2:]
        here, there = pinned, free
    common = {"batch": batch, "warmup_events": warmup_events, "n_chunks": n_chunks,
              "progress_every": progress_every, "scorers": scorers, "seed": seed}
    local = {"text_vectors": text_vectors, "model": model, "lists_sink": lists_sink, "sink_kinds": sink_kinds,
             "log": log, "cores": given, "refresh_every": refresh_every, "refresher": _with_threads(refresher),
             "refreshes": refreshes}
    if not there:
        return _replay(stream, here, settings, **common, **local)
    log(f"  workers: {', '.join(s.name for s in here)} here; {', '.join(s.name for s in there)} in a second process")
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_replay, stream, there, settings, **common)
        mine = _replay(stream, here, settings, **common, **local, stop=partial(_raise_if_failed, future))
        theirs = future.result()
    both = {**mine, **theirs}
    return {s.name: both[s.name] for s in specs}


def gate_fields(blender) -> dict:
    """The source gate at the end of a replay as result fields: ``gain_{segment}_{source}`` (its running NDCG@k
    gain), ``gain_se_{segment}_{source}`` (its standard error) and ``served_{segment}_{source}``."""
    out = {}
    for segment, sources in blender.gate().items():
        for name, judged in sources.items():
            out[f"gain_{segment}_{name}"] = round(judged["gain"], 5)
            out[f"gain_se_{segment}_{name}"] = round(judged["se"], 5)
            out[f"served_{segment}_{name}"] = judged["served"]
    return out


def _raise_if_failed(future: Future) -> None:
    """Raise the second process's error once it has failed: the calling process stops its replay between
    micro-batches instead of replaying the whole stream for results that will be thrown away."""
    if future.done() and future.exception() is not None:
        raise future.exception()


def _followers(specs: Sequence[SystemSpec], given: Mapping[str, ScorerCore]) -> dict[int, list[int]]:
    """tailcast systems of one kind at several strengths share one replay: primary position -> followers'.
    The ranker learns from candidate pools, not shown lists, so a follower's lists are the primary's
    candidates re-ranked at its strength, as its own replay would publish. Given cores never share."""
    by_kind: dict[str, list[int]] = {}
    for n, spec in enumerate(specs):
        if spec.kind in TAILCAST_KINDS and spec.name not in given:
            by_kind.setdefault(spec.kind, []).append(n)
    return {ns[0]: ns[1:] for ns in by_kind.values() if len(ns) > 1}


class _SharedReplay:
    """A primary core's recommender whose ``recommend_many`` also re-ranks at the followers' strengths;
    :meth:`take` turns what it collected into the followers' records, one per record the primary published."""

    def __init__(self, core: ScorerCore, strengths: Sequence[float]) -> None:
        self.inner = core.recommender
        self.strengths = tuple(float(x) for x in strengths)
        self._lists: list[list[list]] = [[] for _ in self.strengths]
        core.recommender = self

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def recommend_many(self, *args, **kwargs):
        out = self.inner.recommend_many(*args, alternatives=self.strengths, **kwargs)
        for collected, lists in zip(self._lists, self.inner.last_alternatives):
            collected.extend(lists)
        return out

    def take(self, recs: Sequence[Recommendation], arms: Sequence[str]) -> list[list[Recommendation]]:
        out = []
        for n, (collected, arm) in enumerate(zip(self._lists, arms)):
            if len(collected) != len(recs):
                raise HarnessError(f"{len(recs)} lists published for {len(collected)} re-ranked at strength "
                                   f"{self.strengths[n]}")
            out.append([replace(rec, arm=arm, items=[RecommendedItem(c.item, round(float(c.score), 6), c.source,
                                                                     c.reason()) for c in cands])
                        for rec, cands in zip(recs, collected)])
            self._lists[n] = []
        return out


def _with_threads(refresher: Callable[[Sequence[Event]], object] | None):
    """``refresher`` run with the caller's torch thread count (the replay holds torch to one thread; training
    is the large-batch work threads help), as a model trained before the replay is."""
    if refresher is None:
        return None
    import torch

    threads = torch.get_num_threads()

    def train(events: Sequence[Event]):
        with _torch_threads(threads):
            return refresher(events)

    return train


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's thread count set to ``n``, then put back. torch is imported here, not left to whatever
    imports it first: a later first import would start at torch's default, every core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _one_thread() -> Iterator[None]:
    """One BLAS thread (and one torch thread) while replaying: a request's products are small, where threads
    cost more than they save, and every process replays alike, so no system's numbers depend on the split."""
    from threadpoolctl import threadpool_limits

    with _torch_threads(1), threadpool_limits(limits=1, user_api="blas"):
        yield


@_one_thread()
def _replay(
    stream: PreparedStream,
    specs: Sequence[SystemSpec],
    settings: Settings,
    *,
    batch: int,
    warmup_events: int,
    text_vectors=None,
    model=None,
    n_chunks: int,
    progress_every: int,
    lists_sink: Callable[[Recommendation], None] | None = None,
    sink_kinds: Sequence[str] = (),
    log: Callable[[str], None] = print,
    cores: Mapping[str, ScorerCore] | None = None,
    refresh_every: int = 0,
    refresher: Callable[[Sequence[Event]], object] | None = None,
    refreshes: list[Refresh] | None = None,
    scorers: int = 1,
    seed: int = 0,
    stop: Callable[[], None] | None = None,
) -> dict[str, SystemResult]:
    """:func:`run_offline` of ``specs`` in this process; ``stop`` is called before each micro-batch and ends the
    replay by raising."""
    events, index = stream.events, stream.index
    n = len(events)
    k = settings.scorer.k
    given = dict(cores or {})
    names = [s.name for s in specs]
    later = refresher is not None
    # primary position -> the positions re-ranked from its replay (one scorer: shared replays need one ranker)
    follow = _followers(specs, given) if scorers == 1 else {}
    led_by = {f: p for p, fs in follow.items() for f in fs}

    def core_of(s: SystemSpec) -> ScorerCore | PartitionedCores:
        def one() -> ScorerCore:
            return build_core(s, settings, text_vectors=text_vectors, model=model, model_later=later, seed=seed)

        if scorers == 1 or s.kind not in TAILCAST_KINDS:
            return one()
        return PartitionedCores([one() for _ in range(scorers)], settings.kafka.partitions)

    cores = {name: given.get(name) or core_of(s) for n_s, (name, s) in enumerate(zip(names, specs)) if n_s not in led_by}
    shared = {p: _SharedReplay(cores[names[p]], [specs[f].param for f in fs]) for p, fs in follow.items()}
    pos_of_user_count: dict[tuple[str, int], int] = {}  # shared by every scoreboard
    first_index: dict[str, dict[str, int]] = {}  # likewise
    boards = [Scoreboard(name, k, n, warmup=warmup_events, n_chunks=n_chunks, pos_of=pos_of_user_count,
                         first_index=first_index) for name in names]
    sinks = [lists_sink if lists_sink is not None and s.kind in sink_kinds else None for s in specs]
    seconds = [0.0] * len(specs)
    learned = [0] * len(specs)
    coalesced = [0] * len(specs)
    stale = [0] * len(specs)
    steps = [(s, cores[names[s]], boards[s], sinks[s]) for s in range(len(specs)) if s not in led_by]
    served = [step for step in steps if specs[step[0]].kind in MODEL_KINDS] if later else []
    done_refreshes: list[Refresh] = []
    rescored = [0] * len(specs)
    next_refresh = refresh_every if later and served else n + 1  # nothing to refresh: no model system here
    started = time.perf_counter()
    next_report = progress_every

    def publish(board: Scoreboard, sink, recs: Sequence[Recommendation], s: int | None = None) -> None:
        for rec in recs:
            pos = pos_of_user_count[(rec.user_id, rec.user_event_count)]
            board.observe_list(pos, rec.user_id, rec.user_event_count, [i.item_id for i in rec.items])
            if sink is not None:
                sink(rec)
        if s in shared:  # the same lists re-ranked at each follower's strength
            for f, f_recs in zip(follow[s], shared[s].take(recs, [names[f] for f in follow[s]])):
                publish(boards[f], sinks[f], f_recs)

    for start, end, requests in micro_batches(events, settings, batch):
        if stop is not None:
            stop()
        if start >= next_refresh:  # between micro-batches: train on events[:start], swap, re-score
            next_refresh = (start // refresh_every + 1) * refresh_every
            t = time.perf_counter()
            new_model = refresher(events[:start])
            train_seconds = time.perf_counter() - t
            now = events[start - 1].ts
            counts = {}
            for s, core, board, sink in served:
                t = time.perf_counter()
                core.swap_model(batch_model_for(specs[s].kind, new_model))
                for recs in core.rescore_active(batch=_RESCORE_BATCH, now=now):
                    publish(board, sink, recs, s)
                    rescored[s] += len(recs)
                    counts[names[s]] = counts.get(names[s], 0) + len(recs)
                seconds[s] += time.perf_counter() - t
            version = getattr(new_model, "version", "?")
            done_refreshes.append(Refresh(start, version, round(train_seconds, 1), counts))
            log(f"  refresh at event {start}: model {version} trained on {start} events in {train_seconds:.0f}s, "
                f"swapped into {len(served)} systems; re-scored {sum(counts.values())} lists")
        for pos in range(start, end):
            e = events[pos]
            j = index[pos]
            pos_of_user_count[(e.user, j)] = pos
            for board in boards:
                board.observe_event(pos, e.user, e.item, j)
        now = events[end - 1].ts
        for s, core, board, sink in steps:
            t = time.perf_counter()
            out = core.process(requests, now=now)
            seconds[s] += time.perf_counter() - t
            learned[s] += len(out.events)
            coalesced[s] += out.coalesced
            stale[s] += out.stale
            publish(board, sink, out.recommendations, s)
        if progress_every and end >= next_report:
            next_report += progress_every
            per = ", ".join(f"{name} {sec:.0f}s" for name, sec in zip(names, seconds))
            log(f"  {end}/{n} events ({100 * end / max(n, 1):.0f}%) in {time.perf_counter() - started:.0f}s; {per}")
    window_end = events[-1].ts if events else 0.0
    results = {}
    for f, p in led_by.items():  # a follower's replay is its primary's
        seconds[f], learned[f], coalesced[f], stale[f], rescored[f] = \
            seconds[p], learned[p], coalesced[p], stale[p], rescored[p]
        cores[names[f]] = cores[names[p]]
    for s, spec in enumerate(specs):
        extra = {"scorer_seconds": round(seconds[s], 3), "learned_events": learned[s], "micro_batch": batch,
                 "coalesced": coalesced[s], "stale_skipped": stale[s]}
        if later and spec.kind in MODEL_KINDS:
            extra["model_refreshes"] = len(done_refreshes)
            extra["rescored_lists"] = rescored[s]
        blender = getattr(getattr(cores[spec.name], "recommender", None), "blender", None)
        if blender is not None:  # online ROC AUC on click feedback, the blend and each single source
            extra.update({f"blender_auc_{name}": round(v, 4) for name, v in blender.auc().items()
                          if v == v})  # NaN: a source never scored an item with feedback
            extra["blender_window_examples"], extra["blender_window_clicks"] = blender.auc_counts()
            extra.update(gate_fields(blender))
        results[spec.name] = boards[s].finish(kind=spec.kind, param=spec.param, seconds=seconds[s],
                                              window_end=window_end, extra=extra)
    if refreshes is not None:
        refreshes.extend(done_refreshes)
    return results
