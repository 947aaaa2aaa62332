"""Augmentation for sparse users (models/augment.py) and the weighted loss it trains with
(SeqEncoder.forward(..., weights), train(..., sample_weights)). Tiny data, seconds on one CPU thread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.augment import AugmentConfig, augment_sequences
from models.sequence import SeqEncoder
from models.train import TrainConfig, make_weight_windows, make_windows, train
from models.vae import MultVAEConfig, fit_vae

N = 40


@pytest.fixture(scope="module")
def data() -> list[list[int]]:
    """Two taste groups (items 1..20 and 21..40); users of 1..12 items, a few with repeats."""
    rng = np.random.default_rng(0)
    seqs = []
    for u in range(120):
        lo = 1 if u % 2 == 0 else 21
        n = int(rng.integers(1, 13))
        seqs.append([int(x) for x in rng.integers(lo, lo + 20, size=n)])
    seqs += [[], [3, 3, 3], list(range(1, N + 1))]  # empty, repeats, a user who has seen every item
    return seqs


@pytest.fixture(scope="module")
def vae(data):
    return fit_vae(data, N, MultVAEConfig(hidden=(32,), latent=8, epochs=15, batch_size=32, lr=3e-3,
                                          total_anneal_steps=20))


def test_cap_weights_history_and_long_users(data, vae):
    cfg = AugmentConfig(max_events=5, cap=3, weight=0.25, seed=1)
    seqs, weights = augment_sequences(data, vae, cfg)
    assert len(seqs) == len(weights) == len(data)
    n_augmented = 0
    for real, seq, w in zip(data, seqs, weights):
        assert len(w) == len(seq)
        extra = len(seq) - len(real)
        assert seq[extra:] == real  # the real history, unchanged, after the synthetic context
        assert w == [cfg.weight] * extra + [1.0] * len(real)
        if len(real) == 0 or len(real) > cfg.max_events:
            assert extra == 0
            continue
        assert 1 <= extra <= cfg.cap
        synth = seq[:extra]
        assert len(set(synth)) == extra  # distinct
        assert not set(synth) & set(real)  # never an item the user already has
        assert all(1 <= i <= N for i in synth)
        n_augmented += extra > 0
    assert n_augmented >= 30
    # the short users here have enough unseen items, so each gets exactly cap
    assert all(len(s) - len(r) == cfg.cap for s, r in zip(seqs, data) if 1 <= len(r) <= cfg.max_events)
    # the VAE's taste groups carry over: synthetic items come mostly from the user's own group
    same = [(i <= 20) == (r[0] <= 20) for s, r in zip(seqs, data) if 1 <= len(r) <= 5 for i in s[: len(s) - len(r)]]
    assert np.mean(same) > 0.7, np.mean(same)


def test_fewer_unseen_items_than_cap_and_cap_zero(vae):
    seqs, weights = augment_sequences([list(range(1, N - 1))], vae, AugmentConfig(max_events=N, cap=5))
    assert sorted(seqs[0][:2]) == [N - 1, N] and weights[0][:2] == [0.5, 0.5]  # only two items left to draw
    data = [[1, 2], [5]]
    assert augment_sequences(data, vae, AugmentConfig(cap=0)) == ([[1, 2], [5]], [[1.0, 1.0], [1.0]])


def test_deterministic_under_seed_and_independent_of_batching(data, vae):
    a = augment_sequences(data, vae, AugmentConfig(seed=3))
    b = augment_sequences(data, vae, AugmentConfig(seed=3, batch_size=7))
    c = augment_sequences(data, vae, AugmentConfig(seed=4))
    assert a == b
    assert a[0] != c[0]
    # a flatter temperature draws a different (more spread) set under the same seed
    assert augment_sequences(data, vae, AugmentConfig(seed=3, temperature=50.0))[0] != a[0]


@pytest.mark.parametrize("kw, match", [(dict(cap=-1), "cap"), (dict(weight=0.0), "weight"),
                                       (dict(weight=1.5), "weight"), (dict(max_events=0), "max_events"),
                                       (dict(temperature=0.0), "temperature")])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        AugmentConfig(**kw)


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_weighted_loss_is_the_weighted_mean(make_config, loss):
    torch.manual_seed(0)
    m = SeqEncoder(make_config(loss=loss, n_negatives=16)).eval()  # eval: no dropout, same loss each call
    seqs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    weights = torch.tensor([[9.0, 0.5, 0.5, 1.0], [0.25, 1.0, 1.0, 0.5]])  # 9.0 sits on a padding target
    sel = targets > 0
    per_target = []
    for b, t in sel.nonzero().tolist():  # one target at a time: its own loss
        one = torch.zeros_like(targets)
        one[b, t] = targets[b, t]
        torch.manual_seed(1)
        per_target.append(m(seqs, one)[1])
    per_target = torch.stack(per_target)
    w = weights[sel]
    expected = (per_target * w).sum() / w.sum()
    torch.manual_seed(1)
    _, got = m(seqs, targets, weights)
    assert torch.allclose(got, expected, atol=1e-6), (got, expected)
    torch.manual_seed(1)
    _, unweighted = m(seqs, targets)
    assert torch.allclose(unweighted, per_target.mean(), atol=1e-6)
    assert not torch.allclose(got, unweighted)
    torch.manual_seed(1)
    _, ones = m(seqs, targets, torch.ones_like(weights))
    assert torch.allclose(ones, unweighted, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        m(seqs, targets, weights[:, :3])
    with pytest.raises(ValueError, match="not all zero"):
        m(seqs, targets, torch.zeros_like(weights))


def test_weight_windows_match_item_windows():
    seqs = [list(range(1, 24)), [5, 6], [7]]
    weights = [[float(i) / 100 for i in s] for s in seqs]  # weight = item / 100, so they can be compared
    w, ww = make_windows(seqs, max_len=5), make_weight_windows(weights, max_len=5)
    assert w.shape == ww.shape
    assert torch.allclose(ww, w.float() / 100)


def test_training_with_unit_weights_equals_training_without(synthetic, make_config):
    cfg = TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cpu")
    data = synthetic.train[:60]
    states = []
    for weights in (None, [[1.0] * len(s) for s in data]):
        torch.manual_seed(0)
        model = SeqEncoder(make_config())
        train(model, data, None, config=cfg, sample_weights=weights)
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-5), k
    with pytest.raises(ValueError, match="parallel"):
        train(SeqEncoder(make_config()), data, None, config=cfg, sample_weights=[[1.0]])
