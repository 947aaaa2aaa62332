"""Is the ranker the limit? Replay the candidate pools of a real offline evaluation through other rankers.

``record`` runs ``tailcast evaluate --mode offline`` (tailcast s=0 only, fresh pairing) and keeps every
labelled list's candidate pool as the ranker saw it (``OnlineRecommender.pool_observer``): for each, the
clicked row and 16 random other rows (training), and every third pool whole (evaluation). The pools do not
depend on the ranker (the sources propose them), so ``replay`` can run any ranker over the same stream:
prequentially, each evaluation pool is ranked first (NDCG@10 of the clicked row, ties by pool position)
and then every pool is learned, the clicked row against ``--negatives`` others, as the recommender does.

Rankers: ``blender`` (the product's :class:`~online.blender.FeedbackBlender`), ``mlp`` (the same scaled
features through one hidden ReLU layer, Adam, mean log loss per mini-batch; seeded), and ``gbdt``
(scikit-learn's gradient boosting fit on the first half's training rows, scored on the second half: a
bound on what a non-linear ranker could gain with these features, not an online learner).

    .venv/bin/python -m benchmarks.ranker_pools record --dataset synthetic --pools out/pools-synthetic.pkl
    .venv/bin/python -m benchmarks.ranker_pools replay out/pools-synthetic.pkl --rankers blender,mlp,gbdt

The figures and what they decided are in docs/decisions.md ("#15 ranker headroom").
"""

from __future__ import annotations

import argparse
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np

from online.blender import FeedbackBlender, sigmoid
from online.recommender import CORE_SOURCES, OnlineRecommender

TRAIN_NEGATIVES = 16
EVAL_EVERY = 3
_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def record(argv: list[str], path: Path) -> None:
    """Run ``tailcast evaluate`` with ``argv`` and pickle the pools to ``path``."""
    from streams.evaluate import main

    rng = random.Random(0)
    pools: list[tuple] = []  # (training rows, clicked first | None, whole pool | None, clicked row)

    def observe(X: np.ndarray | None, hit: int) -> None:
        if X is None:
            pools.append((None, None, -1))
            return
        others = rng.sample([r for r in range(X.shape[0]) if r != hit], min(TRAIN_NEGATIVES, X.shape[0] - 1))
        whole = X.astype(np.float32) if len(pools) % EVAL_EVERY == 0 else None
        pools.append((X[[hit, *others]].astype(np.float32), whole, hit))

    OnlineRecommender.pool_observer = staticmethod(observe)
    main([*argv, "--mode", "offline", "--strengths", "0", "--boosts", "0", "--workers", "1",
          "--lists", "none"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(pools, f, protocol=5)
    print(f"{len(pools)} labelled lists, {sum(p[0] is not None for p in pools)} with the click in the pool, "
          f"{sum(p[1] is not None for p in pools)} kept whole -> {path}")


def _ndcg(scores: np.ndarray, hit: int) -> float:
    better = int(np.sum(scores > scores[hit]) + np.sum(scores[:hit] == scores[hit]))
    return float(_DISCOUNT[better]) if better < 10 else 0.0


class MLPRanker:
    """The blender's scaled features through one hidden ReLU layer (Adam, torch's defaults), one step per
    mini-batch of the blender's size; before the blender's warm-up, its prior."""

    def __init__(self, blender: FeedbackBlender, *, hidden: int = 16, lr: float = 0.003, seed: int = 0) -> None:
        self.scaler = blender  # running mean / variance and clip of the product's learner, prior included
        self.hidden, self.lr, self.rng = hidden, lr, np.random.default_rng(seed)
        self.params: list[np.ndarray] = []
        self.moments: list[tuple[np.ndarray, np.ndarray]] = []
        self.steps = 0
        self._buf: list[tuple[np.ndarray, np.ndarray]] = []

    def _forward(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        W1, b1, w2, b2 = self.params
        pre = Z @ W1 + b1
        h = np.maximum(pre, 0.0)
        return pre, h, h @ w2 + b2

    def logits(self, X: np.ndarray) -> np.ndarray:
        if not self.params or not self.scaler.warmed_up:
            return self.scaler.logits(X)
        return self._forward(self.scaler.standardized(X))[2]

    def learn(self, X: np.ndarray, y: np.ndarray) -> None:
        self._buf.append((X, y))
        if sum(b[1].size for b in self._buf) < self.scaler.batch_size:
            return
        X, y = np.concatenate([b[0] for b in self._buf]), np.concatenate([b[1] for b in self._buf])
        self._buf = []
        self.scaler.learn_matrix(X, y.astype(bool))  # one mini-batch: the scaler moves as the product's
        self.scaler.flush()
        Z = self.scaler.standardized(X)
        if not self.params:
            a1, a2 = 1 / np.sqrt(Z.shape[1]), 1 / np.sqrt(self.hidden)
            self.params = [self.rng.uniform(-a1, a1, (Z.shape[1], self.hidden)),
                           self.rng.uniform(-a1, a1, self.hidden), self.rng.uniform(-a2, a2, self.hidden),
                           np.array(self.rng.uniform(-a2, a2))]
            self.moments = [(np.zeros_like(p), np.zeros_like(p)) for p in self.params]
        pre, h, logit = self._forward(Z)
        g = (sigmoid(logit) - y) / y.size
        gh = np.outer(g, self.params[2]) * (pre > 0)
        self.steps += 1
        c1, c2 = 1 - 0.9 ** self.steps, 1 - 0.999 ** self.steps
        for p, grad, (m, v) in zip(self.params, (Z.T @ gh, gh.sum(0), h.T @ g, np.array(g.sum())), self.moments):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def replay(pools: list[tuple], ranker: str, *, negatives: int = 8, seed: int = 0) -> dict[str, float]:
    """Prequential NDCG@10 over the pools kept whole (all, and the second half's), for one ranker."""
    sources = (*CORE_SOURCES, "transformer", "vae")
    half = len(pools) // 2
    whole = [n for n, p in enumerate(pools) if p[1] is not None]
    started = time.perf_counter()
    if ranker == "gbdt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        rows = [p[0] for p in pools[:half] if p[0] is not None]
        X = np.concatenate(rows)
        y = np.concatenate([np.r_[1.0, np.zeros(r.shape[0] - 1)] for r in rows])
        model = HistGradientBoostingClassifier(max_iter=200, max_depth=6, random_state=seed).fit(X, y)
        late = [_ndcg(model.decision_function(pools[n][1]), pools[n][2]) for n in whole if n >= half]
        return {"ndcg_second_half": float(np.mean(late)), "seconds": time.perf_counter() - started}
    blender = FeedbackBlender(sources=sources, seed=seed)
    model = MLPRanker(blender, seed=seed) if ranker == "mlp" else blender
    scores: dict[int, float] = {}
    for n, (train, kept, hit) in enumerate(pools):
        if train is None:
            continue
        if kept is not None:
            scores[n] = _ndcg(model.logits(kept.astype(np.float64)), hit)
        X = train[: 1 + negatives].astype(np.float64)
        y = np.r_[1.0, np.zeros(X.shape[0] - 1)]
        if ranker == "mlp":
            model.learn(X, y)
        else:
            model.learn_matrix(X, y.astype(bool))
    every = [scores.get(n, 0.0) for n in whole]
    late = [scores.get(n, 0.0) for n in whole if n >= half]
    return {"ndcg": float(np.mean(every)), "ndcg_second_half": float(np.mean(late)),
            "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run an offline evaluation and keep its candidate pools")
    r.add_argument("--pools", type=Path, required=True)
    p_replay = sub.add_parser("replay", help="replay recorded pools through rankers")
    p_replay.add_argument("pools", type=Path)
    p_replay.add_argument("--rankers", default="blender,mlp,gbdt")
    p_replay.add_argument("--seeds", default="0")
    args, rest = p.parse_known_args(argv)
    if args.command == "record":
        record(rest, args.pools)
        return 0
    with args.pools.open("rb") as f:
        pools = pickle.load(f)
    print(f"| ranker | seed | NDCG@10 (pools kept whole) | second half | seconds |\n|---|---:|---:|---:|---:|")
    for ranker in args.rankers.split(","):
        for seed in ([0] if ranker == "blender" else [int(s) for s in args.seeds.split(",")]):
            m = replay(pools, ranker, seed=seed)
            print(f"| {ranker} | {seed} | {m.get('ndcg', float('nan')):.4f} | {m['ndcg_second_half']:.4f} "
                  f"| {m['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
