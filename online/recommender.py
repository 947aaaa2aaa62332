"""The composition the scorer calls: candidates from every source, ranked, re-ranked for the tail.

``learn_one`` labels the candidate pool of the user's previous list, then updates every model
(popularity, co-visitation, transitions, MF; content is catalogue-driven). ``recommend``:

1. candidates from every source (:class:`~online.retrieval.Retrieval`, ``retrieval``: never an item of the
   history, of ``exclude`` or of ``consumed``), one recommender-wide item index;
2. rank: the :class:`~online.blender.FeedbackBlender` turns each candidate's per-source scores and ranks,
   popularity, tail flag, the user's tail appetite and event count into a click probability;
3. re-rank with the arm's strength (:class:`~online.rerank.TailReranker`);
4. each :class:`~online.base.Candidate` carries the probability, the source that contributed most to it
   (ties: the better rank) and that source's anchor.

The ranker learns from the candidate pool, not from what was shown: each list's pool waits in the
:class:`~online.feedback.FeedbackStore` (``pools``) until the user's next event labels it.
:meth:`OnlineRecommender.recommend_many` serves a micro-batch with one retrieval, one merge and one feature
build.

>>> rec = OnlineRecommender.create(arms=parse_arms("control:1:0.0"), content_dim=8)
>>> for n, item in enumerate(["a", "b", "a", "c", "a", "b"]):
...     rec.learn_one(f"u{n}", item, float(n), [])
>>> [(c.item, c.source, c.reason()) for c in rec.recommend("new-user", [], 0, arm="control")]
[('a', 'popularity', 'popular now'), ('c', 'fresh', 'tail discovery'), ('b', 'popularity', 'popular now')]
>>> rec.learn_one("new-user", "c", 6.0, [])   # labels the pool of the list just shown (c clicked)
>>> rec.blender.n_learned
3
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Mapping, Sequence

import numpy as np

from online.arms import ArmAssigner, ArmConfig, parse_arms
from online.base import TIE_RTOL, Candidate, tie_floor
from online.blender import FeedbackBlender, sigmoid
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.feedback import FeedbackStore
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.rerank import TailReranker, appetite_from_counts
from online.retrieval import Retrieval

__all__ = ["CORE_SOURCES", "OnlineRecommender", "UnknownArmError", "UnknownSourceError"]

#: Sources the recommender itself produces; the blender must know all of them.
CORE_SOURCES = ("popularity", "covisit", "transitions", "last", "mf", "content", "fresh")

_EMPTY = np.zeros(0, dtype=np.int64)


class UnknownArmError(KeyError):
    """``recommend`` was asked for an arm that is not configured."""


class UnknownSourceError(ValueError):
    """A candidate source (e.g. an ``extra`` list) that the blender has no feature for."""


class OnlineRecommender:
    """Candidate generation + feedback blending + tail re-ranking, per A/B arm."""

    name = "recommender"
    #: Sources switched off: their candidate lists are dropped before the merge (an ablation, as
    #: ``tailcast evaluate --mode loo --ablate`` measures; the models still learn).
    off: frozenset[str] = frozenset()
    #: Called with each labelled list's whole candidate pool as the ranker's feature rows and the clicked
    #: row (None and -1 when the click was not in the pool): ``benchmarks/ranker_pools.py`` replays them to
    #: measure other rankers on the same candidates. None: no pool matrix is built.
    pool_observer: Callable[[np.ndarray | None, int], None] | None = None

    def __init__(
        self,
        *,
        popularity: DecayedPopularity,
        covisit: CoVisitation,
        transitions: CoVisitation,
        mf: OnlineMF,
        content: ContentNeighbours,
        blender: FeedbackBlender,
        arms: Sequence[ArmConfig],
        k: int = 10,
        n_candidates: int = 100,
        seed: int = 0,
        n_fresh: int = 10,
        pool_depth: int = 50,
        pool_negatives: int = 8,
        max_pending: int = 100_000,
        salt: str = "tailcast",
    ) -> None:
        missing = [s for s in CORE_SOURCES if s not in blender.sources]
        if missing:
            raise UnknownSourceError(f"blender sources {blender.sources} lack {missing}")
        if not arms:
            raise ValueError("at least one arm is needed")
        if k < 1 or n_candidates < k:
            raise ValueError(f"need 1 <= k <= n_candidates, got k={k}, n_candidates={n_candidates}")
        self.retrieval = Retrieval(popularity=popularity, covisit=covisit, transitions=transitions, mf=mf,
                                   content=content, n_candidates=n_candidates, n_fresh=n_fresh)
        self.blender = blender
        self.arms = {a.name: a for a in arms}
        if len(self.arms) != len(arms):
            raise ValueError(f"duplicate arm names in {[a.name for a in arms]}")
        self.assigner = ArmAssigner.from_configs(arms, salt=salt)
        self.k = int(k)
        self.seed = int(seed)
        # each user's latest list and its candidate pool, until their next event labels it
        self.pools = FeedbackStore(pool_depth=pool_depth, negatives=pool_negatives, max_pending=max_pending,
                                   seed=seed)
        self._col = {s: n for n, s in enumerate(blender.sources)}
        self.last_alternatives: list[list[list[Candidate]]] = []  # see recommend_many(alternatives=)
        self._batch_vocab: Container[str] | None = None  # the served batch model's items (None: no model)
        self._unknown = np.zeros(0, dtype=bool)  # over our item index: not in _batch_vocab (see batch_unknown)

    @classmethod
    def create(cls, *, arms: Sequence[ArmConfig], content_dim: int = 256, seed: int = 0,
               extra_sources: Sequence[str] = ("transformer", "vae"), **options) -> OnlineRecommender:
        """A recommender over default-configured models (the blender also knows ``extra_sources``);
        ``options``: the constructor's other arguments (``k``, ``n_candidates``, ``n_fresh``, ...)."""
        covisit, transitions = CoVisitation.paired()
        return cls(
            popularity=DecayedPopularity(),
            covisit=covisit,
            transitions=transitions,
            mf=OnlineMF(seed=seed),
            content=ContentNeighbours(dim=content_dim),
            blender=FeedbackBlender(sources=[*CORE_SOURCES, *extra_sources], seed=seed),
            arms=arms,
            seed=seed,
            **options,
        )

    popularity = property(lambda self: self.retrieval.popularity)
    covisit = property(lambda self: self.retrieval.covisit)
    transitions = property(lambda self: self.retrieval.transitions)
    mf = property(lambda self: self.retrieval.mf)
    content = property(lambda self: self.retrieval.content)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_batch_vocab"], state["_unknown"] = None, np.zeros(0, dtype=bool)  # the model's: set when it is
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_batch_vocab", None)  # pickled before the ranker's batch_unknown feature
        state.setdefault("_unknown", np.zeros(0, dtype=bool))
        if "pools" not in state:  # pickled before the feedback store had a class (a snapshot: no pools held)
            state["pools"] = FeedbackStore(pool_depth=state.pop("pool_depth"), negatives=state.pop("pool_negatives"),
                                           max_pending=state.pop("max_pending"), rng=state.pop("_rng"))
            state.pop("_pending")
        state.pop("_rerankers", None)  # the re-rankers of one strength each, before TailReranker.order_blocks
        if "retrieval" not in state:  # pickled before retrieval had a class: its fields were the recommender's
            retrieval = state["retrieval"] = object.__new__(Retrieval)
            fields = {"popularity", "covisit", "transitions", "mf", "content", "n_candidates", "n_fresh", "_hash_idx",
                      "_n_hashed", "_maps", "_invs", "_tail_key", "_tail"}
            retrieval.__dict__.update({f: state.pop(f) for f in fields},
                                      items=state.pop("_items"), popularity_counts=state.pop("_pop"))
        self.__dict__.update(state)
        self.retrieval.share_keys()  # pickled before the key table: each index loaded with its own

    def set_batch_vocabulary(self, vocab: Container[str] | None) -> None:
        """The items of the batch model now served (None: none is): a candidate outside it gets the ranker's
        ``batch_unknown`` feature, so that its missing batch scores do not read as low ones."""
        self._batch_vocab = vocab
        self._unknown = np.zeros(0, dtype=bool)

    def batch_unknown(self, items: np.ndarray) -> np.ndarray:
        """(n,) bool over our item indices ``items``: a batch model is served and does not know the item."""
        vocab = self._batch_vocab
        if vocab is None:
            return np.zeros(items.size, dtype=bool)
        n = len(self.retrieval.items)
        if self._unknown.size < n:  # our index grew (append-only): look up the new names once
            names = self.retrieval.items.names
            start = self._unknown.size
            new = np.fromiter((name not in vocab for name in names[start:n]), dtype=bool, count=n - start)
            self._unknown = np.concatenate([self._unknown, new])
        return self._unknown[items]

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        """Label the user's last shown list with this event, then update every model."""
        self.feedback(user, None, item)
        self.popularity.learn_one(user, item, ts, history)
        self.covisit.learn_one(user, item, ts, history)
        self.transitions.learn_one(user, item, ts, history)
        self.mf.learn_one(user, item, ts, history)

    def forget(self, user: str) -> None:
        """Erase ``user``'s per-user state (#17): the candidate pool of their last list and their MF row.
        What their events taught the item models and the ranker stays, as every user's does."""
        self.pools.pop(user)
        self.mf.forget(user)

    def feedback(self, user: str, shown: Sequence[Candidate] | None, clicked_item: str) -> int:
        """Train the ranker on the candidate pool of the user's latest list (see the module doc); return the
        examples learned. Nothing is learned when the clicked item is not in the pool, when no list is held
        for the user, or when ``shown`` (if given) differs from it. The list is consumed."""
        entry = self.pools.pop(user)
        if entry is None:
            return 0
        items, pool = entry
        if shown is not None and tuple(c.item for c in shown) != items:
            return 0
        ours = self.retrieval.items.get(clicked_item)
        hit = np.flatnonzero(pool.items == ours) if ours >= 0 else _EMPTY
        if not hit.size:
            if self.pool_observer is not None:
                self.pool_observer(None, -1)
            return 0
        hit = int(hit[0])
        X_pool = pool.features(self.blender, range(pool.items.size))
        if self.pool_observer is not None:
            self.pool_observer(X_pool, hit)
        self.blender.judge(X_pool, hit, pool.count, self.k)  # the source gate, before the ranker learns the pool
        chosen = self.pools.examples(pool, hit)
        self.blender.learn_matrix(X_pool[chosen], [r == hit for r in chosen])
        return len(chosen)

    def is_tail(self, item: str) -> bool:
        return self.popularity.is_tail(item)

    def assign_arm(self, user: str) -> str:
        return self.assigner.assign(user)

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
        consumed: np.ndarray | None = None,
    ) -> list[Candidate]:
        """The top-``k`` (default ``self.k``) list for ``user`` in ``arm``, best first."""
        return self.recommend_many(
            [user], [history], [user_event_count], arms=[arm], extras=[extra], k=k, excludes=[exclude],
            consumed=None if consumed is None else [consumed],
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
        consumed: Sequence[np.ndarray] | None = None,
        alternatives: Sequence[float] = (),
        depth: int | None = None,
    ) -> list[list[Candidate]]:
        """:meth:`recommend` for a micro-batch of users (one list per user, in order; the same lists as one
        call per user, up to float rounding of the batched products). A user listed twice keeps the later
        list as pending feedback.

        ``depth``: the lists run on past ``k`` to this many items (the read API stores them); their first
        ``k`` are the ``k``-item list. ``alternatives``: re-ranking strengths at which the same candidates
        are also re-ranked, into :attr:`last_alternatives` (per strength, per user): the lists an arm of
        that strength would have published (the evaluation scores every strength from one replay).
        ``consumed``: per user, the :func:`~online.base.item_hash` of every item they consumed (uint32).
        """
        n_b = len(users)
        if not (len(histories) == len(user_event_counts) == len(arms) == n_b):
            raise ValueError(
                f"users, histories, user_event_counts and arms differ in length: "
                f"{n_b}, {len(histories)}, {len(user_event_counts)}, {len(arms)}"
            )
        for what, given in (("extras", extras), ("excludes", excludes), ("consumed sets", consumed)):
            if given is not None and len(given) != n_b:
                raise ValueError(f"{len(given)} {what} for {n_b} users")
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
        if not n_b:
            self.last_alternatives = [[] for _ in alternatives]
            return []
        k = self.k if k is None else int(k)
        depth = k if depth is None else max(k, int(depth))
        all_lists, appetites, tail_mask = self.retrieval.candidates(users, histories, k=k, extras=extras,
                                                                    excludes=excludes, consumed=consumed)
        return self._blend_many(users, appetites, user_event_counts, configs, all_lists, tail_mask, depth,
                                alternatives, shown_k=k)

    def _blend_many(
        self,
        users: Sequence[str],
        appetites: Sequence[float],
        user_event_counts: Sequence[int],
        configs: Sequence[ArmConfig],
        all_lists: Sequence[list[tuple[str, np.ndarray, np.ndarray, Sequence | None, list[str] | None]]],
        tail_mask: np.ndarray,
        k: int,
        alternatives: Sequence[float] = (),
        shown_k: int | None = None,
    ) -> list[list[Candidate]]:
        """Merge, blend and re-rank every user's candidate lists into ``k`` items (also at each of
        ``alternatives``, into :attr:`last_alternatives`); the first ``shown_k`` are kept as pending feedback."""
        n_b = len(users)
        col = self._col
        parts, scs, lens, cols, owner, maps = [], [], [], [], [], []
        map_ids: dict[int, int] = {}  # id(map array) -> its number
        by_id: dict[int, np.ndarray] = {}
        by_source: list[dict] = []
        for b, lists in enumerate(all_lists):
            off = self.off | configs[b].off if configs[b].off else self.off  # the arm's own switched-off sources
            # a source listed twice for a user (an extra list of a core source): the later list replaces the other
            seen = {entry[0]: entry for entry in lists if entry[1].size and entry[0] not in off}
            for entry in seen.values():
                parts.append(entry[1])
                scs.append(entry[2])
                lens.append(entry[1].size)
                cols.append(col[entry[0]])
                owner.append(b)
                if entry[5] is None:
                    maps.append(-1)
                else:
                    i = map_ids.setdefault(id(entry[5]), len(map_ids))
                    by_id[i] = entry[5]
                    maps.append(i)
            by_source.append(seen)
        if not parts:
            self.last_alternatives = [[[] for _ in range(n_b)] for _ in alternatives]
            return [[] for _ in range(n_b)]
        n_lists = np.asarray(lens)
        entries = np.concatenate(parts)  # (m,) every list entry's item, user by user, list by list
        if map_ids:  # each model's indices -> ours, one gather per model for the whole batch
            map_e = np.repeat(np.asarray(maps, dtype=np.int64), n_lists)
            for i, m_arr in by_id.items():
                sel = map_e == i
                entries[sel] = m_arr[entries[sel]]
        values = np.concatenate(scs)
        m = entries.size
        user_e = np.repeat(np.asarray(owner, dtype=np.int64), n_lists)
        col_e = np.repeat(np.asarray(cols, dtype=np.int64), n_lists)
        pos = np.arange(m)
        rank_e = pos - np.repeat(np.cumsum(n_lists) - n_lists, n_lists)  # 0-based rank in its list
        # merge without a stable sort: the first entry of each (user, item), from one sort of unique keys
        # (user, item, position) packed in an int64
        shift = int(m).bit_length()
        packed = np.sort(((user_e * len(self.retrieval.items) + entries) << shift) | pos)
        at = packed & ((1 << shift) - 1)  # positions, grouped by (user, item), each group ascending
        group = packed >> shift
        starts = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        first = np.empty(m, dtype=np.int64)
        first[at] = np.repeat(at[starts], np.diff(np.append(starts, m)))  # (m,) its item's first entry
        is_first = first == pos
        items = entries[is_first]  # (n,) our item indices, user by user, in order of first appearance
        rows = (np.cumsum(is_first) - 1)[first]  # (m,) candidate row of every list entry
        n_c = items.size
        n_s = len(self.blender.sources)
        bounds = np.zeros(n_b + 1, dtype=np.int64)  # user b's candidates are rows bounds[b]:bounds[b + 1]
        np.cumsum(np.bincount(user_e[is_first], minlength=n_b), out=bounds[1:])
        bnd = bounds.tolist()
        row_counts = np.repeat(np.asarray(user_event_counts, dtype=np.int64), np.diff(bounds))
        # the proposals that serve: the sources the gate leaves out for a user's segment still fill the pool (the
        # gate judges them there), but do not score (FeedbackBlender.judge)
        served_e = self.blender.served(np.asarray(user_event_counts, dtype=np.int64))[user_e, col_e]  # (m,)
        gated = not served_e.all()
        pooled = rows, col_e, values, rank_e
        if gated:
            rows, col_e, values, rank_e = rows[served_e], col_e[served_e], values[served_e], rank_e[served_e]
        tail = Retrieval.flag(tail_mask, items)
        pop_c = self.retrieval.popularity_counts
        popularity = np.where(items < pop_c.size, pop_c[np.minimum(items, pop_c.size - 1)], 0.0) if pop_c.size \
            else np.zeros(n_c)  # (n,) window counts
        appetite = np.repeat(np.asarray(appetites, dtype=np.float64), np.diff(bounds))  # (n,)
        unknown = self.batch_unknown(items)  # (n,)
        ranks = np.full((n_c, n_s), np.inf)  # (n, S) 0-based ranks, inf = not proposed
        ranks[rows, col_e] = rank_e
        probs = sigmoid(self.blender.logits_entries(n_c, rows, col_e, values, rank_e, tail, row_counts, bnd,
                                                     popularity, appetite, unknown))
        if gated:  # a candidate that only left-out sources proposed is not in the list
            probs[~np.isfinite(ranks).any(axis=1)] = -np.inf

        def lists_for(strengths: Sequence[float]) -> list[list[Candidate]]:
            """Each user's list re-ranked at ``strengths[b]``, with source attribution and anchors."""
            shown_parts = [a + o for a, o in zip(bnd, TailReranker.order_blocks(probs, tail, bnd, strengths, k))]
            shown = np.concatenate(shown_parts)  # (s,) candidate rows, user by user
            where = np.full(n_c, -1, dtype=np.int64)  # the shown rows' features, from their entries
            where[shown] = np.arange(shown.size)
            local = where[rows]
            sel = local >= 0
            X_shown = self.blender.feature_entries(shown.size, local[sel], col_e[sel], values[sel], rank_e[sel],
                                                   tail[shown], row_counts[shown], popularity[shown],
                                                   appetite[shown], unknown[shown])
            # the proposing source with the largest logit share (gradient × input); ties: the better rank
            contrib = self.blender.contributions_matrix(X_shown)  # (s, S)
            r_shown = ranks[shown]
            contrib = np.where(np.isfinite(r_shown), contrib, -np.inf)
            tied = contrib >= tie_floor(contrib.max(axis=1, keepdims=True), TIE_RTOL)  # float32-derived terms
            src_col = np.where(tied, r_shown, np.inf).argmin(axis=1)
            src_rank = r_shown[np.arange(shown.size), src_col].tolist()
            item_of = items[shown].tolist()
            p_shown = probs[shown].tolist()
            src_of = [sources[c] for c in src_col.tolist()]
            name_of = [names[i] for i in item_of]
            anchor_of: list[object] = [None] * len(src_of)  # shown position -> anchor, read source by source
            out: list[list[Candidate]] = []
            at = 0
            for b in range(n_b):
                cnt = shown_parts[b].size
                end = at + cnt
                lists = by_source[b]
                shown_by: dict[str, list[int]] = {}
                for s in range(at, end):
                    if lists[src_of[s]][3] is not None:
                        shown_by.setdefault(src_of[s], []).append(s)
                for source, positions in shown_by.items():
                    _, _, _, anchors, anchor_names, _ = lists[source]
                    at_ranks = [int(src_rank[s]) for s in positions]
                    found = anchors.take(at_ranks) if hasattr(anchors, "take") else [anchors[r] for r in at_ranks]
                    for s, a in zip(positions, found):
                        anchor_of[s] = anchor_names[a] if anchor_names is not None else a
                out.append(list(map(Candidate, name_of[at:end], p_shown[at:end], src_of[at:end], anchor_of[at:end])))
                at = end
            return out

        names = self.retrieval.items.names
        sources = self.blender.sources
        out = lists_for([c.rerank_strength for c in configs])
        pools = self.pools.pools_from_batch(items=items, tail=tail, popularity=popularity, unknown=unknown,
                                            rows=pooled[0], cols=pooled[1], values=pooled[2], ranks=pooled[3],
                                            owners=user_e, bounds=bounds,
                                            counts=user_event_counts, appetites=appetites)
        held = [b for b in range(n_b) if out[b]]
        self.pools.keep([users[b] for b in held], [tuple(c.item for c in out[b][:shown_k]) for b in held],
                        [pools[b] for b in held])
        self.last_alternatives = [lists_for([strength] * n_b) for strength in alternatives]
        return out

    def __contains__(self, item: object) -> bool:
        return item in self.popularity or item in self.content or item in self.mf

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        """The ranker's click probability of ``items`` (source ranks unknown here: rank features 0; item
        popularity is the live window count, where serving reads it as of the last head refresh); 0.0 for
        an item no model knows."""
        if not len(items):
            return np.zeros(0)
        per_source = {
            "popularity": self.popularity.score(user, history, items),
            "covisit": self.covisit.score(user, history, items),
            "transitions": self.transitions.score(user, history, items),
            "last": self.covisit.score(user, history[-1:], items),
            "mf": self.mf.score(user, history, items),
            "content": self.content.score(user, history, items),
        }
        tail = self.popularity.tail_mask(items)
        appetite = appetite_from_counts(int(self.popularity.tail_mask(history).sum()), len(history))
        window_count = self.popularity.window_count
        xs = [
            self.blender.features(
                {s: float(v[n]) for s, v in per_source.items()},
                is_tail=bool(tail[n]),
                user_event_count=len(history),
                popularity=float(window_count(item)),
                appetite=appetite,
                batch_unknown=self._batch_vocab is not None and item not in self._batch_vocab,
            )
            for n, item in enumerate(items)
        ]
        known = np.fromiter((it in self for it in items), dtype=bool, count=len(items))
        return np.where(known, self.blender.predict_many(xs), 0.0)
