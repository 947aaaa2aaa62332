"""Self-describing checkpoints of the sequence encoder and a registry of published versions.

A checkpoint file (``torch.save`` of plain dicts/lists/tensors, loaded with ``weights_only=True``) holds
``format``, ``format_version``, ``version``, ``created_at`` (Unix s), ``step``, ``config`` (dict of
``SeqEncoderConfig``), ``state_dict`` (with the ``text_vectors`` buffer), ``vocab_ids`` (index order),
``vocab_hash``, ``text_hash`` (sha256 of the text vectors, or None), ``metrics`` (name -> number) and
optionally ``vae`` (``models.vae.MultVAE.state()`` over the same vocabulary; absent or None: no VAE).
Writes are atomic. The registry keeps ``v{n:04d}-{UTC time}.pt`` files in one folder (one publisher).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.sequence import ConfigError, SeqEncoder, SeqEncoderConfig
from models.train import cpu_state
from models.vae import MultVAE, VaeFormatError, save_atomic
from models.vocab import ItemVocab
from online.snapshot import VersionedFolder

__all__ = ["Checkpoint", "CheckpointError", "CheckpointRegistry", "save_checkpoint", "load_checkpoint", "FORMAT"]

logger = logging.getLogger(__name__)

FORMAT = "tailcast-seq-encoder"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "version", "created_at", "step", "config", "state_dict", "vocab_ids",
            "vocab_hash", "text_hash", "metrics")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, incomplete, or does not fit what the caller expects."""


def _tensor_hash(t: torch.Tensor | None) -> str | None:
    if t is None:
        return None
    return hashlib.sha256(t.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    version: str
    created_at: float
    step: int
    config: SeqEncoderConfig
    state_dict: dict[str, torch.Tensor]
    vocab_ids: list[str]
    vocab_hash: str
    text_hash: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    vae_state: dict[str, Any] | None = None  # MultVAE.state() over the same vocabulary, or None

    @property
    def has_vae(self) -> bool:
        return self.vae_state is not None

    def vocab(self) -> ItemVocab:
        return ItemVocab.from_ids(self.vocab_ids)

    def build_model(self, device: torch.device | str = "cpu") -> SeqEncoder:
        """A fresh ``SeqEncoder`` with these weights, in eval mode."""
        model = SeqEncoder(self.config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def build_vae(self, device: torch.device | str = "cpu") -> MultVAE | None:
        """The Mult-VAE candidate source stored with the encoder (eval mode), or None."""
        return None if self.vae_state is None else MultVAE.from_state(self.vae_state, device=device)


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: SeqEncoder,
    vocab: ItemVocab,
    step: int = 0,
    metrics: dict[str, float] | None = None,
    version: str | None = None,
    vae: MultVAE | None = None,
) -> Checkpoint:
    """Write ``model`` + ``vocab`` (+ ``vae``) atomically to ``path``; ``version`` defaults to a content hash."""
    path = Path(path)
    if len(vocab) != model.config.n_items:
        raise ConfigError(f"vocabulary has {len(vocab)} items but the model has n_items={model.config.n_items}; "
                          "extend the model (SeqEncoder.extend_items) or the vocabulary so they agree")
    if vae is not None and vae.n_items != len(vocab):
        raise ConfigError(f"the Mult-VAE has {vae.n_items} items but the vocabulary {len(vocab)}; train both on "
                          "the same vocabulary")
    metrics = dict(metrics or {})
    for k, v in metrics.items():
        if not isinstance(k, str) or not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"metrics must map str -> number; got {k!r}: {v!r}")
    state = cpu_state(model)
    text = state.get("text_vectors")
    config = model.config.to_dict()
    vae_state = vae.state() if vae is not None else None
    if version is None:
        h = hashlib.sha256(_state_hash(state).encode() + vocab.hash().encode() + repr(sorted(config.items())).encode()
                           + (_state_hash(vae_state["state_dict"]).encode() if vae_state else b""))
        version = "c" + h.hexdigest()[:12]
    ckpt = Checkpoint(version=version, created_at=time.time(), step=int(step), config=model.config,
                      state_dict=state, vocab_ids=vocab.ids, vocab_hash=vocab.hash(), text_hash=_tensor_hash(text),
                      metrics={k: float(v) for k, v in metrics.items()}, path=path, vae_state=vae_state)
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": ckpt.version, "created_at": ckpt.created_at,
        "step": ckpt.step, "config": config, "state_dict": state, "vocab_ids": ckpt.vocab_ids,
        "vocab_hash": ckpt.vocab_hash, "text_hash": ckpt.text_hash, "metrics": ckpt.metrics, "vae": vae_state,
    }
    save_atomic(payload, path)
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint (tensors on CPU); :class:`CheckpointError` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbled/pickled-object files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a tailcast checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]}); delete it and publish a new one") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailcast checkpoint (format {raw.get('format') if isinstance(raw, dict) else type(raw).__name__!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; it was written by another tool or cut short — republish it")
    if raw["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format_version {raw['format_version']}, this code reads <= {FORMAT_VERSION}; upgrade tailcast")
    ids = raw["vocab_ids"]
    try:
        vocab = ItemVocab.from_ids(ids)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid vocabulary: {e}") from e
    if vocab.hash() != raw["vocab_hash"]:
        raise CheckpointError(f"checkpoint {path}: the stored vocabulary does not match its stored hash "
                              f"({vocab.hash()[:12]} vs {str(raw['vocab_hash'])[:12]}); the file was altered — republish it")
    try:
        config = SeqEncoderConfig.from_dict(dict(raw["config"]))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {e}") from e
    if config.n_items != len(vocab):
        raise CheckpointError(f"checkpoint {path}: config n_items={config.n_items} but the vocabulary has {len(vocab)} items")
    state = raw["state_dict"]
    try:
        SeqEncoder(config).load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: weights do not fit its config: {str(e)[:300]}") from e
    if _tensor_hash(state.get("text_vectors")) != raw["text_hash"]:
        raise CheckpointError(f"checkpoint {path}: text vectors do not match their stored hash; republish it")
    metrics = raw["metrics"]
    if not isinstance(metrics, dict):
        raise CheckpointError(f"checkpoint {path}: metrics must be a dict, got {type(metrics).__name__}")
    vae_state = raw.get("vae")
    if vae_state is not None:
        try:
            vae = MultVAE.from_state(vae_state)
        except (VaeFormatError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path}: its Mult-VAE does not load: {str(e)[:300]}") from e
        if vae.n_items != len(vocab):
            raise CheckpointError(f"checkpoint {path}: the Mult-VAE has {vae.n_items} items, the vocabulary "
                                  f"{len(vocab)}")
    return Checkpoint(version=str(raw["version"]), created_at=float(raw["created_at"]), step=int(raw["step"]),
                      config=config, state_dict=state, vocab_ids=list(ids), vocab_hash=raw["vocab_hash"],
                      text_hash=raw["text_hash"], metrics=dict(metrics), path=path, vae_state=vae_state)


class CheckpointRegistry(VersionedFolder):
    """Versioned checkpoints in one folder: ``publish`` a new one, read the ``latest`` valid one.

    >>> import tempfile
    >>> reg = CheckpointRegistry(tempfile.mkdtemp(), keep=2)
    >>> reg.latest() is None
    True
    """

    NAME = re.compile(r"^v(\d+)-[0-9TZ]+\.pt$")

    def __init__(self, directory: str | os.PathLike, *, keep: int = 5) -> None:
        super().__init__(directory, keep=keep)

    def publish(self, *, model: SeqEncoder, vocab: ItemVocab, step: int = 0,
                metrics: dict[str, float] | None = None, vae: MultVAE | None = None) -> Checkpoint:
        """Save as the next version and delete all but the newest ``keep`` files."""
        version = f"v{self._next_number():04d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        ckpt = save_checkpoint(self.directory / f"{version}.pt", model=model, vocab=vocab, step=step,
                               metrics=metrics, version=version, vae=vae)
        self._prune()
        return ckpt

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads and validates; corrupt ones are skipped with a warning."""
        for path in reversed(self.paths()):
            try:
                return load_checkpoint(path)
            except CheckpointError as e:
                logger.warning("skipping checkpoint %s: %s", path.name, e)
        return None
