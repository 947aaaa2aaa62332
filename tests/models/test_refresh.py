"""One periodic refresh (models.refresh): variant selection on validation, vocabularies, the Mult-VAE."""

from __future__ import annotations

import numpy as np
import pytest

from models.refresh import RefreshConfig, _vae_prefix, fit_refresh, serve_split
from models.vae import score_users


def _events(n_users=60, n_items=30, length=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        x = int(rng.integers(n_items))
        for t in range(length):
            out.append((f"u{u}", f"i{x}", float(t)))
            x = (x + 1) % n_items if rng.random() < 0.9 else int(rng.integers(n_items))
    return out


TINY = dict(max_len=10, d_model=16, n_layers=1, n_heads=2, epochs=2, batch_size=32, n_negatives=16,
            vae_hidden=(16,), vae_latent=4, device="cpu", max_seconds=30, vae_max_seconds=30)


@pytest.fixture(scope="module")
def texts():
    rng = np.random.default_rng(1)
    # 30 items with interactions and 5 text-only (new) items
    return {f"i{k}": rng.normal(size=8).astype(np.float32) for k in range(35)}


def test_auto_keeps_the_variant_with_the_better_validation_ndcg(texts):
    res = fit_refresh(_events(), text_vectors=texts, config=RefreshConfig(text="auto", **TINY))
    assert set(res.variants_valid_ndcg) == {"ids", "text"}
    assert res.variant == max(res.variants_valid_ndcg, key=res.variants_valid_ndcg.get)
    assert res.metrics["valid_ndcg"] == pytest.approx(res.variants_valid_ndcg[res.variant])
    assert res.vae is not None and res.vae.n_items == len(res.vocab)


def test_text_on_and_off_vocabularies_and_vae(texts):
    on = fit_refresh(_events(), text_vectors=texts, config=RefreshConfig(text="on", **TINY))
    off = fit_refresh(_events(), text_vectors=texts, config=RefreshConfig(text="off", **TINY))
    assert on.variant == "text" and on.model.config.text_dim == 8 and "i34" in on.vocab  # text-only item served
    assert off.variant == "ids" and off.model.config.text_dim == 0 and "i34" not in off.vocab
    assert len(off.vocab) == 30 and len(on.vocab) == 35
    assert off.vae.n_items == 30 and on.vae.n_items == 35
    # when "auto" keeps the ids-only encoder, the VAE (trained on the text vocabulary) is cut to its
    # vocabulary: the same scores on the shared items
    small = _vae_prefix(on.vae, 30)
    hist = [[1, 2, 3], [30]]
    assert small.n_items == 30
    assert np.allclose(score_users(small, hist)[:, 1:], score_users(on.vae, hist)[:, 1:31], atol=1e-6)
    assert not RefreshConfig().augment_cap  # augmentation is off unless asked for


def test_augmentation_and_no_vae(texts):
    res = fit_refresh(_events(n_users=40, length=4), text_vectors=None,
                      config=RefreshConfig(augment_cap=2, augment_weight=0.5, vae=False, **TINY))
    assert res.vae is None and res.variant == "ids"  # the VAE fed the augmentation but is not served
    assert res.train.steps > 0
    with pytest.raises(ValueError):
        RefreshConfig(text="maybe")
    with pytest.raises(ValueError):
        RefreshConfig(augment_weight=0.0)


def test_the_newest_events_validate_with_every_item_before_them():
    """serve_split: the newest share of events (capped) are validation pairs, each with its user's items
    before it (older validation events included); a first event has nothing to score with; a model's
    validation counts a target outside its vocabulary as a miss (the covered share)."""
    events = [("u", "a", 1), ("v", "b", 2), ("u", "b", 3), ("w", "a", 4), ("u", "c", 5), ("v", "d", 6)]
    split = serve_split(list(reversed(events)), holdout=0.5)  # input order does not matter: time does
    assert split.train == {"u": ["a", "b"], "v": ["b"]}
    assert split.valid == [(["a", "b"], "c"), (["b"], "d")]  # w's first event is not a pair
    pairs, covered = split.validation({"a": 1, "b": 2, "c": 3})
    assert pairs == ([[1, 2]], [3]) and covered == 0.5
    assert len(serve_split(events, holdout=0.5, max_valid=1).valid) == 1
    with pytest.raises(ValueError):
        RefreshConfig(holdout=1.0)


def test_the_kept_encoder_is_refit_on_every_event():
    """Selected on the newest events, then trained again on all of them: an item first seen in the newest
    events is in the served ids vocabulary, and the figure reported is the selection's."""
    events = _events() + [(f"u{u}", "i-new", 100.0) for u in range(5)]
    res = fit_refresh(events, config=RefreshConfig(text="off", **TINY))
    assert "i-new" in res.vocab and len(res.vocab) == 31
    assert res.metrics["valid_ndcg"] == pytest.approx(res.variants_valid_ndcg["ids"]) and res.n_users == 60
    assert res.vae is not None and res.vae.best_valid_ndcg is not None  # the selection's figure, kept
