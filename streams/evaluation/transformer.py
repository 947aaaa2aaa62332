"""The Transformer for evaluation: a published checkpoint, or one trained quickly with ``models/`` on the
events given (ids only, a time budget, early-stopped on each user's last event, optionally with a Mult-VAE).
:class:`Refresher` retrains at each refresh point as the live trainer does (``models.refresh.fit_refresh``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["load_model", "train_quick", "TrainedTransformer", "Refresher"]

log = logging.getLogger(__name__)


def load_model(path: str | Path, *, device: str = "auto", quantize: str = "none"):
    """A ``BatchScorer`` from a checkpoint file, or from the newest valid checkpoint in a registry folder."""
    from models.checkpoint import CheckpointError, CheckpointRegistry, load_checkpoint
    from models.scoring import BatchScorer

    path = Path(path)
    if path.is_dir():
        ckpt = CheckpointRegistry(path).latest()
        if ckpt is None:
            raise CheckpointError(f"no valid checkpoint in {path}")
    else:
        ckpt = load_checkpoint(path)
    return BatchScorer(ckpt, device=device, quantize=quantize)


@dataclass(eq=False)
class TrainedTransformer:
    """A model trained here, with the figures the report needs."""

    scorer: Any
    _: KW_ONLY
    valid_ndcg: float | None
    epochs: int
    seconds: float
    items: int
    events: int
    vae_valid_ndcg: float | None = None
    vae_epochs: int = 0


def _train(train_seqs: list[list[int]], valid: tuple[list[list[int]], list[int]] | None, n_items: int, *,
           seconds: float, seed: int, device: str, max_len: int = 50, sample_weights=None):
    """Train a SeqEncoder on ids only within ``seconds``, early-stopped on ``valid``."""
    import torch

    from models.sequence import SeqEncoder, SeqEncoderConfig
    from models.train import TrainConfig, train

    cfg = SeqEncoderConfig(n_items=n_items, max_len=max_len, d_model=64, n_layers=2, n_heads=2, dropout=0.2,
                           text_dim=0, loss="auto")
    torch.manual_seed(seed)
    model = SeqEncoder(cfg)
    tcfg = TrainConfig(epochs=200, batch_size=128, lr=1e-3, patience=3, eval_every=1, seed=seed, device=device,
                       max_seconds=seconds)
    res = train(model, train_seqs, valid, config=tcfg, sample_weights=sample_weights)
    return model, res


def train_vae(train_seqs: list[list[int]], valid: tuple[list[list[int]], list[int]] | None, n_items: int, *,
              seconds: float, seed: int):
    """A Mult-VAE as the trainer's refresh makes it (``models.refresh.RefreshConfig`` sizes), early-stopped
    on ``valid``, within ``seconds``."""
    from models.refresh import RefreshConfig
    from models.vae import MultVAEConfig, fit_vae

    rc = RefreshConfig()
    cfg = MultVAEConfig.for_users(sum(1 for s in train_seqs if s), hidden=rc.vae_hidden, latent=rc.vae_latent)
    return fit_vae(train_seqs, n_items, cfg, valid=valid, max_seconds=seconds, seed=seed)


def train_quick(events: Sequence[tuple[str, str, float]], *, seconds: float, seed: int = 0, device: str = "auto",
                vae_seconds: float = 0.0, augment_cap: int = 0, augment_weight: float = 0.5,
                log_line: Callable[[str], None] = print) -> TrainedTransformer:
    """Train on ``(user, item, ts)`` events, selected on each user's last event (users with >= 3 events).

    ``augment_cap``: Mult-VAE items prepended to users with <= 5 events (``models.augment``), weighted
    ``augment_weight``."""
    import time

    from models.loo import item_index, leave_one_out
    from models.scoring import BatchScorer
    from models.vocab import ItemVocab

    t0 = time.perf_counter()
    split = leave_one_out(events).to_serve()
    index = item_index(split)
    vocab = ItemVocab.from_ids([str(i) for i in sorted(index, key=index.__getitem__)])
    train_seqs = split.train_sequences(index)
    users = list(split.test)
    valid = split.histories("valid", index)
    log_line(f"  training the Transformer on {len(events)} events, {len(vocab)} items, {len(users)} validation "
             f"users, budget {seconds:.0f}s ...")
    if augment_cap > 0 and vae_seconds <= 0:
        raise ValueError("augmentation draws from the Mult-VAE: give vae_seconds (--train-vae) too")
    vae = None
    if vae_seconds > 0:
        t1 = time.perf_counter()
        vae = train_vae(train_seqs, valid if users else None, len(vocab), seconds=vae_seconds, seed=seed)
        log_line(f"  Mult-VAE: {len(vae.history)} epochs, best validation NDCG@10 {vae.best_valid_ndcg}, "
                 f"{time.perf_counter() - t1:.0f}s")
    weights = None
    if augment_cap > 0:
        from models.augment import AugmentConfig, augment_sequences

        before = sum(map(len, train_seqs))
        train_seqs, weights = augment_sequences(train_seqs, vae, AugmentConfig(cap=augment_cap, weight=augment_weight,
                                                                               seed=seed))
        log_line(f"  augmentation: {sum(map(len, train_seqs)) - before} synthetic items (cap {augment_cap}, "
                 f"weight {augment_weight})")
    t2 = time.perf_counter()
    model, res = _train(train_seqs, valid if users else None, len(vocab), seconds=seconds, seed=seed, device=device,
                        sample_weights=weights)
    log_line(f"  Transformer: {len(res.history)} epochs, best validation NDCG@10 {res.best_valid_ndcg}, "
             f"{time.perf_counter() - t2:.0f}s")
    scorer = BatchScorer(model=model, vocab=vocab, device=device, vae=vae)
    scorer.version = f"trained-here-{len(events)}ev"
    dt = time.perf_counter() - t0
    return TrainedTransformer(scorer, valid_ndcg=res.best_valid_ndcg, epochs=len(res.history), seconds=dt,
                              items=len(vocab), events=len(events),
                              vae_valid_ndcg=None if vae is None else vae.best_valid_ndcg,
                              vae_epochs=0 if vae is None else len(vae.history))


@dataclass(kw_only=True, eq=False)
class Refresher:
    """``--refresh-every``: events so far -> a new ``BatchScorer`` trained as the live trainer trains one
    (``models.refresh.fit_refresh`` from scratch, the trainer's configuration with these budgets: with item
    texts, an encoder on ids only and one with the text projection, the better on validation kept; the text
    one also names the catalogue's items without events yet). :attr:`history` keeps each refresh's figures."""

    seconds: float
    vae_seconds: float = 0.0
    seed: int = 0
    device: str = "auto"
    augment_cap: int = 0
    augment_weight: float = 0.5
    text_vectors: Mapping[str, Any] = field(default_factory=dict)  # the catalogue's item -> text vector
    log_line: Callable[[str], None] = print
    history: list[dict] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("a refresh needs a Transformer training budget: seconds > 0 (--train-transformer)")
        if self.augment_cap and self.vae_seconds <= 0:
            raise ValueError("augmentation draws from the Mult-VAE: give vae_seconds (--train-vae) too")

    def __call__(self, events: Sequence) -> object:
        import time

        from models.refresh import RefreshConfig, fit_refresh
        from models.scoring import BatchScorer

        from ..config import TRAIN_EPOCHS

        rows = [(e.user, e.item, e.ts) for e in events]
        config = RefreshConfig(device=self.device, epochs=TRAIN_EPOCHS, seed=self.seed, max_seconds=self.seconds,
                               vae=self.vae_seconds > 0, vae_max_seconds=self.vae_seconds,
                               augment_cap=self.augment_cap, augment_weight=self.augment_weight)
        self.log_line(f"  refreshing on {len(rows)} events (as the trainer: item text {config.text if self.text_vectors else 'none'}, "
                      f"budget {self.seconds:g}s an encoder" + (f" + {self.vae_seconds:g}s Mult-VAE" if config.vae else "")
                      + ") ...")
        t = time.perf_counter()
        res = fit_refresh(rows, text_vectors=self.text_vectors, config=config)
        seconds = time.perf_counter() - t
        scorer = BatchScorer(model=res.model, vocab=res.vocab, device=self.device, vae=res.vae)
        scorer.version = f"refresh-{len(rows)}ev"
        tried = ", ".join(f"{k} {v:.4f}" for k, v in res.variants_valid_ndcg.items())
        self.log_line(f"  kept the {res.variant} encoder (validation NDCG@10: {tried}), {len(res.train.history)} "
                      f"epochs, {len(res.vocab)} items, {seconds:.0f}s")
        self.history.append({"events": len(rows), "version": scorer.version, "items": len(res.vocab),
                             "variant": res.variant, "variants_valid_ndcg": res.variants_valid_ndcg,
                             "epochs": len(res.train.history), "valid_ndcg": res.train.best_valid_ndcg,
                             "vae_epochs": 0 if res.vae is None else len(res.vae.history),
                             "vae_valid_ndcg": None if res.vae is None else res.vae.best_valid_ndcg,
                             "seconds": round(seconds, 1)})
        return scorer
