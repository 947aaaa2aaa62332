"""The Transformer for evaluation: a published checkpoint, or one trained quickly with ``models/`` on the
events given (ids only, a time budget, early-stopped on each user's last event, optionally with a Mult-VAE).
:class:`Refresher` retrains at each refresh point, warm-starting the Transformer (no leakage: its vocabulary
is the new one's prefix) unless ``warm_start=False``; the Mult-VAE always starts from scratch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from dataclasses import replace as _dc_replace
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
    """A model trained here, with the figures the report needs (``encoder`` and ``vocab``: what a warm
    start continues from; ``warm``: whether this one was warm-started)."""

    scorer: Any
    _: KW_ONLY
    valid_ndcg: float | None
    epochs: int
    seconds: float
    items: int
    events: int
    vae_valid_ndcg: float | None = None
    vae_epochs: int = 0
    encoder: Any = None
    vocab: Any = None
    warm: bool = False


def _train(train_seqs: list[list[int]], valid: tuple[list[list[int]], list[int]] | None, n_items: int, *,
           seconds: float, seed: int, device: str, max_len: int = 50, sample_weights=None, init=None):
    """Train a SeqEncoder; ``init`` (a SeqEncoder over the first ``init.config.n_items`` of these items): start
    from a copy of its weights, the rows of the items beyond it drawn as a fresh model draws them."""
    import copy

    import torch

    from models.sequence import SeqEncoder, SeqEncoderConfig
    from models.train import TrainConfig, train

    cfg = SeqEncoderConfig(n_items=n_items, max_len=max_len, d_model=64, n_layers=2, n_heads=2, dropout=0.2,
                           text_dim=0, loss="auto")
    torch.manual_seed(seed)
    if init is None:
        model = SeqEncoder(cfg)
    else:
        model = copy.deepcopy(init).cpu()
        old = model.config.n_items
        if old > n_items or model.config != _dc_replace(cfg, n_items=old):
            raise ValueError(f"cannot warm-start: the previous model ({model.config}) does not fit {cfg}")
        model.extend_items(n_items - old)
        with torch.no_grad():
            model.item_emb.weight[old + 1:].normal_(std=0.02)  # as SeqEncoder.__init__ draws its rows
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
                init: TrainedTransformer | None = None,
                log_line: Callable[[str], None] = print) -> TrainedTransformer:
    """Train on ``(user, item, ts)`` events, selected on each user's last event (users with >= 3 events).

    ``augment_cap``: Mult-VAE items prepended to users with <= 5 events (``models.augment``), weighted
    ``augment_weight``. ``init``: warm-start from that result when its vocabulary is all in ``events``."""
    import time

    from models.loo import item_index, leave_one_out
    from models.scoring import BatchScorer
    from models.vocab import ItemVocab

    t0 = time.perf_counter()
    split = leave_one_out(events)
    # validation = each evaluated user's last event; train on everything before it (valid item included)
    train_split = {u: seq + ([split.valid[u]] if u in split.valid else []) for u, seq in split.train.items()}
    index = item_index(split)
    warm = init is not None and init.encoder is not None and all(i in index for i in init.vocab.ids)
    if warm:  # the previous vocabulary first, in its order; the new items after it
        known = init.vocab.ids
        seen = set(known)
        order = known + [i for i in sorted(index, key=index.__getitem__) if i not in seen]
        index = {item: n + 1 for n, item in enumerate(order)}
    vocab = ItemVocab.from_ids([str(i) for i in sorted(index, key=index.__getitem__)])
    train_seqs = [[index[i] for i in seq] for seq in train_split.values()]
    users = list(split.test)
    valid = ([[index[i] for i in train_split[u]] for u in users], [index[split.test[u]] for u in users])
    log_line(f"  training the Transformer on {len(events)} events, {len(vocab)} items, {len(users)} validation "
             f"users, budget {seconds:.0f}s"
             + (f", warm-started from {len(init.vocab)} items" if warm else "") + " ...")
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
                        sample_weights=weights, init=init.encoder if warm else None)
    log_line(f"  Transformer: {len(res.history)} epochs, best validation NDCG@10 {res.best_valid_ndcg}, "
             f"{time.perf_counter() - t2:.0f}s")
    scorer = BatchScorer(model=model, vocab=vocab, device=device, vae=vae)
    scorer.version = f"trained-here-{len(events)}ev"
    dt = time.perf_counter() - t0
    return TrainedTransformer(scorer, valid_ndcg=res.best_valid_ndcg, epochs=len(res.history), seconds=dt,
                              items=len(vocab), events=len(events),
                              vae_valid_ndcg=None if vae is None else vae.best_valid_ndcg,
                              vae_epochs=0 if vae is None else len(vae.history), encoder=model.cpu(), vocab=vocab,
                              warm=warm)


@dataclass(kw_only=True, eq=False)
class Refresher:
    """``--refresh-every``: events so far -> a new ``BatchScorer`` trained as :func:`train_quick` does
    (``warm_start``: from the previous call's Transformer); :attr:`history` keeps each refresh's figures."""

    seconds: float
    vae_seconds: float = 0.0
    seed: int = 0
    device: str = "auto"
    augment_cap: int = 0
    augment_weight: float = 0.5
    warm_start: bool = True
    log_line: Callable[[str], None] = print
    last: TrainedTransformer | None = field(default=None, init=False)
    history: list[dict] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ValueError("a refresh needs a Transformer training budget: seconds > 0 (--train-transformer)")

    def __call__(self, events: Sequence) -> object:
        rows = [(e.user, e.item, e.ts) for e in events]
        trained = train_quick(rows, seconds=self.seconds, seed=self.seed, device=self.device,
                              vae_seconds=self.vae_seconds, augment_cap=self.augment_cap,
                              augment_weight=self.augment_weight, init=self.last if self.warm_start else None,
                              log_line=self.log_line)
        trained.scorer.version = f"refresh-{len(rows)}ev"
        self.last = trained
        self.history.append({"events": len(rows), "version": trained.scorer.version, "items": trained.items,
                             "warm_start": trained.warm, "epochs": trained.epochs, "valid_ndcg": trained.valid_ndcg,
                             "vae_epochs": trained.vae_epochs, "vae_valid_ndcg": trained.vae_valid_ndcg,
                             "seconds": round(trained.seconds, 1)})
        return trained.scorer
