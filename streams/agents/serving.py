"""The scorer process's agents and tasks.

* ``score``: micro-batches of ``score-requests`` through :class:`ScorerCore` to ``recommendations`` (an
  erased user's tombstone first, #17), once ``catalog`` has read ``items`` to its start-up end;
* ``catalog`` applies hides and deletes between micro-batches (#17) and queues texts for ``encode_items``;
* ``learn_all`` learns the other scorers' partitions, so every item model learns every event (#16);
* ``watch_model`` swaps in a newer checkpoint between micro-batches and re-scores the active users;
* ``snapshot`` / ``restore`` (#16): the online state and its offsets, every ``SNAPSHOT_INTERVAL_S``; at
  start-up the newest valid one is checked against the log and the log replayed before anything serves;
* ``exposure`` and ``impressions``: each arm's ``longtail-metrics`` record, with its A/B figures.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CollectorRegistry

from models.ann import ContentIndex, MipsIndex
from models.checkpoint import CheckpointError, CheckpointRegistry, load_checkpoint
from models.content import TextEncoder
from models.scoring import BatchScorer
from online.arms import ArmAssigner
from online.blender import FeedbackBlender
from online.content import ContentNeighbours, TagVectoriser
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.prequential import ArmMetrics
from online.recommender import CORE_SOURCES, OnlineRecommender
from online.snapshot import SnapshotError, SnapshotStore, encode
from streams.agents import impressions as impressions_agent
from streams.agents.catalogue import Catalogue, committed_offsets, follow_partitions
from streams.agents.ingest import fetch_log_ends, send_records
from streams.agents.scorer import BATCH_SOURCES, ScorerCore
from streams.config import LIST_DEPTH, WORKER_BATCH, Settings
from streams.kafka import client_kwargs
from streams.metrics import ABMetrics, LongTailMetrics, ScorerMetrics
from streams.records import Recommendation, dumps, read_request
from streams.topics import IMPRESSIONS, ITEMS, LONGTAIL_METRICS, RECOMMENDATIONS, SCORE_REQUESTS

__all__ = ["register", "build_recommender", "TextVectors"]

log = logging.getLogger(__name__)

#: The scorer's micro-batch: at most this many score requests, or what arrived within this many seconds.
SCORER_BATCH = 256
SCORER_BATCH_WAIT_S = 0.02
#: Score requests the ``learn_all`` task applies at a time (each call holds the event loop while it learns).
LEARN_BATCH = 500
#: Item texts encoded per call of the text encoder.
ENCODE_BATCH = 256
#: Warm restart (#16): snapshot interval (when something was learned), snapshots kept, their folder.
SNAPSHOT_INTERVAL_S = 30.0
SNAPSHOT_KEEP = 2
SNAPSHOT_DIR = "snapshots"
_IMPORTED_AT = time.time()


def _process_started_at() -> float:
    """This process's start (Unix s), from /proc; the import of this module where /proc is absent."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


def _fingerprint(value: bytes | None) -> str:
    """A short digest of a record's value: a snapshot names the record before each of its offsets by it."""
    return hashlib.sha256(value or b"").hexdigest()[:16]


def snapshot_meta(settings: Settings, *, text_dim: int) -> dict[str, Any]:
    """The configuration a snapshot's state was built with; a snapshot with other values is refused."""
    lt = settings.longtail
    arms = settings.scorer.arms
    return {"text_dim": text_dim, "k": settings.scorer.k, "arms": [repr(a) for a in arms],
            "salt": getattr(arms, "salt", None), "window_events": lt.window_events, "head_share": lt.head_share}


def encode_state(core: ScorerCore) -> bytes:
    """A snapshot's payload: the recommender and :meth:`ScorerCore.snapshot_state`, without the candidate
    pools waiting for feedback (:meth:`~online.feedback.FeedbackStore.set_aside`)."""
    with core.recommender.pools.set_aside():
        return encode({"recommender": core.recommender, "core": core.snapshot_state()})


def install_state(core: ScorerCore, state: dict[str, Any]) -> None:
    """Put a snapshot's state into a core that has learned nothing yet."""
    core.recommender = state["recommender"]
    core.swap_model(core.model)  # the served model's vocabulary, to the restored ranker
    core.restore_state(state["core"])


def build_recommender(settings: Settings, *, text_dim: int, seed: int = 0, background: bool = True):
    """The online recommender of ``online/`` configured from settings; ``seed`` seeds its training draws (the
    MF's and the ranker's initial weights, the negatives drawn from the pools): the live scorer's is 0. From
    ``ANN_MIN_ITEMS`` items on, MF and content retrieve through faiss indexes (``models.ann``), built in a
    thread with ``background`` (the live scorer), in the call without (an evaluation: the same lists each run)."""
    lt = settings.longtail
    covisit, transitions = CoVisitation.paired()
    return OnlineRecommender(
        popularity=DecayedPopularity(window_events=lt.window_events, head_share=lt.head_share),
        covisit=covisit,
        transitions=transitions,
        mf=OnlineMF(seed=seed, index_factory=MipsIndex.over, background=background),
        content=ContentNeighbours(dim=text_dim, index_factory=ContentIndex, background=background),
        blender=FeedbackBlender(sources=(*CORE_SOURCES, *BATCH_SOURCES), seed=seed),
        arms=list(settings.scorer.arms),
        k=settings.scorer.k,
        seed=seed,
    )


class TextVectors:
    """Item text → vector: the pretrained MiniLM (``minilm``) or a token-hashing fallback (``hashing``)."""

    def __init__(self, kind: str, device: str) -> None:
        self.kind = kind
        self._encoder = TextEncoder(device=device) if kind == "minilm" else TagVectoriser()
        self.dim = self._encoder.dim

    def encode(self, texts: list[str]):
        if self.kind == "minilm":
            return self._encoder.encode(texts)
        return self._encoder.transform_many(texts)


def _read_requests(records) -> list:
    """The score requests and erasure markers of ``records``, unreadable ones left out (the score agent of
    their partition logs them)."""
    out = []
    for record in records:
        try:
            out.append(read_request(record.value))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def register(app, *, topics: dict[str, Any], settings: Settings, registry: CollectorRegistry) -> dict[str, Any]:
    metrics = ScorerMetrics.create(registry)
    longtail = LongTailMetrics.create(registry)
    text = TextVectors(settings.scorer.text_encoder, settings.scorer.device)
    recommender = build_recommender(settings, text_dim=text.dim)
    catalogue = Catalogue(max_bytes=settings.worker.max_event_bytes)
    arms = ArmAssigner.from_configs(settings.scorer.arms)
    core = ScorerCore(recommender=recommender, arms=arms, k=settings.scorer.k, banned=catalogue.banned,
                      depth=LIST_DEPTH)
    # a restored snapshot replaces ``core.recommender`` before anything reads it: use that, not ``recommender``
    started_at = _process_started_at()
    restored = asyncio.Event()  # set once the newest snapshot is restored and the log replayed (or there is none)
    snapshots = SnapshotStore(settings.scorer.checkpoint_dir / SNAPSHOT_DIR, keep=SNAPSHOT_KEEP)
    meta = snapshot_meta(settings, text_dim=text.dim)
    # score-requests partition -> (the next offset not applied to the models, the value of the record before
    # it, or its fingerprint): what a snapshot taken now reflects
    applied: dict[int, tuple[int, bytes | str | None]] = {}
    snap_state = {"dirty": False, "first_list": False, "write_failures": 0}
    lt = settings.longtail
    # a user's list comes back through the topic after a whole worker micro-batch of their events: room for
    # them all, or the oldest would be resolved as unattributed misses
    arm_metrics = ArmMetrics(k=settings.scorer.k, window_events=lt.window_events, head_share=lt.head_share,
                             max_pending_per_user=max(64, 2 * WORKER_BATCH))
    between_batches = asyncio.Lock()
    # held from scoring lists to handing them to the producer, and while catalogue changes apply (#17)
    publishing = asyncio.Lock()
    catalogue_read = asyncio.Event()  # set once the items topic is read to where it ended at start-up
    producer = app.producer
    exposure_on = lt.exposure_agent  # TAILCAST_METRICS_INTERVAL_S=0: no exposure agent, no longtail-metrics
    # the A/B ledger reads head/tail from the exposure agent's item window: the same split as the metrics
    impressions = impressions_agent.Impressions(
        arms=arms, is_tail=arm_metrics.items.is_tail, metrics=ABMetrics.create(registry),
        max_bytes=settings.worker.max_event_bytes, pseudonymize_key=settings.worker.pseudonymize_key)

    batched_writes = settings.kafka.processing_guarantee == "at_least_once"

    async def publish(recs: list[Recommendation], forgotten: Sequence[str] = ()) -> None:
        """One record batch per partition (at-least-once), or Faust's own sends inside the transaction
        (exactly-once); the erased users' tombstones (#17) go before the lists."""
        records = [(user.encode(), None) for user in forgotten]
        records += [(rec.user_id.encode(), rec.to_bytes()) for rec in recs]
        await send_records(producer, RECOMMENDATIONS, records, batched=batched_writes)

    @app.agent(topics[SCORE_REQUESTS], name="score")
    async def score(stream):
        async for events in stream.take_events(SCORER_BATCH, within=SCORER_BATCH_WAIT_S):
            if not catalogue_read.is_set():
                log.info("waiting for the catalogue (%s) to be read before scoring", ITEMS)
                await catalogue_read.wait()
            if not restored.is_set():
                log.info("waiting for the snapshot restore and replay before scoring")
                await restored.wait()
            async with between_batches:  # a model swap happens only between micro-batches
                await _score_batch(events)

    async def _score_batch(events) -> None:
        started = time.perf_counter()
        metrics.pending.set(len(events))
        requests = []
        for e in events:
            try:
                requests.append(read_request(e.message.value))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable score request at %s[%d]@%d: %s", SCORE_REQUESTS, e.message.partition,
                          e.message.offset, exc)
        metrics.requests_consumed.inc(len(events))
        async with publishing:
            out = core.process(requests)
            for e in events:  # in the same step as the learning: a snapshot sees both or neither
                applied[e.message.partition] = (e.message.offset + 1, e.message.value)
            snap_state["dirty"] = True
            await publish(out.recommendations, out.forgotten)
        if out.recommendations and not snap_state["first_list"]:
            snap_state["first_list"] = True
            first = time.time() - started_at
            metrics.first_list_seconds.set(first)
            log.info("first list published %.1f s after the process started", first)
        for user in out.forgotten:
            log.info("scorer: forgot user %s (erasure): per-user rows dropped, a tombstone on %s", user,
                     RECOMMENDATIONS)
        metrics.events_learned.labels(path="served").inc(len(out.events))
        for model in (core.recommender.content, core.recommender.mf):
            metrics.online_index_rows.labels(model=model.name).set(model.ann.n if model.ann.index is not None else 0)
        now = time.time()
        for rec in out.recommendations:
            metrics.recommendations.labels(arm=rec.arm).inc()
            metrics.latency.labels(arm=rec.arm).observe(max(0.0, now - rec.ingested_at))
        if exposure_on:
            impressions.clicks(out.events)  # before the window counts them: judged as the lists were
            for ev in out.events:
                _count_pairings(arm_metrics.observe_event(ev.user, ev.item, ev.index))
        metrics.requests_coalesced.inc(out.coalesced + out.stale)
        metrics.batch_size.observe(len(out.recommendations))
        metrics.batch_latency.observe(time.perf_counter() - started)
        metrics.pending.set(0)

    async def _swap(model) -> None:
        """Install a loaded model between micro-batches, then re-score recently active users with it."""
        previous = core.model_version
        core.swap_model(model)
        metrics.model_info.clear()
        metrics.model_info.labels(version=model.version, device=str(model.device)).set(1)
        metrics.model_loaded.set(time.time())
        log.info("model %s in service (was %s) on %s; re-scoring active users", model.version, previous,
                 model.device)
        n = 0
        chunks = core.rescore_active(batch=256)
        while True:
            async with publishing:  # each chunk is scored (next) and sent before a catalogue change applies
                recs = next(chunks, None)
                if recs is None:
                    break
                await publish(recs)
            for rec in recs:
                metrics.recommendations.labels(arm=rec.arm).inc()
            n += len(recs)
            await asyncio.sleep(0)  # let heartbeats and other agents run between chunks
        log.info("re-scored %d active users with %s", n, model.version)

    catalog_items: dict[str, None] = {}  # item ids with a content vector, in arrival order
    checkpoints = CheckpointRegistry(settings.scorer.checkpoint_dir)
    watched: dict[str, Any] = {"path": None}

    def _load(path):
        ckpt = load_checkpoint(path)
        scorer = BatchScorer(ckpt, device=settings.scorer.device, quantize=settings.scorer.quantize)
        # items in the catalogue but new since training: retrievable through their text vectors
        if ckpt.config.text_dim == text.dim and catalog_items:
            new = [i for i in list(catalog_items) if i not in scorer.vocab]
            if new:
                scorer.extend_items(new, np.stack([core.recommender.content.vector(i) for i in new]))
        return scorer

    @app.timer(settings.scorer.model_poll_s)
    async def watch_model() -> None:
        if not restored.is_set():
            return  # the checkpoint's new items take their vectors from the restored recommender
        paths = checkpoints.paths()
        if not paths or paths[-1] == watched["path"]:
            return
        newest = watched["path"] = paths[-1]  # a broken file is reported once, not on every poll
        try:
            model = await asyncio.get_running_loop().run_in_executor(None, _load, newest)
        except (CheckpointError, ValueError, RuntimeError, OSError) as exc:
            metrics.model_load_failures.inc()
            log.error("checkpoint %s could not be loaded (%s); still serving %s", newest.name, exc,
                      core.model_version)
            return
        async with between_batches:
            await _swap(model)

    def _count_pairings(outcomes) -> None:
        for o in outcomes:
            if o.arm is not None:
                longtail.paired_events.labels(arm=o.arm, pairing=o.pairing).inc()

    parts: dict[str, Any] = {"metrics": metrics, "longtail": longtail, "core": core, "recommender": recommender,
                             "arm_metrics": arm_metrics, "text": text, "catalogue": catalogue,
                             "impressions": impressions, "snapshots": snapshots, "restored": restored,
                             "applied": applied}

    if exposure_on:
        @app.agent(topics[RECOMMENDATIONS], name="exposure")
        async def exposure(stream):
            async for events in stream.take_events(1000, within=0.05):
                for e in events:
                    if e.message.value is None:  # a tombstone: the user was erased (#17)
                        if e.message.key:
                            user = e.message.key.decode(errors="replace")
                            _count_pairings(arm_metrics.forget(user))
                            impressions.forget(user)
                        continue
                    try:
                        rec = Recommendation.from_bytes(e.message.value)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.error("unreadable recommendation at offset %d: %s", e.message.offset, exc)
                        continue
                    _count_pairings(arm_metrics.observe_recommendation(
                        rec.user_id, rec.user_event_count, [i.item_id for i in rec.items], rec.arm))

        @app.timer(lt.interval_s)
        async def publish_longtail() -> None:
            now = time.time()
            for arm in arm_metrics.arms():
                record = arm_metrics.record(arm, now)
                longtail.set_record(record)
                ab = impressions.record(arm)
                if ab is not None:
                    record["ab"] = ab
                await producer.send(LONGTAIL_METRICS, arm.encode(), dumps(record), None, None, None)
            for source, value in core.recommender.blender.auc().items():
                if value == value:  # NaN: the source carried no signal in the window (no series)
                    metrics.blender_auc.labels(source=source).set(value)
            for segment, sources in core.recommender.blender.gate().items():
                for source, judged in sources.items():
                    metrics.source_gain.labels(segment=segment, source=source).set(judged["gain"])
                    metrics.source_served.labels(segment=segment, source=source).set(judged["served"])

        impressions_agent.register(app, topic=topics[IMPRESSIONS], impressions=impressions, producer=producer)

    to_encode: dict[str, str] = {}  # item -> its latest text, not encoded yet (in arrival order)
    texts_waiting = asyncio.Event()

    async def apply_items(records) -> None:
        async with publishing:  # between two micro-batches' scoring and publication
            changes = catalogue.apply_many(records)
        control = collections.Counter()
        for record, change in zip(records, changes):
            metrics.catalog_records.labels(change=change.kind).inc()
            if change.kind == "invalid":
                log.warning("skipping bad item record at offset %d: %s", record.offset, change.error)
                continue
            if change.kind != "upsert":
                control[change.kind] += 1
            if change.record is None:  # deleted: no text to encode, and no vector for a new checkpoint
                to_encode.pop(change.item_id, None)
                catalog_items.pop(change.item_id, None)
            else:
                to_encode.pop(change.item_id, None)  # re-queued at the end: arrival order
                to_encode[change.item_id] = change.record.content()
        if control:
            log.info("catalogue: %s; %d item(s) hidden or deleted", ", ".join(f"{n} {kind}" for kind, n in
                                                                                sorted(control.items())),
                     len(catalogue.banned))
        if to_encode:
            texts_waiting.set()

    @app.task
    async def catalog() -> None:
        """Read the whole items topic, then follow it; catalogue control is applied as records arrive."""
        await follow_partitions(settings.kafka, ITEMS, apply_items, caught_up=catalogue_read)

    def served() -> set[int]:
        """The score-requests partitions this scorer serves now: its score agent learns them."""
        try:
            return {tp.partition for tp in app.consumer.assignment() if tp.topic == SCORE_REQUESTS}
        except ConsumerNotStarted:
            return set()

    def learned_to(partition: int) -> int | None:
        """The next offset of ``partition`` this scorer's models have not learned (None: none learned)."""
        done = applied.get(partition)
        return done[0] if done is not None else None

    async def learn_others(records) -> None:
        # the served partitions are the score agent's: it learns them and reports their events for pairing
        # (paused in learn_all's consumer; records fetched before a pause are dropped here)
        mine = served()
        others = [record for record in records if record.partition not in mine]
        metrics.events_learned.labels(path="others").inc(len(core.learn(_read_requests(others))))
        for record in others:  # in the same step as the learning: a snapshot sees both or neither
            applied[record.partition] = (record.offset + 1, record.value)
        snap_state["dirty"] = snap_state["dirty"] or bool(others)

    @app.task
    async def learn_all() -> None:
        """Every user's events into this scorer's online models (see the module doc)."""
        await restored.wait()  # from the committed offsets, after the replay up to them
        await follow_partitions(settings.kafka, SCORE_REQUESTS, learn_others, group_id=app.conf.id,
                                max_records=LEARN_BATCH, skip=served, resume_at=learned_to)

    @app.task
    async def encode_items() -> None:
        """Encode queued item texts off the event loop, ``ENCODE_BATCH`` at a time, newest text per item."""
        loop = asyncio.get_running_loop()
        await restored.wait()  # the vectors go to the restored recommender
        while True:
            await texts_waiting.wait()
            items = list(itertools.islice(to_encode, ENCODE_BATCH))
            texts = [to_encode.pop(i) for i in items]
            if not to_encode:
                texts_waiting.clear()
            vectors = await loop.run_in_executor(None, text.encode, texts)
            core.recommender.content.set_vectors(items, vectors)
            catalog_items.update(dict.fromkeys(items))
            metrics.catalog_items.set(len(core.recommender.content))

    # ------------------------------------------------------------------ warm restart (#16)
    def _refuse(path, exc: SnapshotError) -> None:
        metrics.snapshot_failures.labels(stage="load").inc()
        log.error("snapshot %s refused (%s); trying an older one", path.name, exc)

    def _accept(snap) -> None:
        if snap.meta != meta:
            diff = {k: (snap.meta.get(k), v) for k, v in meta.items() if snap.meta.get(k) != v}
            raise SnapshotError(f"it was taken under another configuration (field: (snapshot, now)): {diff}")
        if set(snap.offsets) != {SCORE_REQUESTS}:
            raise SnapshotError(f"it reflects topics {sorted(snap.offsets)}, not {SCORE_REQUESTS!r} alone")
        if not isinstance(snap.state, dict) or {"recommender", "core"} - set(snap.state):
            raise SnapshotError("its payload is not a scorer's state")
        prints = snap.extra.get("fingerprints", {})
        if any(o > 0 and str(p) not in prints for p, o in snap.offsets[SCORE_REQUESTS].items()):
            raise SnapshotError("it lacks the fingerprints of the records before its offsets")

    async def _check_log(consumer, tps, snap) -> None:
        """Refuse (SnapshotError) a snapshot whose offsets the log does not hold as the snapshot saw them."""
        offsets = snap.offsets[SCORE_REQUESTS]
        prints = snap.extra["fingerprints"]
        known = {tp.partition for tp in tps}
        if set(offsets) - known:
            raise SnapshotError(f"it names partitions {sorted(set(offsets) - known)} that {SCORE_REQUESTS} lacks")
        ends = await fetch_log_ends(settings.kafka, await consumer.end_offsets(tps))
        for tp in tps:
            want = offsets.get(tp.partition, 0)
            if want > ends[tp]:
                raise SnapshotError(f"partition {tp.partition} ends at {ends[tp]}, before its offset {want}: "
                                    "a snapshot of another log (a memory-only broker restarted?)")
        for tp in tps:
            want = offsets.get(tp.partition, 0)
            if want == 0:
                continue
            consumer.seek(tp, want - 1)
            record = None
            deadline = time.monotonic() + 30
            while record is None and time.monotonic() < deadline:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
                record = next(iter(got.get(tp, [])), None)
            if record is None or record.offset != want - 1 or _fingerprint(record.value) != prints[str(tp.partition)]:
                raise SnapshotError(f"the record before offset {want} of partition {tp.partition} is not the one "
                                    "the snapshot saw: a snapshot of another log")

    async def _replay(consumer, tps, start: dict, stop: dict) -> int:
        """Learn (only) each partition's records from ``start`` up to ``stop`` (None: none)."""
        todo = [tp for tp in tps if stop.get(tp) is not None and stop[tp] > start[tp]]
        for tp in todo:
            consumer.seek(tp, start[tp])
        n = 0
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=1000, max_records=LEARN_BATCH)
            for tp in sorted(batch, key=lambda tp: tp.partition):
                records = [r for r in batch[tp] if r.offset < stop[tp]]
                learned = len(core.learn(_read_requests(records)))
                n += learned
                metrics.events_learned.labels(path="replay").inc(learned)
                if records:
                    applied[tp.partition] = (records[-1].offset + 1, records[-1].value)
            todo = [tp for tp in todo if await consumer.position(tp) < stop[tp]]
        return n

    async def _restore() -> None:
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        snap = await loop.run_in_executor(None, lambda: snapshots.latest(accept=_accept, on_error=_refuse))
        if snap is None:
            log.info("no valid snapshot in %s: a cold start", snapshots.directory)
            return
        loaded = time.perf_counter() - began
        consumer = AIOKafkaConsumer(**client_kwargs(settings.kafka), enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(SCORE_REQUESTS, p)
                   for p in sorted(consumer.partitions_for_topic(SCORE_REQUESTS) or {0})]
            consumer.assign(tps)
            try:
                await _check_log(consumer, tps, snap)
            except SnapshotError as exc:
                metrics.snapshot_failures.labels(stage="log").inc()
                log.error("snapshot %s refused (%s): a cold start", snap.path.name, exc)
                return
            install_state(core, snap.state)
            offsets = snap.offsets[SCORE_REQUESTS]
            prints = snap.extra["fingerprints"]
            start = {}
            for tp in tps:
                if offsets.get(tp.partition, 0) > 0:
                    applied[tp.partition] = (offsets[tp.partition], prints[str(tp.partition)])
                    start[tp] = offsets[tp.partition]
                else:
                    await consumer.seek_to_beginning(tp)
                    start[tp] = await consumer.position(tp)
            # the score agent and learn_all start at the committed offsets: replay up to them (no commit:
            # the score agent reads the partition from its beginning, and skips what was learned)
            committed = await committed_offsets(settings.kafka, app.conf.id, tps)
            replay_began = time.perf_counter()
            n = await _replay(consumer, tps, start, committed)
        finally:
            await consumer.stop()
        metrics.snapshot_timestamp.set(snap.created_at)
        took = time.perf_counter() - began
        metrics.restore_seconds.set(took)
        log.info("restored snapshot %s (%.0f s old, %d users; read in %.2f s), replayed %d events up to the "
                 "committed offsets %s in %.2f s: warm start after %.2f s", snap.path.name, snap.age_s(),
                 len(snap.state["core"]["learned"]), loaded, n,
                 {tp.partition: o for tp, o in committed.items()}, time.perf_counter() - replay_began, took)

    @app.task
    async def restore() -> None:
        """Load the newest valid snapshot and replay the log from its offsets, before anything serves."""
        try:
            await _restore()
        except Exception:  # noqa: BLE001 - a restore that fails half-way must not keep the scorer from serving
            metrics.snapshot_failures.labels(stage="load").inc()
            log.exception("snapshot restore failed; serving goes on from what was restored")
        finally:
            restored.set()

    @app.timer(SNAPSHOT_INTERVAL_S)
    async def snapshot() -> None:
        """Snapshot the online state between two micro-batches, when it learned something since the last."""
        if not restored.is_set() or not snap_state["dirty"]:
            return
        async with between_batches, publishing:  # no micro-batch, model swap or catalogue change under way
            began = time.perf_counter()
            payload = encode_state(core)  # a copy: learning goes on once it is taken
            offsets = {SCORE_REQUESTS: {p: n for p, (n, _v) in applied.items()}}
            prints = {str(p): v if isinstance(v, str) else _fingerprint(v) for p, (_n, v) in applied.items()}
            snap_state["dirty"] = False
            held = time.perf_counter() - began
        metrics.snapshot_seconds.set(held)
        created = time.time()
        try:  # hashing, writing and syncing in a thread
            path = await asyncio.get_running_loop().run_in_executor(
                None, lambda: snapshots.write(payload, offsets=offsets, meta=meta, created_at=created,
                                              extra={"fingerprints": prints}))
        except OSError as exc:
            snap_state["dirty"] = True
            metrics.snapshot_failures.labels(stage="write").inc()
            snap_state["write_failures"] += 1  # said once, then every 20th time (a read-only folder: each one)
            if snap_state["write_failures"] % 20 == 1:
                log.error("snapshot not written to %s (%s; %d time(s) so far); serving goes on, a restart would "
                          "start cold", snapshots.directory, exc, snap_state["write_failures"])
            return
        metrics.snapshots_written.inc()
        metrics.snapshot_bytes.set(len(payload))
        metrics.snapshot_timestamp.set(created)
        log.info("snapshot %s: %.1f MB, scoring held %.0f ms, offsets %s", path.name, len(payload) / 1e6,
                 held * 1000, offsets[SCORE_REQUESTS])

    return parts
