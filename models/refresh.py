"""One periodic batch refresh: recent events in, a trained sequence encoder and its vocabulary out.

No Kafka and no files: ``streams/trainer.py`` feeds it the event log and publishes the result with
:class:`models.checkpoint.CheckpointRegistry`. Model selection uses each user's second-to-last event as
validation (leave-one-out, ``models.loo``), never a held-out test set. Items that have a text vector but
no interaction yet are put in the vocabulary too, so the new model retrieves them through their text
projection from its first minute in service.

With ``RefreshConfig.vae`` (the default), a Mult-VAE (``models.vae``) is trained on the same training
split and vocabulary, selected on the same validation items, and published in the same checkpoint: the
scorer serves it as a second candidate source (``"vae"``) that the feedback blender weighs against the
others. It knows the items that had interactions or text at refresh time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.loo import item_index, leave_one_out
from models.sequence import SeqEncoder, SeqEncoderConfig
from models.train import Callback, TrainConfig, TrainResult, train
from models.vae import MultVAE, MultVAEConfig, fit_vae
from models.vocab import ItemVocab

__all__ = ["RefreshConfig", "RefreshResult", "fit_refresh"]


@dataclass(frozen=True)
class RefreshConfig:
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.3
    id_dropout: float = 0.2  # train some text-bearing items text-only, so text-only (new) items are served well
    loss: str = "sampled"  # sampled softmax with logQ correction: matched full CE's validation NDCG at 2x speed
    n_negatives: int = 1024
    epochs: int = 30  # most epochs of each model (Transformer and Mult-VAE); both stop early on validation
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    max_seconds: float = 300.0
    seed: int = 0
    device: str = "auto"
    # ---- the Mult-VAE candidate source (models.vae), trained in the same refresh
    vae: bool = True
    vae_hidden: tuple[int, ...] = (600,)
    vae_latent: int = 200
    vae_max_seconds: float = 120.0


@dataclass
class RefreshResult:
    model: SeqEncoder
    vocab: ItemVocab
    train: TrainResult
    n_events: int
    n_users: int
    vae: MultVAE | None = None

    @property
    def metrics(self) -> dict[str, float]:
        out = {"valid_ndcg": float(self.train.best_valid_ndcg or 0.0), "events": float(self.n_events),
               "users": float(self.n_users), "items": float(len(self.vocab))}
        if self.vae is not None:
            out["vae_valid_ndcg"] = float(self.vae.best_valid_ndcg or 0.0)
        return out


def fit_refresh(events: Iterable[tuple[str, str, float]], *, text_vectors: Mapping[str, np.ndarray] | None = None,
                config: RefreshConfig = RefreshConfig(), callbacks: Sequence[Callback] = ()) -> RefreshResult:
    """Train a fresh encoder on ``(user, item, ts)`` events (time order within a user is restored here)."""
    events = list(events)
    split = leave_one_out(events)
    index = item_index(split)
    text_vectors = dict(text_vectors or {})
    for item in sorted(text_vectors):
        index.setdefault(item, len(index) + 1)  # text-only items: retrievable through their text
    vocab = ItemVocab.from_ids(sorted(index, key=index.get))
    train_seqs = split.train_sequences(index)
    valid = split.histories("valid", index) if split.valid else None
    text_dim = len(next(iter(text_vectors.values()))) if text_vectors else 0
    matrix = None
    if text_dim:
        matrix = torch.zeros(len(vocab) + 1, text_dim)
        for item, vec in text_vectors.items():
            matrix[index[item]] = torch.as_tensor(np.asarray(vec, dtype=np.float32))
    cfg = SeqEncoderConfig(n_items=len(vocab), max_len=config.max_len, d_model=config.d_model,
                           n_layers=config.n_layers, n_heads=config.n_heads, dropout=config.dropout,
                           text_dim=text_dim, id_dropout=config.id_dropout if text_dim else 0.0,
                           loss=config.loss, n_negatives=min(config.n_negatives, len(vocab)))
    torch.manual_seed(config.seed)
    model = SeqEncoder(cfg, text_vectors=matrix)
    result = train(model, train_seqs, valid, config=TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, patience=config.patience,
        seed=config.seed, device=config.device, max_seconds=config.max_seconds), callbacks=callbacks)
    vae = None
    if config.vae:
        n_users = sum(1 for seq in train_seqs if seq)
        vae_cfg = MultVAEConfig.for_users(n_users, hidden=config.vae_hidden, latent=config.vae_latent,
                                          epochs=config.epochs)
        vae = fit_vae(train_seqs, len(vocab), vae_cfg, valid=valid, max_seconds=config.vae_max_seconds,
                      seed=config.seed).cpu().eval()
    return RefreshResult(model=model.cpu().eval(), vocab=vocab, train=result, n_events=len(events),
                         n_users=len(split.train), vae=vae)
