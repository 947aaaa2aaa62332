"""BatchScorer through its ANN index (models.ann), forced on by a small ``ann_min_items``: the same lists as
exact search on a well-separated catalogue, with the same exclusions and tie-break, and a new index with
every new model."""

import numpy as np
import pytest
import torch

from models.ann import MipsIndex
from models.checkpoint import load_checkpoint, save_checkpoint
from models.scoring import ANN_MIN_ITEMS, BatchScorer
from models.sequence import SeqEncoder
from models.vae import MultVAE, MultVAEConfig
from models.vocab import ItemVocab

N, D, CLUSTERS = 3000, 16, 30


def clustered(n: int, d: int, seed: int) -> torch.Tensor:
    """(n, d) tight clusters around 30 random unit centres: a user's best items all lie in its best cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(CLUSTERS, size=n)] + 0.05 * rng.standard_normal((n, d))
    return torch.as_tensor(x * rng.uniform(0.8, 1.2, size=(n, 1)), dtype=torch.float32)


def encoder(make_config, seed: int) -> SeqEncoder:
    torch.manual_seed(seed)
    m = SeqEncoder(make_config(n_items=N, d_model=D))
    with torch.no_grad():
        m.item_emb.weight[1:] = clustered(N, D, seed)
    return m.eval()


@pytest.fixture(scope="module")
def vocab():
    return ItemVocab(f"i{k}" for k in range(1, N + 1))


@pytest.fixture(scope="module")
def model(make_config):
    return encoder(make_config, 0)


def user_histories(n: int = 40, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"i{k}" for k in rng.integers(1, N + 1, size=int(rng.integers(1, 8)))] for _ in range(n)]


def same_lists(a, b) -> None:
    """The same items in the same order; scores equal up to the rounding of a product over fewer columns."""
    assert [[i for i, _ in r] for r in a] == [[i for i, _ in r] for r in b]
    for ra, rb in zip(a, b):
        np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], rtol=1e-5, atol=1e-6)


def test_only_large_catalogues_get_an_index(model, vocab):
    assert BatchScorer(model=model, vocab=vocab, device="cpu").ann is None  # N < ANN_MIN_ITEMS
    assert N < ANN_MIN_ITEMS
    forced = BatchScorer(model=model, vocab=vocab, device="cpu", ann_min_items=N - 1)
    assert isinstance(forced.ann, MipsIndex) and len(forced.ann) == N and forced.vae_ann is None
    assert BatchScorer(model=model, vocab=vocab, device="cpu", ann_min_items=N).ann is None  # "larger than"


def test_ann_topk_equals_exact_topk_with_exclusions(model, vocab):
    exact = BatchScorer(model=model, vocab=vocab, device="cpu")
    ann = BatchScorer(model=model, vocab=vocab, device="cpu", ann_min_items=1000)
    hs = user_histories()
    for k in (1, 10, 50):
        same_lists(ann.topk(hs, k), exact.topk(hs, k))
    # the exact lists' best three excluded, and the history kept (exclude_history=False) or not
    best = [{i for i, _ in r[:3]} for r in exact.topk(hs, 3)]
    for keep_history in (False, True):
        got = ann.topk(hs, 10, best, exclude_history=not keep_history)
        same_lists(got, exact.topk(hs, 10, best, exclude_history=not keep_history))
        for h, ex, r in zip(hs, best, got):
            items = {i for i, _ in r}
            assert len(r) == 10 and not ex & items
            assert keep_history or not set(h) & items
    # a history of the user's own best items: the over-fetch still fills the list
    own = [[i for i, _ in r] for r in exact.topk(hs, 20, exclude_history=False)]
    same_lists(ann.topk(own, 10), exact.topk(own, 10))
    assert all(not set(h) & {i for i, _ in r} for h, r in zip(own, ann.topk(own, 10)))


def test_ann_orders_tied_scores_by_item_like_exact(model, vocab):
    """Items given the same vector as a user's best item tie with it: both paths list them by item index."""
    exact = BatchScorer(model=model, vocab=vocab, device="cpu")
    h = user_histories(1)[0]
    best = exact.vocab.encode([exact.topk([h], 1)[0][0][0]])[0]
    others = np.random.default_rng(1).choice(range(1, N + 1), 5, replace=False).tolist()
    tied = sorted({best, *others} - set(exact.vocab.encode(h)))
    twin = type(model)(model.config)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i in tied:
            twin.item_emb.weight[i] = model.item_emb.weight[best]
    exact = BatchScorer(model=twin, vocab=vocab, device="cpu")
    ann = BatchScorer(model=twin, vocab=vocab, device="cpu", ann_min_items=1000)
    want = [vocab.ids[i - 1] for i in tied]
    assert [i for i, _ in exact.topk([h], len(tied))[0]] == want
    assert [i for i, _ in ann.topk([h], len(tied))[0]] == want


def test_ann_vae_candidates_equal_exact(model, vocab):
    """The Mult-VAE's index ([W_i, b_i], queried with [x, 1]) over 800 items, under models.ann.MIN_SCAN, so
    it probes every list: this checks the wiring (bias, labels, exclusions, items past the VAE's), the
    Transformer's index above checks approximate retrieval."""
    n_vae = 800
    torch.manual_seed(0)
    vae = MultVAE(n_vae, MultVAEConfig(hidden=(D,), latent=8))
    with torch.no_grad():
        vae.decoder[-1].weight.copy_(clustered(n_vae, D, 3))
        vae.decoder[-1].bias.normal_(0.0, 0.5)  # large enough to change the lists: the bias must be served
    exact = BatchScorer(model=model, vocab=vocab, device="cpu", vae=vae)
    ann = BatchScorer(model=model, vocab=vocab, device="cpu", vae=vae, ann_min_items=500)
    assert ann.vae_ann is not None and exact.vae_ann is None and ann.vae_ann.nprobe == ann.vae_ann.nlist
    hs = user_histories(30, seed=2)
    extra = [{h[0], "i1", f"i{N}"} for h in hs]  # i3000 is beyond the VAE's items
    got, want = ann.candidates(hs, 20, extra), exact.candidates(hs, 20, extra)
    same_lists(got["vae"], want["vae"])
    same_lists(got["transformer"], want["transformer"])
    for h, ex, r in zip(hs, extra, got["vae"]):
        assert len(r) == 20 and not (set(h) | ex) & {i for i, _ in r}
    assert ann.without_vae().vae_ann is None and ann.vae_ann is not None


def test_each_model_load_builds_its_own_index(tmp_path, make_config, vocab):
    """A refresh's checkpoint loads into a new BatchScorer with a new index, which serves the new model's
    lists (not the old one's); extend_items rebuilds it with the new items in."""
    old, new = encoder(make_config, 0), encoder(make_config, 7)
    save_checkpoint(tmp_path / "old.pt", model=old, vocab=vocab)
    save_checkpoint(tmp_path / "new.pt", model=new, vocab=vocab)
    a = BatchScorer(load_checkpoint(tmp_path / "old.pt"), device="cpu", ann_min_items=1000)
    b = BatchScorer(load_checkpoint(tmp_path / "new.pt"), device="cpu", ann_min_items=1000)
    assert a.ann is not b.ann
    hs = user_histories(20, seed=3)
    want_new = BatchScorer(model=new, vocab=vocab, device="cpu").topk(hs, 10)
    assert [[i for i, _ in r] for r in a.topk(hs, 10)] != [[i for i, _ in r] for r in want_new]
    same_lists(b.topk(hs, 10), want_new)
    same_lists(b.candidates(hs, 10)["transformer"], want_new)

    text = make_config(n_items=N, d_model=D, text_dim=4)
    torch.manual_seed(0)
    m = SeqEncoder(text, text_vectors=torch.zeros(N + 1, 4))
    with torch.no_grad():
        m.item_emb.weight[1:] = clustered(N, D, 0)
    s = BatchScorer(model=m, vocab=vocab, device="cpu", ann_min_items=1000)
    before = s.ann
    assert s.extend_items(["new-a", "new-b"], np.ones((2, 4), np.float32)) == ["new-a", "new-b"]
    assert s.ann is not before and len(s.ann) == N + 2
    exact = BatchScorer(model=s.model, vocab=s.vocab, device="cpu")
    same_lists(s.topk(hs, 10), exact.topk(hs, 10))


def test_a_users_ann_list_does_not_depend_on_its_batch(make_config, vocab):
    """Each user keeps only the candidates its own query fetched, so an item fetched for another user of
    the batch never enters its list: on an unclustered catalogue (where the index misses some of the
    exact best), lists scored one by one and in one batch agree."""
    torch.manual_seed(0)
    m = SeqEncoder(make_config(n_items=N, d_model=D)).eval()  # i.i.d. Gaussian item vectors
    ann = BatchScorer(model=m, vocab=vocab, device="cpu", ann_min_items=1000)
    hs = user_histories(40, seed=4)
    batch = ann.topk(hs, 30)
    same_lists(batch, [ann.topk([h], 30)[0] for h in hs])
    exact = BatchScorer(model=m, vocab=vocab, device="cpu").topk(hs, 30)
    assert [[i for i, _ in r] for r in batch] != [[i for i, _ in r] for r in exact]  # (else it proves nothing)
