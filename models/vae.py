"""Mult-VAE: variational autoencoder for collaborative filtering (Liang et al., WWW 2018).

Shapes: B batch of users, N = n_items (item indices 1..N, 0 = padding, as in ``models.vocab``),
H = hidden sizes (default one layer of 600), Z = latent size (default 200), L = longest history in a batch.

A user is the SET of items in their history (order and repeats are ignored), as a multi-hot vector x.
    encoder:  x / ||x||_2 -> dropout (default 0.5, training only) -> [N -> 600] tanh -> [600 -> 2Z] = (mu, logvar)
    sample:   z = mu + eps * exp(logvar / 2) in training, z = mu at scoring time
    decoder:  [Z -> 600] tanh -> [600 -> N] = logits; pi = softmax(logits) over the FULL catalogue
    loss:     -sum_i x_i log pi_i  +  beta * KL(q(z | x) || N(0, I)), averaged over the batch
``beta`` rises linearly from 0 to ``beta_max`` over ``total_anneal_steps`` optimiser steps (KL annealing);
Adam. With ``valid`` data, ``fit_vae`` keeps the epoch with the best validation NDCG@k (``models.loo``),
which also selects the effective beta when annealing has not finished, as the paper does.

The first encoder layer is an ``EmbeddingBag`` over the history's items weighted ``1 / sqrt(|history|)``,
dropped out per entry: a dense ``Linear(N, 600)`` on the dropped-out vector without the (B, N) input.
Decoding is one dense (B, H) x (H, N) matmul. History items outside 1..N are ignored.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> m = MultVAE(20, MultVAEConfig(hidden=(16,), latent=4))
>>> m.score([[1, 2, 3], [5]]).shape                               # (B, N + 1); column 0 is -inf
torch.Size([2, 21])
>>> seqs = [[1, 2, 3], [2, 3, 4], [10, 11], [11, 12, 13]]
>>> model = fit_vae(seqs, 20, MultVAEConfig(hidden=(16,), latent=4, epochs=2, batch_size=2))
>>> scores = score_users(model, [[1, 2], []])
>>> scores.shape, bool(np.isneginf(scores[:, 0]).all())
((2, 21), True)
>>> again = MultVAE.from_state(model.state())
>>> bool(np.array_equal(score_users(again, [[1, 2], []]), scores))
True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.loo import evaluate_ranking, metrics_from_ranks
from models.sequence import config_from_dict
from models.train import BestEpoch, EpochLog, cpu_state
from online.snapshot import write_atomic

__all__ = ["MultVAEConfig", "MultVAE", "VaeEpochLog", "fit_vae", "score_users", "evaluate_vae", "save_vae",
           "VaeFormatError", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "tailcast-mult-vae"
FORMAT_VERSION = 1


class VaeFormatError(ValueError):
    """A stored Mult-VAE state is not one, or does not match the model it is loaded into."""


@dataclass(frozen=True)
class MultVAEConfig:
    hidden: tuple[int, ...] = (600,)  # encoder hidden sizes, N -> 600 -> 2Z; the decoder mirrors them
    latent: int = 200  # Z
    dropout: float = 0.5  # on the normalised input vector, training only
    beta_max: float = 0.2  # KL weight cap ("anneal_cap" in the paper's code)
    total_anneal_steps: int = 20_000  # optimiser steps over which beta rises 0 -> beta_max; 0 = beta_max at once
    epochs: int = 200
    batch_size: int = 500  # users per step
    lr: float = 1e-3
    weight_decay: float = 0.0  # Adam L2 on all parameters (the paper's Mult-VAE uses none)
    patience: int = 10  # stop after this many evaluations without a better validation NDCG
    eval_every: int = 1  # epochs between validation runs
    eval_batch_size: int = 256
    k: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        checks = [
            (all(h >= 1 for h in self.hidden), "hidden sizes must be >= 1"),
            (self.latent >= 1, "latent must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.beta_max >= 0.0, "beta_max must be >= 0"),
            (self.total_anneal_steps >= 0, "total_anneal_steps must be >= 0"),
            (min(self.epochs, self.batch_size, self.patience, self.eval_every, self.eval_batch_size, self.k) >= 1,
             "epochs, batch_size, patience, eval_every, eval_batch_size and k must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"MultVAEConfig: {msg}")

    def beta(self, step: int) -> float:
        """KL weight after ``step`` optimiser steps (linear warm-up to ``beta_max``).

        >>> c = MultVAEConfig(beta_max=0.2, total_anneal_steps=100)
        >>> c.beta(0), c.beta(50), c.beta(100), c.beta(10_000)
        (0.0, 0.1, 0.2, 0.2)
        """
        if self.total_anneal_steps == 0:
            return self.beta_max
        return min(self.beta_max, self.beta_max * step / self.total_anneal_steps)

    @classmethod
    def for_users(cls, n_users: int, **overrides: Any) -> "MultVAEConfig":
        """The defaults used for a catalogue with ``n_users`` training users: batches of 500 users (the
        paper's) from 5,000 users up, else 64, and beta annealed over 20 epochs' worth of steps.

        >>> c = MultVAEConfig.for_users(1000)
        >>> c.batch_size, c.total_anneal_steps
        (64, 320)
        """
        batch_size = int(overrides.pop("batch_size", None) or (500 if n_users >= 5000 else 64))
        anneal = overrides.pop("total_anneal_steps", None)
        if anneal is None:
            anneal = 20 * -(-max(n_users, 1) // batch_size)
        return cls(batch_size=batch_size, total_anneal_steps=int(anneal), **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MultVAEConfig":
        return config_from_dict(cls, d, VaeFormatError)


def _bag_inputs(histories: Sequence[Sequence[int]], n_items: int, device: torch.device | str = "cpu"
                ) -> tuple[Tensor, Tensor, Tensor]:
    """EmbeddingBag inputs for the L2-normalised multi-hot rows: (flat item indices, offsets (B,), weights).

    Each history becomes its set of items in 1..N (others dropped); weight 1/sqrt(set size). An empty
    history is an empty bag (the encoder then sees only its biases).

    >>> idx, off, w = _bag_inputs([[3, 1, 3, 99], [], [2]], n_items=5)
    >>> idx.tolist(), off.tolist(), [round(x, 4) for x in w.tolist()]
    ([1, 3, 2], [0, 2, 2], [0.7071, 0.7071, 1.0])
    """
    flat: list[int] = []
    offsets: list[int] = []
    weights: list[float] = []
    for h in histories:
        items = sorted({int(i) for i in h if 1 <= int(i) <= n_items})
        offsets.append(len(flat))
        flat += items
        if items:
            weights += [1.0 / math.sqrt(len(items))] * len(items)
    return (torch.tensor(flat, dtype=torch.long, device=device),
            torch.tensor(offsets, dtype=torch.long, device=device),
            torch.tensor(weights, dtype=torch.float32, device=device))


class MultVAE(nn.Module):
    """Mult-VAE over ``n_items`` items (indices 1..n_items); see the module docstring."""

    def __init__(self, n_items: int, config: MultVAEConfig = MultVAEConfig()) -> None:
        super().__init__()
        if n_items < 1:
            raise ValueError("MultVAE: n_items must be >= 1")
        self.n_items = int(n_items)
        self.config = config
        q_dims = [*config.hidden, 2 * config.latent]  # encoder outputs after the input layer
        p_dims = [config.latent, *reversed(config.hidden), n_items]  # decoder
        # input layer: row i = the weights of item i (row 0 = padding, never used)
        self.item_in = nn.EmbeddingBag(n_items + 1, q_dims[0], mode="sum", padding_idx=0)
        self.item_in_bias = nn.Parameter(torch.zeros(q_dims[0]))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(q_dims[:-1], q_dims[1:]))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(p_dims[:-1], p_dims[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, N(0, 0.001^2) biases, as in the paper's code."""
        with torch.no_grad():
            fan_in, fan_out = self.n_items, self.item_in.weight.shape[1]
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            self.item_in.weight.uniform_(-bound, bound)
            self.item_in.weight[0].zero_()
            self.item_in_bias.normal_(0.0, 0.001)
            for layer in [*self.encoder, *self.decoder]:
                nn.init.xavier_uniform_(layer.weight)
                nn.init.normal_(layer.bias, 0.0, 0.001)

    def encode(self, histories: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, Z). Input dropout applies in training mode only."""
        device = self.item_in_bias.device
        idx, offsets, w = _bag_inputs(histories, self.n_items, device)
        if self.training and self.config.dropout > 0:
            w = F.dropout(w, p=self.config.dropout, training=True)  # = dropout on the dense normalised x
        h = self.item_in(idx, offsets, per_sample_weights=w) + self.item_in_bias  # (B, H0)
        for layer in self.encoder:
            h = layer(torch.tanh(h))
        Z = self.config.latent
        return h[:, :Z], h[:, Z:]

    def decode(self, z: Tensor) -> Tensor:
        """(B, N) logits over items 1..N (column j is item j + 1)."""
        h = z
        for n, layer in enumerate(self.decoder):
            h = layer(h) if n == 0 else layer(torch.tanh(h))
        return h

    def forward(self, histories: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (B, N), mu (B, Z), logvar (B, Z)); z is sampled in training mode, z = mu in eval mode."""
        mu, logvar = self.encode(histories)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z), mu, logvar

    def loss(self, histories: Sequence[Sequence[int]], beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """(total, multinomial negative log-likelihood, KL), each a batch mean; total = nll + beta * KL."""
        logits, mu, logvar = self(histories)
        log_pi = F.log_softmax(logits, dim=-1)  # (B, N): full-catalogue softmax
        idx, offsets, _ = _bag_inputs(histories, self.n_items, logits.device)
        rows = torch.repeat_interleave(torch.arange(len(histories), device=logits.device),
                                       torch.diff(offsets, append=offsets.new_tensor([len(idx)])))
        nll = -log_pi[rows, idx - 1].sum() / len(histories)
        kl = (0.5 * (-logvar + logvar.exp() + mu.pow(2) - 1.0).sum(-1)).mean()
        return nll + beta * kl, nll, kl

    @torch.inference_mode()
    def score(self, histories: Sequence[Sequence[int]]) -> Tensor:
        """(B, N + 1) logits from the mean z (no sampling, no dropout whatever the mode); column 0 = -inf."""
        was_training = self.training
        self.eval()
        try:
            logits = self.decode(self.encode(histories)[0])
        finally:
            self.train(was_training)
        pad = torch.full((logits.shape[0], 1), float("-inf"), dtype=logits.dtype, device=logits.device)
        return torch.cat([pad, logits], dim=1)

    def state(self) -> dict[str, Any]:
        """Self-describing plain dict (``torch.save``-able, loadable with ``weights_only=True``)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "n_items": self.n_items,
                "config": self.config.to_dict(),
                "state_dict": cpu_state(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> "MultVAE":
        """A model (eval mode) rebuilt from :meth:`state`'s dict."""
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise VaeFormatError(f"not a {FORMAT} state (format {got!r})")
        if state.get("format_version") != FORMAT_VERSION:
            raise VaeFormatError(f"{FORMAT} format_version {state.get('format_version')!r} is not {FORMAT_VERSION}")
        model = cls(int(state["n_items"]), MultVAEConfig.from_dict(dict(state["config"])))
        try:
            model.load_state_dict(state["state_dict"])
        except RuntimeError as e:
            raise VaeFormatError(f"weights do not fit the stored config: {e}") from None
        return model.to(device).eval()


def save_vae(model: MultVAE, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.state()`` (plus ``extra`` plain values, e.g. metrics) atomically to ``path``."""
    path = Path(path)
    payload = model.state()
    if extra:
        clash = sorted(set(extra) & set(payload))
        if clash:
            raise ValueError(f"extra keys {clash} would overwrite the model's own")
        payload.update(extra)
    save_atomic(payload, path)
    return path


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """``torch.save`` ``path`` atomically (:func:`online.snapshot.write_atomic`; ``save_vae``'s and
    ``models.checkpoint``'s writer)."""
    write_atomic(path, lambda f: torch.save(payload, f))


def score_users(model: MultVAE, histories: Sequence[Sequence[int]], *, batch_size: int = 256) -> np.ndarray:
    """(n_users, N + 1) float32 scores (decoder logits from mu, eval mode, batched); column 0 = -inf."""
    out = [model.score(histories[s : s + batch_size]).float().cpu().numpy()
           for s in range(0, len(histories), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.n_items + 1), np.float32)


def evaluate_vae(model: MultVAE, histories: Sequence[Sequence[int]], targets: Sequence[int], *, k: int = 10,
                 batch_size: int = 256) -> dict[str, float]:
    """HR@k / NDCG@k on (history, target) pairs, full-catalogue ranking and exclusion rule of ``models.loo``."""
    ranks = evaluate_ranking(lambda h: score_users(model, h, batch_size=batch_size), histories, targets,
                             batch_size=batch_size)
    return metrics_from_ranks(ranks, k=k)


@dataclass(frozen=True, kw_only=True)
class VaeEpochLog(EpochLog):
    """An epoch's log with the ELBO's parts; ``train_loss`` is the mean of nll + beta * KL over its batches."""

    beta: float  # at the end of the epoch
    nll: float
    kl: float


def fit_vae(
    sequences: Sequence[Sequence[int]],
    n_items: int,
    config: MultVAEConfig = MultVAEConfig(),
    *,
    valid: tuple[Sequence[Sequence[int]], Sequence[int]] | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callbacks: Sequence[Callable[[VaeEpochLog], None]] = (),
) -> MultVAE:
    """Train a Mult-VAE on users' training item sets (indices 1..n_items; 0 / padding ignored).

    ``valid`` = (histories, targets) as ``LooSplit.histories("valid", ...)`` gives them: the best epoch on
    validation NDCG@k is kept (early stop after ``patience`` evaluations without a better one), else the
    last; ``max_seconds`` stops after the epoch that crosses it. The model comes back in eval mode with
    ``history`` (:class:`VaeEpochLog` list), ``best_epoch`` and ``best_valid_ndcg``. Deterministic for a
    ``seed`` on one thread count and device."""
    bad = [i for s in sequences for i in s if not 0 <= int(i) <= n_items]
    if bad:
        raise ValueError(f"training sequences hold item indices outside 1..{n_items}, e.g. {bad[:5]}")
    users = [sorted({int(i) for i in s if i != 0}) for s in sequences]
    users = [u for u in users if u]
    if not users:
        raise ValueError("no training examples: every sequence is empty")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultVAE(n_items, config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    evaluate = None if valid is None else (
        lambda: evaluate_vae(model, valid[0], valid[1], k=config.k, batch_size=config.eval_batch_size))
    best, step = BestEpoch(), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        totals = np.zeros(3)
        n_batches = 0
        order = rng.permutation(len(users))
        for s in range(0, len(order), config.batch_size):
            batch = [users[i] for i in order[s : s + config.batch_size]]
            beta = config.beta(step)
            loss, nll, kl = model.loss(batch, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            totals += (float(loss.detach()), float(nll.detach()), float(kl.detach()))
            n_batches += 1
        train_loss, nll_mean, kl_mean = totals / max(n_batches, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"Mult-VAE training loss became {train_loss} at epoch {epoch}; lower lr")
        log = VaeEpochLog(epoch=epoch, step=step, beta=config.beta(step), train_loss=train_loss, nll=nll_mean,
                          kl=kl_mean, seconds=best.seconds())
        if best.end_epoch(model, log, config, max_seconds, evaluate, callbacks):
            break
    if best.state is None:  # no validation data: keep the last state
        best.epoch = best.history[-1].epoch
    else:
        model.load_state_dict(best.state)
    model.eval()
    model.history = best.history
    model.best_epoch = best.epoch
    model.best_valid_ndcg = best.ndcg
    return model
