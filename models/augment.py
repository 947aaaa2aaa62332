"""Augmentation for sparse users: synthetic context from the Mult-VAE decoder for the sequence encoder.

Shapes: U users (training sequences), N = the VAE's n_items (item indices 1..N, 0 = padding, as in
``models.vocab``), c = the number of synthetic items a user gets (0 <= c <= ``cap``).

A user with 1..``max_events`` training items gets up to ``cap`` DISTINCT items not in their history,
drawn without replacement from softmax(VAE logits / ``temperature``) by the Gumbel-top-c trick, and
PREPENDED, so the real items stay the most recent context:

    real  [r1, r2]            ->  seq [s1, s2, s3, r1, r2]
    weights                       [w,  w,  w,  1., 1.]        (w = ``config.weight``)

``models.train.train(..., sample_weights=weights)`` weights the loss at a position by its TARGET item's
weight; the first item is never a target, so with ``cap=1`` the weight has no effect, and a one-item user
now gives a training example. Other users are returned unchanged. The VAE scores in eval mode, so the draw
is random only through the Gumbel noise, seeded by (``seed``, the user's position in ``train_seqs``):
deterministic and independent of batching. Items outside 1..N are ignored and never drawn.

>>> import torch
>>> from models.vae import MultVAEConfig, fit_vae
>>> seqs = [[1, 2, 3], [2, 3, 4], [10, 11], [11, 12, 13], [5, 6, 7, 8, 9, 10, 11]]
>>> vae = fit_vae(seqs, 20, MultVAEConfig(hidden=(16,), latent=4, epochs=2, batch_size=2))
>>> out, weights = augment_sequences(seqs, vae, AugmentConfig(max_events=5, cap=2, weight=0.5, seed=0))
>>> [len(s) for s in out], out[0][-3:] == seqs[0], out[4] == seqs[4]   # 2 prepended; the long user is untouched
([5, 5, 4, 5, 7], True, True)
>>> weights[0], weights[4] == [1.0] * 7
([0.5, 0.5, 1.0, 1.0, 1.0], True)
>>> set(out[0][:2]) & set(seqs[0])                                     # never an item the user already has
set()
>>> augment_sequences(seqs, vae, AugmentConfig(cap=2, seed=0))[0] == out   # same seed, same draw
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.vae import MultVAE, score_users

__all__ = ["AugmentConfig", "augment_sequences"]


@dataclass(frozen=True)
class AugmentConfig:
    max_events: int = 5  # users with 1..max_events training items are augmented ("short users" of models.loo)
    cap: int = 3  # at most this many synthetic items per user (fewer only when fewer unseen items exist)
    weight: float = 0.5  # loss weight of a position whose target is a synthetic item; real targets weigh 1.0
    temperature: float = 1.0  # softmax temperature on the VAE logits (< 1: sharper, > 1: flatter)
    seed: int = 0
    batch_size: int = 256  # users per VAE scoring batch (memory only; the draw does not depend on it)

    def __post_init__(self) -> None:
        checks = [
            (self.max_events >= 1, "max_events must be >= 1"),
            (self.cap >= 0, "cap must be >= 0 (0 = no augmentation)"),
            (0.0 < self.weight <= 1.0, "weight must be in (0, 1]: a synthetic event counts less than a real one"),
            (self.temperature > 0.0, "temperature must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"AugmentConfig: {msg}, got {self}")


def _draw(logits: np.ndarray, history: set[int], c: int, temperature: float, rng: np.random.Generator
          ) -> list[int]:
    """``c`` distinct items from softmax(logits / T) over columns 1..N not in ``history``, in draw order.

    ``logits`` is one (N + 1,) row of ``score_users`` (column 0 = -inf)."""
    z = logits.astype(np.float64) / temperature  # (N+1,)
    blocked = [i for i in history if 0 <= i < len(z)]
    z[blocked] = -np.inf
    z[0] = -np.inf
    z = z + rng.gumbel(size=z.shape)
    allowed = int(np.isfinite(z).sum())
    c = min(c, allowed)
    if c == 0:
        return []
    top = np.argpartition(-z, c - 1)[:c]  # the c largest perturbed logits ...
    return [int(i) for i in top[np.argsort(-z[top], kind="stable")]]  # ... in draw order (largest first)


def augment_sequences(
    train_seqs: Sequence[Sequence[int]], vae: MultVAE, config: AugmentConfig = AugmentConfig()
) -> tuple[list[list[int]], list[list[float]]]:
    """(seqs, weights): ``train_seqs`` with synthetic items prepended for users with 1..max_events items.

    ``seqs[u]`` = c synthetic items + ``train_seqs[u]`` (c <= cap; c = 0 for other users), and
    ``weights[u]`` the parallel list: ``config.weight`` for the synthetic positions, 1.0 for the real ones.
    Both have U lists; pass them to ``models.train.train(model, seqs, ..., sample_weights=weights)``."""
    seqs = [[int(i) for i in s] for s in train_seqs]
    weights = [[1.0] * len(s) for s in seqs]
    if config.cap == 0:
        return seqs, weights
    short = [u for u, s in enumerate(seqs) if 1 <= len(s) <= config.max_events]
    for start in range(0, len(short), config.batch_size):
        users = short[start : start + config.batch_size]
        logits = score_users(vae, [seqs[u] for u in users], batch_size=config.batch_size)  # (B, N+1)
        for row, u in zip(logits, users):
            rng = np.random.default_rng([config.seed, u])
            extra = _draw(row, set(seqs[u]), config.cap, config.temperature, rng)
            seqs[u] = extra + seqs[u]
            weights[u] = [config.weight] * len(extra) + weights[u]
    return seqs, weights

