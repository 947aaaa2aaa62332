"""The systems ``tailcast evaluate`` compares, each a :class:`~streams.agents.scorer.ScorerCore` around its
recommender, named by :class:`SystemSpec`: tailcast at each strength (``no VAE``, ``online only``), MostPop,
ItemCF and CoVisit-raw (docs/design.md §5) with their TailBoost curves, MF and Content (the online sources not
already a baseline, each alone), and a batch source alone. Baselines never recommend a consumed item, top up with
window MostPop, and split head/tail as tailcast does.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from online.arms import ArmAssigner, ArmConfig
from online.base import Candidate
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.rerank import TailBoost
from streams.agents.scorer import ScorerCore
from streams.config import Settings

from .window import WindowPopularity

__all__ = ["SystemSpec", "KINDS", "TAILCAST_KINDS", "BASELINE_KINDS", "MODEL_KINDS", "TAILBOOST_CURVES",
           "PerUserRecommender", "WindowMostPop", "SourceAlone", "CoVisitBaseline", "TransformerOnly",
           "build_core", "batch_model_for", "default_systems"]

_NOTHING: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """One compared system: ``kind`` in :data:`KINDS`, ``param`` its knob (tailcast's re-ranking strength,
    a TailBoost λ)."""

    kind: str
    param: float | None = None

    @property
    def name(self) -> str:
        return _NAMES[self.kind].format(self.param)


_NAMES = {"tailcast": "tailcast[s={:.2f}]", "tailcast-novae": "tailcast[s={:.2f}] no VAE",
          "tailcast-online": "tailcast[s={:.2f}] online only", "tailboost": "TailBoost[λ={:g}]",
          "covisit-raw-boost": "CoVisit-raw+TailBoost[λ={:g}]", "mostpop": "MostPop", "recentpop": "RecentPop",
          "itemcf": "ItemCF", "covisit-raw": "CoVisit-raw", "mf": "MF", "content": "Content",
          "transformer": "Transformer", "vae": "Mult-VAE"}


#: Every system kind; the baselines are all but the tailcast ones.
KINDS = ("tailcast", "tailcast-novae", "tailcast-online", "mostpop", "recentpop", "itemcf", "tailboost", "covisit-raw",
         "covisit-raw-boost", "mf", "content", "transformer", "vae")
TAILCAST_KINDS = ("tailcast", "tailcast-novae", "tailcast-online")
BASELINE_KINDS = tuple(k for k in KINDS if k not in TAILCAST_KINDS)
#: Kinds that serve the batch model, given :func:`batch_model_for` their kind at start and at every swap.
MODEL_KINDS = ("tailcast", "tailcast-novae", "transformer", "vae")
#: The co-visitation TailBoost curves of docs/design.md §7: the λ = 0 kind and the λ > 0 kind of each.
TAILBOOST_CURVES = {"TailBoost (ItemCF)": ("itemcf", "tailboost"),
                    "TailBoost (CoVisit-raw)": ("covisit-raw", "covisit-raw-boost")}


def default_systems(strengths: Sequence[float], boosts: Sequence[float], *, transformer: bool,
                    vae: bool = False, text: bool = False) -> list[SystemSpec]:
    """The compared systems; with a batch model (``transformer``), tailcast also without its Mult-VAE
    (``vae``) and without any batch model (``online only``), at each strength; Content with item ``text``."""
    specs = [SystemSpec("tailcast", float(s)) for s in strengths]
    if transformer and vae:
        specs += [SystemSpec("tailcast-novae", float(s)) for s in strengths]
    if transformer:
        specs += [SystemSpec("tailcast-online", float(s)) for s in strengths]
    specs += [SystemSpec("mostpop"), SystemSpec("recentpop"), SystemSpec("itemcf")]
    specs += [SystemSpec("tailboost", float(b)) for b in boosts if b > 0]
    specs.append(SystemSpec("covisit-raw"))
    specs += [SystemSpec("covisit-raw-boost", float(b)) for b in boosts if b > 0]
    specs += [SystemSpec("mf")] + ([SystemSpec("content")] if text else [])
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
                       k: int | None = None, excludes=None, consumed=None) -> list[list[Candidate]]:
        # ``consumed`` is not needed: the baselines keep each user's consumed items themselves
        extras = extras if extras is not None else [None] * len(users)
        return [self.recommend(u, h, c, arm=a, extra=x)
                for u, h, c, a, x in zip(users, histories, user_event_counts, arms, extras)]

    def set_batch_vocabulary(self, vocab) -> None:
        """A baseline has no ranker: the batch model's vocabulary is not a feature of anything here."""


class _Baseline(PerUserRecommender):
    """What every baseline shares: each user's consumed items and the window's popularity, both fed by
    ``learn_one`` before it hands the event to :meth:`_learn`."""

    def __init__(self, *, k: int, window_events: int, head_share: float) -> None:
        self.k = k
        self.pop = WindowPopularity(window_events=window_events, head_share=head_share)
        self._consumed: dict[str, set[str]] = {}

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        seen = self._consumed.get(user)
        if seen is None:
            seen = self._consumed[user] = set()
        first = item not in seen
        seen.add(item)
        self.pop.observe(item)
        self._learn(user, item, ts, history, first)

    def _learn(self, user: str, item: str, ts: float, history: Sequence[str], first: bool) -> None:
        """The baseline's own model, if any (``first``: the user's first event of ``item``)."""

    def consumed(self, user: str, history: Sequence[str] = ()) -> Collection[str]:
        """Every item ``user`` consumed (exact: every event learned), and the request's ``history``."""
        seen = self._consumed.get(user, _NOTHING)
        if all(h in seen for h in history):
            return seen
        return seen.union(history)  # a history that was not learned here (tests, a replayed state)

    def is_tail(self, item: str) -> bool:
        return self.pop.is_tail(item)

    def _top_up(self, shown: list[Candidate], banned: Collection[str]) -> list[Candidate]:
        """``shown`` filled up to ``k`` with window MostPop items that are neither banned nor shown."""
        if len(shown) < self.k:
            taken = {c.item for c in shown}
            shown += [Candidate(item, float(c), "popularity")
                      for item, c in self.pop.top(self.k - len(shown), banned, taken)]
        return shown


class WindowMostPop(_Baseline):
    """MostPop: the top-k of the last ``window_events`` events by count (ties by id) the user never consumed.

    >>> pop = WindowMostPop(window_events=5, head_share=0.4, k=2)
    >>> for item in "aabcd":
    ...     pop.learn_one("u", item, 0.0, [])
    >>> pop.learn_one("v", "c", 0.0, [])              # evicts the first "a"
    >>> [c.item for c in pop.recommend("v", ["c"], 1, arm="x")], pop.is_tail("a"), pop.is_tail("b")
    (['a', 'b'], True, True)
    >>> [c.item for c in pop.recommend("u", ["d"], 5, arm="x")]     # u consumed every item
    []
    """

    name = "mostpop"

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        return self._top_up([], self.consumed(user, history))


class SourceAlone(_Baseline):
    """One online source of tailcast alone, as the recommender builds it, its top k of the items the user never
    consumed: ``popularity`` (RecentPop: :class:`DecayedPopularity`, the most popular items now by time-decayed
    counts, its default half-life; where popularity moves, far above MostPop's window counts), ``mf``
    (:class:`OnlineMF`; its cold users get its item biases) or ``content`` (:class:`ContentNeighbours` over the item
    text vectors, exact search; its cold users get MostPop, the top-up).

    >>> pop = SourceAlone(source="popularity", window_events=100, head_share=0.2, k=2)
    >>> for n, item in enumerate("aaab"):
    ...     pop.learn_one("u", item, float(n), [])
    >>> for n, item in enumerate("ccdd"):                   # two days later, c and d are what is popular now
    ...     pop.learn_one("v", item, 172800.0 + n, [])
    >>> [c.item for c in pop.recommend("w", [], 0, arm="x")], [c.item for c in pop.recommend("v", [], 4, arm="x")]
    (['d', 'c'], ['a', 'b'])
    """

    def __init__(self, *, source: str, k: int, window_events: int, head_share: float, seed: int = 0,
                 text_vectors=None) -> None:
        super().__init__(k=k, window_events=window_events, head_share=head_share)
        if source == "popularity":
            self.model = DecayedPopularity(window_events=window_events, head_share=head_share)
        elif source == "mf":
            self.model = OnlineMF(seed=seed)
        elif source == "content":
            if text_vectors is None or not len(text_vectors[0]):
                raise ValueError("the Content system needs item text vectors")
            self.model = ContentNeighbours(dim=text_vectors[1].shape[1])
            self.model.set_vectors(list(text_vectors[0]), text_vectors[1])
        else:
            raise ValueError(f"no online source {source!r} to serve alone")

    def _learn(self, user: str, item: str, ts: float, history: Sequence[str], first: bool) -> None:
        self.model.learn_one(user, item, ts, history)

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        banned = self.consumed(user, history)
        return self._top_up(self.model.recommend(user, history, self.k, exclude=banned), banned)


class _RankedCoVisitation(CoVisitation):
    """:class:`CoVisitation` with the read the baselines need: the top ``n`` items and scores, anchors only
    for the items shown, and each user's consumed items as indices (:meth:`consumed_by`)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._banned_of: dict[str, array] = {}

    def consumed_by(self, user: str, item: str) -> None:
        """``user`` consumed ``item`` (once per item, after learning it): :meth:`ranked` never returns it."""
        self._banned_of.setdefault(user, array("q")).append(self._index.get(item))

    def ranked(self, user: str, history: Sequence[str], n: int
               ) -> tuple[list[str], list[float], Callable[[Sequence[int]], list[str]]]:
        """``(items, scores, anchors_of)``, best first, none of them in ``history`` or consumed by ``user``;
        ``anchors_of(ranks)`` names the anchors of the items at those ranks."""
        index = self._index
        ban = index.indices(history)
        consumed = self._banned_of.get(user)
        if consumed:
            ban = np.concatenate([ban, np.frombuffer(consumed, dtype=np.int64)])  # a copy: no view outlives this
        idx, scores, anchors = self.top(*self._anchors(history), n, ban)
        names = index.names
        return ([names[j] for j in idx.tolist()], scores.tolist(),
                lambda ranks: [names[a] for a in anchors.take(list(ranks))])


class CoVisitBaseline(_Baseline):
    """ItemCF (:class:`CoVisitation`) or CoVisit-raw (its transition counter) alone, or its top
    ``n_candidates`` re-sorted by score × (1 + λ·is_tail) (TailBoost, λ = ``boost`` > 0)."""

    def __init__(self, *, boost: float, k: int, n_candidates: int, window_events: int, head_share: float,
                 raw: bool = False) -> None:
        super().__init__(k=k, window_events=window_events, head_share=head_share)
        self.n_candidates = n_candidates
        self.covisit = _RankedCoVisitation.transitions() if raw else _RankedCoVisitation()
        self.boost = boost
        self._booster = TailBoost(strength=boost, k=k) if boost > 0 else None

    def _learn(self, user: str, item: str, ts: float, history: Sequence[str], first: bool) -> None:
        self.covisit.learn_one(user, item, ts, history)
        if first:
            self.covisit.consumed_by(user, item)

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        banned = self.consumed(user, history)
        shown: list[Candidate] = []
        if history:
            # without a re-ranker the top k of the top n_candidates is the top k
            n = self.n_candidates if self._booster is not None else self.k
            items, scores, anchors_of = self.covisit.ranked(user, history, n)
            if self._booster is not None and items:
                is_tail = self.pop.is_tail
                tail = np.fromiter((is_tail(i) for i in items), dtype=bool, count=len(items))
                ranks = self._booster.order(np.asarray(scores, dtype=np.float64), tail).tolist()
            else:
                ranks = list(range(min(self.k, len(items))))
            source = self.covisit.name
            shown = [Candidate(items[r], scores[r], source, anchor=a) for r, a in zip(ranks, anchors_of(ranks))]
        return self._top_up(shown, banned)


class TransformerOnly(_Baseline):
    """The checkpoint's top-k of one batch source (the scorer passes it as ``extra[source]``; ``"transformer"``
    or ``"vae"``) minus the user's consumed items, topped up with MostPop when it has fewer than ``k``."""

    def __init__(self, *, k: int, window_events: int, head_share: float, source: str = "transformer") -> None:
        super().__init__(k=k, window_events=window_events, head_share=head_share)
        self.source = source  # the model itself is frozen between refreshes: nothing to learn here

    def recommend(self, user: str, history: Sequence[str], user_event_count: int, *, arm: str,
                  extra: Mapping[str, Sequence[Candidate]] | None = None) -> list[Candidate]:
        banned = self.consumed(user, history)
        shown = []
        for c in (extra or {}).get(self.source, ()):
            if c.item not in banned:
                shown.append(c)
                if len(shown) >= self.k:
                    break
        return self._top_up(shown, banned)


def batch_model_for(kind: str, model):
    """What a system of ``kind`` serves of the batch ``model`` (a ``BatchScorer``): the model itself, the
    model without its Mult-VAE (``tailcast-novae``), or None (the kinds that use no batch model)."""
    if model is None or kind not in MODEL_KINDS:
        return None
    if kind == "vae" and getattr(model, "vae", None) is None:
        raise ValueError("the Mult-VAE system needs a model with a Mult-VAE (--train-vae or a checkpoint with one)")
    return model.without_vae() if kind == "tailcast-novae" else model


def build_core(spec: SystemSpec, settings: Settings, *, text_vectors=None, model=None,
               model_later: bool = False, seed: int = 0) -> ScorerCore:
    """A fresh :class:`ScorerCore` for ``spec`` with a single arm named after the system; ``text_vectors``:
    (item ids, (N, D) array); ``model_later``: a batch model comes later (the model systems start without);
    ``seed``: the online models' (:func:`~streams.agents.serving.build_recommender`)."""
    from streams.agents.serving import build_recommender

    k = settings.scorer.k
    lt = settings.longtail
    tailcast = spec.kind in TAILCAST_KINDS
    arm = ArmConfig(spec.name, 1.0, float(spec.param) if tailcast else 0.0)
    arms = ArmAssigner.from_configs([arm])
    common = {"k": k, "window_events": lt.window_events, "head_share": lt.head_share}
    if tailcast:
        forced = replace(settings, scorer=replace(settings.scorer, arms=(arm,)))
        dim = text_vectors[1].shape[1] if text_vectors is not None else 8
        recommender = build_recommender(forced, text_dim=dim, seed=seed, background=False)
        if text_vectors is not None and len(text_vectors[0]):
            recommender.content.set_vectors(list(text_vectors[0]), text_vectors[1])
        version = "online"
    elif spec.kind == "mostpop":
        recommender, version = WindowMostPop(**common), "baseline-mostpop"
    elif spec.kind in ("itemcf", "tailboost", "covisit-raw", "covisit-raw-boost"):
        boost = float(spec.param or 0.0) if spec.kind in ("tailboost", "covisit-raw-boost") else 0.0
        raw = spec.kind.startswith("covisit-raw")
        recommender = CoVisitBaseline(boost=boost, n_candidates=100, raw=raw, **common)
        version = ("baseline-covisit-raw" if raw else "baseline-itemcf") if not boost else \
            f"baseline-{'covisit-raw-' if raw else ''}tailboost-{boost:g}"
    elif spec.kind in ("recentpop", "mf", "content"):
        source = "popularity" if spec.kind == "recentpop" else spec.kind
        recommender = SourceAlone(source=source, seed=seed, text_vectors=text_vectors, **common)
        version = f"baseline-{spec.kind}"
    elif spec.kind in ("transformer", "vae"):
        if model is None and not model_later:
            raise ValueError(f"the {spec.name} system needs a model (--checkpoint or --train-transformer)")
        recommender, version = TransformerOnly(source=spec.kind, **common), spec.kind
    else:
        raise ValueError(f"unknown system kind {spec.kind!r}")
    core = ScorerCore(recommender=recommender, arms=arms, k=k, online_version=version)
    served = batch_model_for(spec.kind, model)
    if served is not None:
        core.swap_model(served)
    return core
