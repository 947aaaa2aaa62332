"""Transformer sequence encoder: SASRec-style next-item model built from a Hugging Face GPT-2 config.

Shapes: B batch, T positions (<= max_len, left-padded), D = d_model, N = n_items (indices 1..N, 0 = padding),
M = number of non-padding target positions in a batch, K = sampled negatives, C = text_dim.

Item representation (the input AND, tied, the output): ``e_i = id_embedding[i] + W_text @ text_vector[i]``
(zero text vector without text). Items added after training (``extend_items``) get a zero id row: their
text projection makes them retrievable at once. ``id_dropout`` (DropoutNet-style) trains that path: each
step a random share of the items with text lose their id embedding.

Training objective (``loss``):
  * ``"ce"``: full softmax cross-entropy over all N items (SASRec-CE / eSASRec): no sampling bias to
    correct; one (M, D) x (D, N) matmul per step.
  * ``"sampled"``: sampled softmax with logQ correction for large catalogues: K negatives shared by the
    batch, drawn from q ~ (count + 1) ** 0.75 (``set_negative_counts``), each negative logit minus
    ``log(K q_j)`` so the normaliser estimates the full softmax's; the positive is not corrected;
    accidental hits are masked.
  * ``"auto"`` (default): ``"ce"`` when N <= ``full_ce_max_items``, else ``"sampled"``.
Softmax (full or logQ-corrected) rather than gBCE: gBCE's calibration undoes the overconfidence that
negative-sampled BCE creates, which full CE never creates.

>>> import torch
>>> m = SeqEncoder(SeqEncoderConfig(n_items=20, max_len=8, d_model=16, n_layers=1, n_heads=2, text_dim=0))
>>> seqs = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])          # (B, T) left-padded
>>> logits, loss = m(seqs, targets=torch.tensor([[0, 0, 4, 5, 6], [2, 3, 4, 5, 6]]))
>>> logits is None, loss.ndim
(True, 0)
>>> m.eval().score(seqs).shape                                          # (B, N + 1); column 0 is -inf
torch.Size([2, 21])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GPT2Config, GPT2Model

__all__ = ["SeqEncoderConfig", "SeqEncoder", "ConfigError", "pad_batch"]

LOSSES = ("auto", "ce", "sampled")


class ConfigError(ValueError):
    """A model configuration is invalid or does not match the weights it is used with."""


def config_from_dict(cls: type, d: dict[str, Any], error: type[Exception] = ConfigError) -> Any:
    """``cls(**d)`` for a config dataclass; ``error`` names any key ``cls`` does not have, and the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise error(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class SeqEncoderConfig:
    n_items: int  # N real items, indices 1..N (0 = padding)
    max_len: int = 50  # longest history the encoder reads (older items are cut)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    text_dim: int = 384  # size of the frozen item text vectors (MiniLM: 384); 0 = ids only
    id_dropout: float = 0.0  # share of text-bearing items trained text-only per step (cold-start path)
    loss: str = "auto"  # "ce" | "sampled" | "auto"
    n_negatives: int = 512  # K, for loss="sampled"
    full_ce_max_items: int = 20_000  # "auto" switches to sampled softmax above this N

    def __post_init__(self) -> None:
        checks = [
            (self.n_items >= 1, "n_items must be >= 1"),
            (self.max_len >= 1, "max_len must be >= 1"),
            (self.d_model >= 1 and self.n_heads >= 1, "d_model and n_heads must be >= 1"),
            (self.d_model % self.n_heads == 0, f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}"),
            (self.n_layers >= 1, "n_layers must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (0.0 <= self.id_dropout < 1.0, "id_dropout must be in [0, 1)"),
            (self.text_dim >= 0, "text_dim must be >= 0 (0 = no text vectors)"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.n_negatives >= 1, "n_negatives must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"SeqEncoderConfig: {msg}")

    @property
    def resolved_loss(self) -> str:
        if self.loss != "auto":
            return self.loss
        return "ce" if self.n_items <= self.full_ce_max_items else "sampled"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SeqEncoderConfig":
        return config_from_dict(cls, d)


class SeqEncoder(nn.Module):
    """Causal Transformer over item sequences; item vectors tied between input and output."""

    def __init__(self, config: SeqEncoderConfig, *, text_vectors: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        N, D, C = config.n_items, config.d_model, config.text_dim
        self.item_emb = nn.Embedding(N + 1, D, padding_idx=0)  # (N+1, D) id part
        nn.init.normal_(self.item_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if C:
            self.text_proj = nn.Linear(C, D, bias=False)  # (C -> D) content part
            self.register_buffer("text_vectors", torch.zeros(N + 1, C))  # (N+1, C) frozen, row 0 = 0
            if text_vectors is not None:
                self.set_text_vectors(text_vectors)
        # log q_i of the negative sampler for loss="sampled"; uniform until set_negative_counts()
        self.register_buffer("neg_log_q", self._log_q(torch.ones(N + 1)), persistent=False)
        gpt = GPT2Config(
            vocab_size=1,  # unused: the model is fed inputs_embeds
            n_positions=config.max_len,
            n_embd=D,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_inner=4 * D,
            activation_function="gelu",  # exact GELU: one fused kernel (gelu_new is 5 passes, ~half of CPU serving time)
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            bos_token_id=None,
            eos_token_id=None,
            use_cache=False,
        )
        self.transformer = GPT2Model(gpt)  # pre-LN blocks + learned positions + final LayerNorm

    def _id_drop_mask(self) -> Tensor | None:
        """(N+1,) bool: items whose id embedding is dropped this step (training only, text items only)."""
        p = self.config.id_dropout
        if not (self.training and p > 0 and self.config.text_dim):
            return None
        has_text = self.text_vectors.abs().sum(-1) > 0  # (N+1,)
        return has_text & (torch.rand(has_text.shape, device=has_text.device) < p)

    def _item_vectors(self, idx: Tensor | None, drop: Tensor | None = None) -> Tensor:
        """Vectors of items ``idx`` (any shape -> (..., D)); ``None``: all items (N+1, D)."""
        w = self.item_emb.weight
        ids = w if idx is None else F.embedding(idx, w)
        if drop is not None:
            keep = ~drop if idx is None else ~drop[idx]
            ids = ids * keep.unsqueeze(-1).to(ids.dtype)
        if not self.config.text_dim:
            return ids
        text = self.text_vectors if idx is None else self.text_vectors[idx]  # (..., C)
        return ids + self.text_proj(text)

    def item_matrix(self) -> Tensor:
        """(N+1, D) item vectors; row 0 (padding) is zero."""
        return self._item_vectors(None)

    def hidden(self, seqs: Tensor, drop: Tensor | None = None, *, item_table: Tensor | None = None) -> Tensor:
        """(B, T) left-padded item indices -> (B, T, D) causal hidden states.

        ``item_table``: a cached ``item_matrix()`` (N+1, D) to look inputs up in (serving: saves the text
        projection of every input position)."""
        B, T = seqs.shape
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} > max_len {self.config.max_len}; keep the last max_len items")
        x = F.embedding(seqs, item_table) if item_table is not None else self._item_vectors(seqs, drop)  # (B, T, D)
        mask = seqs != 0  # (B, T)
        mask[:, -1] = True  # an empty history still attends to its last slot (no all-masked rows)
        # right-aligned positions: the newest item is always at max_len - 1, however T was trimmed
        pos = torch.arange(self.config.max_len - T, self.config.max_len, device=seqs.device).expand(B, T)
        out = self.transformer(inputs_embeds=x, attention_mask=mask.long(), position_ids=pos)
        return out.last_hidden_state  # (B, T, D)

    def user_vectors(self, seqs: Tensor, *, item_table: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, D): hidden state at the last position (the next-item query)."""
        return self.hidden(seqs, item_table=item_table)[:, -1]

    def score(self, seqs: Tensor) -> Tensor:
        """(B, T) -> (B, N+1) scores of every item as the next one; column 0 (padding) is -inf."""
        scores = self.user_vectors(seqs) @ self.item_matrix().T  # (B, N+1)
        scores[:, 0] = float("-inf")
        return scores

    def forward(self, seqs: Tensor, targets: Tensor | None = None, weights: Tensor | None = None
                ) -> tuple[Tensor | None, Tensor | None]:
        """Training: ``targets`` (B, T) next items (0 = no target) -> ``(None, loss)``.
        Inference: ``targets=None`` -> ``(scores (B, N+1) for the last position, None)``.

        ``weights`` (B, T), optional: the loss is then the weighted mean sum_m w_m l_m / sum_m w_m over the
        M target positions (e.g. < 1 where the target is a synthetic item, ``models.augment``); without
        it, the plain mean (the same computation as before weights existed)."""
        if targets is None:
            return self.score(seqs), None
        if targets.shape != seqs.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of seqs {tuple(seqs.shape)}")
        if weights is not None and weights.shape != targets.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must have the shape of targets {tuple(targets.shape)}")
        drop = self._id_drop_mask()
        h = self.hidden(seqs, drop)  # (B, T, D)
        sel = targets > 0  # (B, T)
        h, t = h[sel], targets[sel]  # (M, D), (M,)
        w = None if weights is None else weights[sel].float()  # (M,)
        if w is not None and not (torch.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
            raise ValueError("weights at target positions must be finite, >= 0, and not all zero")
        reduction = "mean" if w is None else "none"
        if self.config.resolved_loss == "ce":
            items = self._item_vectors(None, drop)[1:]  # (N, D): real items only
            logits = h @ items.T  # (M, N)
            loss = F.cross_entropy(logits, t - 1, reduction=reduction)  # () or (M,)
        else:
            loss = self._sampled_softmax_loss(h, t, drop, reduction=reduction)
        if w is not None:
            loss = (loss.float() * w).sum() / w.sum()  # weighted mean over the M targets
        return None, loss

    def _sampled_softmax_loss(self, h: Tensor, t: Tensor, drop: Tensor | None, *, reduction: str = "mean"
                              ) -> Tensor:
        K = self.config.n_negatives
        neg = torch.multinomial(self.neg_log_q.exp(), K, replacement=True)  # (K,) shared negatives
        # log Z ~ log(exp(s_t) + sum_j exp(s_j) / (K q_j)): the positive is always present, so only the
        # sampled negatives are importance-weighted (logQ-corrected); correcting the positive too would
        # excuse rare positives and bury tail items
        pos = (h * self._item_vectors(t, drop)).sum(-1)  # (M,)
        negl = h @ self._item_vectors(neg, drop).T - (math.log(K) + self.neg_log_q[neg])  # (M, K)
        negl = negl.masked_fill(neg.unsqueeze(0) == t.unsqueeze(1), float("-inf"))  # accidental hits
        logits = torch.cat([pos.unsqueeze(1), negl], dim=1)  # (M, 1+K), the positive is class 0
        return F.cross_entropy(logits, torch.zeros_like(t), reduction=reduction)  # () or (M,)

    @staticmethod
    def _log_q(counts: Tensor, alpha: float = 0.75) -> Tensor:
        q = (counts.double().clamp(min=0) + 1.0) ** alpha
        q[0] = 0.0
        return (q / q.sum()).log().float()

    def set_negative_counts(self, counts: Tensor, *, alpha: float = 0.75) -> None:
        """Negative sampler for ``loss="sampled"``: q_i ~ (counts[i] + 1) ** alpha; counts is (N+1,)."""
        if counts.shape != (self.config.n_items + 1,):
            raise ValueError(f"counts must have shape ({self.config.n_items + 1},), got {tuple(counts.shape)}")
        self.neg_log_q = self._log_q(counts.to(self.neg_log_q.device), alpha)

    def set_text_vectors(self, vectors: Tensor) -> None:
        """Set the frozen (N+1, C) text vectors (row 0 and items without text: zeros)."""
        N, C = self.config.n_items, self.config.text_dim
        if not C:
            raise ConfigError("this model was built with text_dim=0; it has no text vectors")
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.shape != (N + 1, C):
            raise ValueError(f"text vectors must have shape ({N + 1}, {C}) (row 0 = padding), got {tuple(vectors.shape)}")
        with torch.no_grad():
            self.text_vectors.copy_(vectors)
            self.text_vectors[0].zero_()

    @torch.no_grad()
    def extend_items(self, n_new: int, text_vectors: Tensor | None = None) -> None:
        """Append ``n_new`` items (indices N+1..N+n_new) without touching the trained rows.

        New items get a zero id embedding, so their vector is the projection of ``text_vectors``
        ((n_new, C); zeros for items without text). Optimizers holding the old parameters are stale."""
        if n_new < 0:
            raise ValueError("n_new must be >= 0")
        if n_new == 0:
            return
        cfg = self.config
        w = self.item_emb.weight
        emb = nn.Embedding(cfg.n_items + 1 + n_new, cfg.d_model, padding_idx=0, device=w.device, dtype=w.dtype)
        emb.weight.zero_()
        emb.weight[: cfg.n_items + 1] = w
        self.item_emb = emb
        if cfg.text_dim:
            new_text = torch.zeros(n_new, cfg.text_dim, device=w.device)
            if text_vectors is not None:
                text_vectors = torch.as_tensor(text_vectors, dtype=torch.float32)
                if text_vectors.shape != (n_new, cfg.text_dim):
                    raise ValueError(f"text vectors for new items must be ({n_new}, {cfg.text_dim}), got {tuple(text_vectors.shape)}")
                new_text = text_vectors.to(w.device)
            self.text_vectors = torch.cat([self.text_vectors, new_text])
        elif text_vectors is not None:
            raise ConfigError("this model was built with text_dim=0; it cannot use text vectors for new items")
        self.config = dataclasses.replace(cfg, n_items=cfg.n_items + n_new)
        # the sampler resets to uniform; the trainer sets counts again before training
        self.neg_log_q = self._log_q(torch.ones(self.config.n_items + 1, device=w.device))


def pad_batch(seqs: list[list[int]], max_len: int, *, device: torch.device | str = "cpu") -> Tensor:
    """Left-pad the last ``max_len`` items of each sequence -> (B, T) long, T = the longest kept length
    (at least 1), so short batches cost less; positions are right-aligned inside ``SeqEncoder.hidden``.

    >>> pad_batch([[1, 2, 3], [4]], max_len=2).tolist()
    [[2, 3], [0, 4]]
    """
    T = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = torch.zeros(len(seqs), T, dtype=torch.long)
    for b, s in enumerate(seqs):
        s = s[-T:]
        if s:
            out[b, T - len(s) :] = torch.as_tensor(s, dtype=torch.long)
    return out.to(device)
