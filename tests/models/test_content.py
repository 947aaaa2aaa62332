"""Uses the real bundled all-MiniLM-L6-v2 (no download): loaded once per module."""

import numpy as np
import pytest
import torch

from models.content import ItemTextCache, TextEncoder, TextEncoderLoadError
from models.scoring import BatchScorer
from models.sequence import SeqEncoder, SeqEncoderConfig
from models.train import TrainConfig, train
from models.vocab import ItemVocab

GENRES = {
    "jazz": ["bebop saxophone quartet", "cool jazz trumpet ballads", "modal jazz piano improvisation",
             "swing big band brass", "hard bop drums and upright bass", "smooth jazz saxophone solo",
             "jazz vocal standards with piano", "latin jazz percussion and horns"],
    "metal": ["heavy metal guitar riffs", "thrash metal drums", "death metal growling vocals",
              "black metal tremolo picking", "doom metal slow heavy riffs", "power metal epic guitar solos",
              "metalcore breakdowns and screams", "speed metal double bass drumming"],
    "classical": ["baroque harpsichord concerto", "romantic symphony orchestra", "string quartet chamber music",
                  "solo violin sonata", "opera aria soprano", "gregorian choir chant", "piano sonata by beethoven",
                  "cello suite by bach"],
}
NEW = {"jazz": "jazz piano trio", "metal": "heavy metal electric guitar shredding",
       "classical": "classical symphony orchestra strings"}


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(device="cpu")


def test_vectors_are_unit_norm_and_semantic(encoder):
    v = encoder.encode(["jazz piano trio", "bebop saxophone quartet", "heavy metal guitar"], batch_size=2)
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]
    # batching and ordering do not change a text's vector
    assert np.allclose(encoder.encode(["heavy metal guitar"])[0], v[2], atol=1e-5)


def test_load_error_names_the_path(tmp_path):
    with pytest.raises(TextEncoderLoadError, match=str(tmp_path)):
        TextEncoder(tmp_path)


def test_cache_encodes_only_new_or_changed_text(encoder):
    cache = ItemTextCache(encoder)
    assert cache.update({"a": "jazz", "b": "metal"}) == ["a", "b"]
    assert cache.update({"a": "jazz", "b": "metal"}) == [] and cache.encoded == 2
    assert cache.update({"a": "jazz piano", "c": "opera"}) == ["a", "c"] and cache.encoded == 4
    m = cache.matrix(["c", "missing", "a"])
    assert m.shape == (4, 384) and not m[0].any() and not m[2].any()
    assert np.allclose(m[1], cache.get("c"))


def test_text_makes_never_clicked_items_retrievable(encoder):
    ids = [f"{g}{i}" for g in GENRES for i in range(8)]
    vocab = ItemVocab(ids)
    text = np.zeros((len(ids) + 1, 384), np.float32)
    text[1:] = encoder.encode([t for g in GENRES for t in GENRES[g]])
    rng = np.random.default_rng(0)
    seqs = []  # each user listens to one genre only
    for u in range(300):
        g = list(GENRES)[u % 3]
        seqs.append([vocab.get(f"{g}{int(i)}") for i in rng.integers(0, 8, size=12)])
    torch.manual_seed(0)
    model = SeqEncoder(SeqEncoderConfig(n_items=len(ids), max_len=10, d_model=32, n_layers=1, n_heads=2,
                                        dropout=0.1, text_dim=384, id_dropout=0.3),
                       text_vectors=torch.from_numpy(text))
    train(model, seqs, None, config=TrainConfig(epochs=15, batch_size=64, lr=3e-3, device="cpu"))
    scorer = BatchScorer(model=model, vocab=vocab, device="cpu")
    new_ids = [f"new-{g}" for g in NEW]
    assert scorer.extend_items(new_ids, encoder.encode(list(NEW.values()))) == new_ids
    for g in GENRES:
        history = [f"{g}{i}" for i in range(5)]  # 3 same-genre items remain unseen
        recs = [i for i, _ in scorer.topk([history], k=len(ids))[0]]
        assert recs.index(f"new-{g}") <= 3, (g, recs[:6])  # right after the user's own genre
        others = [recs.index(f"new-{o}") for o in GENRES if o != g]
        assert recs.index(f"new-{g}") < min(others)


def test_text_only_item_in_the_training_vocabulary_is_retrievable(encoder):
    """The refresh path: an item with text but no clicks is in the vocabulary while the model trains."""
    ids = [f"{g}{i}" for g in GENRES for i in range(8)] + [f"new-{g}" for g in NEW]
    vocab = ItemVocab(ids)
    text = np.zeros((len(ids) + 1, 384), np.float32)
    text[1:] = encoder.encode([t for g in GENRES for t in GENRES[g]] + list(NEW.values()))
    rng = np.random.default_rng(1)
    seqs = [[vocab.get(f"{g}{int(i)}") for i in rng.integers(0, 8, size=12)]
            for g in list(GENRES) * 100]
    torch.manual_seed(0)
    model = SeqEncoder(SeqEncoderConfig(n_items=len(ids), max_len=10, d_model=32, n_layers=1, n_heads=2,
                                        dropout=0.1, text_dim=384, id_dropout=0.3, loss="sampled",
                                        n_negatives=16),
                       text_vectors=torch.from_numpy(text))
    train(model, seqs, None, config=TrainConfig(epochs=15, batch_size=64, lr=3e-3, device="cpu"))
    scorer = BatchScorer(model=model, vocab=vocab, device="cpu")
    for g in GENRES:
        recs = [i for i, _ in scorer.topk([[f"{g}{i}" for i in range(5)]], k=len(ids))[0]]
        assert recs.index(f"new-{g}") < min(recs.index(f"new-{o}") for o in GENRES if o != g), (g, recs[:8])
        assert recs.index(f"new-{g}") <= 5, (g, recs[:8])
