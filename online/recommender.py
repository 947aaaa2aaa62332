"""The composition the scorer calls: candidates from every source, blended, re-ranked for the tail.

``learn_one`` updates every model (popularity, co-visitation, MF; content is catalogue-driven) and
first turns the user's previous shown list into blender feedback (see below).

``recommend(user, history, user_event_count, *, arm, extra)``:

1. candidates, never an item of the history nor of ``exclude``:
   * no history (cold start): the most popular items now, mixed with the fresh tail (items first
     seen recently that are still rare), so a brand-new user sees tail items from the first list;
   * with history: co-visitation, content neighbours and MF, ``n_candidates`` each, plus a few
     popular and fresh items as fallbacks;
   * ``extra``: lists from outside (e.g. the Transformer, source ``"transformer"``);
2. blend: the :class:`~online.blender.FeedbackBlender` turns each candidate's per-source scores and
   ranks, its tail flag and the user's event count into a click probability;
3. re-rank with the arm's strength (:class:`~online.rerank.TailReranker`, the user's tail appetite
   from their history; ``calibrate=False`` makes the re-ranker only ever add tail items, see there);
4. each returned :class:`~online.base.Candidate` has the blended probability as score, the source
   that contributed most to it (by the blender's per-source logit terms) and that source's anchor.

Feedback is exact: the feature dicts of the k shown items are kept (the latest list per user,
at most ``max_pending`` users, least recently served dropped first), and the user's next event
labels them (clicked = shown item == next item). Negatives are subsampled to ``max_negatives`` per
list to keep feedback cheap.

Measured costs (2-core CPU box, 20k events over 2k items, 6 blender sources):
``learn_one`` 8-11 µs/event without a pending list, 115-145 µs when it labels a pending list (1 to 3
blender examples, ~20-40 µs each, plus the model updates); ``recommend`` 2.9-3.7 ms (warm user, 100
candidates per source, 7 blender sources); ranges = repeated runs on the shared box, with
``.venv/bin/python -c "from online.recommender import _bench; _bench()"``.

>>> rec = OnlineRecommender.create(arms=parse_arms("control:1:0.0"), content_dim=8)
>>> for n, item in enumerate(["a", "b", "a", "c", "a", "b"]):
...     rec.learn_one(f"u{n}", item, float(n), [])
>>> [(c.item, c.source, c.reason()) for c in rec.recommend("new-user", [], 0, arm="control")]
[('a', 'popularity', 'popular now'), ('c', 'fresh', 'tail discovery'), ('b', 'popularity', 'popular now')]
>>> rec.learn_one("new-user", "c", 6.0, [])   # labels the list just shown (c clicked) for the blender
>>> rec.blender.n_learned
3
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from online.arms import ArmAssigner, ArmConfig, parse_arms
from online.base import Candidate, Event
from online.blender import FeedbackBlender
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.rerank import TailReranker, tail_appetite

__all__ = ["CORE_SOURCES", "ArmView", "OnlineRecommender", "UnknownArmError", "UnknownSourceError"]

#: Sources the recommender itself produces; the blender must know all of them.
CORE_SOURCES = ("popularity", "covisit", "mf", "content", "fresh")


class UnknownArmError(KeyError):
    """``recommend`` was asked for an arm that is not configured."""


class UnknownSourceError(ValueError):
    """A candidate source (e.g. an ``extra`` list) that the blender has no feature for."""


class OnlineRecommender:
    """Candidate generation + feedback blending + tail re-ranking, per A/B arm."""

    name = "recommender"

    def __init__(
        self,
        *,
        popularity: DecayedPopularity,
        covisit: CoVisitation,
        mf: OnlineMF,
        content: ContentNeighbours,
        blender: FeedbackBlender,
        arms: Sequence[ArmConfig],
        k: int = 10,
        n_candidates: int = 100,
        seed: int = 0,
        n_fresh: int = 10,
        max_negatives: int = 2,
        max_pending: int = 100_000,
        salt: str = "tailcast",
        calibrate: bool = True,
    ) -> None:
        missing = [s for s in CORE_SOURCES if s not in blender.sources]
        if missing:
            raise UnknownSourceError(f"blender sources {blender.sources} lack {missing}")
        if not arms:
            raise ValueError("at least one arm is needed")
        if k < 1 or n_candidates < k:
            raise ValueError(f"need 1 <= k <= n_candidates, got k={k}, n_candidates={n_candidates}")
        self.popularity = popularity
        self.covisit = covisit
        self.mf = mf
        self.content = content
        self.blender = blender
        self.arms = {a.name: a for a in arms}
        if len(self.arms) != len(arms):
            raise ValueError(f"duplicate arm names in {[a.name for a in arms]}")
        self.assigner = ArmAssigner.from_configs(arms, salt=salt)
        self.k = int(k)
        self.n_candidates = int(n_candidates)
        self.seed = int(seed)
        self.n_fresh = int(n_fresh)
        self.max_negatives = int(max_negatives)
        self.max_pending = int(max_pending)
        self.calibrate = bool(calibrate)
        self._rng = random.Random(seed)
        # user -> (shown items, their feature dicts), LRU order
        self._pending: OrderedDict[str, tuple[tuple[str, ...], list[dict[str, float]]]] = OrderedDict()

    @classmethod
    def create(
        cls,
        *,
        arms: Sequence[ArmConfig],
        content_dim: int = 256,
        k: int = 10,
        n_candidates: int = 100,
        seed: int = 0,
        extra_sources: Sequence[str] = ("transformer",),
        n_fresh: int = 10,
        max_negatives: int = 2,
        max_pending: int = 100_000,
        calibrate: bool = True,
    ) -> OnlineRecommender:
        """A recommender over default-configured models (the blender also knows ``extra_sources``)."""
        return cls(
            popularity=DecayedPopularity(),
            covisit=CoVisitation(),
            mf=OnlineMF(seed=seed),
            content=ContentNeighbours(dim=content_dim),
            blender=FeedbackBlender(sources=[*CORE_SOURCES, *extra_sources], seed=seed),
            arms=arms,
            k=k,
            n_candidates=n_candidates,
            seed=seed,
            n_fresh=n_fresh,
            max_negatives=max_negatives,
            max_pending=max_pending,
            calibrate=calibrate,
        )

    # ---------------------------------------------------------------- learning
    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        """Label the user's last shown list with this event, then update every model."""
        self.feedback(user, None, item)
        self.popularity.learn_one(user, item, ts, history)
        self.covisit.learn_one(user, item, ts, history)
        self.mf.learn_one(user, item, ts, history)

    def learn_many(self, events: Iterable[Event]) -> None:
        for user, item, ts, history in events:
            self.learn_one(user, item, ts, history)

    def feedback(self, user: str, shown: Sequence[Candidate] | None, clicked_item: str) -> int:
        """Train the blender on the user's latest shown list; return the examples learned.

        The list is consumed (a second call for the same list learns nothing). ``shown`` is checked
        against the stored list when given; 0 is returned, with nothing learned, when this instance
        holds no list for the user or holds a different one (its features would not be exact).
        """
        entry = self._pending.pop(user, None)
        if entry is None:
            return 0
        items, xs = entry
        if shown is not None and tuple(c.item for c in shown) != items:
            return 0
        clicked = [it == clicked_item for it in items]
        chosen = [n for n, c in enumerate(clicked) if c]
        negatives = [n for n, c in enumerate(clicked) if not c]
        if len(negatives) > self.max_negatives:
            negatives = self._rng.sample(negatives, self.max_negatives)
        chosen = sorted(chosen + negatives)
        for n in chosen:
            self.blender.learn_one(xs[n], clicked[n])
        return len(chosen)

    # ---------------------------------------------------------------- serving
    def is_tail(self, item: str) -> bool:
        return self.popularity.is_tail(item)

    def assign_arm(self, user: str) -> str:
        return self.assigner.assign(user)

    def _candidate_lists(
        self,
        user: str,
        history: Sequence[str],
        banned: set[str],
        extra: Mapping[str, Sequence[Candidate]] | None,
    ) -> dict[str, list[Candidate]]:
        n = self.n_candidates
        lists: dict[str, list[Candidate]] = {}
        if history:
            lists["covisit"] = self.covisit.recommend(user, history, n, banned)
            lists["content"] = self.content.recommend(user, history, n, banned)
            lists["mf"] = self.mf.recommend(user, history, n, banned)
            lists["popularity"] = self.popularity.recommend(user, history, max(self.k, n // 10), banned)
            lists["fresh"] = self.popularity.fresh_items(self.n_fresh, banned)
        else:
            lists["popularity"] = self.popularity.recommend(user, history, n, banned)
            lists["fresh"] = self.popularity.fresh_items(max(self.n_fresh, self.k), banned)
        for source, cands in (extra or {}).items():
            if source not in self.blender.sources:
                raise UnknownSourceError(
                    f"extra source {source!r} is not one of the blender's sources {self.blender.sources}"
                )
            lists[source] = [c for c in cands if c.item not in banned]
        return lists

    def _blend(
        self, lists: Mapping[str, list[Candidate]], user_event_count: int
    ) -> tuple[list[Candidate], list[dict[str, float]]]:
        table: dict[str, dict[str, tuple[float, int, str | None]]] = {}
        for source, cands in lists.items():
            for rank, c in enumerate(cands):
                per = table.setdefault(c.item, {})
                if source not in per:
                    per[source] = (c.score, rank, c.anchor)
        if not table:
            return [], []
        items = list(table)
        tail = self.popularity.tail_mask(items)
        xs = [
            self.blender.features(
                {s: v[0] for s, v in table[it].items()},
                is_tail=bool(t),
                user_event_count=user_event_count,
                source_ranks={s: v[1] for s, v in table[it].items()},
            )
            for it, t in zip(items, tail.tolist())
        ]
        probs = self.blender.predict_many(xs)
        contrib = self.blender.contributions_many(xs)  # (n, S)
        col = {s: n for n, s in enumerate(self.blender.sources)}
        out: list[Candidate] = []
        for row, (it, p) in enumerate(zip(items, probs.tolist())):
            per = table[it]
            # the proposing source with the largest logit share; ties: the better rank
            source = max(per, key=lambda s: (contrib[row, col[s]], -per[s][1]))
            out.append(Candidate(it, p, source, anchor=per[source][2]))
        return out, xs

    def recommend(
        self,
        user: str,
        history: Sequence[str],
        user_event_count: int,
        *,
        arm: str,
        extra: Mapping[str, Sequence[Candidate]] | None = None,
        k: int | None = None,
        exclude: Collection[str] = (),
    ) -> list[Candidate]:
        """The top-``k`` (default ``self.k``) list for ``user`` in ``arm``, best first."""
        config = self.arms.get(arm)
        if config is None:
            raise UnknownArmError(f"arm {arm!r} is not configured (arms: {sorted(self.arms)})")
        k = self.k if k is None else int(k)
        banned = set(exclude)
        banned.update(history)
        lists = self._candidate_lists(user, history, banned, extra)
        cands, xs = self._blend(lists, user_event_count)
        if not cands:
            return []
        reranker = TailReranker(strength=config.rerank_strength, k=k, calibrate=self.calibrate)
        appetite = tail_appetite(history, self.popularity.is_tail)
        shown = reranker.rerank(cands, is_tail=self.popularity.is_tail, tail_appetite=appetite)
        pos = {c.item: n for n, c in enumerate(cands)}
        self._pending[user] = (tuple(c.item for c in shown), [xs[pos[c.item]] for c in shown])
        self._pending.move_to_end(user)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        return shown

    def __contains__(self, item: object) -> bool:
        return item in self.popularity or item in self.content or item in self.mf

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """Blended click probability of ``items`` (source ranks unknown here: rank features 0);
        0.0 for an item no model knows."""
        if not len(items):
            return np.zeros(0)
        per_source = {
            "popularity": self.popularity.score(user, history, items),
            "covisit": self.covisit.score(user, history, items),
            "mf": self.mf.score(user, history, items),
            "content": self.content.score(user, history, items),
        }
        tail = self.popularity.tail_mask(items)
        xs = [
            self.blender.features(
                {s: float(v[n]) for s, v in per_source.items()},
                is_tail=bool(tail[n]),
                user_event_count=len(history),
            )
            for n in range(len(items))
        ]
        known = np.fromiter((it in self for it in items), dtype=bool, count=len(items))
        return np.where(known, self.blender.predict_many(xs), 0.0)

    def as_model(self, arm: str) -> ArmView:
        """This recommender seen through the :class:`~online.base.OnlineModel` contract, in ``arm``."""
        if arm not in self.arms:
            raise UnknownArmError(f"arm {arm!r} is not configured (arms: {sorted(self.arms)})")
        return ArmView(self, arm)


class ArmView:
    """:class:`OnlineRecommender` behind the ``OnlineModel`` contract for one arm (evaluation, tests).

    ``recommend(user, history, k, exclude)`` uses ``len(history)`` as the user's event count.
    """

    def __init__(self, recommender: OnlineRecommender, arm: str) -> None:
        self.recommender = recommender
        self.arm = arm
        self.name = f"recommender[{arm}]"

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        self.recommender.learn_one(user, item, ts, history)

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        return self.recommender.recommend(user, history, len(history), arm=self.arm, k=k, exclude=exclude)

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self.recommender.score(user, history, items)


def _bench(n_events: int = 20_000, n_items: int = 2000, n_users: int = 500, seed: int = 0) -> None:
    """Print learn_one / recommend costs on a synthetic Zipf stream (figures in the docstring)."""
    import time

    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in (rng.zipf(1.3, n_events) % n_items)]
    users = [f"u{u}" for u in rng.integers(0, n_users, n_events).tolist()]
    rec = OnlineRecommender.create(arms=parse_arms("control:0.5:0.0,tail:0.5:0.3"), content_dim=32, seed=seed)
    vecs = rng.normal(size=(n_items, 32)).astype(np.float32)
    rec.content.set_vectors([f"i{j}" for j in range(n_items)], vecs)
    hist: dict[str, list[str]] = {}
    events = []
    for n, (u, it) in enumerate(zip(users, items)):
        h = hist.setdefault(u, [])
        events.append((u, it, float(n), tuple(h[-50:])))
        h.append(it)
    half = n_events // 2
    t = time.perf_counter()
    rec.learn_many(events[:half])
    plain = (time.perf_counter() - t) / half
    t_rec = t_learn = 0.0
    for u, it, ts, h in events[half : half + 2000]:
        t = time.perf_counter()
        rec.recommend(u, h, len(h), arm=rec.assign_arm(u))
        t_rec += time.perf_counter() - t
        t = time.perf_counter()
        rec.learn_one(u, it, ts, h)  # labels the list just shown: blender feedback included
        t_learn += time.perf_counter() - t
    print(
        f"learn_one: {plain * 1e6:.1f} us/event without a pending list, {t_learn / 2000 * 1e6:.1f} us with one;"
        f" recommend: {t_rec / 2000 * 1e3:.2f} ms"
    )
