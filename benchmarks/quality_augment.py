"""Does Mult-VAE augmentation of sparse users help the Transformer encoder? Leave-one-out, validation and test.

    python benchmarks/quality_augment.py --dataset $DATA/amazon-grocery \\
        [--variant ids|text] [--caps 3] [--weights 0.5] [--max-events 5] [--max-seconds 180] [--out FILE.json]

Same protocol as ``benchmarks/quality_loo.py`` (``models/loo.py``): per-user time split (last event = test,
second-to-last = validation), full-catalogue ranking, history items excluded, random tie-break; tail = bottom
80% of items by train popularity; short users = <= 5 train events.

1. Mult-VAE (``models/vae.py``, the defaults of ``benchmarks/quality_vae.py``) is trained on the train split
   and selected on the validation item.
2. The Transformer (the defaults of ``quality_loo.py``; ``--variant text`` adds the MiniLM text vectors as its
   "+ text" system does) is trained on the train split WITHOUT augmentation, then once per (cap, weight) of
   the grid WITH it (``models/augment.py``: users with 1..max_events train items get up to cap VAE-drawn
   items prepended, targets weighted ``weight``). Same seed, same wall-clock budget, same validation-selected
   early stopping for every run. Augmentation touches training data only: evaluation histories are real.
3. Every model is scored on VALIDATION (history = train) and on TEST (history = train + validation item).
   Besides the figures, the per-user difference to the run without augmentation is reported with its paired
   standard error (same users, same ranking rule), so a change can be told from noise.

Selection (validation only): the grid point with the best validation HR@10 of short users (ties: NDCG@10).
It is recommended ON only if, on validation, it beats the run without augmentation on short-user HR@10 and
does not lose overall NDCG@10 or tail HR@10. Test figures are reported, never used to choose.
Prints a markdown table and writes JSON (``--out``) with the command line, the settings and every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import show_report  # noqa: E402
from benchmarks.quality_loo import add_transformer_arguments, load_split, model_score_fn, start  # noqa: E402
from models.augment import AugmentConfig, augment_sequences  # noqa: E402
from models.loo import LooSplit, evaluate_ranking, evaluate_split, tail_items, train_counts  # noqa: E402
from models.sequence import SeqEncoder, SeqEncoderConfig  # noqa: E402
from models.train import EpochLog, TrainConfig, train  # noqa: E402
from models.vae import MultVAEConfig, VaeEpochLog, fit_vae, score_users  # noqa: E402

STAGES = ("valid", "test")
BASELINE = "no augmentation"


def evaluate(score_fn, split: LooSplit, index: dict, *, max_events: int) -> tuple[dict, dict]:
    """({stage: metrics}, {stage: per-user (hit, ndcg, is_tail, is_short, is_augmentable)}) for both stages.

    Metrics come from ``models.loo.evaluate_split`` (the figures every benchmark reports); the per-user
    arrays from ``evaluate_ranking`` with the same seed (the same ranks), for paired differences."""
    metrics, per_user = {}, {}
    tail = tail_items(train_counts(split.train_sequences(index), len(index)))
    n_train = np.array([len(split.train[u]) for u in split.users()])
    for stage in STAGES:
        m = evaluate_split(score_fn, split, index, stage=stage)
        if max_events != 5:  # also the bucket that augmentation touches
            m["augmentable_hr"] = evaluate_split(score_fn, split, index, stage=stage, short_max=max_events)["short_hr"]
        metrics[stage] = m
        histories, targets = split.histories(stage, index)
        ranks = evaluate_ranking(score_fn, histories, targets)
        hit = ranks < m["k"]
        per_user[stage] = {"hit": hit.astype(float), "ndcg": hit / np.log2(ranks + 2.0),
                           "tail": tail[np.asarray(targets)], "short": n_train <= 5,
                           "augmentable": (n_train >= 1) & (n_train <= max_events)}
    return metrics, per_user


def paired(a: dict, b: dict) -> dict:
    """Per-stage differences a - b (mean over users) with their paired standard errors."""
    out = {}
    for stage in STAGES:
        x, y = a[stage], b[stage]
        groups = {"hr": ("hit", None), "ndcg": ("ndcg", None), "tail_hr": ("hit", "tail"),
                  "short_hr": ("hit", "short"), "augmentable_hr": ("hit", "augmentable")}
        res = {}
        for name, (field, mask) in groups.items():
            sel = np.ones(len(x[field]), bool) if mask is None else x[mask]
            d = x[field][sel] - y[field][sel]
            res[name] = {"diff": float(d.mean()) if len(d) else float("nan"),
                         "se": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan"),
                         "users": int(len(d))}
        out[stage] = res
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--variant", default="ids", choices=["ids", "text"],
                   help="Transformer input: ids only, or ids + MiniLM text vectors (quality_loo.py's '+ text')")
    # ---- augmentation grid
    p.add_argument("--caps", default="3", help="comma list of caps (synthetic items per user)")
    p.add_argument("--weights", default="0.5", help="comma list of loss weights of synthetic targets")
    p.add_argument("--max-events", type=int, default=5, help="users with 1..max-events train items are augmented")
    p.add_argument("--temperature", type=float, default=1.0)
    # ---- Transformer (defaults of quality_loo.py)
    add_transformer_arguments(p)
    p.add_argument("--batch-size", type=int, default=None, help="windows per step; default 32 (long histories) / 128")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=180.0, help="training budget per Transformer run")
    # ---- Mult-VAE (defaults of quality_vae.py)
    p.add_argument("--vae-seconds", type=float, default=None, help="Mult-VAE training budget; default --max-seconds")
    p.add_argument("--vae-patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: shared 2-core machine, see quality_loo.py)")
    p.add_argument("--seed", type=int, default=0, help="Mult-VAE, augmentation draw and Transformer training seed")
    p.add_argument("--baseline-seeds", default="",
                   help="comma list of further training seeds for the run without augmentation: the spread between "
                        "seeds is the run-to-run noise an augmentation effect has to exceed (not used to select)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    command = "python benchmarks/quality_augment.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    caps = [int(c) for c in args.caps.split(",") if c]
    weights = [float(w) for w in args.weights.split(",") if w]
    # validates every point before any training; with cap <= 1 no synthetic item is ever a target (the first
    # item of a sequence is only context), so the weight is unused: one point per such cap
    grid = [AugmentConfig(max_events=args.max_events, cap=c, weight=w, temperature=args.temperature, seed=args.seed)
            for c in caps for w in (weights if c > 1 else weights[:1])]
    baseline_seeds = [int(x) for x in args.baseline_seeds.split(",") if x and int(x) != args.seed]
    log = start(args.threads, "quality_augment")

    t0 = time.perf_counter()
    events, item_text, name, split, index, train_seqs, valid = load_split(args.dataset)
    n_items = len(index)
    lengths = np.array([len(s) for s in train_seqs])
    n_eval_train = np.array([len(split.train[u]) for u in split.users()])
    log.info("%s: %d events, %d users (%d evaluated, %d with <= 5 train events, %d with 1..%d), %d items, "
             "median train length %.0f", name, len(events), len(split.train), len(split.test),
             int((n_eval_train <= 5).sum()), int(((n_eval_train >= 1) & (n_eval_train <= args.max_events)).sum()),
             args.max_events, n_items, np.median(lengths))
    long_histories = np.median(lengths) > 50
    max_len = args.max_len or (200 if long_histories else 50)
    dropout = args.dropout if args.dropout is not None else (0.2 if long_histories else 0.5)
    batch_size = args.batch_size or (32 if long_histories else 128)

    # ---- 1. Mult-VAE on the train split, validation-selected (quality_vae.py's defaults)
    n_train_users = int((lengths > 0).sum())
    vae_cfg = MultVAEConfig.for_users(n_train_users, patience=args.vae_patience)

    def vae_progress(e: VaeEpochLog) -> None:
        if e.valid_ndcg is not None:
            log.info("  [Mult-VAE] epoch %d valid ndcg %.4f hr %.4f%s %.0fs", e.epoch, e.valid_ndcg, e.valid_hr,
                     " *" if e.improved else "", e.seconds)

    t = time.perf_counter()
    vae = fit_vae(train_seqs, n_items, vae_cfg, valid=valid, seed=args.seed, callbacks=[vae_progress],
                  max_seconds=args.vae_seconds if args.vae_seconds is not None else args.max_seconds)
    vae_seconds = time.perf_counter() - t
    vae_metrics, _ = evaluate(lambda h: score_users(vae, h), split, index, max_events=args.max_events)
    log.info("Mult-VAE: valid %s test %s", _short(vae_metrics["valid"]), _short(vae_metrics["test"]))

    # ---- 2. the Transformer without and with augmentation
    text_matrix, text_info = None, {}
    if args.variant == "text":
        if not item_text:
            raise SystemExit("--variant text needs item text, and this dataset has none")
        from models.content import ItemTextCache, TextEncoder

        ids = sorted(index, key=index.__getitem__)
        cache = ItemTextCache(TextEncoder(device=args.device), batch_size=64)
        texts = {str(i): item_text[i] for i in ids if i in item_text}
        t = time.perf_counter()
        cache.update(texts)
        text_matrix = torch.from_numpy(cache.matrix([str(i) for i in ids]))
        text_info = {"items_encoded": len(texts), "seconds": time.perf_counter() - t}
        log.info("MiniLM: %d item texts in %.1fs", len(texts), text_info["seconds"])
    cfg = SeqEncoderConfig(n_items=n_items, max_len=max_len, d_model=args.d_model, n_layers=args.layers,
                           n_heads=args.heads, dropout=dropout, text_dim=384 if args.variant == "text" else 0,
                           id_dropout=args.id_dropout if args.variant == "text" else 0.0, loss=args.loss,
                           n_negatives=args.negatives)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=batch_size, lr=args.lr, patience=args.patience,
                       eval_every=args.eval_every, seed=args.seed, device=args.device, max_seconds=args.max_seconds,
                       precision=args.precision)

    runs: dict[str, dict] = {}
    per_user: dict[str, dict] = {}
    tail = tail_items(train_counts(train_seqs, n_items))  # (N+1,) the tail of models.loo
    real_tail_share = float(np.mean([tail[i] for s in train_seqs for i in s]))

    def run(label: str, seqs: list[list[int]], sample_weights: list[list[float]] | None, extra: dict,
            seed: int = args.seed) -> None:
        def progress(e: EpochLog) -> None:
            if e.valid_ndcg is not None:
                log.info("  [%s] epoch %d loss %.3f valid ndcg %.4f hr %.4f%s %.0fs", label, e.epoch, e.train_loss,
                         e.valid_ndcg, e.valid_hr, " *" if e.improved else "", e.seconds)

        torch.manual_seed(seed)
        model = SeqEncoder(cfg, text_vectors=text_matrix)
        t = time.perf_counter()
        res = train(model, seqs, valid, config=dataclasses.replace(tcfg, seed=seed), callbacks=[progress],
                    sample_weights=sample_weights)
        seconds = time.perf_counter() - t
        metrics, per_user[label] = evaluate(model_score_fn(model), split, index, max_events=args.max_events)
        last = res.history[-1]
        stopped = ("budget" if last.seconds >= args.max_seconds else
                   "epochs" if last.epoch == args.epochs else "patience")
        runs[label] = {**extra, **metrics, "train": {"best_valid_ndcg": res.best_valid_ndcg, "best_epoch": res.best_epoch,
                                                     "epochs_run": len(res.history), "steps": res.steps,
                                                     "seconds": seconds, "stopped_by": stopped}}
        if label != BASELINE:
            runs[label]["paired_vs_no_augmentation"] = paired(per_user[label], per_user[BASELINE])
        log.info("%s: valid %s test %s (%d epochs, %.0fs)", label, _short(metrics["valid"]), _short(metrics["test"]),
                 len(res.history), seconds)

    run(BASELINE, train_seqs, None, {"augment": None})
    for seed in baseline_seeds:
        run(f"{BASELINE}, seed {seed}", train_seqs, None, {"augment": None, "training_seed": seed}, seed=seed)
    for point in grid:
        t = time.perf_counter()
        seqs, sample_weights = augment_sequences(train_seqs, vae, point)
        extra = np.array([len(a) - len(b) for a, b in zip(seqs, train_seqs)])
        info = {"augment": {"cap": point.cap, "weight": point.weight, "max_events": point.max_events,
                            "temperature": point.temperature, "seed": point.seed},
                "augmented_users": int((extra > 0).sum()), "synthetic_items": int(extra.sum()),
                "train_targets": int(sum(max(len(s) - 1, 0) for s in seqs)), "augment_seconds": time.perf_counter() - t,
                "synthetic_tail_share": float(np.mean([tail[i] for s, n in zip(seqs, extra) for i in s[:n]] or [np.nan]))}
        label = f"cap {point.cap}, weight {point.weight:g}" if point.cap > 1 else f"cap {point.cap} (weight unused)"
        log.info("%s: %d users augmented, %d synthetic items, %.1f%% of them tail items (real events: %.1f%%) "
                 "(%.1fs)", label, info["augmented_users"], info["synthetic_items"], 100 * info["synthetic_tail_share"],
                 100 * real_tail_share, info["augment_seconds"])
        if info["augmented_users"] == 0:  # the training data would be the baseline's: nothing to measure
            runs[label] = {**info, "skipped": f"no user has 1..{point.max_events} training events"}
            continue
        run(label, seqs, sample_weights, info)

    # ---- 3. selection on validation only
    base_v = runs[BASELINE]["valid"]
    trained = [k for k, r in runs.items() if r.get("augment") and "skipped" not in r]
    key = "short_hr" if base_v["short_users"] else "augmentable_hr"
    selected = max(trained, key=lambda k: (_num(runs[k]["valid"].get(key)), runs[k]["valid"]["ndcg"]), default=None)
    if selected is None:
        recommendation = {"on": False, "why": "no user was augmented on this dataset: augmentation changes nothing"}
    else:
        sv = runs[selected]["valid"]
        checks = {f"valid {key} higher": _num(sv.get(key)) > _num(base_v.get(key)),
                  "valid ndcg not lower": sv["ndcg"] >= base_v["ndcg"],
                  "valid tail_hr not lower": sv["tail_hr"] >= base_v["tail_hr"]}
        recommendation = {"on": all(checks.values()), "selected": selected, "checks": checks}

    report = {
        "command": command, "dataset": name, "path": str(args.dataset), "events": len(events),
        "users": len(split.train), "evaluated_users": len(split.test), "items": n_items, "k": 10,
        "train_events_tail_share": real_tail_share,
        "evaluated_users_by_train_events": {"<=5": int((n_eval_train <= 5).sum()),
                                            f"1..{args.max_events}": int((n_eval_train <= args.max_events).sum())},
        "transformer": {**cfg.to_dict(), "variant": args.variant, "lr": args.lr, "batch_size": batch_size,
                        "precision": args.precision, "max_seconds": args.max_seconds, "patience": args.patience,
                        "eval_every": args.eval_every, "seed": args.seed},
        "mult_vae": {"config": vae_cfg.to_dict(), "best_epoch": vae.best_epoch, "epochs_run": len(vae.history),
                     "seconds": vae_seconds, **vae_metrics},
        "text_encoder": text_info, "runs": runs, "selected_by": f"validation {key}, then validation ndcg",
        "recommendation": recommendation, "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads(),
    }
    return show_report(report, markdown(report), args.out, default=_json_default)


def _num(x) -> float:
    return -1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _json_default(x):
    if isinstance(x, (np.bool_, np.integer, np.floating)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _short(m: dict) -> dict:
    return {k: round(m[k], 4) for k in ("hr", "ndcg", "tail_hr", "short_hr", "augmentable_hr") if k in m}


def _fmt(x) -> str:
    return "(none)" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def markdown(report: dict) -> str:
    runs = report["runs"]
    any_run = runs[BASELINE]
    aug_col = "augmentable_hr" in any_run["valid"]
    max_events = next((r["augment"]["max_events"] for r in runs.values() if r.get("augment")), 5)
    head = "| system | stage | HR@10 | NDCG@10 | tail HR@10 | HR@10 users ≤5 |"
    head += f" HR@10 users 1–{max_events} |" if aug_col else ""
    short_key = "short_hr" if any_run["valid"]["short_users"] else "augmentable_hr"
    short_name = "≤5" if short_key == "short_hr" else f"1–{max_events}"
    head += f" Δ NDCG ± SE | Δ HR users {short_name} ± SE | epochs | train s |"
    lines = [f"### {report['dataset']}: augmentation for sparse users, leave-one-out, {report['items']} items, "
             f"{report['evaluated_users']} users ({any_run['valid']['short_users']} with ≤5 train events), k=10, "
             f"Transformer {report['transformer']['variant']}",
             head, "|" + "---|" * (head.count("|") - 1)]
    v = report["mult_vae"]
    for stage in STAGES:
        m = v[stage]
        row = f"| Mult-VAE (the generator) | {stage} | {m['hr']:.4f} | {m['ndcg']:.4f} | {m['tail_hr']:.4f} | {_fmt(m['short_hr'])} |"
        row += f" {_fmt(m.get('augmentable_hr'))} |" if aug_col else ""
        lines.append(row + " | | | |")
    for label, r in runs.items():
        if "skipped" in r:
            lines.append(f"| {label} | — | skipped: {r['skipped']} |")
            continue
        for stage in STAGES:
            m = r[stage]
            row = f"| {label} | {stage} | {m['hr']:.4f} | {m['ndcg']:.4f} | {m['tail_hr']:.4f} | {_fmt(m['short_hr'])} |"
            row += f" {_fmt(m.get('augmentable_hr'))} |" if aug_col else ""
            pd = r.get("paired_vs_no_augmentation", {}).get(stage)
            if pd:
                row += (f" {pd['ndcg']['diff']:+.4f} ± {pd['ndcg']['se']:.4f} |"
                        f" {pd[short_key]['diff']:+.4f} ± {pd[short_key]['se']:.4f} |")
            else:
                row += " | |"
            lines.append(row + f" {r['train']['epochs_run']} | {r['train']['seconds']:.0f} |")
    rec = report["recommendation"]
    lines.append(f"Selected on {report['selected_by']}: {rec.get('selected', '—')}; recommended "
                 f"{'ON' if rec['on'] else 'OFF'} ({rec.get('checks', rec.get('why'))}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
