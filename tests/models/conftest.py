"""Shared tiny synthetic data and one tiny trained model for the models/ tests (seconds, CPU)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from models.sequence import SeqEncoder, SeqEncoderConfig
from models.train import TrainConfig, TrainResult, train
from models.vocab import ItemVocab

N_ITEMS = 100


@dataclass
class Synthetic:
    """Item i (1-based) is followed by i+1 (mod 100) with probability 0.9, else by a random item."""

    train: list[list[int]]
    valid: tuple[list[list[int]], list[int]]
    test: tuple[list[list[int]], list[int]]
    vocab: ItemVocab


def make_synthetic(n_users: int = 300, length: int = 20, seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        x, s = int(rng.integers(N_ITEMS)), []
        for _ in range(length):
            s.append(x + 1)
            x = (x + 1) % N_ITEMS if rng.random() < 0.9 else int(rng.integers(N_ITEMS))
        seqs.append(s)
    return Synthetic(
        train=[s[:-2] for s in seqs],
        valid=([s[:-2] for s in seqs], [s[-2] for s in seqs]),
        test=([s[:-1] for s in seqs], [s[-1] for s in seqs]),
        vocab=ItemVocab(f"i{k}" for k in range(1, N_ITEMS + 1)),
    )


def tiny_config(**kw) -> SeqEncoderConfig:
    base = dict(n_items=N_ITEMS, max_len=10, d_model=32, n_layers=1, n_heads=2, dropout=0.1, text_dim=0)
    base.update(kw)
    return SeqEncoderConfig(**base)


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    return make_synthetic()


@pytest.fixture(scope="session")
def trained(synthetic) -> tuple[SeqEncoder, TrainResult]:
    torch.manual_seed(0)
    model = SeqEncoder(tiny_config())
    result = train(model, synthetic.train, synthetic.valid,
                   config=TrainConfig(epochs=15, batch_size=64, lr=3e-3, patience=3, device="cpu"))
    return model, result


@pytest.fixture(scope="session")
def make_config():
    """Factory of tiny configs: ``make_config(text_dim=8)``."""
    return tiny_config


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: these models are tiny, and on a shared 2-core machine two OpenMP threads
    spin against other processes (measured: ~8x slower steps under load). Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
