import pytest
import torch

from models.sequence import SeqEncoder
from models.vocab import ItemVocab



def test_indices_start_at_one_and_unknown_items_are_dropped():
    v = ItemVocab(["x", "y"])
    assert v.encode(["y", "nope", "x"]) == [2, 1]
    assert v.get("y") == 2 and v.get("nope") is None


def test_hash_is_stable_and_order_sensitive():
    assert ItemVocab(["a", "b"]).hash() == ItemVocab(["a", "b"]).hash()
    assert ItemVocab(["a", "b"]).hash() != ItemVocab(["b", "a"]).hash()
    assert len(ItemVocab(["a"]).hash()) == 64


def test_growth_keeps_indices_and_model_rows(make_config):
    v = ItemVocab(["a", "b", "c"])
    old = v.copy()
    assert v.add_many(["c", "d", "e", "d"]) == ["d", "e"]
    assert v.ids[:3] == old.ids and v.get("d") == 4
    model = SeqEncoder(make_config(n_items=3, text_dim=8))
    before = model.item_matrix().detach().clone()
    model.extend_items(2, torch.randn(2, 8))
    after = model.item_matrix().detach()
    assert after.shape == (6, 32) and model.config.n_items == 5
    assert torch.equal(after[:4], before)
    with pytest.raises(ValueError, match="duplicate"):
        ItemVocab.from_ids(["a", "a"])
