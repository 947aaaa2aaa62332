import pytest
import torch

from models.sequence import ConfigError, SeqEncoder, SeqEncoderConfig, pad_batch


def test_shapes_and_padding_column(make_config):
    torch.manual_seed(0)
    m = SeqEncoder(make_config(text_dim=8)).eval()
    seqs = pad_batch([[1, 2, 3], [4]], max_len=10)  # (2, 3)
    assert m.user_vectors(seqs).shape == (2, 32)
    assert m.item_matrix().shape == (101, 32)
    s = m.score(seqs)
    assert s.shape == (2, 101) and torch.isinf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
    logits, loss = m(seqs)
    assert torch.equal(logits, s) and loss is None


def test_causal_and_left_padding_invariant(make_config):
    torch.manual_seed(0)
    m = SeqEncoder(make_config()).eval()
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[5, 6, 7, 9]])
    with torch.no_grad():
        ha, hb = m.hidden(a), m.hidden(b)
        assert torch.allclose(ha[:, :3], hb[:, :3])  # the future does not leak into the past
        assert not torch.allclose(ha[:, 3], hb[:, 3])
        padded = torch.tensor([[0, 0, 0, 5, 6, 7, 8]])
        assert torch.allclose(m.score(a), m.score(padded), atol=1e-5)  # padding width does not matter
        assert torch.isfinite(m.score(torch.zeros(1, 3, dtype=torch.long))[:, 1:]).all()  # empty history


@pytest.mark.parametrize("loss", ["ce", "sampled"])
def test_losses_are_finite_and_backpropagate(make_config, loss):
    torch.manual_seed(0)
    m = SeqEncoder(make_config(loss=loss, n_negatives=16, text_dim=8, id_dropout=0.5)).train()
    seqs = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    targets = torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]])
    _, value = m(seqs, targets)
    value.backward()
    assert torch.isfinite(value) and m.item_emb.weight.grad is not None and m.text_proj.weight.grad is not None


def test_config_validation_and_round_trip(make_config):
    cfg = make_config()
    assert SeqEncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="divisible"):
        SeqEncoderConfig(n_items=5, d_model=10, n_heads=3)
    with pytest.raises(ConfigError, match="unknown SeqEncoderConfig keys"):
        SeqEncoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert SeqEncoderConfig(n_items=10).resolved_loss == "ce"
    assert SeqEncoderConfig(n_items=10**6).resolved_loss == "sampled"
    with pytest.raises(ValueError, match="max_len"):
        SeqEncoder(cfg).hidden(torch.ones(1, 11, dtype=torch.long))
