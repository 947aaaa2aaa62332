"""Leave-one-out quality of Mult-VAE (``models/vae.py``) vs MostPop and item-CF on a real dataset.

    python benchmarks/quality_vae.py --dataset $DATA/ml-latest-small [--max-seconds 240] [--out FILE.json]

Same protocol as ``benchmarks/quality_loo.py`` (``models/loo.py``): per-user time split (last event = test,
second-to-last = validation), full-catalogue ranking, history items excluded, random tie-break; tail = bottom
80% of items by train popularity; short users = <= 5 train events. Mult-VAE is trained on the users' train
item sets, selected on the validation item (best epoch kept, early stopping), and scored once on the test
item with the history train + validation item as input (fold-in: no retraining at test time).
Prints a markdown table and writes JSON ``{"systems": {name: {metric: value}}, ...}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import show_report  # noqa: E402
from benchmarks.quality_loo import evaluate_baselines, load_split, markdown, start  # noqa: E402
from models.loo import evaluate_split  # noqa: E402
from models.vae import MultVAEConfig, VaeEpochLog, fit_vae, save_vae, score_users  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--hidden", default="600", help="comma list of encoder hidden sizes (decoder mirrors them)")
    p.add_argument("--latent", type=int, default=200)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--beta-max", type=float, default=0.2)
    p.add_argument("--anneal-steps", type=int, default=None,
                   help="steps for beta to reach --beta-max; default: 20 epochs' worth of steps")
    p.add_argument("--batch-size", type=int, default=None,
                   help="users per step; default 500 (the paper's) when there are >= 5000 users, else 64")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=240.0, help="training budget (wall clock)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 by default (shared 2-core machine, see benchmarks/quality_loo.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", type=Path, default=None, help="write the selected Mult-VAE here (models.vae.save_vae)")
    args = p.parse_args(argv)
    log = start(args.threads, "quality_vae")

    t0 = time.perf_counter()
    events, _, name, split, index, train_seqs, valid = load_split(args.dataset)
    n_items = len(index)
    lengths = np.array([len(s) for s in split.train.values()])
    log.info("%s: %d events, %d users (%d evaluated), %d items, median train length %.0f (load %.1fs)", name,
             len(events), len(split.train), len(split.test), n_items, np.median(lengths), time.perf_counter() - t0)

    results = evaluate_baselines(split, index, train_seqs, n_items, log)

    n_train_users = sum(1 for s in train_seqs if s)
    cfg = MultVAEConfig.for_users(
        n_train_users, batch_size=args.batch_size, total_anneal_steps=args.anneal_steps,
        hidden=tuple(int(h) for h in args.hidden.split(",") if h), latent=args.latent, dropout=args.dropout,
        beta_max=args.beta_max, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, eval_every=args.eval_every)

    def progress(e: VaeEpochLog) -> None:
        if e.valid_ndcg is not None:
            log.info("  [Mult-VAE] epoch %d beta %.3f loss %.2f (nll %.2f kl %.2f) valid ndcg %.4f hr %.4f%s %.0fs",
                     e.epoch, e.beta, e.train_loss, e.nll, e.kl, e.valid_ndcg, e.valid_hr,
                     " *" if e.improved else "", e.seconds)

    t = time.perf_counter()
    model = fit_vae(train_seqs, n_items, cfg, valid=valid, max_seconds=args.max_seconds, seed=args.seed,
                    callbacks=[progress])
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    results["Mult-VAE"] = evaluate_split(lambda h: score_users(model, h), split, index, stage="test")
    results["Mult-VAE"].update(valid_ndcg=model.best_valid_ndcg, best_epoch=model.best_epoch,
                               epochs_run=len(model.history), seconds=seconds,
                               test_scoring_seconds=time.perf_counter() - t)
    log.info("Mult-VAE: %s", {k: round(v, 4) for k, v in results["Mult-VAE"].items()})
    if args.save is not None:
        save_vae(model, args.save, extra={"metrics": {"valid_ndcg": float(model.best_valid_ndcg)}})
        log.info("saved Mult-VAE to %s", args.save)

    report = {
        "dataset": name, "path": str(args.dataset), "events": len(events), "users": len(split.train),
        "evaluated_users": len(split.test), "items": n_items, "k": 10,
        "model": {**cfg.to_dict(), "max_seconds": args.max_seconds, "seed": args.seed},
        "history": [asdict(h) for h in model.history],
        "systems": results, "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
    }
    return show_report(report, markdown(report), args.out)


if __name__ == "__main__":
    main()
