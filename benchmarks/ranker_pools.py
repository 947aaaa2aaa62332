"""Is the ranker the limit? Replay the candidate pools of a real offline evaluation through other rankers.

``record`` runs ``tailcast evaluate --mode offline`` (tailcast s=0 only, fresh pairing; its other options, such
as ``--train-transformer 60 --refresh-every 25000``, passed on) and keeps, per tailcast system, every
labelled list's candidate pool as the ranker saw it (``OnlineRecommender.pool_observer``): for each, the
clicked row and 16 random other rows (training), and every third pool whole (evaluation). The pools do not
depend on the ranker (the sources propose them), so ``replay`` can run any ranker over the same stream:
prequentially, each evaluation pool is ranked first (NDCG@10 of the clicked row, ties by pool position)
and then every pool is learned, the clicked row against ``--negatives`` others, as the recommender does.

Rankers: ``blender`` (the product's :class:`~online.blender.FeedbackBlender`, a one-hidden-layer
perceptron since #15; ``--seeds`` draws its initial weights, ``--hidden`` its widths, default the product's)
and ``gbdt`` (scikit-learn's gradient boosting fit on the first half's training rows, scored on the second
half: a bound on what another non-linear ranker could gain with these features, not an online learner). The
linear ranker the perceptron replaced, and the ``mlp`` ranker that measured it here first, are in git history
(before #15's perceptron commit).

    .venv/bin/python -m benchmarks.ranker_pools record --dataset synthetic --pools out/pools-synthetic.pkl
    .venv/bin/python -m benchmarks.ranker_pools replay out/pools-synthetic.pkl --rankers blender,gbdt --seeds 0,1,2
    .venv/bin/python -m benchmarks.ranker_pools replay out/pools-synthetic.pkl --rankers blender --hidden 16,32,48
    .venv/bin/python -m benchmarks.ranker_pools record --dataset $DATA/ml-latest-small \
        --train-transformer 60 --train-vae 30 --refresh-every 25000 --pools out/pools-ml-refresh.pkl
    .venv/bin/python -m benchmarks.ranker_pools replay out/pools-ml-refresh.pkl --system "tailcast[s=0.00] no VAE"
    .venv/bin/python -m benchmarks.ranker_pools replay out/pools-synthetic.pkl --rankers blender --ablate --seeds 0,1

``--ablate`` replays the ranker once more without each source that proposed in the pools, as leave-one-out's
``--ablate`` retrains tailcast without it: the source's features at "not proposed" and the rows only it proposed
left out (a pool whose click only it proposed is not learned, and scores 0), each variant paired over the pools
kept whole with the ranker that has every source (the source gate is not applied: every source scores). Its last
row, ``select``, is what serving the better of them would have given, chosen online (:func:`select`).

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

from online.blender import FeedbackBlender
from online.recommender import CORE_SOURCES, OnlineRecommender

TRAIN_NEGATIVES = 16
EVAL_EVERY = 3
#: Where a batch model was swapped in, in a system's pools (``--refresh-every``).
REFRESH = ("refresh", None, -1)
_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))


def record(argv: list[str], path: Path) -> None:
    """Run ``tailcast evaluate`` with ``argv`` and pickle the pools to ``path``: ``{system: pools}``, one list per
    tailcast system (with ``--train-transformer`` the "no VAE" and "online only" rows are systems too), a
    :data:`REFRESH` marker where ``--refresh-every`` swapped a new batch model in."""
    from streams.evaluate import main
    from streams.evaluation.transformer import Refresher

    rngs: dict[str, random.Random] = {}
    by_system: dict[str, list[tuple]] = {}  # (training rows, whole pool | None, clicked row), or a marker

    def observe(rec: OnlineRecommender, X: np.ndarray | None, hit: int) -> None:
        system = next(iter(rec.arms))  # the harness names each system's one arm after it
        pools = by_system.setdefault(system, [])
        if X is None:
            pools.append((None, None, -1))
            return
        rng = rngs.setdefault(system, random.Random(0))
        others = rng.sample([r for r in range(X.shape[0]) if r != hit], min(TRAIN_NEGATIVES, X.shape[0] - 1))
        whole = X.astype(np.float32) if len(pools) % EVAL_EVERY == 0 else None
        pools.append((X[[hit, *others]].astype(np.float32), whole, hit))

    refresh = Refresher.__call__

    def marked(self: Refresher, events):
        for pools in by_system.values():
            pools.append(REFRESH)
        return refresh(self, events)

    OnlineRecommender.pool_observer = observe  # a plain function: called as a method, it sees the recommender
    Refresher.__call__ = marked
    main([*argv, "--mode", "offline", "--strengths", "0", "--boosts", "0", "--workers", "1",
          "--lists", "none"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(by_system, f, protocol=5)
    for system, pools in by_system.items():
        lists = [p for p in pools if not _is_marker(p)]
        print(f"{system}: {len(lists)} labelled lists, {sum(p[0] is not None for p in lists)} with the click in the "
              f"pool, {sum(p[1] is not None for p in lists)} kept whole, {len(pools) - len(lists)} refreshes -> {path}")


def _is_marker(pool: tuple) -> bool:
    return isinstance(pool[0], str)


def _ndcg(scores: np.ndarray, hit: int) -> float:
    better = int(np.sum(scores > scores[hit]) + np.sum(scores[:hit] == scores[hit]))
    return float(_DISCOUNT[better]) if better < 10 else 0.0


SOURCES = (*CORE_SOURCES, "transformer", "vae")  # the pools' feature columns, as the recorded recommender had them


def without(X: np.ndarray, hit: int, left_out: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """A pool's rows (``X``, the clicked row ``hit``) as a recommender without the ``left_out`` sources had seen
    them: their score, rank and proposed columns at "not proposed" (0), the rows only they proposed dropped.
    Returns the rows and the clicked row's new index (-1: only the left-out sources proposed it)."""
    if not left_out:
        return X, hit
    n_s = len(SOURCES)
    idx = [SOURCES.index(s) for s in left_out]
    proposed = X[:, 2 * n_s : 3 * n_s] > 0
    proposed[:, idx] = False
    keep = proposed.any(axis=1)
    out = X[keep]
    for i in idx:
        out[:, [i, n_s + i, 2 * n_s + i]] = 0.0
    return out, int(np.cumsum(keep)[hit] - 1) if keep[hit] else -1


def proposing(pools: list[tuple]) -> list[str]:
    """The sources that proposed a row in at least one training pool, in :data:`SOURCES` order."""
    n_s = len(SOURCES)
    seen = np.zeros(n_s, dtype=bool)
    for pool in pools:
        if not _is_marker(pool) and pool[0] is not None:
            seen |= (pool[0][:, 2 * n_s : 3 * n_s] > 0).any(axis=0)
    return [s for s, on in zip(SOURCES, seen) if on]


def select(full: np.ndarray, variants: dict[str, np.ndarray], window: int = 1365, z: float = 2.0) -> np.ndarray:
    """Per pool kept whole, the NDCG@10 of the ranker that a selector would have served there: the variant whose
    mean paired gain over the full ranker across the previous ``window`` pools is the largest and above 0 by
    more than ``z`` standard errors, else the full ranker (4,096 labelled pools, a third of them kept whole:
    the source gate's window)."""
    names = list(variants)
    D = np.stack([variants[v] - full for v in names]) if names else np.zeros((0, full.size))
    out = full.copy()
    c1 = np.concatenate([np.zeros((len(names), 1)), np.cumsum(D, axis=1)], axis=1)
    c2 = np.concatenate([np.zeros((len(names), 1)), np.cumsum(D * D, axis=1)], axis=1)
    for t in range(2, full.size):
        a = max(0, t - window)
        n = t - a
        mean = (c1[:, t] - c1[:, a]) / n
        se = np.sqrt(np.maximum((c2[:, t] - c2[:, a]) / n - mean * mean, 0.0) / (n - 1))
        ok = mean - z * se > 0
        if ok.any():
            best = int(np.argmax(np.where(ok, mean, -np.inf)))
            out[t] = variants[names[best]][t]
    return out


def replay(pools: list[tuple], ranker: str, *, negatives: int = 8, seed: int = 0,
           hidden: int | None = None, left_out: tuple[str, ...] = ()) -> dict[str, object]:
    """Prequential NDCG@10 over the pools kept whole (all, and the second half's), for one ranker; ``per_pool``:
    each whole pool's NDCG@10 (0 where its click is not in the pool), for paired comparisons."""
    pools = [p for p in pools if not _is_marker(p)]
    half = len(pools) // 2
    whole = [n for n, p in enumerate(pools) if p[1] is not None]
    started = time.perf_counter()
    if left_out and ranker != "blender":
        raise SystemExit("--ablate replays the blender only")
    if ranker == "gbdt":
        from sklearn.ensemble import HistGradientBoostingClassifier

        rows = [p[0] for p in pools[:half] if p[0] is not None]
        X = np.concatenate(rows)
        y = np.concatenate([np.r_[1.0, np.zeros(r.shape[0] - 1)] for r in rows])
        model = HistGradientBoostingClassifier(max_iter=200, max_depth=6, random_state=seed).fit(X, y)
        late = [_ndcg(model.decision_function(pools[n][1]), pools[n][2]) for n in whole if n >= half]
        return {"ndcg_second_half": float(np.mean(late)), "seconds": time.perf_counter() - started}
    if ranker != "blender":
        raise SystemExit(f"unknown ranker {ranker!r} (blender, gbdt)")
    width = {} if hidden is None else {"hidden": hidden}  # None: the product's width
    model = FeedbackBlender(sources=SOURCES, seed=seed, **width)
    scores: dict[int, float] = {}
    for n, (train, kept, hit) in enumerate(pools):
        if train is None:
            continue
        if kept is not None:
            rows, at = without(kept.astype(np.float64), hit, left_out)
            scores[n] = _ndcg(model.logits(rows), at) if at >= 0 else 0.0
        X, at = without(train[: 1 + negatives].astype(np.float64), 0, left_out)
        if at == 0:  # the click (row 0) is in the pool
            model.learn_matrix(X, np.arange(X.shape[0]) == 0)
    every = [scores.get(n, 0.0) for n in whole]
    late = [scores.get(n, 0.0) for n in whole if n >= half]
    return {"ndcg": float(np.mean(every)), "ndcg_second_half": float(np.mean(late)),
            "seconds": time.perf_counter() - started, "per_pool": np.array(every)}


def _paired(d: np.ndarray) -> str:
    return f"{d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run an offline evaluation and keep its candidate pools")
    r.add_argument("--pools", type=Path, required=True)
    p_replay = sub.add_parser("replay", help="replay recorded pools through rankers")
    p_replay.add_argument("pools", type=Path)
    p_replay.add_argument("--system", default="tailcast[s=0.00]", help="whose pools to replay")
    p_replay.add_argument("--rankers", default="blender,gbdt")
    p_replay.add_argument("--seeds", default="0")
    p_replay.add_argument("--hidden", default="",
                          help="blender: hidden widths to replay (comma list; default the product's)")
    p_replay.add_argument("--ablate", action="store_true",
                          help="blender: also replay it without each proposing source in turn (see the module doc)")
    args, rest = p.parse_known_args(argv)
    if args.command == "record":
        record(rest, args.pools)
        return 0
    with args.pools.open("rb") as f:
        pools = pickle.load(f)[args.system]
    widths = [int(h) for h in args.hidden.split(",")] if args.hidden else [None]
    print("| ranker | hidden | seed | without | NDCG@10 (pools kept whole) | paired difference ± s.e. | second half "
          "| seconds |\n|---|---:|---:|---|---:|---:|---:|---:|")
    variants = [()] + ([(s,) for s in proposing(pools)] if args.ablate else [])
    for ranker in args.rankers.split(","):
        for hidden in widths if ranker == "blender" else [None]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                base, ablated = None, {}
                for left_out in variants if ranker == "blender" else [()]:
                    m = replay(pools, ranker, seed=seed, hidden=hidden, left_out=left_out)
                    paired = ""
                    if left_out and base is not None:
                        ablated[",".join(left_out)] = m["per_pool"]
                        paired = _paired(m["per_pool"] - base)
                    elif "per_pool" in m:
                        base = m["per_pool"]
                    print(f"| {ranker} | {'' if hidden is None else hidden} | {seed} | {','.join(left_out)} "
                          f"| {m.get('ndcg', float('nan')):.4f} | {paired} | {m['ndcg_second_half']:.4f} "
                          f"| {m['seconds']:.0f} |", flush=True)
                if ablated:
                    chosen, h = select(base, ablated), base.size // 2
                    print(f"| {ranker} | {'' if hidden is None else hidden} | {seed} | select | {chosen.mean():.4f} "
                          f"| {_paired(chosen - base)} (second half {_paired(chosen[h:] - base[h:])}) | | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
