import logging

import pytest
import torch

from models.checkpoint import CheckpointError, CheckpointRegistry, load_checkpoint, save_checkpoint
from models.sequence import SeqEncoder
from models.vocab import ItemVocab


@pytest.fixture()
def model_vocab(trained, synthetic):
    return trained[0], synthetic.vocab


def test_round_trip_gives_identical_scores(tmp_path, model_vocab):
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    saved = save_checkpoint(path, model=model, vocab=vocab, step=7, metrics={"valid_ndcg": 0.5})
    ck = load_checkpoint(path)
    assert ck.version == saved.version and ck.step == 7 and ck.metrics == {"valid_ndcg": 0.5}
    assert ck.vocab().hash() == vocab.hash() and ck.config == model.config
    seqs = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.equal(ck.build_model().score(seqs), model.eval().score(seqs))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind


def test_text_vectors_travel_with_the_checkpoint(tmp_path, make_config):
    m = SeqEncoder(make_config(n_items=3, text_dim=4), text_vectors=torch.rand(4, 4))
    save_checkpoint(tmp_path / "t.pt", model=m, vocab=ItemVocab("abc"))
    ck = load_checkpoint(tmp_path / "t.pt")
    assert ck.text_hash is not None
    assert torch.equal(ck.build_model().text_vectors, m.text_vectors)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file_raises_checkpoint_error(tmp_path, model_vocab, damage):
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    save_checkpoint(path, model=model, vocab=vocab)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_mismatches_raise_actionable_errors(tmp_path, model_vocab):
    model, vocab = model_vocab
    path = tmp_path / "m.pt"
    save_checkpoint(path, model=model, vocab=vocab)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pt")
    raw = torch.load(path, weights_only=True)
    del raw["vocab_hash"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)
    raw["vocab_hash"] = vocab.hash()
    raw["vocab_ids"] = list(reversed(raw["vocab_ids"]))
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="does not match its stored hash"):
        load_checkpoint(path)


def test_registry_latest_skips_corrupt_newest_and_keeps_n(tmp_path, model_vocab, caplog):
    model, vocab = model_vocab
    reg = CheckpointRegistry(tmp_path, keep=2)
    first = reg.publish(model=model, vocab=vocab, step=1)
    second = reg.publish(model=model, vocab=vocab, step=2)
    assert first.version.startswith("v0001-") and second.version.startswith("v0002-")
    assert reg.latest().version == second.version
    third = reg.publish(model=model, vocab=vocab, step=3)
    assert [p.name for p in reg.paths()] == [second.version + ".pt", third.version + ".pt"]
    reg.paths()[-1].write_bytes(b"\x00" * 100)  # the newest file is corrupt
    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        latest = reg.latest()
    assert latest.version == second.version and latest.step == 2
    assert any("skipping checkpoint" in r.message for r in caplog.records)


@pytest.fixture(scope="module")
def vae(synthetic):
    from models.vae import MultVAEConfig, fit_vae

    return fit_vae(synthetic.train, len(synthetic.vocab),
                   MultVAEConfig(hidden=(32,), latent=8, epochs=3, batch_size=64, total_anneal_steps=10))


def test_a_mult_vae_travels_with_the_checkpoint(tmp_path, model_vocab, vae):
    from models.vae import score_users

    model, vocab = model_vocab
    plain = save_checkpoint(tmp_path / "plain.pt", model=model, vocab=vocab)
    with_vae = save_checkpoint(tmp_path / "vae.pt", model=model, vocab=vocab, vae=vae)
    assert plain.version != with_vae.version  # the VAE's weights are part of the content hash
    assert load_checkpoint(tmp_path / "plain.pt").build_vae() is None
    ck = load_checkpoint(tmp_path / "vae.pt")
    assert ck.has_vae
    hs = [[1, 2, 3], [50]]
    assert (score_users(ck.build_vae(), hs) == score_users(vae, hs)).all()


def test_a_mult_vae_over_another_vocabulary_is_refused(tmp_path, model_vocab, vae):
    from models.sequence import ConfigError
    from models.vae import MultVAE, MultVAEConfig

    model, vocab = model_vocab
    small = MultVAE(len(vocab) - 1, MultVAEConfig(hidden=(8,), latent=2))
    with pytest.raises(ConfigError, match="same vocabulary"):
        save_checkpoint(tmp_path / "x.pt", model=model, vocab=vocab, vae=small)
    # a file whose VAE was damaged after writing: refused with the reason, as any other corruption
    save_checkpoint(tmp_path / "y.pt", model=model, vocab=vocab, vae=vae)
    raw = torch.load(tmp_path / "y.pt", weights_only=True)
    raw["vae"]["state_dict"].pop(next(iter(raw["vae"]["state_dict"])))
    torch.save(raw, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="Mult-VAE does not load"):
        load_checkpoint(tmp_path / "y.pt")
