"""Online implicit matrix factorisation: BPR-style SGD, one event at a time, on growable numpy arrays.

For an event (user ``u``, item ``i``), ``n_negatives`` items ``j`` are drawn from a ring buffer of the last
``negative_pool`` event items (negatives follow the seen-item distribution, which keeps the factors from
encoding popularity) for one SGD step on ``-log sigmoid(x_ui - x_uj)``, ``x_ui = u . q_i + b_i``, L2
``reg``, ``u`` the user's vector as served (below): the step moves ``p_u``, ``q_i``, ``q_j`` and the history
items' ``q_h`` (an item's vector also stands for the users who had it: SVD++/FISM's user model). Events are
buffered and applied ``batch_size`` at a time as one vectorised step (numpy's per-call overhead makes a step per
event cost several times more); reads see the factors up to ``batch_size - 1`` events behind,
:meth:`OnlineMF.flush` forces the step. A pickle holds the buffer too (pickling does not
flush: it must not change what the original recommends).

A known user is ``p_u + history_weight * mean(q_h for h in the last history_window items)``; a user not
seen (or evicted: at most ``max_users`` rows, least recently active first) is that mean alone; a user with
neither gets the item biases. :meth:`OnlineMF.candidates_many` scores a batch with one (B, D) x (D, n_items)
product (from ``ann_min_items`` items on, with an ``index_factory``: through an index, see
:class:`~online.rowindex.RowIndex`); scores within a tolerance are tied and ranked by item index
(:func:`online.base.top_k`), so that BLAS rounding does not decide the order.

>>> mf = OnlineMF(dim=8, seed=1)
>>> for n in range(200):
...     mf.learn_one(f"u{n % 10}", f"i{n % 7}", float(n), [])
>>> recs = mf.recommend("u3", ["i3"], k=3)
>>> len(recs), recs[0].source, "i3" in {c.item for c in recs}
(3, 'mf', False)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

import numpy as np

from online.base import Candidate, IdIndex, ItemIndexed, must_be_at_least, top_k_rows
from online.rowindex import ANN_MIN_ITEMS, IndexFactory, RowIndex

__all__ = ["OnlineMF"]

_RAND_BLOCK = 8192


class OnlineMF(ItemIndexed):
    """BPR matrix factorisation trained online. ``name = "mf"``."""

    name = "mf"

    def __init__(self, *, dim: int = 32, lr: float = 0.05, reg: float = 0.01, n_negatives: int = 4, seed: int = 0,
                 max_users: int = 1_000_000, init_scale: float = 0.1, negative_pool: int = 10_000,
                 history_window: int = 20, history_weight: float = 1.0, batch_size: int = 64,
                 index_factory: IndexFactory | None = None, ann_min_items: int = ANN_MIN_ITEMS,
                 background: bool = False) -> None:
        must_be_at_least(1, dim=dim, n_negatives=n_negatives, max_users=max_users, batch_size=batch_size,
                         negative_pool=negative_pool)
        self.dim = int(dim)
        self.lr = float(lr)
        self.reg = float(reg)
        self.n_negatives = int(n_negatives)
        self.seed = int(seed)
        self.max_users = int(max_users)
        self.init_scale = float(init_scale)
        self.history_window = int(history_window)
        self.history_weight = float(history_weight)
        self._rng = np.random.default_rng(seed)
        self._items = IdIndex()
        self._q = np.zeros((0, dim), dtype=np.float32)  # (n_items_cap, D) item factors
        self._b = np.zeros(0, dtype=np.float32)  # (n_items_cap,) item biases
        self._users: OrderedDict[str, int] = OrderedDict()  # user -> row of _p, LRU order
        self._p = np.zeros((0, dim), dtype=np.float32)  # (n_users_cap, D) user factors
        self._rows = 0  # rows of _p handed out so far
        self._free_rows: list[int] = []  # rows of forgotten users, handed out again first
        self._pool = np.zeros(negative_pool, dtype=np.int64)  # ring buffer of recent event items
        self._pool_n = 0
        self._pool_pos = 0
        self._rand = self._rng.random(_RAND_BLOCK)
        self._rand_pos = 0
        self.batch_size = int(batch_size)
        self._buf_u: list[int] = []  # events waiting for the next vectorised SGD step
        self._buf_i: list[int] = []
        self._buf_pool_n: list[int] = []
        self._buf_h: list[Sequence[str]] = []  # each buffered event's last history_window history items
        #: from ``ann_min_items`` items on, candidates through a maximum-inner-product index over ``[q_i, b_i]``
        #: (e.g. ``models.ann.MipsIndex.over``); rows the SGD steps moved since its build are scanned exactly
        self.ann = RowIndex(index_factory, min_rows=ann_min_items, background=background)

    @property
    def item_index(self) -> IdIndex:  # ItemIndexed's, under the name that MF pickles
        return self._items

    def _item_row(self, item: str) -> int:
        idx = self._items.get(item)
        if idx >= 0:
            return idx
        idx = self._items.add(item)
        if idx >= self._q.shape[0]:
            cap = max(1024, 2 * self._q.shape[0])
            q = np.zeros((cap, self.dim), dtype=np.float32)
            q[: self._q.shape[0]] = self._q
            b = np.zeros(cap, dtype=np.float32)
            b[: self._b.shape[0]] = self._b
            self._q, self._b = q, b
        self._q[idx] = self._rng.normal(0.0, self.init_scale, self.dim)
        return idx

    def _user_row(self, user: str) -> int:
        users = self._users
        row = users.get(user)
        if row is not None:
            users.move_to_end(user)
            return row
        if self._free_rows:
            row = self._free_rows.pop()
        elif len(users) >= self.max_users:
            _, row = users.popitem(last=False)  # evict the least recently active user
        else:
            row = self._rows
            self._rows += 1
            if row >= self._p.shape[0]:
                cap = min(self.max_users, max(1024, 2 * self._p.shape[0]))
                p = np.zeros((cap, self.dim), dtype=np.float32)
                p[: self._p.shape[0]] = self._p
                self._p = p
        users[user] = row
        self._p[row] = self._rng.normal(0.0, self.init_scale, self.dim)
        return row

    def _uniform(self, n: int) -> np.ndarray:
        if n > _RAND_BLOCK:
            return self._rng.random(n)
        if self._rand_pos + n > _RAND_BLOCK:
            self._rand = self._rng.random(_RAND_BLOCK)
            self._rand_pos = 0
        out = self._rand[self._rand_pos : self._rand_pos + n]
        self._rand_pos += n
        return out

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str] = ()) -> None:
        i = self._item_row(item)
        if user not in self._users and len(self._users) >= self.max_users:
            self._flush()  # the evicted user's row may still be waiting in the buffer
        u = self._user_row(user)
        self._buf_h.append(history[-self.history_window :])
        self._buf_u.append(u)
        self._buf_i.append(i)
        self._buf_pool_n.append(self._pool_n)
        pos = self._pool_pos
        self._pool[pos] = i
        self._pool_pos = pos + 1 if pos + 1 < self._pool.size else 0
        if self._pool_n < self._pool.size:
            self._pool_n += 1
        if len(self._buf_u) >= self.batch_size:
            self._flush()

    def forget(self, user: str) -> bool:
        """Erase ``user``'s row (#17), after applying the buffered events: the row is zeroed and handed to the
        next new user (the item factors keep what the user taught them). Returns whether there was a row.

        >>> mf = OnlineMF(dim=4, seed=0)
        >>> mf.learn_one("u1", "a", 0.0); mf.learn_one("u2", "b", 1.0)
        >>> mf.forget("u1"), mf.forget("u1"), mf.user_vector("u1", []) is None
        (True, False, True)
        >>> mf.learn_one("u3", "a", 2.0); mf._users["u3"] == 0  # u1's row, reused
        True
        """
        if user not in self._users:
            return False
        self._flush()  # the user's row may still be waiting in the buffer
        row = self._users.pop(user)
        self._p[row] = 0.0
        self._free_rows.append(row)
        return True

    def flush(self) -> None:
        """Apply the buffered events now (reads do not wait for a full batch; see the module doc)."""
        self._flush()

    def _flush(self) -> None:
        """Apply the buffered events as one vectorised SGD step (sum of the per-event gradients); each
        event's negatives are drawn from the pool at its size when the event arrived (slots overwritten since
        hold more recent items, of the same distribution)."""
        if not self._buf_u:
            return
        us = np.asarray(self._buf_u, dtype=np.int64)  # (B,)
        its = np.asarray(self._buf_i, dtype=np.int64)  # (B,)
        pool_n = np.asarray(self._buf_pool_n, dtype=np.int64)  # (B,)
        hists = self._buf_h
        self._buf_u, self._buf_i, self._buf_pool_n, self._buf_h = [], [], [], []
        ok = pool_n > 0
        if not ok.all():
            us, its, pool_n = us[ok], its[ok], pool_n[ok]
            hists = [h for h, keep in zip(hists, ok.tolist()) if keep]
            if not us.size:
                return
        n_b, n_n = us.size, self.n_negatives
        slots = (self._uniform(n_b * n_n).reshape(n_b, n_n) * pool_n[:, None]).astype(np.int64)
        negs = self._pool[slots]  # (B, N)
        mask = (negs != its[:, None]).astype(np.float32)  # (B, N) the positive is no negative
        P, Q, Bias = self._p, self._q, self._b
        lr, reg = np.float32(self.lr), np.float32(self.reg)
        # the served user vector u = p_u + w * mean(q_h), the known history rows flattened with their event's row
        h_rows = self._items.indices([item for h in hists for item in h])
        h_of = np.repeat(np.arange(n_b), [len(h) for h in hists])
        known = h_rows >= 0
        if not known.all():
            h_rows, h_of = h_rows[known], h_of[known]
        h_len = np.bincount(h_of, minlength=n_b)
        h_w = np.zeros(n_b, dtype=np.float32)  # w / |history| per event
        has = h_len > 0
        np.divide(np.float32(self.history_weight), h_len, out=h_w, where=has, casting="unsafe")
        p_rows = P[us]  # (B, D)
        pu = p_rows.copy()
        if h_rows.size:  # segment sums (reduceat), not np.add.at: several times cheaper
            pu[has] += np.add.reduceat(Q[h_rows], (np.cumsum(h_len) - h_len)[has], axis=0) * h_w[has, None]
        qi = Q[its]  # (B, D)
        qj = Q[negs]  # (B, N, D)
        diff = qi[:, None, :] - qj  # (B, N, D)
        x = np.einsum("bnd,bd->bn", diff, pu) + (Bias[its][:, None] - Bias[negs])  # (B, N)
        g = mask / (1.0 + np.exp(np.clip(x, -30.0, 30.0)))  # sigmoid(-x): grad of -log sigmoid(x)
        gs = g.sum(axis=1)  # (B,)
        gu = np.einsum("bn,bnd->bd", g, diff)  # (B, D) the gradient of the log-likelihood in u
        np.add.at(P, us, lr * (gu - reg * p_rows))
        if h_rows.size:  # the history rows' gradients summed per row (sorted, segment sums), then added once
            order = np.argsort(h_rows, kind="stable")
            rows = h_rows[order]
            first = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
            Q[rows[first]] += np.add.reduceat((gu[h_of] * (lr * h_w)[h_of, None])[order], first, axis=0)
        np.add.at(Q, its, lr * (gs[:, None] * pu - reg * qi))
        np.add.at(Q, negs.ravel(), (-lr * (g[:, :, None] * pu[:, None, :] + reg * qj)).reshape(-1, self.dim))
        np.add.at(Bias, its, lr * (gs - reg * Bias[its]))
        np.add.at(Bias, negs.ravel(), (-lr * (g + reg * Bias[negs])).ravel())
        self.ann.mark(its)  # rows the step moved: scanned exactly until the index is rebuilt
        self.ann.mark(negs.ravel())
        self.ann.mark(h_rows)

    def user_vector(self, user: str, history: Sequence[str]) -> np.ndarray | None:
        """The (D,) query vector for ``user``, or ``None`` when nothing is known about them."""
        hist = self._items.indices(history[-self.history_window :]) if len(history) else None
        return self._user_vector(user, hist)

    def _user_vector(self, user: str, hist: np.ndarray | None) -> np.ndarray | None:
        """:meth:`user_vector` from the indices (-1 unknown) of the last history items (None: no history)."""
        if hist is not None:
            hist = hist[hist >= 0]
        row = self._users.get(user)
        h_mean = None
        if hist is not None and hist.size:  # self._q[hist].mean(axis=0), without its checks
            h_mean = np.add.reduce(self._q[hist], axis=0)
            np.true_divide(h_mean, np.intp(hist.size), out=h_mean, casting="unsafe")
        if row is None:
            return h_mean
        p = self._p[row]
        return p if h_mean is None else p + self.history_weight * h_mean

    def candidates_many(
        self, users: Sequence[str], histories: Sequence[Sequence[str]], k: int,
        banned: Sequence[np.ndarray | None] | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top ``k`` per user as index arrays (items, scores), best first (tied scores by index, see
        :func:`online.base.top_k`): one (B, D) x (D, n_items) product for the batch. ``banned[b]`` are
        item indices excluded for user ``b`` (history items are always excluded)."""
        recent, bans = [], []
        for b, history in enumerate(histories):
            recent.append(self._items.indices(history[-self.history_window :]) if len(history) else None)
            ban = self._items.indices(history)
            extra = banned[b] if banned is not None else None
            bans.append(ban if extra is None or not extra.size else np.concatenate([ban, extra]))
        return self.top_many(users, recent, k, bans)

    def top_many(
        self, users: Sequence[str], recent: Sequence[np.ndarray | None], k: int, banned: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`candidates_many` from the indices (-1 unknown) of each user's last ``history_window``
        history items (None: no history) and their banned indices (the history's included, -1 ignored)."""
        n = len(self._items)
        if not n:
            return [(np.zeros(0, dtype=np.int64), np.zeros(0)) for _ in users]
        zero = np.zeros(self.dim, dtype=np.float32)
        vecs = []
        for user, hist in zip(users, recent):
            vec = self._user_vector(user, hist)
            vecs.append(zero if vec is None else vec)  # unknown user, no history: item biases only
        if self.ann.ready(n, self._biased, self.dim + 1):
            q = np.hstack([np.stack(vecs), np.ones((len(vecs), 1), dtype=np.float32)])  # [p_u, 1] . [q_i, b_i]
            found = self.ann.top(q, n, k, banned, lambda qs, rows: qs @ self._biased(rows).T,
                                 lambda cand, r: self._biased(cand) @ q[r])
            return [(cand[top], scores[top].astype(np.float64)) for cand, scores, top in found]
        scores = np.stack(vecs) @ self._q[:n].T + self._b[:n]  # (B, N) float32
        tops = top_k_rows(scores, k, banned, overwrite=True)  # banned entries -> -inf: never read below
        return [(top, scores[r, top].astype(np.float64)) for r, top in enumerate(tops)]

    def _biased(self, rows: np.ndarray) -> np.ndarray:
        """``[q_i, b_i]`` (len(rows), D + 1) float32: an item's score is its inner product with ``[p_u, 1]``."""
        return np.hstack([self._q[rows], self._b[rows, None]])

    def __setstate__(self, state: dict) -> None:
        state.setdefault("ann", RowIndex(None))  # pickled before the index existed
        state.setdefault("_buf_h", [()] * len(state["_buf_u"]))  # before the step used the history
        self.__dict__.update(state)

    def recommend(
        self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()
    ) -> list[Candidate]:
        top, scores = self.candidates_many([user], [history], k, [self._items.indices(exclude)])[0]
        names = self._items.names
        return [Candidate(names[j], s, "mf") for j, s in zip(top.tolist(), scores.tolist())]

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        idx = self._items.indices(items)
        out = np.zeros(len(idx))
        known = idx >= 0
        if not known.any():
            return out
        vec = self.user_vector(user, history)
        q_rows = idx[known]
        if vec is None:
            out[known] = self._b[q_rows]
        else:
            out[known] = self._q[q_rows] @ vec + self._b[q_rows]
        return out
