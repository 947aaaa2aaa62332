"""Batched serving: histories of item ids -> top-k item ids, one forward and one matrix product per batch.

``BatchScorer`` owns a copy of the model and vocabulary (``extend_items`` never changes the caller's),
caches the (N+1, D) item matrix and per call encodes the histories (unknown items dropped), multiplies the
user vectors once against all items, masks padding, non-retrievable (zero-vector) and excluded items, and
takes the top k (tied scores by item index, as :func:`online.base.top_k`).

Precision (``quantize``):
  * ``"none"``: fp32.
  * ``"int8"``: dynamic int8 quantisation of the encoder's Linear layers (CPU only; GPT-2's ``Conv1D``
    layers are first rewritten as the equivalent ``nn.Linear``); the item matrix product stays fp32.
  * ``"bf16"``: ``torch.autocast`` to bfloat16 for the encoder and the item product (CPU or CUDA).
``benchmarks/scorer_throughput.py`` measures speed and NDCG of each against fp32.

A checkpoint that carries a Mult-VAE (``Checkpoint.build_vae``) makes it a second candidate source:
:meth:`BatchScorer.candidates` returns ``{"transformer": ..., "vae": ...}`` with the same exclusion rules
(the VAE scores in fp32; it knows the items of its training vocabulary, not items added later).

Above ``ann_min_items`` items (default :data:`ANN_MIN_ITEMS`) each model retrieves through an approximate
maximum-inner-product index (:class:`models.ann.MipsIndex`), built in the constructor (off the event loop,
with the checkpoint) and rebuilt by :meth:`BatchScorer.extend_items`: each user fetches ``k`` + (its
excluded items) + ``TOP_K_SPARE`` candidates, scored exactly, with the exclusions and tie-break above, so a
list is the exact one whenever the index found the exact best items.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from models.ann import MipsIndex
from models.checkpoint import Checkpoint
from models.device import choose_device
from models.sequence import SeqEncoder, pad_batch
from models.vae import MultVAE
from models.vocab import ItemVocab
from online.base import TOP_K_SPARE, tie_floor, top_k, top_k_rows
from online.rowindex import ANN_MIN_ITEMS  # the online models' threshold too: one figure for every index

__all__ = ["ANN_MIN_ITEMS", "BatchScorer", "QUANTIZE_MODES", "conv1d_to_linear"]

QUANTIZE_MODES = ("none", "int8", "bf16")


def conv1d_to_linear(module: nn.Module) -> nn.Module:
    """Replace every ``transformers`` ``Conv1D`` (y = x W + b, W: (in, out)) by the same ``nn.Linear``, in place."""
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            w = child.weight  # (in, out)
            lin = nn.Linear(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w.T)
                lin.bias.copy_(child.bias)
            setattr(module, name, lin)
        else:
            conv1d_to_linear(child)
    return module


def _top_k_tied(scores: Tensor, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`online.base.top_k` of every row of (B, M) ``scores``, as (indices, scores) per row (tied scores
    by index: ``torch.topk`` orders them by the kernel's rounding). ``torch.topk`` takes the ``k +
    TOP_K_SPARE`` best on the device and only those go to the CPU, where ties are ordered; a row whose k-th
    score has ties below them sends its whole row.

    >>> s = torch.tensor([[0.5, 0.9, 0.5, float("-inf")], [0.2, 0.2, 0.2 + 1e-7, 0.1]])
    >>> [(top.tolist(), [round(float(v), 3) for v in vals]) for top, vals in _top_k_tied(s, 3)]
    [([1, 0, 2], [0.9, 0.5, 0.5]), ([0, 1, 2], [0.2, 0.2, 0.2])]
    """
    m = scores.shape[1]
    kk = min(k + TOP_K_SPARE, m)
    vals, idx = torch.topk(scores, kk, dim=1)  # (B, kk) best first
    vals, idx = vals.float().cpu().numpy(), idx.cpu().numpy()
    last = vals[:, -1]
    inside = (kk == m) | (last == -np.inf) | (last < tie_floor(vals[:, min(k, m) - 1]))  # the k-th's ties all in
    order = idx.argsort(axis=1)  # the partition by index: top_k_rows' "lower index" is then the item's
    idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
    out = []
    for b, (ok, pos) in enumerate(zip(inside.tolist(), top_k_rows(vals, k))):
        if ok:
            out.append((idx[b][pos], vals[b][pos]))
        else:
            row = scores[b].float().cpu().numpy()
            top = top_k(row, k)
            out.append((top, row[top]))
    return out


class BatchScorer:
    """Top-k retrieval over the whole catalogue for a batch of users."""

    def __init__(
        self,
        checkpoint: Checkpoint | None = None,
        *,
        model: SeqEncoder | None = None,
        vocab: ItemVocab | None = None,
        device: str = "auto",
        quantize: str = "none",
        vae: MultVAE | None = None,
        ann_min_items: int = ANN_MIN_ITEMS,
    ) -> None:
        if (checkpoint is None) == (model is None):
            raise ValueError("give either a checkpoint or model= and vocab=")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
        self.device = choose_device(device)
        if quantize == "int8" and self.device.type != "cpu":
            raise ValueError("quantize='int8' (dynamic quantisation) runs on CPU only; use 'bf16' on CUDA")
        if checkpoint is not None:
            self.model = checkpoint.build_model()
            self.vocab = checkpoint.vocab()
            self.version = checkpoint.version
            vae = checkpoint.build_vae() if vae is None else vae
        else:
            if vocab is None:
                raise ValueError("model= needs vocab= (the ItemVocab it was trained with)")
            self.model = copy.deepcopy(model).cpu()
            self.vocab = vocab.copy()
            self.version = "unversioned"
        if len(self.vocab) != self.model.config.n_items:
            raise ValueError(f"vocabulary has {len(self.vocab)} items, the model {self.model.config.n_items}")
        if vae is not None and vae.n_items > len(self.vocab):
            raise ValueError(f"the Mult-VAE has {vae.n_items} items, more than the vocabulary's {len(self.vocab)}")
        self.vae = None if vae is None else copy.deepcopy(vae).to(self.device).eval()
        self.quantize = quantize
        self.ann_min_items = ann_min_items
        self.model.eval()
        self._build()
        self.vae_ann = self._vae_index()

    def _build(self) -> None:
        """(Re)build the serving encoder and the cached item matrix after any model change."""
        self.model.to(self.device).eval()
        if self.quantize == "int8":
            fp32 = conv1d_to_linear(copy.deepcopy(self.model).cpu())
            with warnings.catch_warnings():
                # torch 2.13 marks eager-mode quantisation deprecated in favour of torchao, which this
                # project does not ship; the API still works and is what we measure
                warnings.filterwarnings("ignore", message=r".*(torch\.ao\.quantization|quantize_per_tensor).*")
                self.encoder = torch.ao.quantization.quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8)
        else:
            self.encoder = self.model
        with torch.inference_mode():
            items = self.model.item_matrix().detach().float()  # (N+1, D)
        self.inputs = items  # (N+1, D) fp32 input lookup table (no per-position text projection)
        self.items = items.to(torch.bfloat16) if self.quantize == "bf16" else items
        bias = torch.zeros(items.shape[0], device=self.device)  # (N+1,) 0 or -inf
        bias[items.abs().sum(1) == 0] = float("-inf")  # padding and items with no vector
        self.bias = bias
        self.ann = self._item_index()

    def _item_index(self) -> MipsIndex | None:
        """The Transformer's ANN index over its retrievable items (labels = item indices), or None for a
        catalogue of at most ``ann_min_items`` items."""
        keep = torch.isfinite(self.bias).nonzero().squeeze(1).cpu()  # (R,) retrievable item indices
        if self.n_items <= self.ann_min_items or len(keep) == 0:
            return None
        return MipsIndex(self.inputs.cpu()[keep].numpy(), keep.numpy())

    def _vae_index(self) -> MipsIndex | None:
        """The Mult-VAE's ANN index over its output layer's [W_i, b_i] (labels = item indices 1..N_vae)."""
        if self.vae is None or self.vae.n_items <= self.ann_min_items:
            return None
        last = self.vae.decoder[-1]  # logits = x @ W.T + b, W (N_vae, H)
        wb = torch.cat([last.weight, last.bias[:, None]], dim=1).detach().float().cpu().numpy()  # (N_vae, H+1)
        return MipsIndex(wb, np.arange(1, self.vae.n_items + 1))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.quantize == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def max_len(self) -> int:
        return self.model.config.max_len

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    def encode_histories(self, histories: Sequence[Sequence[str]]) -> Tensor:
        """(B, T) left-padded item indices on the scorer's device; unknown items are dropped."""
        return pad_batch([self.vocab.encode(h) for h in histories], self.max_len, device=self.device)

    @torch.inference_mode()
    def score_encoded(self, seqs: Tensor) -> Tensor:
        """(B, T) indices -> (B, N+1) fp32 scores; -inf for padding and non-retrievable items."""
        return self._score_items(self._user_vectors(seqs), None)

    def _user_vectors(self, seqs: Tensor) -> Tensor:
        """(B, T) indices -> (B, D) user vectors (the queries of the item product)."""
        with self._autocast():
            return self.encoder.user_vectors(seqs.to(self.device), item_table=self.inputs)

    def _score_items(self, users: Tensor, cols: Tensor | None) -> Tensor:
        """(B, D) user vectors -> (B, M) fp32 scores of items ``cols`` (M,), all N+1 when None; -inf for
        padding and non-retrievable items."""
        items, bias = (self.items, self.bias) if cols is None else (self.items[cols], self.bias[cols])
        with self._autocast():
            scores = users.to(items.dtype) @ items.T  # (B, M): the one item product
        return scores.float() + bias

    def _check(self, histories: Sequence[Sequence[str]], k: int, exclude) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        if exclude is not None and len(exclude) != len(histories):
            raise ValueError(f"{len(exclude)} exclusion sets for {len(histories)} histories")

    def _drops(self, encoded: list[list[int]], exclude: Sequence[Iterable[str]] | None,
               exclude_history: bool) -> list[set[int]]:
        """Each row's excluded item indices: its history (with ``exclude_history``) and ``exclude[b]``."""
        drops = []
        for b, enc in enumerate(encoded):
            drop = set(enc) if exclude_history else set()
            if exclude is not None:
                drop.update(self.vocab.encode(exclude[b]))
            drops.append(drop)
        return drops

    def _top(self, scores: Tensor, encoded: list[list[int]], k: int, exclude: Sequence[Iterable[str]] | None,
             exclude_history: bool) -> list[list[tuple[str, float]]]:
        """Mask each row's history / excluded items in (B, M) ``scores`` (M <= N+1) and take the top ``k``
        (tied scores by index, see :func:`_top_k_tied`)."""
        rows, cols = [], []
        width = scores.shape[1]
        for b, drop in enumerate(self._drops(encoded, exclude, exclude_history)):
            drop = [i for i in drop if i < width]
            rows.extend([b] * len(drop))
            cols.extend(drop)
        if rows:
            scores[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = float("-inf")
        ids = self.vocab.ids
        return [[(ids[i - 1], v) for i, v in zip(top.tolist(), vals.tolist())] for top, vals in _top_k_tied(scores, k)]

    @torch.inference_mode()
    def topk(
        self,
        histories: Sequence[Sequence[str]],
        k: int,
        exclude: Sequence[Iterable[str]] | None = None,
        *,
        exclude_history: bool = True,
    ) -> list[list[tuple[str, float]]]:
        """Best ``k`` (item id, score) per user from the Transformer, best first. Excluded: the user's history
        items (unless ``exclude_history=False``) and ``exclude[b]``; lists are shorter when fewer items are left."""
        self._check(histories, k, exclude)
        if not histories:
            return []
        return self._transformer_top([self.vocab.encode(h) for h in histories], k, exclude, exclude_history)

    @torch.inference_mode()
    def candidates(self, histories: Sequence[Sequence[str]], k: int,
                   exclude: Sequence[Iterable[str]] | None = None) -> dict[str, list[list[tuple[str, float]]]]:
        """Every batch source's top ``k`` per user: ``{"transformer": lists}`` plus ``"vae"`` when there is
        one (the histories are encoded once for both)."""
        self._check(histories, k, exclude)
        if not histories:
            return {"transformer": []} if self.vae is None else {"transformer": [], "vae": []}
        encoded = [self.vocab.encode(h) for h in histories]
        out = {"transformer": self._transformer_top(encoded, k, exclude, True)}
        if self.vae is not None:
            out["vae"] = self._vae_top(encoded, k, exclude, True)
        return out

    def _ann_top(self, index: MipsIndex, queries: Tensor, score: Callable[[Tensor], Tensor],
                 encoded: list[list[int]], k: int, exclude, exclude_history: bool) -> list[list[tuple[str, float]]]:
        """:meth:`_top` through ``index``: each row fetches its ``k`` + (excluded items) + ``TOP_K_SPARE``
        approximate best items; ``score`` (U item indices -> (B, U) exact scores) scores the union of the
        fetched items, each row keeps its own fetched ones, drops its excluded ones and takes the top ``k``
        with the exact path's tie-break (columns ascend by item index, as in the full product)."""
        drops = self._drops(encoded, exclude, exclude_history)
        fetch = k + max(len(d) for d in drops) + TOP_K_SPARE
        found = index.search(queries.float().cpu().numpy(), fetch)  # (B, fetch) item indices, -1 = none
        union = np.unique(found[found >= 0])  # (U,) ascending
        if len(union) == 0:
            return [[] for _ in encoded]
        keep = np.zeros((len(encoded), len(union)), dtype=bool)  # (B, U): fetched by this row, not excluded
        rows, cols = np.nonzero(found >= 0)
        keep[rows, np.searchsorted(union, found[rows, cols])] = True
        for b, drop in enumerate(drops):
            d = np.fromiter(drop, dtype=np.int64, count=len(drop))
            pos = np.minimum(np.searchsorted(union, d), len(union) - 1)
            keep[b, pos[union[pos] == d]] = False
        scores = score(torch.from_numpy(union).to(self.device)).float().cpu()  # (B, U)
        scores[~torch.from_numpy(keep)] = float("-inf")
        ids = self.vocab.ids
        return [[(ids[union[c] - 1], v) for c, v in zip(top.tolist(), vals.tolist())]
                for top, vals in _top_k_tied(scores, k)]

    def _transformer_top(self, encoded: list[list[int]], k: int, exclude, exclude_history: bool):
        seqs = pad_batch(encoded, self.max_len, device=self.device)
        if self.ann is not None:
            users = self._user_vectors(seqs)  # (B, D)
            return self._ann_top(self.ann, users, lambda cols: self._score_items(users, cols), encoded, k, exclude,
                                 exclude_history)
        scores = self.score_encoded(seqs)  # (B, N+1)
        return self._top(scores, encoded, k, exclude, exclude_history)

    def _vae_top(self, encoded: list[list[int]], k: int, exclude, exclude_history: bool):
        if self.vae_ann is not None:
            x = self._vae_last_input(encoded)  # (B, H)
            last = self.vae.decoder[-1]
            queries = torch.cat([x, torch.ones(len(x), 1, device=x.device)], dim=1)  # (B, H+1): [x, 1] . [W_i, b_i]
            return self._ann_top(self.vae_ann, queries, lambda cols: x @ last.weight[cols - 1].T + last.bias[cols - 1],
                                 encoded, k, exclude, exclude_history)
        scores = self.vae.score(encoded).float()  # (B, N_vae + 1), column 0 = -inf
        return self._top(scores, encoded, k, exclude, exclude_history)

    def _vae_last_input(self, encoded: list[list[int]]) -> Tensor:
        """(B, H) input of the Mult-VAE's output layer for the users' mean z (``MultVAE.decode`` up to its
        last layer, eval mode: the logits are this @ W.T + b)."""
        h = self.vae.encode(encoded)[0]  # (B, Z) mu
        for n, layer in enumerate(self.vae.decoder[:-1]):
            h = layer(h) if n == 0 else layer(torch.tanh(h))
        return h if len(self.vae.decoder) == 1 else torch.tanh(h)

    def without_vae(self) -> "BatchScorer":
        """A shallow copy serving the Transformer alone (shares the encoder; for side-by-side evaluation)."""
        other = copy.copy(self)
        other.vae = other.vae_ann = None
        return other

    def extend_items(self, new_ids: Sequence[str], text_vectors: np.ndarray | Tensor | None = None) -> list[str]:
        """Add items unseen in training; with text vectors ((len(new_ids), C)) they are retrievable at once
        (vector = text projection). Known ids are skipped. Returns the ids actually added."""
        if text_vectors is not None:
            text_vectors = torch.as_tensor(np.asarray(text_vectors), dtype=torch.float32)
            if text_vectors.shape[0] != len(new_ids):
                raise ValueError(f"{text_vectors.shape[0]} text vectors for {len(new_ids)} ids")
        seen: set[str] = set()
        keep = []  # positions in new_ids of the first occurrence of each unknown id
        for j, item in enumerate(new_ids):
            if item not in self.vocab and item not in seen:
                seen.add(item)
                keep.append(j)
        added = [new_ids[j] for j in keep]
        if not added:
            return []
        self.model.cpu().extend_items(len(added), None if text_vectors is None else text_vectors[keep])
        self.vocab.add_many(added)
        self._build()
        return added
