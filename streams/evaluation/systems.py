"""The systems ``tailcast evaluate`` compares, each behind the scorer's own micro-batch logic.

Every system is a :class:`~streams.agents.scorer.ScorerCore` (learn, coalesce, encode, recommend) around
a recommender with the methods ``ScorerCore`` calls, ``learn_one(user, item, ts, history)`` and
``recommend_many(users, histories, user_event_counts, *, arms, extras)`` (the baselines implement
``recommend`` per user and get ``recommend_many`` from :class:`PerUserRecommender`), so all of them see the
same micro-batches, the same coalescing and the same pairing:

* ``tailcast[s=…]``: the live scorer's :class:`~online.recommender.OnlineRecommender`, built by
  :func:`streams.agents.serving.build_recommender` from the settings with ONE arm forced for every user,
  whose re-ranking strength is the knob being swept (plus the batch model's candidates when a checkpoint
  is given: the Transformer, and the Mult-VAE when the checkpoint carries one);
* ``tailcast[s=…] no VAE``: the same, with the batch model's Mult-VAE source switched off (only when there
  is one), for the with/without comparison;
* ``MostPop``: the most interacted items in the last ``TAILCAST_WINDOW_EVENTS`` events (:class:`WindowMostPop`);
* ``ItemCF``: online item co-visitation (:class:`~online.covisit.CoVisitation`) alone, lists topped up with
  MostPop when co-visitation has fewer than ``k`` candidates (a user's first list, rare items);
* ``TailBoost[λ=…]``: the same co-visitation scores × (1 + λ·is_tail), re-sorted (λ = 0 is ``ItemCF``);
* ``Transformer``: the checkpoint's top-k alone, no online models, no tail re-ranking;
* ``Mult-VAE``: the checkpoint's Mult-VAE top-k alone, likewise (only when there is one).

Head/tail for the baselines is :class:`WindowMostPop`'s window, the DESIGN §4 definition (top
``head_share`` of active items by window count, ties by item id), i.e. the same split as tailcast's.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from online.arms import ArmAssigner, ArmConfig
from online.base import Candidate
from online.covisit import CoVisitation
from streams.agents.scorer import ScorerCore
from streams.config import Settings

__all__ = ["SystemSpec", "PerUserRecommender", "WindowMostPop", "CoVisitBaseline", "TransformerOnly", "build_core", "tail_boost",
           "tail_boost_impl", "default_systems"]


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """One compared system: ``kind`` in tailcast/tailcast-novae/mostpop/itemcf/tailboost/transformer/vae,
    ``param`` its knob."""

    kind: str
    param: float | None = None

    @property
    def name(self) -> str:
        if self.kind == "tailcast":
            return f"tailcast[s={self.param:.2f}]"
        if self.kind == "tailcast-novae":
            return f"tailcast[s={self.param:.2f}] no VAE"
        if self.kind == "tailboost":
            return f"TailBoost[λ={self.param:g}]"
        return {"mostpop": "MostPop", "itemcf": "ItemCF", "transformer": "Transformer", "vae": "Mult-VAE"}[self.kind]


def default_systems(strengths: Sequence[float], boosts: Sequence[float], *, transformer: bool,
                    vae: bool = False) -> list[SystemSpec]:
    specs = [SystemSpec("tailcast", float(s)) for s in strengths]
    if transformer and vae:
        specs += [SystemSpec("tailcast-novae", float(s)) for s in strengths]
    specs += [SystemSpec("mostpop"), SystemSpec("itemcf")]
    specs += [SystemSpec("tailboost", float(b)) for b in boosts if b > 0]
    if transformer:
        specs.append(SystemSpec("transformer"))
        if vae:
            specs.append(SystemSpec("vae"))
    return specs


class PerUserRecommender:
    """``recommend_many`` (what :class:`ScorerCore` calls per micro-batch) as one ``recommend`` per user."""

    def recommend_many(self, users: Sequence[str], histories: Sequence[Sequence[str]],
                       user_event_counts: Sequence[int], *, arms: Sequence[str],
                       extras: Sequence[Mapping[str, Sequence[Candidate]] | None] | None = None,
                       k: int | None = None, excludes=None) -> list[list[Candidate]]:
        extras = extras if extras is not None else [None] * len(users)
        return [self.recommend(u, h, c, arm=a, extra=x)
                for u, h, c, a, x in zip(users, histories, user_event_counts, arms, extras)]


class WindowMostPop(PerUserRecommender):
    """Counts over the last ``window_events`` events; top-k by count (ties by id) and the §4 head/tail split.

    The ranking and the head set are recomputed lazily, on the first read after new events: once per
    micro-batch, since the scorer learns a whole batch before it recommends.

    >>> pop = WindowMostPop(window_events=5, head_share=0.4, k=2)
    >>> for item in "aabcd":
    ...     pop.learn_one("u", item, 0.0, [])
    >>> [c.item for c in pop.recommend("u", ["a"], 1, arm="x")], pop.is_tail("a"), pop.is_tail("b")
    (['b', 'c'], False, True)
    """

    name = "mostpop"

    def __init__(self, *, window_events: int, head_share: float = 0.2, k: int = 10, history_len: int = 50) -> None:
        self.window_events = window_events
        self.head_share = head_share
        self.k = k
        self._keep = k + history_len + 1  # enough for any exclusion of a bounded history
        self._events: deque[str] = deque()
        self._counts: dict[str, int] = {}
        self._dirty = True
        self._top: list[str] = []
        self._head: frozenset[str] = frozenset()

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        counts = self._counts
        self._events.append(item)
        counts[item] = counts.get(item, 0) + 1
        if len(self._events) > self.window_events:
            old = self._events.popleft()
            if counts[old] == 1:
                del counts[old]
            else:
                counts[old] -= 1
        self._dirty = True

    def _refresh(self) -> None:
        if not self._dirty:
            return
        n_head = math.floor(self.head_share * len(self._counts) + 1e-9)
        ranked = heapq.nsmallest(max(self._keep, n_head), self._counts.items(), key=lambda kv: (-kv[1], kv[0]))
        self._top = [item for item, _ in ranked[: self._keep]]
        self._head = frozenset(item for item, _ in ranked[:n_head])
        self._dirty = False

    def is_tail(self, item: str) -> bool:
        self._refresh()
        return item not in self._head

    def top(self, k: int, banned: Collection[str]) -> list[Candidate]:
        self._refresh()
        out = []
        for item in self._top:
            if item not in banned:
                out.append(Candidate(item, float(self._counts[item]), "popularity"))
                if len(out) >= k:
                    break
        return out

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        return self.top(self.k, set(history))


def tail_boost_impl() -> str:
    """Where the TailBoost re-ranker comes from: ``online.rerank.TailBoost`` or this module's fallback."""
    try:
        from online.rerank import TailBoost  # noqa: F401
    except ImportError:
        return "streams.evaluation.systems.tail_boost (online.rerank.TailBoost not available)"
    return "online.rerank.TailBoost"


def tail_boost(strength: float, k: int = 10) -> Callable[[list[Candidate], Callable[[str], bool]], list[Candidate]]:
    """A re-ranker: the top ``k`` by ``score × (1 + strength·is_tail)`` (stable: ties keep input order).

    Uses ``online.rerank.TailBoost(strength=...)`` when it exists, else the same formula here.

    >>> cands = [Candidate("h", 1.0, "covisit"), Candidate("t", 0.6, "covisit")]
    >>> [c.item for c in tail_boost(1.0)(cands, lambda i: i == "t")]     # 0.6 * 2 > 1.0
    ['t', 'h']
    """
    try:
        from online.rerank import TailBoost
    except ImportError:
        TailBoost = None
    if TailBoost is not None:
        booster = TailBoost(strength=strength, k=k)

        def rerank_lib(cands: list[Candidate], is_tail: Callable[[str], bool]) -> list[Candidate]:
            return list(booster.rerank(cands, is_tail=is_tail))

        return rerank_lib

    def rerank(cands: list[Candidate], is_tail: Callable[[str], bool]) -> list[Candidate]:
        boosted = [c.score * (1.0 + strength * is_tail(c.item)) for c in cands]
        order = sorted(range(len(cands)), key=lambda n: -boosted[n])
        return [cands[n] for n in order[:k]]

    return rerank


class CoVisitBaseline(PerUserRecommender):
    """Online item-CF (co-visitation), optionally with a tail boost, topped up with window MostPop."""

    def __init__(self, *, boost: float, k: int, n_candidates: int, window_events: int, head_share: float,
                 history_len: int) -> None:
        self.k = k
        self.n_candidates = n_candidates
        self.covisit = CoVisitation()
        self.pop = WindowMostPop(window_events=window_events, head_share=head_share, k=k, history_len=history_len)
        self.boost = boost
        self._rerank = tail_boost(boost, k) if boost > 0 else None

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        self.covisit.learn_one(user, item, ts, history)
        self.pop.learn_one(user, item, ts, history)

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        cands = self.covisit.recommend(user, history, self.n_candidates) if history else []
        if self._rerank is not None and cands:
            cands = self._rerank(cands, self.pop.is_tail)
        shown = list(cands[: self.k])
        if len(shown) < self.k:
            banned = set(history)
            banned.update(c.item for c in shown)
            shown += self.pop.top(self.k - len(shown), banned)
        return shown


class TransformerOnly(PerUserRecommender):
    """The checkpoint's top-k of one batch source (the scorer passes it as ``extra[source]``; ``"transformer"``
    or ``"vae"``), topped up with MostPop when it has fewer than ``k``."""

    def __init__(self, *, k: int, window_events: int, head_share: float, history_len: int,
                 source: str = "transformer") -> None:
        self.k = k
        self.source = source
        self.pop = WindowMostPop(window_events=window_events, head_share=head_share, k=k, history_len=history_len)

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        self.pop.learn_one(user, item, ts, history)  # the Transformer itself is frozen between refreshes

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        banned = set(history)
        shown = [c for c in (extra or {}).get(self.source, []) if c.item not in banned][: self.k]
        if len(shown) < self.k:
            banned.update(c.item for c in shown)
            shown += self.pop.top(self.k - len(shown), banned)
        return shown


def build_core(spec: SystemSpec, settings: Settings, *, text_vectors=None, model=None) -> ScorerCore:
    """A fresh :class:`ScorerCore` for ``spec`` with a single arm named after the system.

    ``text_vectors`` = (item ids, (N, D) array) for tailcast's content model (what the live scorer's
    catalogue task gives it); ``model`` = a ``SequenceModel`` (``models.scoring.BatchScorer``) or None.
    """
    from streams.agents.serving import build_recommender

    k = settings.scorer.k
    lt = settings.longtail
    tailcast = spec.kind in ("tailcast", "tailcast-novae")
    arm = ArmConfig(spec.name, 1.0, float(spec.param) if tailcast else 0.0)
    arms = ArmAssigner.from_configs([arm])
    common = {"k": k, "window_events": lt.window_events, "head_share": lt.head_share,
              "history_len": settings.worker.history_len}
    if tailcast:
        forced = replace(settings, scorer=replace(settings.scorer, arms=(arm,)))
        dim = text_vectors[1].shape[1] if text_vectors is not None else 8
        recommender = build_recommender(forced, text_dim=dim)
        if text_vectors is not None and len(text_vectors[0]):
            recommender.content.set_vectors(list(text_vectors[0]), text_vectors[1])
        version = "online"
    elif spec.kind == "mostpop":
        recommender, version = WindowMostPop(**common), "baseline-mostpop"
    elif spec.kind in ("itemcf", "tailboost"):
        boost = float(spec.param or 0.0) if spec.kind == "tailboost" else 0.0
        recommender = CoVisitBaseline(boost=boost, n_candidates=100, **common)
        version = "baseline-itemcf" if boost == 0 else f"baseline-tailboost-{boost:g}"
    elif spec.kind in ("transformer", "vae"):
        if model is None:
            raise ValueError(f"the {spec.name} system needs a model (--checkpoint or --train-transformer)")
        if spec.kind == "vae" and getattr(model, "vae", None) is None:
            raise ValueError("the Mult-VAE system needs a model with a Mult-VAE (--train-vae or a checkpoint with one)")
        recommender, version = TransformerOnly(source=spec.kind, **common), spec.kind
    else:
        raise ValueError(f"unknown system kind {spec.kind!r}")
    core = ScorerCore(recommender=recommender, arms=arms, k=k, online_version=version)
    if model is not None and spec.kind in ("tailcast", "transformer", "vae"):
        core.swap_model(model)
    elif model is not None and spec.kind == "tailcast-novae":
        core.swap_model(model.without_vae())
    return core
