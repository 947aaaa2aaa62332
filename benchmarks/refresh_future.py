"""What one refresh serves: ``models.refresh.fit_refresh`` trained on a dataset's first events, scored on
the events that follow, as the scorer would use it until the next refresh.

    python benchmarks/refresh_future.py --dataset $DATA/ml-latest-small --train 50000 --serve 25000 \
        [--limit N] [--set loss=sampled --set dropout=0.3 ...] [--threads 2] [--out FILE.json]

Every served event of a user with an earlier event is one target: the history is all of the user's items
before it (the encoder reads its last ``max_len``, items outside its vocabulary dropped as the scorer drops
them), the ranking is over the model's vocabulary with the user's items excluded except the target (a repeat),
and a target outside the vocabulary is a miss. The Transformer alone (no Mult-VAE: ``vae=False``), with
``--set`` overriding any ``RefreshConfig`` field (``max_seconds`` 60 unless set). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.loo import metrics_from_ranks, ranks_from_scores  # noqa: E402
from models.refresh import RefreshConfig, fit_refresh  # noqa: E402
from models.scoring import BatchScorer  # noqa: E402
from streams.config import load_settings  # noqa: E402
from streams.datasets import load_dataset  # noqa: E402
from streams.evaluate import item_text_vectors  # noqa: E402


def _config(pairs: list[str]) -> RefreshConfig:
    """``FIELD=VALUE`` pairs read as the type of the field's default."""
    defaults = RefreshConfig()
    values: dict = {"max_seconds": 60.0, "vae": False, "device": "cpu"}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        default = getattr(defaults, key, None)
        if not isinstance(default, (bool, int, float, str)):
            raise SystemExit(f"--set {pair}: not a number, flag or string field of RefreshConfig")
        values[key] = raw.lower() in ("1", "true") if isinstance(default, bool) else type(default)(raw)
    return RefreshConfig(**values)


def served_ranks(scorer: BatchScorer, history: dict[str, list[str]], served, batch: int = 256) -> list[int]:
    """0-based rank of each served event's item (a miss: a rank past any cut-off); ``history`` is updated."""
    ranks: list[int] = []
    rng = np.random.default_rng(0)
    rows: list[tuple[list[str], str]] = []  # (every item of the user so far, the target)

    def flush() -> None:
        recent = [h[-scorer.max_len:] for h, _ in rows]  # what the worker's state holds, as the scorer reads it
        scores = scorer.score_encoded(scorer.encode_histories(recent)).float().numpy()
        targets = [scorer.vocab.encode([t]) for _, t in rows]
        known = [n for n, t in enumerate(targets) if t]
        if known:
            ranks.extend(ranks_from_scores(scores[known], [targets[n][0] for n in known],
                                           [scorer.vocab.encode(rows[n][0]) for n in known], rng=rng).tolist())
        ranks.extend([len(scorer.vocab) + 1] * (len(rows) - len(known)))
        rows.clear()

    for user, item in served:
        if history.get(user):
            rows.append((list(history[user]), item))
            if len(rows) == batch:
                flush()
        history.setdefault(user, []).append(item)
    if rows:
        flush()
    return ranks


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="a path, or 'synthetic'")
    p.add_argument("--limit", type=int, default=None, help="the first N events in time order")
    p.add_argument("--train", type=int, required=True, help="events the refresh is given")
    p.add_argument("--serve", type=int, required=True, help="events it serves after them")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a RefreshConfig field")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = _config(args.set)
    ds = load_dataset(args.dataset, limit=args.limit)
    vectors = item_text_vectors(load_settings({}), ds.item_text, print) if ds.item_text else None
    events = [(e.user, e.item, e.ts) for e in ds.events]
    t = time.perf_counter()
    res = fit_refresh(events[: args.train], text_vectors=dict(zip(*vectors)) if vectors else None, config=config)
    seconds = time.perf_counter() - t
    history: dict[str, list[str]] = {}
    for user, item, _ in events[: args.train]:
        history.setdefault(user, []).append(item)
    ranks = served_ranks(BatchScorer(model=res.model, vocab=res.vocab, device="cpu"), history,
                         [(u, i) for u, i, _ in events[args.train: args.train + args.serve]])
    m = metrics_from_ranks(np.asarray(ranks))
    report = {"dataset": ds.name, "train": args.train, "serve": args.serve, "set": args.set,
              "kept": res.variant, "valid_ndcg": {k: round(v, 4) for k, v in res.variants_valid_ndcg.items()},
              "epochs": len(res.train.history), "seconds": round(seconds), "threads": args.threads,
              "served_hr": round(m["hr"], 4), "served_ndcg": round(m["ndcg"], 4), "targets": m["users"]}
    print(json.dumps(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
