"""One periodic batch refresh: recent events in, a trained sequence encoder and its vocabulary out.

No Kafka and no files: ``streams/trainer.py`` feeds it the event log and publishes the result
(:class:`models.checkpoint.CheckpointRegistry`). Model selection uses each user's last event, and everything
before it is trained on (``models.loo.LooSplit.to_serve``): the model serves after these events, so there is
no test set to keep. With item texts, an encoder with the text projection and
one on ids only are trained (``RefreshConfig.text="auto"``) and the better on validation is kept (see the
README); the text encoder's vocabulary also holds items with a text but no interaction yet, retrievable
through their text projection at once. With ``RefreshConfig.vae`` (the default) a Mult-VAE is trained on
the same split and vocabulary and published in the same checkpoint: the scorer's ``"vae"`` source.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.augment import AugmentConfig, augment_sequences
from models.loo import item_index, leave_one_out
from models.sequence import SeqEncoder, SeqEncoderConfig
from models.train import Callback, TrainConfig, TrainResult, train
from models.vae import MultVAE, MultVAEConfig, fit_vae
from models.vocab import ItemVocab

__all__ = ["RefreshConfig", "RefreshResult", "fit_refresh"]


@dataclass(frozen=True)
class RefreshConfig:
    """What one refresh trains and with what budget: the Transformer, then the Mult-VAE."""

    # ---- the Transformer sequence encoder (models.sequence)
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.3
    id_dropout: float = 0.2  # train some text-bearing items text-only, so text-only (new) items are served well
    # ---- its training
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
    # ---- item text in the encoder: "auto" trains ids-only and text and keeps the better on validation
    text: str = "auto"
    # ---- augmentation of short users' training sequences from the Mult-VAE (models.augment); 0 = off
    augment_cap: int = 0
    augment_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.text not in ("auto", "on", "off"):
            raise ValueError(f"RefreshConfig.text must be 'auto', 'on' or 'off', got {self.text!r}")
        if self.augment_cap < 0 or not 0.0 < self.augment_weight <= 1.0:
            raise ValueError("RefreshConfig: augment_cap must be >= 0 and augment_weight in (0, 1]")


@dataclass
class RefreshResult:
    model: SeqEncoder
    vocab: ItemVocab
    train: TrainResult
    n_events: int
    n_users: int
    vae: MultVAE | None = None
    variant: str = "ids"  # "ids" or "text": the encoder kept (RefreshConfig.text)
    variants_valid_ndcg: dict[str, float] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        out = {"valid_ndcg": float(self.train.best_valid_ndcg or 0.0), "events": float(self.n_events),
               "users": float(self.n_users), "items": float(len(self.vocab)),
               "text": float(self.variant == "text")}
        out.update({f"valid_ndcg_{k}": v for k, v in self.variants_valid_ndcg.items()})
        if self.vae is not None:
            out["vae_valid_ndcg"] = float(self.vae.best_valid_ndcg or 0.0)
        return out


def _encoder(config: RefreshConfig, vocab: ItemVocab, index: dict[str, int],
             text_vectors: Mapping[str, np.ndarray]) -> SeqEncoder:
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
    return SeqEncoder(cfg, text_vectors=matrix)


def fit_refresh(events: Iterable[tuple[str, str, float]], *, text_vectors: Mapping[str, np.ndarray] | None = None,
                config: RefreshConfig = RefreshConfig(), callbacks: Sequence[Callback] = ()) -> RefreshResult:
    """Train a fresh encoder (and Mult-VAE) on ``(user, item, ts)`` events (any order within a user).

    ``config.text``: ``"on"`` uses the text vectors when there are any, ``"off"`` ids only, ``"auto"`` both,
    keeping the better on validation NDCG@10 (``RefreshResult.variant``). The ids-only vocabulary holds
    only items with interactions (rows for text-only items would be untrained noise). ``config.augment_cap
    > 0``: short users' training sequences get Mult-VAE-drawn items (``models.augment``).
    """
    events = list(events)
    split = leave_one_out(events).to_serve()
    base_index = item_index(split)
    text_vectors = dict(text_vectors or {})
    variants = {"on": ["text"], "off": ["ids"], "auto": ["ids", "text"]}[config.text]
    if not text_vectors:
        variants = ["ids"]
    full_index = dict(base_index)
    if "text" in variants:
        for item in sorted(text_vectors):
            full_index.setdefault(item, len(full_index) + 1)  # text-only items: retrievable through their text
    # the Mult-VAE is trained on the full vocabulary, so that one VAE fits the published vocabulary in either
    # case (text-only items have no interactions: it learns to rank them low)
    vocab_full = ItemVocab.from_ids(sorted(full_index, key=full_index.get))
    train_full = split.train_sequences(full_index)
    valid_full = split.histories("valid", full_index) if split.valid else None
    vae = None
    if config.vae or config.augment_cap > 0:
        n_users = sum(1 for seq in train_full if seq)
        vae_cfg = MultVAEConfig.for_users(n_users, hidden=config.vae_hidden, latent=config.vae_latent,
                                          epochs=config.epochs)
        vae = fit_vae(train_full, len(vocab_full), vae_cfg, valid=valid_full, max_seconds=config.vae_max_seconds,
                      seed=config.seed).cpu().eval()
    best: tuple[str, SeqEncoder, ItemVocab, TrainResult] | None = None
    tried: dict[str, float] = {}
    for variant in variants:
        index = full_index if variant == "text" else base_index
        vocab = vocab_full if variant == "text" else ItemVocab.from_ids(sorted(index, key=index.get))
        train_seqs = train_full if variant == "text" else split.train_sequences(index)
        valid = valid_full if variant == "text" else (split.histories("valid", index) if split.valid else None)
        weights = None
        if config.augment_cap > 0 and vae is not None:
            # the VAE's item indices are full_index's; base_index is its prefix, so ids agree
            train_seqs, weights = augment_sequences(train_seqs, vae, AugmentConfig(
                cap=config.augment_cap, weight=config.augment_weight, seed=config.seed))
            if variant == "ids":
                n = len(vocab)
                kept = [[(i, w) for i, w in zip(s, ws) if i <= n] for s, ws in zip(train_seqs, weights)]
                train_seqs, weights = [[i for i, _ in k] for k in kept], [[w for _, w in k] for k in kept]
        model = _encoder(config, vocab, index, text_vectors if variant == "text" else {})
        result = train(model, train_seqs, valid, config=TrainConfig(
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, patience=config.patience,
            seed=config.seed, device=config.device, max_seconds=config.max_seconds), callbacks=callbacks,
            sample_weights=weights)
        tried[variant] = float(result.best_valid_ndcg or 0.0)
        if best is None or tried[variant] > tried[best[0]]:
            best = (variant, model.cpu().eval(), vocab, result)
    variant, model, vocab, result = best
    if not config.vae:
        vae = None  # trained for the augmentation only
    elif vae.n_items != len(vocab):
        vae = _vae_prefix(vae, len(vocab))  # the ids-only encoder was kept: drop the text-only items
    return RefreshResult(model=model, vocab=vocab, train=result, n_events=len(events), n_users=len(split.train),
                         vae=vae, variant=variant, variants_valid_ndcg=tried)


def _vae_prefix(vae: MultVAE, n_items: int) -> MultVAE:
    """The same Mult-VAE restricted to items 1..n_items (drops the input rows and output columns of the
    items beyond: text-only items that the ids-only encoder's vocabulary does not hold)."""
    state = vae.state()
    sd = dict(state["state_dict"])
    sd["item_in.weight"] = sd["item_in.weight"][: n_items + 1].clone()
    last = len(vae.decoder) - 1
    sd[f"decoder.{last}.weight"] = sd[f"decoder.{last}.weight"][:n_items].clone()
    sd[f"decoder.{last}.bias"] = sd[f"decoder.{last}.bias"][:n_items].clone()
    small = MultVAE.from_state({**state, "n_items": n_items, "state_dict": sd})
    small.best_valid_ndcg = getattr(vae, "best_valid_ndcg", None)
    small.history = getattr(vae, "history", [])
    return small
