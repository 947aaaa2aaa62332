"""The batch models for evaluation: a published checkpoint (:func:`load_model`), or models trained here as
the live trainer trains them (:class:`Refresher`: ``models.refresh.fit_refresh``), once (frozen, leave-one-out)
or at each refresh point (``--refresh-every``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["load_model", "Refresher"]

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


@dataclass(kw_only=True, eq=False)
class Refresher:
    """Events so far -> a new ``BatchScorer`` trained as the live trainer trains one
    (``models.refresh.fit_refresh`` from scratch, the trainer's configuration with these budgets: with item
    texts, an encoder on ids only and one with the text projection, the better on the newest events kept and
    refit on all; the text one also names the catalogue's items without events yet). :attr:`history` keeps each
    refresh's figures."""

    seconds: float
    vae_seconds: float = 0.0
    seed: int = 0
    device: str = "auto"
    augment_cap: int = 0
    augment_weight: float = 0.5
    max_len: int = 50  # the longest history the encoder reads: the worker's history_len, as the trainer sets it
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
        config = RefreshConfig(device=self.device, epochs=TRAIN_EPOCHS, seed=self.seed, max_len=self.max_len,
                               max_seconds=self.seconds, vae=self.vae_seconds > 0, vae_max_seconds=self.vae_seconds,
                               augment_cap=self.augment_cap, augment_weight=self.augment_weight)
        self.log_line(f"  training on {len(rows)} events as the trainer does (item text "
                      f"{config.text if self.text_vectors else 'none'}, {self.seconds:g}s an encoder"
                      + (f" + {self.vae_seconds:g}s Mult-VAE" if config.vae else "") + ") ...")
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
