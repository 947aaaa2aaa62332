"""Batch trainer for the sequence encoder (minGPT style): knows nothing of Kafka or files.

Training examples are SASRec-style windows over each user's item-index sequence: a window of up to
``max_len + 1`` items gives input = window[:-1], targets = window[1:], left-padded. Long sequences are cut
into consecutive windows (stride ``max_len``), so every transition of the training data is a target
exactly once per epoch. Model selection and early stopping use the VALIDATION histories/targets only
(NDCG@k with the full-catalogue ranking and exclusion rule of ``models.loo``); the best state is loaded
back into the model at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from models.device import choose_device
from models.loo import evaluate_ranking, metrics_from_ranks, train_counts
from models.sequence import SeqEncoder, pad_batch

__all__ = ["TrainConfig", "EpochLog", "TrainResult", "make_windows", "make_weight_windows", "evaluate_model", "train",
           "BestEpoch", "cpu_state"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW decay on 2-D weight matrices (not embeddings, biases, norms)
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    seed: int = 0
    patience: int = 5  # stop after this many evaluations without a better validation NDCG
    eval_every: int = 1  # epochs between validation runs
    eval_batch_size: int = 256
    k: int = 10
    device: str = "auto"
    precision: str = "fp32"  # "bf16": autocast the forward pass to bfloat16 (AMX/AVX512-BF16 CPUs, GPUs)
    max_seconds: float | None = None  # wall-clock budget; stops after the epoch that crosses it

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.eval_every < 1:
            raise ValueError("TrainConfig: epochs, batch_size, patience and eval_every must be >= 1")
        if not self.lr > 0:
            raise ValueError("TrainConfig: lr must be > 0")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"TrainConfig: precision must be 'fp32' or 'bf16', got {self.precision!r}")


@dataclass(frozen=True)
class EpochLog:
    epoch: int
    step: int
    train_loss: float
    seconds: float  # since training started
    valid_hr: float | None = None
    valid_ndcg: float | None = None
    improved: bool = False


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # CPU copy of the best model's state dict
    best_valid_ndcg: float | None  # None when no validation data was given (then: the last state)
    best_epoch: int
    steps: int
    history: list[EpochLog] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"best_valid_ndcg": self.best_valid_ndcg, "best_epoch": self.best_epoch, "steps": self.steps,
                "history": [asdict(h) for h in self.history]}


Callback = Callable[[EpochLog], None]


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state dict, which later training steps leave unchanged."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class BestEpoch:
    """Selection on validation (here and in ``models.vae.fit_vae``): the best NDCG@k so far, its epoch and
    weights, and how many evaluations have not beaten it (early stopping's count)."""

    ndcg: float | None = None
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None
    evals_since: int = 0
    start: float = field(default_factory=time.perf_counter)  # training's start, for the time budget
    history: list = field(default_factory=list)  # one log per epoch

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def update(self, model: torch.nn.Module, epoch: int, ndcg: float) -> bool:
        """Record one validation run; True, and the weights kept, when it beats every earlier one."""
        improved = self.ndcg is None or ndcg > self.ndcg
        if improved:
            self.ndcg, self.epoch, self.evals_since, self.state = ndcg, epoch, 0, cpu_state(model)
        else:
            self.evals_since += 1
        return improved

    def end_epoch(self, model: torch.nn.Module, log, config, max_seconds: float | None,
                  evaluate: Callable[[], dict[str, float]] | None, callbacks: Sequence) -> bool:
        """After epoch ``log.epoch``: validate when due (every ``config.eval_every`` epochs, the last one, or
        past ``max_seconds`` since ``start``; ``evaluate`` None: no validation data), append the log with
        the validation figures to ``history``, call the callbacks; True when training should stop
        (``config.patience`` evaluations without a better NDCG, or out of time)."""
        out_of_time = max_seconds is not None and log.seconds >= max_seconds
        if evaluate is not None and (log.epoch % config.eval_every == 0 or log.epoch == config.epochs or out_of_time):
            m = evaluate()
            improved = self.update(model, log.epoch, m["ndcg"])
            log = replace(log, seconds=self.seconds(), valid_hr=m["hr"], valid_ndcg=m["ndcg"],
                          improved=improved)
        self.history.append(log)
        for cb in callbacks:
            cb(log)
        return self.evals_since >= config.patience or out_of_time


def _window_rows(seqs: Sequence[Sequence], max_len: int, pad) -> list[list]:
    L = max_len + 1
    rows = []
    for seq in seqs:
        end = len(seq)
        while end >= 2:
            w = list(seq[max(0, end - L) : end])
            rows.append([pad] * (L - len(w)) + w)
            end -= max_len
    return rows


def make_windows(seqs: Sequence[Sequence[int]], max_len: int) -> torch.Tensor:
    """(W, max_len + 1) left-padded windows; consecutive windows of a sequence share one item.

    >>> make_windows([[1, 2, 3, 4, 5], [6], [7, 8]], max_len=2).tolist()
    [[3, 4, 5], [1, 2, 3], [0, 7, 8]]
    """
    return torch.tensor(_window_rows(seqs, max_len, 0), dtype=torch.long).reshape(-1, max_len + 1)


def make_weight_windows(weights: Sequence[Sequence[float]], max_len: int) -> torch.Tensor:
    """(W, max_len + 1) float32 windows of per-item weights, cut exactly like ``make_windows`` cuts the
    items they are parallel to (padding: 0.0), so row w, column j weighs the item at row w, column j.

    >>> make_weight_windows([[0.5, 0.5, 1.0, 1.0, 1.0], [1.0], [0.5, 1.0]], max_len=2).tolist()
    [[1.0, 1.0, 1.0], [0.5, 0.5, 1.0], [0.0, 0.5, 1.0]]
    """
    return torch.tensor(_window_rows(weights, max_len, 0.0), dtype=torch.float32).reshape(-1, max_len + 1)


@torch.inference_mode()
def evaluate_model(model: SeqEncoder, histories: Sequence[Sequence[int]], targets: Sequence[int], *, k: int = 10,
                   batch_size: int = 256) -> dict[str, float]:
    """HR@k / NDCG@k of ``model`` on (history, target) pairs, full-catalogue ranking (``models.loo``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device

    def score(h: list[list[int]]) -> np.ndarray:
        return model.score(pad_batch(h, model.config.max_len, device=device)).float().cpu().numpy()

    try:
        ranks = evaluate_ranking(score, histories, targets, batch_size=batch_size)
    finally:
        model.train(was_training)
    return metrics_from_ranks(ranks, k=k)


def _length_bucketed_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                             *, chunk_batches: int = 50) -> list[torch.Tensor]:
    """Shuffled batches of similar-length windows: shuffle, sort each chunk of ``chunk_batches`` batches by
    length, cut into batches, shuffle the batches. Less padding to compute on when lengths vary a lot."""
    order = rng.permutation(len(lengths))
    batches = []
    chunk = batch_size * chunk_batches
    for c in range(0, len(order), chunk):
        idx = order[c : c + chunk]
        idx = idx[np.argsort(lengths[idx], kind="stable")]
        batches += [torch.from_numpy(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _optimizer(model: SeqEncoder, config: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.dim() >= 2 and "emb" not in name and not name.startswith("transformer.wpe")
        (decay if is_matrix else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98))


def train(
    model: SeqEncoder,
    train_seqs: Sequence[Sequence[int]],
    valid: tuple[Sequence[Sequence[int]], Sequence[int]] | None,
    *,
    config: TrainConfig = TrainConfig(),
    callbacks: Sequence[Callback] = (),
    sample_weights: Sequence[Sequence[float]] | None = None,
) -> TrainResult:
    """Train ``model`` in place on item-index sequences; select the epoch with the best validation NDCG@k.

    ``valid`` = (histories, targets): each history is the user's item indices before the target.
    ``sample_weights``: optional per-item weights parallel to ``train_seqs``; the loss at a position is
    weighted by its TARGET item's weight (``models.augment``), a weighted mean per batch; ``None``: the plain
    mean. Returns the best state (also loaded into ``model``) and the per-epoch history."""
    device = choose_device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device)
    n_items = model.config.n_items
    bad = [i for s in train_seqs for i in s if not 1 <= i <= n_items]
    if bad:
        raise ValueError(f"training sequences hold item indices outside 1..{n_items}, e.g. {bad[:5]}")
    model.set_negative_counts(torch.from_numpy(train_counts(train_seqs, n_items)).float())
    windows = make_windows(train_seqs, model.config.max_len)
    weight_windows = None
    if sample_weights is not None:
        if len(sample_weights) != len(train_seqs) or any(len(w) != len(s) for w, s in zip(sample_weights, train_seqs)):
            raise ValueError("sample_weights must be parallel to train_seqs: one weight per item of every sequence")
        if any(not (math.isfinite(x) and x > 0) for ws in sample_weights for x in ws):
            raise ValueError("sample_weights must be finite and > 0 (drop an item instead of weighting it 0)")
        weight_windows = make_weight_windows(sample_weights, model.config.max_len)  # (W, L), rows as windows
    if len(windows) == 0:
        raise ValueError("no training examples: every sequence has fewer than 2 items")
    L = windows.shape[1]
    lengths = (windows != 0).sum(1).numpy()
    opt = _optimizer(model, config)
    evaluate = None if valid is None else (
        lambda: evaluate_model(model, valid[0], valid[1], k=config.k, batch_size=config.eval_batch_size))
    best, step = BestEpoch(), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, n_batches = 0.0, 0
        for idx in _length_bucketed_batches(lengths, config.batch_size, rng):
            w = windows[idx]
            first = L - int(lengths[idx].max())
            w = w[:, first:].to(device)  # drop all-padding columns
            seqs, targets = w[:, :-1], w[:, 1:] * (w[:, :-1] != 0)  # no target without an input item
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                if weight_windows is None:
                    _, loss = model(seqs, targets)
                else:  # the weight of each position's target item
                    _, loss = model(seqs, targets, weight_windows[idx][:, first + 1 :].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            total += float(loss.detach())
            n_batches += 1
            step += 1
        train_loss = total / max(n_batches, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}; lower lr")
        log = EpochLog(epoch=epoch, step=step, train_loss=train_loss, seconds=best.seconds())
        if best.end_epoch(model, log, config, config.max_seconds, evaluate, callbacks):
            break
    if best.state is None:  # no validation data: keep the last state
        best.state, best.epoch = cpu_state(model), best.history[-1].epoch
    model.load_state_dict(best.state)
    model.eval()
    return TrainResult(best_state=best.state, best_valid_ndcg=best.ndcg, best_epoch=best.epoch, steps=step,
                       history=best.history)
