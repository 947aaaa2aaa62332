"""One periodic batch refresh: recent events in, a trained sequence encoder and its vocabulary out.

No Kafka and no files: ``streams/trainer.py`` feeds it the event log and publishes the result
(:class:`models.checkpoint.CheckpointRegistry`). The model serves the events after these, so it is selected
on the newest events of the log (:func:`serve_split`: new users and new items included, each event with its
user's items before it) trained on everything older, then refit on every event. With item texts, an encoder
with the text projection and one on ids only are trained (``RefreshConfig.text="auto"``) and the better on
the newest events is kept (docs/decisions.md); the text encoder's vocabulary also holds items with a text but
no interaction yet, retrievable through their text projection at once. With ``RefreshConfig.vae`` (the
default) a Mult-VAE is trained the same way on the same vocabulary and published in the same checkpoint: the
scorer's ``"vae"`` source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from models.augment import AugmentConfig, augment_sequences
from models.sequence import SeqEncoder, SeqEncoderConfig
from models.train import Callback, TrainConfig, TrainResult, train
from models.vae import MultVAE, MultVAEConfig, fit_vae
from models.vocab import ItemVocab

__all__ = ["RefreshConfig", "RefreshResult", "ServeSplit", "serve_split", "fit_refresh"]


@dataclass(frozen=True)
class RefreshConfig:
    """What one refresh trains and with what budget: the Transformer, then the Mult-VAE."""

    # ---- the Transformer sequence encoder (models.sequence)
    max_len: int = 50
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    id_dropout: float = 0.2  # train some text-bearing items text-only, so text-only (new) items are served well
    # ---- its training
    loss: str = "auto"  # full softmax up to 20k items, sampled with logQ correction above (docs/decisions.md)
    n_negatives: int = 1024
    epochs: int = 30  # most epochs of each model (Transformer and Mult-VAE); both stop early on validation
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    holdout: float = 0.1  # share of the newest events that select the model (serve_split), at most max_valid
    max_valid: int = 20_000
    max_seconds: float = 300.0
    seed: int = 0
    device: str = "auto"
    # ---- the Mult-VAE candidate source (models.vae), trained in the same refresh
    vae: bool = True
    vae_hidden: tuple[int, ...] = (600,)
    vae_latent: int = 200
    vae_max_seconds: float = 120.0
    # ---- item text in the encoder: "auto" trains ids-only and text and keeps the better on the newest events
    text: str = "auto"
    # ---- augmentation of short users' training sequences from the Mult-VAE (models.augment); 0 = off
    augment_cap: int = 0
    augment_weight: float = 0.5

    def __post_init__(self) -> None:
        if self.text not in ("auto", "on", "off"):
            raise ValueError(f"RefreshConfig.text must be 'auto', 'on' or 'off', got {self.text!r}")
        if not 0.0 < self.holdout < 1.0 or self.max_valid < 1:
            raise ValueError("RefreshConfig: holdout must be in (0, 1) and max_valid >= 1")
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


@dataclass(frozen=True)
class ServeSplit:
    """Each user's items before the cut (trained on), and the events after it as validation pairs: the user's
    items before the event (older validation events included) and the event's item."""

    train: dict[Hashable, list[Hashable]]
    valid: list[tuple[list[Hashable], Hashable]]

    def index(self) -> dict[Hashable, int]:
        """Trained items -> 1..N, by first appearance."""
        index: dict[Hashable, int] = {}
        for seq in self.train.values():
            for item in seq:
                index.setdefault(item, len(index) + 1)
        return index

    def sequences(self, index: Mapping[Hashable, int]) -> list[list[int]]:
        return [[index[i] for i in seq] for seq in self.train.values()]

    def validation(self, index: Mapping[Hashable, int]) -> tuple[tuple[list[list[int]], list[int]] | None, float]:
        """The pairs a model with ``index`` can score (its target and one history item known, unknown history
        items dropped, as the scorer drops them), and the share of all pairs they are: the others are misses."""
        hs, ts = [], []
        for history, target in self.valid:
            h = [index[i] for i in history if i in index]
            if h and target in index:
                hs.append(h)
                ts.append(index[target])
        return ((hs, ts) if ts else None), len(ts) / max(len(self.valid), 1)


def serve_split(events: Iterable[tuple[Hashable, Hashable, float]], *, holdout: float = 0.1,
                max_valid: int = 20_000) -> ServeSplit:
    """The newest ``holdout`` share of the events (at most ``max_valid``; by time, then input order) for
    validation, what came before for training. Events of users with no earlier event cannot be scored and
    are not validation pairs.

    >>> s = serve_split([("u", "a", 1), ("v", "a", 2), ("u", "b", 3), ("w", "c", 4), ("u", "c", 5)], holdout=0.4)
    >>> s.train, s.valid
    ({'u': ['a', 'b'], 'v': ['a']}, [(['a', 'b'], 'c')])
    >>> s.validation(s.index())  # "c" was never trained on: the ids model cannot rank it
    (None, 0.0)
    """
    ordered = sorted(enumerate(events), key=lambda e: (float(e[1][2]), e[0]))
    cut = len(ordered) - min(max_valid, int(len(ordered) * holdout))
    seen: dict[Hashable, list[Hashable]] = defaultdict(list)
    valid = []
    for n, (_, (user, item, _ts)) in enumerate(ordered):
        if n >= cut and seen[user]:
            valid.append((list(seen[user]), item))
        seen[user].append(item)
    train: dict[Hashable, list[Hashable]] = {}
    for _, (user, item, _ts) in ordered[:cut]:
        train.setdefault(user, []).append(item)
    return ServeSplit(train=train, valid=valid)


def fit_refresh(events: Iterable[tuple[str, str, float]], *, text_vectors: Mapping[str, np.ndarray] | None = None,
                config: RefreshConfig = RefreshConfig(), callbacks: Sequence[Callback] = ()) -> RefreshResult:
    """Train a fresh encoder (and Mult-VAE) on ``(user, item, ts)`` events (any order within a user).

    Select, then refit: each candidate encoder is trained on the older events and scored on the newest
    (:func:`serve_split`; a validation target outside an encoder's vocabulary is a miss); the better one and
    the Mult-VAE are then trained again from scratch on every event for their best number of epochs, so the
    served models know the newest users and items. ``config.text``: ``"on"`` the text encoder when there are
    item texts, ``"off"`` ids only, ``"auto"`` both (``RefreshResult.variant``). The ids-only vocabulary holds
    only trained items (rows for the others would be untrained noise). ``config.augment_cap > 0``: short
    users' training sequences get Mult-VAE-drawn items (``models.augment``).
    """
    events = list(events)
    text_vectors = dict(text_vectors or {})
    variants = {"on": ["text"], "off": ["ids"], "auto": ["ids", "text"]}[config.text] if text_vectors else ["ids"]
    with_vae = config.vae or config.augment_cap > 0
    split = serve_split(events, holdout=config.holdout, max_valid=config.max_valid)
    tried: dict[str, float] = {}
    epochs = {"vae": config.epochs}
    vae_valid = None
    if split.valid:
        # the Mult-VAE is trained on the text vocabulary when there is one, so that one VAE fits either
        # encoder (text-only items have no interactions: it learns to rank them low); cut to ids when kept
        full = _index(split, variants, text_vectors)
        vae = _fit_vae(split, full, config, config.epochs, True) if with_vae else None
        if vae is not None:
            epochs["vae"] = int(vae.best_epoch or config.epochs)
            vae_valid = float(vae.best_valid_ndcg or 0.0) * split.validation(full)[1]
        for variant in variants:
            index = _index(split, [variant], text_vectors)
            valid, covered = split.validation(index)
            result = _fit_encoder(split, variant, index, text_vectors, config, config.epochs, valid, vae, callbacks)[1]
            tried[variant] = float(result.best_valid_ndcg or 0.0) * covered if valid else 0.0
            epochs[variant] = result.best_epoch
    variant = max(variants, key=lambda v: tried.get(v, 0.0))  # the first on a tie
    everything = serve_split(events, holdout=0.0)
    vae = _fit_vae(everything, _index(everything, variants, text_vectors), config, epochs["vae"], False) \
        if with_vae else None
    if vae is not None and vae_valid is not None:
        vae.best_valid_ndcg = vae_valid  # the selection's figure: the refit has no validation
    index = _index(everything, [variant], text_vectors)
    model, result = _fit_encoder(everything, variant, index, text_vectors, config, epochs.get(variant, config.epochs),
                                 None, vae, callbacks)
    vocab = ItemVocab.from_ids(sorted(index, key=index.get))
    if tried:
        result = replace(result, best_valid_ndcg=tried[variant])
    if not config.vae:
        vae = None  # trained for the augmentation only
    elif vae.n_items != len(vocab):
        vae = _vae_prefix(vae, len(vocab))  # the ids-only encoder was kept: drop the text-only items
    return RefreshResult(model=model, vocab=vocab, train=result, n_events=len(events),
                         n_users=len(everything.train), vae=vae, variant=variant, variants_valid_ndcg=tried)


def _index(split: ServeSplit, variants: Sequence[str], text_vectors: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The trained items, then (with the text variant) every item with a text: retrievable through it."""
    index = split.index()
    if "text" in variants:
        for item in sorted(text_vectors):
            index.setdefault(item, len(index) + 1)
    return index


def _fit_vae(split: ServeSplit, index: dict[str, int], config: RefreshConfig, epochs: int, validate: bool) -> MultVAE:
    seqs = split.sequences(index)
    cfg = MultVAEConfig.for_users(sum(1 for seq in seqs if seq), hidden=config.vae_hidden, latent=config.vae_latent,
                                  epochs=epochs)
    valid = split.validation(index)[0] if validate else None
    vae = fit_vae(seqs, len(index), cfg, valid=valid, max_seconds=config.vae_max_seconds, seed=config.seed)
    return vae.cpu().eval()


def _fit_encoder(split: ServeSplit, variant: str, index: dict[str, int], text_vectors: Mapping[str, np.ndarray],
                 config: RefreshConfig, epochs: int, valid, vae: MultVAE | None,
                 callbacks: Sequence[Callback]) -> tuple[SeqEncoder, TrainResult]:
    """One encoder trained on ``split``'s training sequences, early-stopped on ``valid`` when given."""
    vocab = ItemVocab.from_ids(sorted(index, key=index.get))
    train_seqs, weights = split.sequences(index), None
    if config.augment_cap > 0 and vae is not None:
        # the VAE's item indices are the text vocabulary's; the ids one is its prefix, so ids agree
        train_seqs, weights = augment_sequences(train_seqs, vae, AugmentConfig(
            cap=config.augment_cap, weight=config.augment_weight, seed=config.seed))
        n = len(vocab)
        kept = [[(i, w) for i, w in zip(s, ws) if i <= n] for s, ws in zip(train_seqs, weights)]
        train_seqs, weights = [[i for i, _ in k] for k in kept], [[w for _, w in k] for k in kept]
    model = _encoder(config, vocab, index, text_vectors if variant == "text" else {})
    result = train(model, train_seqs, valid, config=TrainConfig(
        epochs=epochs, batch_size=config.batch_size, lr=config.lr, patience=config.patience, seed=config.seed,
        device=config.device, max_seconds=config.max_seconds), callbacks=callbacks, sample_weights=weights)
    return model.cpu().eval(), result


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
