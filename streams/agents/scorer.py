"""The scorer's micro-batch logic (:class:`ScorerCore`, no Kafka types).

Per micro-batch: **learn** each event once, in order; **coalesce** to each user's newest state; **encode**
all users at once with the batch model, if any; **blend and re-rank** with the online recommender, never
recommending a consumed or ``banned`` item (#17). An empty list is scored again with each following batch
until it has items; an erasure marker (#17) forgets the user. ``Recommendation.refresh`` and ``list_id`` say
why each list was published and which it is.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Collection, Container, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from online.arms import ArmAssigner
from online.base import Candidate, CandidateList
from streams.records import Forget, Recommendation, RecommendedItem, ScoreRequest

__all__ = ["SequenceModel", "ScorerCore", "BatchOutput", "LearnedEvent", "BATCH_SOURCES"]

#: Candidate sources a batch model may hand the scorer (the blender knows them all).
BATCH_SOURCES = ("transformer", "vae")


class SequenceModel(Protocol):
    """What the scorer needs of a batch model (models.scoring.BatchScorer fits)."""

    version: str
    vocab: Container[str]  # the items it can propose

    def candidates(self, histories: list[list[str]], k: int,
                   exclude: list[set[str]]) -> dict[str, list[list[tuple[str, float]]]]:
        """Top ``k`` (item, score) per user from each of its sources (names in ``BATCH_SOURCES``)."""
        ...


@dataclass(frozen=True, slots=True)
class LearnedEvent:
    """One event applied by the scorer, with its 1-based index in the user's history (for evaluation)."""

    user: str
    item: str
    ts: float
    index: int


@dataclass(slots=True)
class BatchOutput:
    """A micro-batch's lists, the events it learned, and the users it erased (``forgotten``, in order: their
    tombstones go out before the lists, each of which reflects only events after the erasure)."""

    recommendations: list[Recommendation] = field(default_factory=list)
    events: list[LearnedEvent] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    coalesced: int = 0
    stale: int = 0


class _LRU(OrderedDict):
    """A dict capped at ``cap`` entries, least recently set evicted first."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: str, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.cap:
            self.popitem(last=False)


class ScorerCore:
    """Learn from, coalesce, score and publish one micro-batch of :class:`ScoreRequest`."""

    def __init__(self, *, recommender, arms: ArmAssigner, k: int, n_candidates: int = 100,
                 online_version: str = "online", max_users: int = 1_000_000, max_active: int = 100_000,
                 max_empty: int = 10_000, banned: Collection[str] = frozenset(), depth: int | None = None) -> None:
        self.recommender = recommender
        # items a published record holds in all: ``items`` (k) and ``more`` (the read API's stored depth)
        self.depth = depth if depth is not None and depth > k else None
        self.banned = banned  # items no list may hold (hidden or deleted); read at each scoring
        self.arms = arms
        self.k = k
        self.n_candidates = n_candidates
        self.online_version = online_version
        self.model: SequenceModel | None = None
        self._learned = _LRU(max_users)    # user -> events applied to the online models
        # user -> (event_count, lists published for it) of the newest list published
        self._published = _LRU(max_users)
        self._active = _LRU(max_active)  # user -> the newest request scored (re-scored after a model swap)
        self._empty = _LRU(max_empty)  # user -> the request whose list came out empty (scored again)

    def warm(self, user: str, event_count: int) -> None:
        """``user``'s first ``event_count`` events were learned and served outside :meth:`process`: a request
        up to that count is neither learned again nor scored."""
        self._learned.put(user, event_count)
        self._published.put(user, (event_count, 1))

    def snapshot_state(self) -> dict:
        """Each user's learned event count, in LRU order, for a warm restart (#16). Published lists are left
        out: a redelivered request must publish again a list that may never have reached the log."""
        return {"learned": list(self._learned.items())}

    def restore_state(self, state: dict) -> None:
        """Take back :meth:`snapshot_state` (on a core that has learned nothing yet)."""
        for user, count in state["learned"]:
            self._learned.put(user, int(count))

    def swap_model(self, model: SequenceModel | None) -> None:
        """Install a new batch model (its vocabulary goes to the ranker's ``batch_unknown`` feature); called
        between micro-batches only."""
        self.model = model
        self.recommender.set_batch_vocabulary(model.vocab if model is not None else None)

    @property
    def model_version(self) -> str:
        return self.model.version if self.model is not None else self.online_version

    def _published_count(self, user: str) -> int:
        """The ``user_event_count`` of the newest list published for ``user`` (0: none)."""
        published = self._published.get(user)
        return 0 if published is None else published[0]

    def _learn(self, request: ScoreRequest, out: BatchOutput) -> None:
        user = request.user_id
        first_index = request.event_count - len(request.new) + 1
        done = self._learned.get(user, 0)
        # ``new`` may outrun the bounded ``sequence``: an event's history is what preceded the new items in
        # the sequence plus the new items before it
        new_items = [item for item, _ts, _event in request.new]
        before = request.sequence[:max(0, len(request.sequence) - len(new_items))]
        limit = max(len(request.sequence), 1)
        for i, (item, ts, _event) in enumerate(request.new):
            index = first_index + i
            if index <= done:
                continue  # redelivered: already learned
            history = (before + new_items[:i])[-limit:]
            self.recommender.learn_one(user, item, ts, history)
            out.events.append(LearnedEvent(user, item, ts, index))
            done = index
        self._learned.put(user, done)

    def forget(self, user: str) -> None:
        """Erase ``user`` (#17) from this core's per-user maps and the recommender's per-user rows; a later
        request for the user is a new user's."""
        for per_user in (self._learned, self._published, self._active, self._empty):
            per_user.pop(user, None)
        self.recommender.forget(user)

    def learn(self, requests: Sequence[ScoreRequest | Forget]) -> list[LearnedEvent]:
        """Apply the events of requests another scorer serves to the online models, scoring nothing; an event
        already learned (here or by :meth:`process`) is skipped, and an erasure marker erases here too."""
        out = BatchOutput()
        for request in requests:
            if type(request) is Forget:
                self.forget(request.user_id)
            else:
                self._learn(request, out)
        return out.events

    def process(self, requests: Sequence[ScoreRequest | Forget], *, now: float | None = None) -> BatchOutput:
        """Learn, coalesce and score a micro-batch; an erasure marker forgets its user in order (earlier
        requests learned, not scored) and names them in ``out.forgotten``."""
        out = BatchOutput()
        newest: dict[str, ScoreRequest] = {}
        for request in requests:
            if type(request) is Forget:
                if newest.pop(request.user_id, None) is not None:
                    out.coalesced += 1
                self.forget(request.user_id)
                out.forgotten.append(request.user_id)
                continue
            self._learn(request, out)
            prev = newest.get(request.user_id)
            if prev is None or request.event_count > prev.event_count:
                if prev is not None:
                    out.coalesced += 1
                newest[request.user_id] = request
            else:
                out.coalesced += 1
        todo: dict[str, tuple[ScoreRequest, str]] = {}
        for user, request in newest.items():
            if request.event_count <= self._published_count(user):
                out.stale += 1  # a newer (or the same) state was already published
                continue
            todo[user] = (request, "event")
        # users whose newest list was empty, scored again now that this batch's events are learned
        for user, request in list(self._empty.items()):
            if user not in todo and self._published_count(user) == request.event_count:
                todo[user] = (request, "empty")
        out.recommendations = self._score(list(todo.values()), now)
        return out

    def batch_candidates(self, histories: Sequence[Sequence[str]]) -> list[dict[str, Sequence[Candidate]]] | None:
        """The batch model's candidates per user as the recommender's ``extras`` (None without a model), each
        a :class:`~online.base.CandidateList` (building ``Candidate`` objects cost more than the rest)."""
        if self.model is None:
            return None
        found = self.model.candidates(list(histories), self.n_candidates, [set(h) for h in histories])
        unknown = sorted(set(found) - set(BATCH_SOURCES))
        if unknown:
            raise ValueError(f"batch model sources {unknown} are not among {BATCH_SOURCES}")
        out: list[dict[str, Sequence[Candidate]]] = [{} for _ in histories]
        for source, lists in found.items():
            for b in range(len(histories)):
                pairs = lists[b]
                items, scores = (list(x) for x in zip(*pairs)) if pairs else ([], [])
                out[b][source] = CandidateList(items, scores, source)
        return out

    def _score(self, batch: Sequence[tuple[ScoreRequest, str]], now: float | None) -> list[Recommendation]:
        """Score each (request, refresh) pair and publish its list, numbered after the lists already
        published for the same state (``"event"``: the first, n = 0)."""
        if not batch:
            return []
        todo = [request for request, _refresh in batch]
        extras = self.batch_candidates([r.sequence for r in todo])
        generated_at = time.time() if now is None else now
        version = self.model_version
        arms = [self.arms.assign(r.user_id) for r in todo]
        banned = self.banned
        # lists of depth items, of which the first k are the list (the candidates depend on k alone)
        deeper = {"k": self.k, "depth": self.depth} if self.depth is not None else {}
        lists = self.recommender.recommend_many([r.user_id for r in todo], [r.sequence for r in todo],
                                                [r.event_count for r in todo], arms=arms, extras=extras,
                                                excludes=[banned] * len(todo) if banned else None,
                                                consumed=[r.consumed_hashes() for r in todo], **deeper)
        k = self.k if self.depth is not None else None
        recs = []
        reasons: dict[tuple[str, str | None], str] = {}  # (source, anchor) -> reason: formatted once per batch

        def reason(c: Candidate) -> str:
            text = reasons.get((c.source, c.anchor))
            if text is None:
                text = reasons[c.source, c.anchor] = c.reason()
            return text

        for (request, refresh), arm, cands in zip(batch, arms, lists):
            published = self._published.get(request.user_id)
            n = published[1] if published is not None and published[0] == request.event_count else 0
            listed = [RecommendedItem(c.item, round(float(c.score), 6), c.source, reason(c)) for c in cands]
            recs.append(Recommendation(
                user_id=request.user_id,
                items=listed[:k], more=listed[k:] if k is not None else [],
                user_event_count=request.event_count, model_version=version, arm=arm,
                event_ts=request.event_ts, generated_at=generated_at, ingested_at=request.ingested_at,
                list_id=Recommendation.make_list_id(request.user_id, request.event_count, n), refresh=refresh))
            self._published.put(request.user_id, (request.event_count, n + 1))
            self._active.put(request.user_id, request)
            if cands:
                self._empty.pop(request.user_id, None)
            else:
                self._empty.put(request.user_id, request)
        return recs

    def rescore_active(self, *, batch: int = 1024, now: float | None = None) -> Iterator[list[Recommendation]]:
        """Re-score every recently active user's newest state, ``batch`` users at a time, after a model swap:
        ``refresh="model"``, the same ``user_event_count``, the next ``list_id`` of that state."""
        requests = list(self._active.values())
        for start in range(0, len(requests), batch):
            chunk = [(r, "model") for r in requests[start:start + batch]
                     if self._published_count(r.user_id) == r.event_count]  # skip users who moved on
            yield self._score(chunk, now)
