"""benchmarks/refresh_future.py: how the events a refresh serves are scored, and its --set options."""

from __future__ import annotations

import pytest
import torch

from benchmarks.refresh_future import _config, served_ranks
from models.vocab import ItemVocab


class _Scorer:
    """Scores c > b > a for every history."""

    max_len = 2
    vocab = ItemVocab.from_ids(["a", "b", "c"])

    def encode_histories(self, histories):
        return histories

    def score_encoded(self, histories):
        return torch.tensor([[float("-inf"), 1.0, 2.0, 3.0]] * len(histories))


def test_served_events_rank_with_the_users_items_excluded_and_unknown_targets_missed():
    history = {"u": ["a"], "w": ["c"]}
    served = [("u", "c"), ("v", "a"), ("w", "a"), ("u", "b"), ("u", "z"), ("u", "c")]
    # u: c first; v has no earlier event (no target); w: c excluded, b above a; u: a and c excluded;
    # z is outside the vocabulary (a miss); a repeat of c is not excluded
    assert served_ranks(_Scorer(), history, served, batch=2) == [0, 1, 0, 4, 0]
    assert history["v"] == ["a"] and history["u"] == ["a", "c", "b", "z", "c"]


def test_set_reads_each_field_as_its_type():
    config = _config(["loss=sampled", "dropout=0.3", "n_negatives=256", "vae=true"])
    assert (config.loss, config.dropout, config.n_negatives, config.vae) == ("sampled", 0.3, 256, True)
    with pytest.raises(SystemExit):
        _config(["vae_hidden=600"])
