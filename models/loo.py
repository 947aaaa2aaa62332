"""Offline leave-one-out evaluation: split, full-catalogue ranking metrics, MostPop and item-CF baselines.

Pure functions over lists and numpy arrays (no torch). Events are plain ``(user, item, ts)`` tuples.

**Split** (per user, by time; equal timestamps keep the input order): the last event is the test target,
the second-to-last the validation target, the rest training history; users with fewer than 3 events are
training data only. **Ranking** is against ALL items (no sampled candidates, as in the published SASRec /
eSASRec numbers). **Exclusion rule:** the user's history items (test: train + the validation item;
validation: train) are removed, except the target itself (a repeat); padding column 0 never counts. Ties
with the target's score are broken at random (seeded), so a constant scorer gets no optimistic rank.
**Groups**: tail targets are outside the head of the items seen in training (``tail_items``, docs/design.md
§4); short users have <= 5 training events.

>>> events = [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "d", 4),
...           ("u2", "a", 1), ("u2", "b", 2), ("u2", "c", 3), ("u3", "a", 5), ("u3", "c", 6)]
>>> split = leave_one_out(events)
>>> split.train["u1"], split.valid["u1"], split.test["u1"], split.train["u3"], "u3" in split.test
(['a', 'b'], 'c', 'd', ['a', 'c'], False)
>>> index = item_index(split)  # a:1 b:2 c:3 d:4
>>> histories, targets = split.histories("test", index)
>>> histories, targets
([[1, 2, 3], [1, 2]], [4, 3])
>>> pop = MostPop(split.train_sequences(index), n_items=len(index))
>>> pop(histories)[0, 1:].tolist()  # train counts of a, b, c, d
[3.0, 1.0, 1.0, 0.0]
>>> ranks = ranks_from_scores(pop(histories), targets, histories)  # u1: only d left -> rank 0
>>> ranks.tolist()
[0, 0]
>>> metrics_from_ranks(ranks, k=10)
{'hr': 1.0, 'ndcg': 1.0, 'users': 2}
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from online.headtail import head_positions
from online.metrics import NDCG, HitRate, Metrics

__all__ = [
    "LooSplit",
    "leave_one_out",
    "item_index",
    "train_counts",
    "tail_items",
    "ranks_from_scores",
    "metrics_from_ranks",
    "evaluate_ranking",
    "evaluate_split",
    "MostPop",
    "ItemCF",
]

ScoreFn = Callable[[list[list[int]]], np.ndarray]  # histories (item indices) -> (B, N+1) scores


@dataclass(frozen=True)
class LooSplit:
    train: dict[Hashable, list[Hashable]]  # every user -> time-ordered training items
    valid: dict[Hashable, Hashable]  # evaluated users -> second-to-last item
    test: dict[Hashable, Hashable]  # evaluated users -> last item

    def histories(self, stage: str, index: Mapping[Hashable, int]) -> tuple[list[list[int]], list[int]]:
        """Item-index histories and targets of the evaluated users, in ``self.test`` order.

        ``stage="valid"``: history = train, target = valid item. ``"test"``: history = train + valid."""
        if stage not in ("valid", "test"):
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        hs, ts = [], []
        for u, last in self.test.items():
            h = [index[i] for i in self.train[u]]
            if stage == "test":
                h.append(index[self.valid[u]])
                ts.append(index[last])
            else:
                ts.append(index[self.valid[u]])
            hs.append(h)
        return hs, ts

    def train_sequences(self, index: Mapping[Hashable, int]) -> list[list[int]]:
        """Every user's training items as indices (users with < 3 events included)."""
        return [[index[i] for i in seq] for seq in self.train.values()]

    def users(self) -> list[Hashable]:
        """The evaluated users, in the order ``histories`` returns them."""
        return list(self.test)


def leave_one_out(events: Iterable[tuple[Hashable, Hashable, float]]) -> LooSplit:
    """Split ``(user, item, ts)`` events per user by time (see the module docstring)."""
    per_user: dict[Hashable, list[tuple[float, int, Hashable]]] = defaultdict(list)
    for n, (user, item, ts) in enumerate(events):
        per_user[user].append((float(ts), n, item))
    train, valid, test = {}, {}, {}
    for user, evs in per_user.items():
        evs.sort(key=lambda e: (e[0], e[1]))  # by time, then input order
        items = [e[2] for e in evs]
        if len(items) < 3:
            train[user] = items
            continue
        train[user], valid[user], test[user] = items[:-2], items[-2], items[-1]
    return LooSplit(train=train, valid=valid, test=test)


def item_index(split: LooSplit) -> dict[Hashable, int]:
    """Items -> indices 1..N (0 = padding), by first appearance in train, then valid, then test."""
    index: dict[Hashable, int] = {}
    for seq in split.train.values():
        for i in seq:
            index.setdefault(i, len(index) + 1)
    for i in list(split.valid.values()) + list(split.test.values()):
        index.setdefault(i, len(index) + 1)
    return index


def train_counts(train_sequences: Sequence[Sequence[int]], n_items: int) -> np.ndarray:
    """(N+1,) number of training events per item index."""
    counts = np.zeros(n_items + 1, dtype=np.float64)
    for seq in train_sequences:
        np.add.at(counts, np.asarray(seq, dtype=np.int64), 1.0)
    return counts


def tail_items(counts: np.ndarray, *, head_share: float = 0.2) -> np.ndarray:
    """(N+1,) bool: the tail of docs/design.md §4 (``online.headtail.head_positions``) over training counts:
    head = the top ``floor(head_share * n_active)`` items with training events, ties by index.

    >>> tail_items(np.array([0, 5, 1, 9, 0, 2, 2, 0, 0, 0, 3])).nonzero()[0].tolist()  # 6 active: head 3
    [1, 2, 4, 5, 6, 7, 8, 9, 10]
    """
    tail = np.ones(len(counts), dtype=bool)
    tail[0] = False
    tail[head_positions(np.asarray(counts), head_share)] = False
    return tail


def ranks_from_scores(
    scores: np.ndarray,
    targets: Sequence[int],
    exclude: Sequence[Iterable[int]],
    *,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """0-based rank of each target among all items of its row, after excluding ``exclude[b]`` (except the
    target) and column 0; ties broken uniformly at random. ``scores`` is (B, N+1) and is not modified."""
    rng = rng or np.random.default_rng(0)
    s = np.array(scores, dtype=np.float64, copy=True)
    B = s.shape[0]
    t = np.asarray(targets, dtype=np.int64)
    if t.shape != (B,):
        raise ValueError(f"{len(t)} targets for {B} score rows")
    if len(exclude) != B:
        raise ValueError(f"{len(exclude)} exclusion sets for {B} score rows")
    ex = [np.fromiter(e, dtype=np.int64) for e in exclude]
    rows = np.repeat(np.arange(B), [len(e) for e in ex])
    cols = np.concatenate(ex) if B else np.zeros(0, np.int64)
    target_scores = s[np.arange(B), t].copy()
    s[rows, cols] = -np.inf
    s[:, 0] = -np.inf
    s[np.arange(B), t] = target_scores  # the target itself is never excluded
    greater = (s > target_scores[:, None]).sum(1)
    ties = (s == target_scores[:, None]).sum(1) - 1
    return greater + np.floor(rng.random(B) * (ties + 1)).astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, *, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k (one relevant item) from 0-based ranks: ``online.metrics``' HitRate and NDCG, as live."""
    ranks = np.asarray(ranks).tolist()
    if not ranks:
        return {"hr": float("nan"), "ndcg": float("nan"), "users": 0}
    metrics = Metrics(hr=HitRate(k), ndcg=NDCG(k))
    for rank in ranks:
        metrics.update(rank)
    return {**metrics.get(), "users": len(ranks)}


def evaluate_ranking(score_fn: ScoreFn, histories: Sequence[Sequence[int]], targets: Sequence[int], *,
                     batch_size: int = 256, seed: int = 0) -> np.ndarray:
    """Ranks of ``targets`` under ``score_fn``, batched, with the module's exclusion rule."""
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, len(histories), batch_size):
        h = [list(x) for x in histories[start : start + batch_size]]
        scores = np.asarray(score_fn(h))
        out.append(ranks_from_scores(scores, targets[start : start + batch_size], h, rng=rng))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def evaluate_split(
    score_fn: ScoreFn,
    split: LooSplit,
    index: Mapping[Hashable, int],
    *,
    stage: str = "test",
    k: int = 10,
    head_share: float = 0.2,
    short_max: int = 5,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """HR@k, NDCG@k, tail HR@k / NDCG@k (tail targets) and short-user HR@k (<= short_max train events)."""
    histories, targets = split.histories(stage, index)
    ranks = evaluate_ranking(score_fn, histories, targets, batch_size=batch_size, seed=seed)
    n_items = len(index)
    tail = tail_items(train_counts(split.train_sequences(index), n_items), head_share=head_share)
    is_tail = tail[np.asarray(targets, dtype=np.int64)]
    is_short = np.array([len(split.train[u]) <= short_max for u in split.users()], dtype=bool)
    overall, tail_m, short_m = (metrics_from_ranks(r, k=k) for r in (ranks, ranks[is_tail], ranks[is_short]))
    return {
        "k": k,
        "hr": overall["hr"],
        "ndcg": overall["ndcg"],
        "tail_hr": tail_m["hr"],
        "tail_ndcg": tail_m["ndcg"],
        "short_hr": short_m["hr"],
        "users": overall["users"],
        "tail_users": tail_m["users"],
        "short_users": short_m["users"],
    }


class MostPop:
    """Scores every item by its training count, the same for every user."""

    def __init__(self, train_sequences: Sequence[Sequence[int]], *, n_items: int) -> None:
        self.counts = train_counts(train_sequences, n_items)

    def __call__(self, histories: list[list[int]]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), len(self.counts)))


class ItemCF:
    """Item-item CF: score(i | H) = sum_{j in H} cos(i, j), cosine over binary user-item co-occurrence.

    cos(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|). Computed per batch as ((x_H * d) X^T X) * d with
    d = 1/sqrt(item counts), so the (N, N) similarity matrix is never formed (scipy sparse if installed)."""

    def __init__(self, train_sequences: Sequence[Sequence[int]], *, n_items: int) -> None:
        self.n_items = n_items
        rows = np.concatenate([np.full(len(set(s)), u) for u, s in enumerate(train_sequences)] or [np.zeros(0)])
        cols = np.concatenate([np.fromiter(set(s), dtype=np.int64) for s in train_sequences] or [np.zeros(0)])
        n_users = len(train_sequences)
        try:
            import scipy.sparse as sp  # optional: without scipy, the dense fallback below

            self.X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items + 1))
            self._sparse = True
        except ImportError:  # dense fallback for small data
            self.X = np.zeros((n_users, n_items + 1), np.float32)
            self.X[rows.astype(np.int64), cols] = 1.0
            self._sparse = False
        users_per_item = np.asarray(self.X.sum(0)).ravel()
        self.d = np.where(users_per_item > 0, 1.0 / np.sqrt(np.maximum(users_per_item, 1)), 0.0).astype(np.float32)

    def __call__(self, histories: list[list[int]]) -> np.ndarray:
        H = np.zeros((len(histories), self.n_items + 1), np.float32)
        for b, h in enumerate(histories):
            H[b, list(set(h))] = 1.0
        Hd = H * self.d  # (B, N+1)
        co = (self.X @ Hd.T).T if self._sparse else Hd @ self.X.T  # (B, U)
        scores = np.asarray((self.X.T @ co.T).T if self._sparse else co @ self.X)  # (B, N+1)
        return scores * self.d
