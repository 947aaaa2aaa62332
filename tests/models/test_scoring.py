import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint, load_checkpoint
from models.scoring import BatchScorer, conv1d_to_linear
from models.sequence import SeqEncoder
from models.train import TrainConfig, evaluate_model, train
from models.vocab import ItemVocab


def histories(synthetic, n=100):
    ids = synthetic.vocab.ids
    return [[ids[i - 1] for i in h] for h in synthetic.test[0][:n]]


def test_topk_excludes_history_and_extra_items(trained, synthetic):
    model, _ = trained
    scorer = BatchScorer(model=model, vocab=synthetic.vocab, device="cpu")
    hs = histories(synthetic)
    recs = scorer.topk(hs, k=10)
    assert all(len(r) == 10 for r in recs)
    for h, r in zip(hs, recs):
        assert not set(h) & {i for i, _ in r}
        # best first; scores tied up to rounding (a relative 1e-5) may come in item order instead
        assert all(b <= a + 1e-5 * max(1.0, abs(a)) for (_, a), (_, b) in zip(r, r[1:]))
    extra = [{r[0][0]} for r in recs]
    again = scorer.topk(hs, k=10, exclude=extra)
    assert all(e.isdisjoint(i for i, _ in r) for e, r in zip(extra, again))
    with_history = scorer.topk(hs[:5], k=100, exclude_history=False)
    assert all(len(r) == 100 for r in with_history)


@pytest.mark.parametrize("n_tied", [6, 30])
def test_topk_orders_scores_tied_up_to_rounding_by_item(trained, synthetic, n_tied):
    """Items whose vectors are the user's best item's, each scaled by 1 + a few 2^-24, score the same up to
    rounding: they come out in item order, whichever of them rounded up; 30 of them tie at the k-th
    score beyond the k + TOP_K_SPARE best that torch.topk hands over (the whole row decides)."""
    model, _ = trained
    scorer = BatchScorer(model=model, vocab=synthetic.vocab, device="cpu")
    h = histories(synthetic, 1)[0]
    best = scorer.vocab.encode([scorer.topk([h], k=1)[0][0][0]])[0]
    free = [i for i in range(1, len(scorer.vocab) + 1) if i != best and scorer.vocab.ids[i - 1] not in h]
    rng = np.random.default_rng(0)
    base = scorer.items.clone()
    rounding_differed = 0
    for _ in range(10):
        tied = sorted([best, *rng.choice(free, n_tied - 1, replace=False).tolist()])
        scorer.items = base.clone()
        for i in tied:
            scorer.items[i] = base[best] * (1 + int(rng.integers(-2, 3)) * 2.0**-24)
        got = scorer.topk([h], k=5)[0]
        rounding_differed += len({s for _, s in got}) > 1
        assert [i for i, _ in got] == [scorer.vocab.ids[i - 1] for i in tied[:5]]
    assert rounding_differed > 2  # (else the test proves nothing)


def test_unknown_items_are_dropped_and_k_larger_than_catalogue(trained, synthetic):
    scorer = BatchScorer(model=trained[0], vocab=synthetic.vocab, device="cpu")
    a = scorer.topk([["i3", "i4", "i5"]], k=5)
    b = scorer.topk([["never-seen", "i3", "i4", "also-new", "i5"]], k=5)
    assert [i for i, _ in a[0]] == [i for i, _ in b[0]]
    assert a[0][0][0] == "i6"  # the learnt pattern
    assert len(scorer.topk([["i1", "i2"]], k=1000)[0]) == 98
    assert scorer.topk([], k=3) == []


def test_scorer_matches_model_and_loads_from_checkpoint(tmp_path, trained, synthetic):
    model, _ = trained
    save_checkpoint(tmp_path / "m.pt", model=model, vocab=synthetic.vocab)
    scorer = BatchScorer(load_checkpoint(tmp_path / "m.pt"), device="cpu")
    seqs = scorer.encode_histories(histories(synthetic, 8))
    with torch.no_grad():
        assert torch.allclose(scorer.score_encoded(seqs), model.score(seqs), atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "bf16"])
def test_reduced_precision_keeps_top1(trained, synthetic, mode):
    model, _ = trained
    fp32 = BatchScorer(model=model, vocab=synthetic.vocab, device="cpu")
    low = BatchScorer(model=model, vocab=synthetic.vocab, device="cpu", quantize=mode)
    hs = histories(synthetic, 200)
    top_fp32 = [r[0][0] for r in fp32.topk(hs, k=1)]
    top_low = [r[0][0] for r in low.topk(hs, k=1)]
    agree = np.mean([a == b for a, b in zip(top_fp32, top_low)])
    assert agree >= 0.9, agree


def test_conv1d_rewrite_is_exact(trained):
    import copy
    model = trained[0]
    rewritten = conv1d_to_linear(copy.deepcopy(model)).eval()
    seqs = torch.tensor([[0, 1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(rewritten.score(seqs), model.eval().score(seqs), atol=1e-5)


def test_new_items_need_a_vector_to_be_retrievable(make_config):
    torch.manual_seed(0)
    m = SeqEncoder(make_config(n_items=3, text_dim=4))
    scorer = BatchScorer(model=m, vocab=ItemVocab("abc"), device="cpu")
    assert scorer.extend_items(["d", "a", "d"]) == ["d"]  # known and repeated ids are skipped
    assert "d" not in {i for i, _ in scorer.topk([["a"]], k=10)[0]}  # no text, never trained: not served
    assert scorer.extend_items(["e"], np.ones((1, 4), np.float32)) == ["e"]
    assert "e" in {i for i, _ in scorer.topk([["a"]], k=10)[0]}
    assert m.config.n_items == 3  # the caller's model is untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_and_score(synthetic, make_config):
    model = SeqEncoder(make_config())
    train(model, synthetic.train, synthetic.valid, config=TrainConfig(epochs=3, batch_size=64, lr=3e-3, device="cuda"))
    assert next(model.parameters()).is_cuda
    assert evaluate_model(model, *synthetic.test)["hr"] > 0.3
    for mode in ("none", "bf16"):
        scorer = BatchScorer(model=model, vocab=synthetic.vocab, device="cuda", quantize=mode)
        recs = scorer.topk(histories(synthetic, 16), k=5)
        assert all(len(r) == 5 for r in recs) and scorer.items.is_cuda
    with pytest.raises(ValueError, match="CPU only"):
        BatchScorer(model=model, vocab=synthetic.vocab, device="cuda", quantize="int8")


def test_a_checkpointed_mult_vae_is_a_second_candidate_source(tmp_path, trained, synthetic):
    from models.vae import MultVAEConfig, fit_vae

    vae = fit_vae(synthetic.train, len(synthetic.vocab),
                  MultVAEConfig(hidden=(32,), latent=8, epochs=3, batch_size=64, total_anneal_steps=10))
    ck = save_checkpoint(tmp_path / "m.pt", model=trained[0], vocab=synthetic.vocab, vae=vae)
    scorer = BatchScorer(load_checkpoint(tmp_path / "m.pt"), device="cpu")
    assert ck.has_vae and scorer.vae is not None
    hs = histories(synthetic, 20)
    extra = [{h[0]} for h in hs]
    found = scorer.candidates(hs, 10, extra)
    assert set(found) == {"transformer", "vae"}
    assert found["transformer"] == scorer.topk(hs, 10, extra)
    for h, ex, lst in zip(hs, extra, found["vae"]):
        items = [i for i, _ in lst]
        assert len(items) == 10 and not (set(h) | ex) & set(items)
        assert [s for _, s in lst] == sorted((s for _, s in lst), reverse=True)
    # items added after training (served by the Transformer through text) are unknown to the VAE: no error
    assert scorer.extend_items(["brand-new"]) == ["brand-new"]
    assert len(scorer.candidates(hs[:2], 10)["vae"][0]) == 10
    assert "vae" not in scorer.without_vae().candidates(hs[:2], 10)
    assert scorer.vae is not None  # the copy did not change the original
