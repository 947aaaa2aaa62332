"""Retrieval: every source's candidates for a micro-batch of users, in one recommender-wide item index.

Per user, never an item of the history, of ``excludes`` or of ``consumed`` (the hashes of every item they
consumed): with no history, the most popular items mixed with the fresh tail (first seen recently, still
rare); with history, ``n_candidates`` each from co-visitation (of the recent history, and of the latest item
alone: ``"last"``), the transition counter, content and MF, plus a few popular and fresh items; ``extras``:
lists from outside (``"transformer"``, ``"vae"``). Items are dense indices of one :class:`~online.base.IdIndex`
(``items``), mapped to each model's own by append-only arrays, so that a micro-batch needs one history lookup,
one matrix product per embedding source and one gather per model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from itertools import islice

import numpy as np

from online.base import Candidate, CandidateList, IdIndex, item_hash
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.rerank import appetite_from_counts

__all__ = ["Retrieval", "SourceList"]

_EMPTY = np.zeros(0, dtype=np.int64)

#: One source's candidates for one user: (source, indices, scores, anchors, anchor names (None: the anchors
#: are names already), the map from the indices to ours (None: ours already)).
SourceList = tuple[str, np.ndarray, np.ndarray, Sequence | None, Sequence[str] | None, np.ndarray | None]


class Retrieval:
    """The online models' candidates (and ``extras``) per user, in the shared item index ``items``."""

    def __init__(self, *, popularity: DecayedPopularity, covisit: CoVisitation, transitions: CoVisitation,
                 mf: OnlineMF, content: ContentNeighbours, n_candidates: int = 100, n_fresh: int = 10) -> None:
        self.popularity = popularity
        self.covisit = covisit
        self.transitions = transitions
        self.mf = mf
        self.content = content
        self.n_candidates = int(n_candidates)
        self.n_fresh = int(n_fresh)
        self.items = IdIndex()  # recommender-wide item index
        self._hash_idx: dict[int, int] = {}  # item_hash -> our index, for the consumed sets
        self._n_hashed = 0
        self._maps: dict[str, tuple[IdIndex, np.ndarray]] = {}  # model -> (its index, its idx -> ours)
        self._invs: dict[str, tuple[IdIndex, int, np.ndarray]] = {}  # model -> (its index, mapped, ours -> its)
        self._tail_key: tuple | None = None
        self._tail = np.zeros(0, dtype=bool)  # (n_items,) over our index, at the last head refresh
        self.popularity_counts = np.zeros(0)  # (n_items,) window counts over our index, at the last head refresh
        self.share_keys()

    def share_keys(self) -> None:
        """Every model's item index onto the key table of ours: one string and one dict entry an item
        (docs/decisions.md, "One key table for the item indices")."""
        table = self.items.table
        for model in (self.popularity, self.covisit, self.transitions, self.mf, self.content):
            model.item_index.share(table)

    def candidates(
        self,
        users: Sequence[str],
        histories: Sequence[Sequence[str]],
        *,
        k: int,
        extras: Sequence[Mapping[str, Sequence[Candidate]] | None] | None = None,
        excludes: Sequence[Collection[str]] | None = None,
        consumed: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[list[SourceList]], list[float], np.ndarray]:
        """Each user's candidate lists, each user's tail appetite (from their history's tail share) and the
        tail mask over ``items`` they were read with; ``k``: the list length (a cold user gets at least as many
        popular and fresh items)."""
        n_b = len(users)
        n = self.n_candidates
        cv, tr, ct, mf, pop = self.covisit, self.transitions, self.content, self.mf, self.popularity
        cv_map = self._map("covisit", cv.item_index)
        tr_map = self._map("transitions", tr.item_index)
        ct_map = self._map("content", ct.item_index)
        mf_map = self._map("mf", mf.item_index)
        tail_mask = self.tail_mask()
        pmap = self._maps["popularity"][1]
        # every history (and exclude) item's index, looked up once: ours, then each model's through the
        # inverse maps (index -1, an item we do not know, reads the spare -1 at the end of each)
        cv_inv, tr_inv, ct_inv, mf_inv, pop_inv = (
            self._inverse(key) for key in ("covisit", "transitions", "content", "mf", "popularity"))
        lookup = self.items.indices
        window = max(cv.history_window, tr.history_window, ct.history_window)
        h_len = [len(h) for h in histories]
        h_end = np.cumsum(h_len).tolist()
        h_all = lookup([item for h in histories for item in h])  # every history, user after user
        if (excludes is not None and any(excludes)) or (consumed is not None and any(c.size for c in consumed)):
            h_ends = [0, *h_end]
            bans = [h_all[h_ends[b] : h_ends[b + 1]] for b in range(n_b)]
            if excludes is not None:
                looked: dict[int, np.ndarray] = {}  # id(exclude) -> its indices: one set shared by a batch, once
                for e in excludes:
                    if e and id(e) not in looked:
                        looked[id(e)] = lookup(list(e))
                bans = [np.concatenate([ban, looked[id(e)]]) if e else ban for ban, e in zip(bans, excludes)]
            if consumed is not None:
                bans = [np.concatenate([ban, self._consumed_indices(c)]) if c.size else ban
                        for ban, c in zip(bans, consumed)]
            ban_all = np.concatenate(bans)
            ban_end = np.cumsum([ban.size for ban in bans]).tolist()
        else:
            ban_all, ban_end = h_all, h_end  # history + exclude + consumed, user after user
        # the last `window` distinct history items of each user, most recent first
        recents = [list(islice(dict.fromkeys(reversed(h)), window)) if len(h) else [] for h in histories]
        r_end = np.cumsum([len(r) for r in recents]).tolist()
        r_all = lookup([item for r in recents for item in r])
        h_start, ban_start, r_start = [0, *h_end[:-1]], [0, *ban_end[:-1]], [0, *r_end[:-1]]
        warm = [b for b in range(n_b) if h_len[b]]
        cold = [b for b in range(n_b) if not h_len[b]]
        ct_rec, ct_ban = ct_inv[r_all], ct_inv[ban_all]
        cw = ct.history_window
        content = ct.top_many([ct_rec[r_start[b] : min(r_end[b], r_start[b] + cw)] for b in warm], n,
                              [ct_ban[ban_start[b] : ban_end[b]] for b in warm]) if warm else []
        mf_hist, mf_ban = mf_inv[h_all], mf_inv[ban_all]
        mw = mf.history_window
        mfs = mf.top_many([users[b] for b in warm], [mf_hist[max(h_start[b], h_end[b] - mw) : h_end[b]] for b in warm],
                          n, [mf_ban[ban_start[b] : ban_end[b]] for b in warm]) if warm else []
        pop_ban_all = pop_inv[ban_all]
        pop_ban = [pop_ban_all[ban_start[b] : ban_end[b]] for b in range(n_b)]
        fresh = dict(zip(warm, pop.fresh_many(self.n_fresh, [pop_ban[b] for b in warm]))) if warm else {}
        if cold:
            fresh.update(zip(cold, pop.fresh_many(max(self.n_fresh, k), [pop_ban[b] for b in cold])))
        batch = dict(zip(warm, zip(content, mfs)))
        n_pop = max(k, n // 10)
        popular = dict(zip(warm, pop.top_many(n_pop, [pop_ban[b] for b in warm]))) if warm else {}
        if cold:
            popular.update(zip(cold, pop.top_many(n, [pop_ban[b] for b in cold])))
        cv_rec, cv_ban = cv_inv[r_all].tolist(), cv_inv[ban_all]
        tr_rec, tr_ban = tr_inv[r_all].tolist(), tr_inv[ban_all]
        vw, tw = cv.history_window, tr.history_window
        ranks = range(1, vw + 1)
        cv_names, tr_names, ct_names = cv.item_index.names, tr.item_index.names, ct.item_index.names
        all_lists = []
        for b in range(n_b):
            # (source, indices, scores, anchors, anchor names (None: anchors are names already), the map from
            # the indices to ours (None: ours already))
            if h_len[b]:
                (c_idx, c_s, c_a), (m_idx, m_s) = batch[b]
                j, sc, an = cv.top(cv_rec[r_start[b] : min(r_end[b], r_start[b] + vw)], ranks, n,
                                   cv_ban[ban_start[b] : ban_end[b]])
                t_j, t_sc, t_an = tr.top(tr_rec[r_start[b] : min(r_end[b], r_start[b] + tw)], ranks, n,
                                         tr_ban[ban_start[b] : ban_end[b]])
                # "last": the co-visitation neighbours of the latest item alone (its own ranks and scores: the
                # ranker can weigh "what goes with what you just had" apart from the whole recent history)
                l_j, l_sc, l_an = cv.top(cv_rec[r_start[b] : min(r_end[b], r_start[b] + 1)], ranks, n,
                                         cv_ban[ban_start[b] : ban_end[b]])
                p_j, p_sc = popular[b]
                lists = [("covisit", j, sc, an, cv_names, cv_map), ("transitions", t_j, t_sc, t_an, tr_names, tr_map),
                         ("last", l_j, l_sc, l_an, cv_names, cv_map),
                         ("content", c_idx, c_s, c_a, ct_names, ct_map),
                         ("mf", m_idx, m_s, None, None, mf_map), ("popularity", p_j, p_sc, None, None, pmap)]
            else:
                p_j, p_sc = popular[b]
                lists = [("popularity", p_j, p_sc, None, None, pmap)]
            j, sc = fresh[b]
            lists.append(("fresh", j, sc, None, None, pmap))
            extra = extras[b] if extras is not None else None
            if extra:
                ban = {*histories[b], *(excludes[b] if excludes is not None else ())}
                ban_idx = ban_all[ban_start[b] : ban_end[b]] if consumed is not None else _EMPTY
                for source, cands in extra.items():
                    lists.append(self._extra_list(source, cands, ban, ban_idx))
            all_lists.append(lists)
        hist_tail = self.flag(tail_mask, h_all)
        n_tail = np.bincount(np.repeat(np.arange(n_b), h_len), weights=hist_tail, minlength=n_b)
        appetites = [appetite_from_counts(int(t), n) for t, n in zip(n_tail.tolist(), h_len)]
        return all_lists, appetites, tail_mask

    def _map(self, key: str, index: IdIndex) -> np.ndarray:
        """``model index -> our index`` for one model's :class:`IdIndex` (kept in step, append-only)."""
        entry = self._maps.get(key)
        m = entry[1] if entry is not None and entry[0] is index else np.zeros(0, dtype=np.int64)
        n = len(index)
        if n > m.size:
            add = self.items.add
            new = np.fromiter((add(name) for name in index.names[m.size : n]), dtype=np.int64, count=n - m.size)
            m = np.concatenate([m, new])
        if entry is None or entry[1] is not m:
            self._maps[key] = (index, m)
        return m

    def tail_mask(self) -> np.ndarray:
        """(n_items,) bool over our index: tail at popularity's last head refresh (unknown = tail)."""
        pop = self.popularity
        head = pop.head_mask()  # refreshes the head set when due
        pmap = self._map("popularity", pop.item_index)
        key = (pop.head_version, id(pop.item_index), len(self.items))
        if key != self._tail_key:
            tail = np.ones(len(self.items), dtype=bool)
            tail[pmap[np.flatnonzero(head)]] = False
            counts = pop.window_counts()
            self.popularity_counts = np.zeros(len(self.items))
            self.popularity_counts[pmap[: counts.size]] = counts[: pmap.size]
            self._tail, self._tail_key = tail, key
        return self._tail

    @staticmethod
    def flag(mask: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """``mask[idx]``, True where ``idx`` is -1 or beyond the mask (items it does not know are tail)."""
        ok = (idx >= 0) & (idx < mask.size)
        out = np.ones(idx.size, dtype=bool)
        out[ok] = mask[idx[ok]]
        return out

    def _inverse(self, key: str) -> np.ndarray:
        """``our index -> model index`` for a model mapped by :meth:`_map` (-1: the model does not know
        the item), with a spare last entry that stays -1, so that index -1 (an item we do not know)
        reads -1. Extended as the map grows, rebuilt when the model's index is replaced."""
        index, m = self._maps[key]
        entry = self._invs.get(key)
        n_ours = len(self.items)
        if entry is None or entry[0] is not index:
            inv, done = np.full(max(1024, 2 * n_ours) + 1, -1, dtype=np.int64), 0
        else:
            _, done, inv = entry
        if inv.size <= n_ours:
            grown = np.full(2 * n_ours + 1, -1, dtype=np.int64)
            grown[: inv.size - 1] = inv[:-1]
            inv = grown
        if m.size > done:
            inv[m[done:]] = np.arange(done, m.size)
            done = m.size
        self._invs[key] = (index, done, inv)
        return inv

    def _consumed_indices(self, hashes: np.ndarray) -> np.ndarray:
        """Our indices of the items with these :func:`~online.base.item_hash` values (-1: not known here).
        Two ids with one hash (about one pair in 10^4 among 10k items) ban only the first one indexed."""
        names = self.items.names
        if self._n_hashed < len(names):
            setdefault = self._hash_idx.setdefault
            for n in range(self._n_hashed, len(names)):
                setdefault(item_hash(names[n]), n)
            self._n_hashed = len(names)
        get = self._hash_idx.get
        return np.fromiter((get(h, -1) for h in hashes.tolist()), dtype=np.int64, count=hashes.size)

    def _extra_list(self, source: str, cands: Sequence[Candidate], banned: Collection[str],
                    banned_idx: np.ndarray = _EMPTY):
        """One ``extra`` source's list as a merge entry: its candidates minus the banned items (names, and
        our indices ``banned_idx``; an item listed twice: the first one's score and anchor, at the later
        one's place)."""
        entry = self._extra_entry(source, cands, banned)
        if banned_idx.size and entry[1].size:
            keep = ~np.isin(entry[1], banned_idx)
            if not keep.all():
                anchors = entry[3] if entry[3] is None else [a for a, k in zip(entry[3], keep.tolist()) if k]
                entry = (source, entry[1][keep], entry[2][keep], anchors, None, None)
        return entry

    def _extra_entry(self, source: str, cands: Sequence[Candidate], banned: Collection[str]):
        add = self.items.add
        if isinstance(cands, CandidateList):
            items = cands.items
            if len(set(items)) == len(items):
                keep = [n for n, item in enumerate(items) if item not in banned]
                scores = np.asarray(cands.scores, dtype=np.float64)
                if len(keep) < len(items):
                    scores = scores[keep]
                    items = [items[n] for n in keep]
                idx = self.items.indices(items)
                new = (idx < 0).nonzero()[0].tolist()
                for n in new:  # items we do not know yet, indexed in list order (as add() one by one would)
                    idx[n] = add(items[n])
                return (source, idx, scores, None, None, None)
        kept = list({c.item: c for c in reversed(cands) if c.item not in banned}.values())[::-1]
        return (
            source,
            np.fromiter((add(c.item) for c in kept), dtype=np.int64, count=len(kept)),
            np.fromiter((c.score for c in kept), dtype=np.float64, count=len(kept)),
            [c.anchor for c in kept],
            None,
            None,
        )
