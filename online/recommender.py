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
   from their history; by default one-sided, so that a stronger arm never shows fewer tail items;
   ``calibrate=True`` gives the paper's two-sided xQuAD, see there);
4. each returned :class:`~online.base.Candidate` has the blended probability as score, the source
   that contributed most to it (by the blender's per-source logit terms; ties: the better rank) and
   that source's anchor.

How it stays cheap. Items are dense indices of one recommender-wide :class:`~online.base.IdIndex`;
each model keeps its own index, mapped onto this one by an append-only array per model (extended
when the model learns new items, rebuilt when popularity compacts its index). Every source hands
back index arrays (no per-candidate objects); the candidates of all sources are merged without a
sort (first positions through a dense scratch array, first-appearance order kept) into an
(n_candidates, n_sources) score matrix and rank matrix, from which the blender builds the feature
matrix and scores it with one matrix-vector product. Only the k shown items become :class:`Candidate` objects.
:meth:`OnlineRecommender.recommend_many` serves a micro-batch: the content and MF parts become one
(B, D) x (D, n_items) product each for the whole batch; :meth:`recommend` is the batch of one.

Feedback is exact: the feature rows of the k shown items are kept (the latest list per user,
at most ``max_pending`` users, least recently served dropped first), and the user's next event
labels them (clicked = shown item == next item). Negatives are subsampled to ``max_negatives`` per
list to keep feedback cheap; the blender applies the examples in mini-batches (see there).

Measured costs: ``.venv/bin/python benchmarks/online_recommender.py`` (its docstring says what is
timed). Before this design (dict features per candidate, river blender): ``recommend`` 2.5 ms per
user on 1k items and 16 ms on 10k items, ``learn_one`` with feedback 61-204 µs, on that benchmark.

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
from online.base import Candidate, Event, IdIndex
from online.blender import FeedbackBlender
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.rerank import TailReranker, appetite_from_counts

__all__ = ["CORE_SOURCES", "ArmView", "OnlineRecommender", "UnknownArmError", "UnknownSourceError"]

#: Sources the recommender itself produces; the blender must know all of them.
CORE_SOURCES = ("popularity", "covisit", "mf", "content", "fresh")

_BIG = 1 << 62  # "no position yet" in the merge scratch array


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
        calibrate: bool = False,
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
        # user -> (shown items, their (k, n_features) feature rows), LRU order
        self._pending: OrderedDict[str, tuple[tuple[str, ...], np.ndarray]] = OrderedDict()
        self._items = IdIndex()  # recommender-wide item index
        self._maps: dict[str, tuple[IdIndex, np.ndarray]] = {}  # model -> (its index, its idx -> ours)
        self._tail_key: tuple | None = None
        self._tail = np.zeros(0, dtype=bool)  # (n_items,) over our index, at the last head refresh
        self._col = {s: n for n, s in enumerate(blender.sources)}
        self._scratch = np.zeros(0, dtype=np.int64)  # merge scratch, all entries "large" between calls

    @classmethod
    def create(
        cls,
        *,
        arms: Sequence[ArmConfig],
        content_dim: int = 256,
        k: int = 10,
        n_candidates: int = 100,
        seed: int = 0,
        extra_sources: Sequence[str] = ("transformer", "vae"),
        n_fresh: int = 10,
        max_negatives: int = 2,
        max_pending: int = 100_000,
        calibrate: bool = False,
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
        items, X = entry
        if shown is not None and tuple(c.item for c in shown) != items:
            return 0
        hit = items.index(clicked_item) if clicked_item in items else -1
        negatives = [n for n in range(len(items)) if n != hit]
        if len(negatives) > self.max_negatives:  # a partial Fisher-Yates draw of max_negatives of them
            rand = self._rng.random
            for i in range(self.max_negatives):
                j = i + int(rand() * (len(negatives) - i))
                negatives[i], negatives[j] = negatives[j], negatives[i]
            del negatives[self.max_negatives :]
        chosen = sorted(negatives + [hit]) if hit >= 0 else sorted(negatives)
        if chosen:
            self.blender.learn_rows(X, chosen, [n == hit for n in chosen])
        return len(chosen)

    # ---------------------------------------------------------------- serving
    def is_tail(self, item: str) -> bool:
        return self.popularity.is_tail(item)

    def assign_arm(self, user: str) -> str:
        return self.assigner.assign(user)

    def _map(self, key: str, index: IdIndex) -> np.ndarray:
        """``model index -> our index`` for one model's :class:`IdIndex` (kept in step, append-only)."""
        entry = self._maps.get(key)
        m = entry[1] if entry is not None and entry[0] is index else np.zeros(0, dtype=np.int64)
        n = len(index)
        if n > m.size:
            add = self._items.add
            new = np.fromiter((add(name) for name in index.names[m.size : n]), dtype=np.int64, count=n - m.size)
            m = np.concatenate([m, new])
        if entry is None or entry[1] is not m:
            self._maps[key] = (index, m)
        return m

    def _tail_mask(self) -> np.ndarray:
        """(n_items,) bool over our index: tail at popularity's last head refresh (unknown = tail)."""
        pop = self.popularity
        head = pop.head_mask()  # refreshes the head set when due
        pmap = self._map("popularity", pop._index)
        key = (pop._refreshed_at, id(pop._index), len(self._items))
        if key != self._tail_key:
            tail = np.ones(len(self._items), dtype=bool)
            tail[pmap[np.flatnonzero(head)]] = False
            self._tail, self._tail_key = tail, key
        return self._tail

    @staticmethod
    def _lookup(mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``mask[idx]``, True where ``idx`` is -1 or beyond the mask (items it does not know are tail)."""
        ok = (idx >= 0) & (idx < mask.size)
        out = np.ones(idx.size, dtype=bool)
        out[ok] = mask[idx[ok]]
        return out

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
        return self.recommend_many(
            [user], [history], [user_event_count], arms=[arm], extras=[extra], k=k, excludes=[exclude]
        )[0]

    def recommend_many(
        self,
        users: Sequence[str],
        histories: Sequence[Sequence[str]],
        user_event_counts: Sequence[int],
        *,
        arms: Sequence[str],
        extras: Sequence[Mapping[str, Sequence[Candidate]] | None] | None = None,
        k: int | None = None,
        excludes: Sequence[Collection[str]] | None = None,
    ) -> list[list[Candidate]]:
        """:meth:`recommend` for a micro-batch of users (one list per user, in order).

        The same lists as one :meth:`recommend` call per user in turn (up to float rounding of the
        batched products), for a fraction of the cost: content and MF score the whole batch with
        one matrix product each. A user listed twice keeps the later list as pending feedback.
        """
        n_b = len(users)
        if not (len(histories) == len(user_event_counts) == len(arms) == n_b):
            raise ValueError(
                f"users, histories, user_event_counts and arms differ in length: "
                f"{n_b}, {len(histories)}, {len(user_event_counts)}, {len(arms)}"
            )
        if extras is not None and len(extras) != n_b:
            raise ValueError(f"{len(extras)} extras for {n_b} users")
        if excludes is not None and len(excludes) != n_b:
            raise ValueError(f"{len(excludes)} excludes for {n_b} users")
        configs = []
        for arm in arms:
            config = self.arms.get(arm)
            if config is None:
                raise UnknownArmError(f"arm {arm!r} is not configured (arms: {sorted(self.arms)})")
            configs.append(config)
        for extra in extras or ():
            for source in extra or {}:
                if source not in self._col:
                    raise UnknownSourceError(
                        f"extra source {source!r} is not one of the blender's sources {self.blender.sources}"
                    )
        k = self.k if k is None else int(k)
        n = self.n_candidates
        excl = [list(e) for e in excludes] if excludes is not None else [[] for _ in range(n_b)]
        cv, ct, mf, pop = self.covisit, self.content, self.mf, self.popularity
        cv_map = self._map("covisit", cv._index)
        ct_map = self._map("content", ct._index)
        mf_map = self._map("mf", mf._items)
        tail_mask = self._tail_mask()
        pmap = self._maps["popularity"][1]
        warm = [b for b in range(n_b) if len(histories[b])]
        content = ct.candidates_many(
            [histories[b] for b in warm], n, [ct._index.indices(excl[b]) for b in warm]
        ) if warm else []
        mfs = mf.candidates_many(
            [users[b] for b in warm], [histories[b] for b in warm], n, [mf._items.indices(excl[b]) for b in warm]
        ) if warm else []
        batch = dict(zip(warm, zip(content, mfs)))
        out: list[list[Candidate]] = []
        for b in range(n_b):
            history = histories[b]
            # (source, our indices, scores, anchors, anchor names (None: anchors are names already))
            lists: list[tuple[str, np.ndarray, np.ndarray, Sequence | None, list[str] | None]] = []
            pop_ban = pop._index.indices([*history, *excl[b]])
            if len(history):
                (c_idx, c_s, c_a), (m_idx, m_s) = batch[b]
                j, sc, an = cv.candidates(history, n, cv._index.indices(excl[b]))
                lists.append(("covisit", cv_map[j], sc, an, cv._index.names))
                lists.append(("content", ct_map[c_idx], c_s, c_a, ct._index.names))
                lists.append(("mf", mf_map[m_idx], m_s, None, None))
                j, sc = pop.top_indices(max(k, n // 10), pop_ban)
                lists.append(("popularity", pmap[j], sc, None, None))
                j, sc = pop.fresh_indices(self.n_fresh, pop_ban)
                lists.append(("fresh", pmap[j], sc, None, None))
            else:
                j, sc = pop.top_indices(n, pop_ban)
                lists.append(("popularity", pmap[j], sc, None, None))
                j, sc = pop.fresh_indices(max(self.n_fresh, k), pop_ban)
                lists.append(("fresh", pmap[j], sc, None, None))
            extra = extras[b] if extras is not None else None
            if extra:
                banned = {*history, *excl[b]}
                add = self._items.add
                for source, cands in extra.items():
                    kept = list({c.item: c for c in reversed(cands) if c.item not in banned}.values())[::-1]
                    lists.append((
                        source,
                        np.fromiter((add(c.item) for c in kept), dtype=np.int64, count=len(kept)),
                        np.fromiter((c.score for c in kept), dtype=np.float64, count=len(kept)),
                        [c.anchor for c in kept],
                        None,
                    ))
            out.append(self._blend_and_rerank(
                users[b], history, int(user_event_counts[b]), configs[b], lists, tail_mask, k
            ))
        return out

    def _blend_and_rerank(
        self,
        user: str,
        history: Sequence[str],
        user_event_count: int,
        config: ArmConfig,
        lists: list[tuple[str, np.ndarray, np.ndarray, Sequence | None, list[str] | None]],
        tail_mask: np.ndarray,
        k: int,
    ) -> list[Candidate]:
        lists = [entry for entry in lists if entry[1].size]
        if not lists:
            return []
        lens = [entry[1].size for entry in lists]
        entries = np.concatenate([entry[1] for entry in lists])  # (m,) every list entry's item
        # merge without sorting: the first position of each item, through a dense scratch array
        m = entries.size
        pos = np.arange(m)
        if self._scratch.size < len(self._items):
            self._scratch = np.full(max(1024, 2 * len(self._items)), _BIG, dtype=np.int64)
        scratch = self._scratch
        np.minimum.at(scratch, entries, pos)
        first = scratch[entries]  # (m,) position of the item's first entry
        scratch[entries] = _BIG  # reset for the next request
        is_first = first == pos
        items = entries[is_first]  # (n,) our item indices, in order of first appearance
        rows = (np.cumsum(is_first) - 1)[first]  # (m,) candidate row of every list entry
        n_s = len(self.blender.sources)
        scores = np.zeros((items.size, n_s))  # (n, S) raw source scores, 0 = not proposed
        ranks = np.full((items.size, n_s), np.inf)  # (n, S) 0-based ranks, inf = not proposed
        start = 0
        for (source, _, sc, _, _), m in zip(lists, lens):
            r = rows[start : start + m]
            col = self._col[source]
            scores[r, col] = sc
            ranks[r, col] = np.arange(m)
            start += m
        tail = self._lookup(tail_mask, items)
        X = self.blender.feature_matrix(scores, ranks, tail, user_event_count)  # (n, F)
        probs = self.blender.predict_matrix(X)  # (n,)
        hist_tail = self._lookup(tail_mask, self._items.indices(history))
        appetite = appetite_from_counts(int(hist_tail.sum()), hist_tail.size)
        reranker = TailReranker(strength=config.rerank_strength, k=k, calibrate=self.calibrate)
        shown = reranker.order(probs, tail, appetite)  # (k,) rows
        # the proposing source with the largest logit share; ties: the better rank
        contrib = self.blender.contributions_matrix(X[shown])  # (k, S)
        r_shown = ranks[shown]
        contrib = np.where(np.isfinite(r_shown), contrib, -np.inf)
        tied = contrib == contrib.max(axis=1, keepdims=True)
        src_col = np.where(tied, r_shown, np.inf).argmin(axis=1)
        by_source = {entry[0]: entry for entry in lists}
        names = self._items.names
        sources = self.blender.sources
        result: list[Candidate] = []
        for row, col, p in zip(shown.tolist(), src_col.tolist(), probs[shown].tolist()):
            source = sources[col]
            _, _, _, anchors, anchor_names = by_source[source]
            anchor = None
            if anchors is not None:
                a = anchors[int(ranks[row, col])]
                anchor = anchor_names[a] if anchor_names is not None else a
            result.append(Candidate(names[items[row]], p, source, anchor=anchor))
        self._pending[user] = (tuple(c.item for c in result), X[shown])
        self._pending.move_to_end(user)
        while len(self._pending) > self.max_pending:
            self._pending.popitem(last=False)
        return result

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
