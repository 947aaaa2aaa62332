"""Scorer throughput (users scored/s) vs the machine's matmul FLOP/s, for fp32 / int8 / bf16.

    python benchmarks/scorer_throughput.py [--checkpoint FILE.pt] [--dataset DIR] [--out FILE.json]

For batch sizes 1, 8, 32, 128, 512 it times ``BatchScorer.topk(histories, k=10)`` end to end (id lookup,
padding, one encoder forward, ONE product against all item vectors, exclusion, ``torch.topk``) on
full-length histories (max_len items each, the worst case), and prints

    ratio = achieved users/s / (measured fp32 matmul FLOP/s / model FLOPs per user)

Model FLOPs per user (forward, multiply-add = 2 FLOPs), T = max_len, D = d_model, L = layers, N = items:
    L * T * (24 D^2 + 4 T D)    QKV (6D^2) + attention output (2D^2) + MLP 4D (16D^2) per position;
                                QK^T and AV (2 T D each) per position, full T x T as computed
  + 2 N D                       the final product against all item vectors
(input item vectors, text projection included, are looked up in the cached item matrix: no FLOPs)
The machine figure is the best of several timed 2048^3 fp32 matmuls with the same thread count, taken
before and after the scorer timings; users/s is the best of repeated calls (the median is printed too).

With ``--dataset`` it also reports leave-one-out test NDCG@10 for each precision (quality loss vs fp32),
for ``--checkpoint`` (e.g. published by ``quality_loo.py --registry``, same dataset) or, without one, for
a model it trains first for ``--train-seconds`` (ids only, sampled softmax; timing uses that model too).
Without either it times a randomly initialised model of ``--items`` items (weights do not change speed). CUDA is added when
available (fp32 and bf16; int8 dynamic quantisation is CPU-only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_events, show_report  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.loo import evaluate_split, item_index, leave_one_out  # noqa: E402
from models.scoring import BatchScorer  # noqa: E402
from models.sequence import SeqEncoder, SeqEncoderConfig  # noqa: E402
from models.train import TrainConfig, train  # noqa: E402
from models.vocab import ItemVocab  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BATCHES = (1, 8, 32, 128, 512)


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_user(cfg: SeqEncoderConfig, T: int | None = None) -> dict[str, float]:
    T = T or cfg.max_len
    D, L, N = cfg.d_model, cfg.n_layers, cfg.n_items
    encoder = L * T * (24 * D * D + 4 * T * D)
    items = 2 * N * D
    return {"encoder": float(encoder), "item_product": float(items), "total": float(encoder + items)}


def time_topk(scorer: BatchScorer, histories: list[list[str]], *, budget_s: float) -> tuple[float, float]:
    """(best, median) seconds per ``topk`` call over a time budget, after 2 warm-up calls. The ratio uses
    the best, like the matmul figure: on a shared machine the best is the capability, the median the noise."""
    for _ in range(2):
        scorer.topk(histories, k=10)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 3:
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        scorer.topk(histories, k=10)
        if scorer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def quick_train(path: str, *, seconds: float, max_len: int) -> tuple[SeqEncoder, ItemVocab]:
    """An ids-only encoder trained on the LOO train part for ``seconds`` (selected on validation)."""
    split = leave_one_out(load_events(path)[0])
    index = item_index(split)
    vocab = ItemVocab.from_ids([str(i) for i in sorted(index, key=index.__getitem__)])
    torch.manual_seed(0)
    model = SeqEncoder(SeqEncoderConfig(n_items=len(vocab), max_len=max_len, text_dim=0, loss="sampled",
                                        n_negatives=1024, dropout=0.3))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # training a tiny model: one thread is faster on the shared machine
    try:
        res = train(model, split.train_sequences(index), split.histories("valid", index),
                    config=TrainConfig(epochs=1000, batch_size=64, lr=1e-3, eval_every=2, max_seconds=seconds))
    finally:
        torch.set_num_threads(threads)
    print(f"trained {len(res.history)} epochs in {res.history[-1].seconds:.0f}s, valid NDCG@10 {res.best_valid_ndcg:.4f}",
          flush=True)
    return model.cpu().eval(), vocab


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None)
    p.add_argument("--dataset", default=None, help="with --checkpoint: LOO NDCG@10 per precision")
    p.add_argument("--items", type=int, default=10_000, help="catalogue size without --checkpoint")
    p.add_argument("--max-len", type=int, default=50, help="without --checkpoint")
    p.add_argument("--text-dim", type=int, default=384, help="without --checkpoint")
    p.add_argument("--train-seconds", type=float, default=120.0, help="--dataset without --checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budget", type=float, default=1.5, help="seconds of timing per (device, mode, batch)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.checkpoint:
        ck = load_checkpoint(args.checkpoint)
        make = lambda device, mode: BatchScorer(ck, device=device, quantize=mode)  # noqa: E731
        cfg, vocab = ck.config, ck.vocab()
    elif args.dataset:
        model, vocab = quick_train(args.dataset, seconds=args.train_seconds, max_len=args.max_len)
        cfg = model.config
        make = lambda device, mode: BatchScorer(model=model, vocab=vocab, device=device, quantize=mode)  # noqa: E731
    else:
        torch.manual_seed(0)
        cfg = SeqEncoderConfig(n_items=args.items, max_len=args.max_len, text_dim=args.text_dim)
        model = SeqEncoder(cfg, text_vectors=torch.nn.functional.normalize(torch.randn(cfg.n_items + 1, cfg.text_dim), dim=1)
                           if cfg.text_dim else None)
        vocab = ItemVocab(f"item{i}" for i in range(cfg.n_items))
        make = lambda device, mode: BatchScorer(model=model, vocab=vocab, device=device, quantize=mode)  # noqa: E731

    cpu = torch.device("cpu")
    machine = {"cpu_matmul_fp32_flops": matmul_flops(cpu), "cpu_matmul_bf16_flops": matmul_flops(cpu, torch.bfloat16),
               "threads": torch.get_num_threads()}
    targets = [("cpu", m) for m in ("none", "int8", "bf16")]
    if torch.cuda.is_available():
        machine["cuda_matmul_fp32_flops"] = matmul_flops(torch.device("cuda"), n=8192)
        machine["cuda_device"] = torch.cuda.get_device_name(0)
        targets += [("cuda", "none"), ("cuda", "bf16")]
    flops = flops_per_user(cfg)
    rng = np.random.default_rng(0)
    ids = vocab.ids
    histories = [[ids[i] for i in rng.integers(0, len(ids), size=cfg.max_len)] for _ in range(max(BATCHES))]

    rows = []
    for device, mode in targets:
        scorer = make(device, mode)
        bound = machine[f"{device}_matmul_fp32_flops"] / flops["total"]  # users/s if every FLOP ran at matmul speed
        for B in BATCHES:
            sec, med = time_topk(scorer, histories[:B], budget_s=args.budget)
            ups = B / sec
            rows.append({"device": device, "mode": mode, "batch": B, "ms_per_batch": sec * 1e3,
                         "median_ms_per_batch": med * 1e3, "users_per_s": ups, "median_users_per_s": B / med,
                         "flop_bound_users_per_s": bound, "ratio": ups / bound})
            print(f"{device:4s} {mode:4s} B={B:4d}  {sec * 1e3:8.2f} ms (median {med * 1e3:8.2f})  {ups:9.0f} users/s  "
                  f"ratio to FLOP bound {ups / bound:.2f}", flush=True)

    # the bound uses the best matmul rate seen before or after the timings (the conservative choice on a
    # shared machine: a busy moment at the start must not inflate the ratios)
    again = matmul_flops(cpu)
    if again > machine["cpu_matmul_fp32_flops"]:
        machine["cpu_matmul_fp32_flops"] = again
        for r in rows:
            if r["device"] == "cpu":
                r["flop_bound_users_per_s"] = again / flops["total"]
                r["ratio"] = r["users_per_s"] / r["flop_bound_users_per_s"]

    quality = {}
    if args.dataset:
        split = leave_one_out(load_events(args.dataset)[0])
        index = item_index(split)
        loo_ids = sorted(index, key=index.__getitem__)
        for device, mode in targets:
            scorer = make(device, mode)
            # LOO index -> scorer index (0 = unknown to the checkpoint -> -inf, like the padding column)
            loo_to_scorer = np.array([0] + [scorer.vocab.get(str(i)) or 0 for i in loo_ids])

            def score(histories: list[list[int]], scorer=scorer, cols=loo_to_scorer) -> np.ndarray:
                seqs = scorer.encode_histories([[str(loo_ids[i - 1]) for i in h] for h in histories])
                return scorer.score_encoded(seqs).cpu().numpy()[:, cols]

            m = evaluate_split(score, split, index, stage="test")
            quality[f"{device}/{mode}"] = {"ndcg": m["ndcg"], "hr": m["hr"], "tail_hr": m["tail_hr"]}
            print(f"quality {device}/{mode}: NDCG@10 {m['ndcg']:.4f} HR@10 {m['hr']:.4f}", flush=True)

    report = {"machine": machine, "model": {**cfg.to_dict(), "flops_per_user": flops,
                                            "source": str(args.checkpoint or (f"trained on {args.dataset}" if args.dataset else "random init"))},
              "results": rows, "quality": quality}
    return show_report(report, markdown(report), args.out)


def markdown(report: dict) -> str:
    m, f = report["machine"], report["model"]["flops_per_user"]
    lines = [f"CPU fp32 matmul {m['cpu_matmul_fp32_flops'] / 1e9:.0f} GFLOP/s (bf16 {m['cpu_matmul_bf16_flops'] / 1e9:.0f}), "
             f"{m['threads']} threads; model {f['total'] / 1e6:.2f} MFLOP/user "
             f"(encoder {f['encoder'] / 1e6:.2f}, item product {f['item_product'] / 1e6:.2f})",
             "| device | mode | batch | ms/batch (best) | ms/batch (median) | users/s (best) | ratio to FLOP bound |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['device']} | {r['mode']} | {r['batch']} | {r['ms_per_batch']:.2f} | "
                     f"{r['median_ms_per_batch']:.2f} | {r['users_per_s']:.0f} | {r['ratio']:.2f} |")
    if report["quality"]:
        base = report["quality"].get("cpu/none", {}).get("ndcg")
        lines += ["", "| precision | NDCG@10 | HR@10 | NDCG vs fp32 |", "|---|---|---|---|"]
        for k, q in report["quality"].items():
            lines.append(f"| {k} | {q['ndcg']:.4f} | {q['hr']:.4f} | {q['ndcg'] / base:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
