"""One contract for every online model: purity of exclusions, aligned finite scores, seeding, pickling."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Collection, Sequence

import numpy as np
import pytest

from online.arms import parse_arms
from online.base import Candidate, OnlineModel, learn_many
from online.content import ContentNeighbours
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity
from online.recommender import OnlineRecommender

N_ITEMS = 60


def stream(seed: int = 0, n_users: int = 40, n_events: int = 1500) -> list[tuple[str, str, float, tuple[str, ...]]]:
    """Users with a taste cluster (3 clusters of 20 items), Zipf-ish within a cluster."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, 3, n_users)
    hist: dict[str, list[str]] = {}
    events = []
    for n in range(n_events):
        u = int(rng.integers(0, n_users))
        cluster = taste[u] if rng.random() < 0.8 else int(rng.integers(0, 3))
        item = f"i{cluster * 20 + min(int(rng.zipf(1.5)) - 1, 19)}"
        h = hist.setdefault(f"u{u}", [])
        events.append((f"u{u}", item, 1000.0 + n, tuple(h[-50:])))
        h.append(item)
    return events


def _vectors(dim: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(7)
    items = [f"i{j}" for j in range(N_ITEMS)] + ["never-clicked"]
    return items, rng.normal(size=(len(items), dim)).astype(np.float32)


def make_content() -> ContentNeighbours:
    model = ContentNeighbours(dim=16)
    model.set_vectors(*_vectors(16))
    return model


class ArmView:
    """:class:`OnlineRecommender` behind the ``OnlineModel`` contract for one arm; ``recommend`` uses
    ``len(history)`` as the user's event count."""

    def __init__(self, recommender: OnlineRecommender, arm: str) -> None:
        self.recommender = recommender
        self.arm = arm
        self.name = f"recommender[{arm}]"

    def learn_one(self, user: str, item: str, ts: float, history: Sequence[str]) -> None:
        self.recommender.learn_one(user, item, ts, history)

    def recommend(self, user: str, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[Candidate]:
        return self.recommender.recommend(user, history, len(history), arm=self.arm, k=k, exclude=exclude)

    def score(self, user: str, history: Sequence[str], items: Sequence[str]) -> np.ndarray:
        return self.recommender.score(user, history, items)


def make_recommender() -> OnlineModel:
    rec = OnlineRecommender.create(arms=parse_arms("control:0.5:0.0,tail:0.5:0.4"), content_dim=16, seed=3)
    rec.content.set_vectors(*_vectors(16))
    return ArmView(rec, "tail")


FACTORIES: dict[str, Callable[[], OnlineModel]] = {
    "popularity": lambda: DecayedPopularity(half_life_s=300.0, window_events=500, refresh_every=10),
    "covisit": lambda: CoVisitation(lookback=3, half_life_s=600.0),
    "mf": lambda: OnlineMF(dim=8, seed=3, batch_size=16),
    "content": make_content,
    "recommender": make_recommender,
}

EVENTS = stream()
PROBES = [("u1", ("i0", "i3", "i1")), ("u7", ("i25",)), ("u-new", ("i41", "i40")), ("u-cold", ())]


def _recs(model: OnlineModel) -> list[list[Candidate]]:
    return [model.recommend(user, hist, 10, exclude={"i2", "i21"}) for user, hist in PROBES]


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def trained(request: pytest.FixtureRequest) -> tuple[str, OnlineModel]:
    model = FACTORIES[request.param]()
    learn_many(model, EVENTS)
    return request.param, model


def test_contract(trained: tuple[str, OnlineModel]) -> None:
    name, model = trained
    assert isinstance(model, OnlineModel)
    assert isinstance(model.name, str) and model.name

    recs = _recs(model)
    for (user, hist), cands in zip(PROBES, recs):
        items = [c.item for c in cands]
        assert len(items) <= 10 and len(set(items)) == len(items)
        assert not set(items) & ({"i2", "i21"} | set(hist)), (name, user)
        assert all(isinstance(c, Candidate) and np.isfinite(c.score) and c.reason() for c in cands)
        assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True) or name == "recommender"
    if name != "content":  # content only answers users with history (item vectors, no events)
        assert all(len(c) == 10 for c in recs[:3])

    user, hist = PROBES[0]
    items = [f"i{j}" for j in range(0, N_ITEMS, 7)] + ["unknown-item"]
    scores = model.score(user, hist, items)
    assert scores.dtype == np.float64 and scores.shape == (len(items),)
    assert np.isfinite(scores).all() and scores[-1] == 0.0
    if name != "recommender":  # score() agrees with the scores recommend() reports
        cands = recs[0]
        np.testing.assert_allclose(model.score(user, hist, [c.item for c in cands]), [c.score for c in cands], rtol=1e-4)


def test_deterministic_under_seed(trained: tuple[str, OnlineModel]) -> None:
    name, model = trained
    twin = FACTORIES[name]()
    learn_many(twin, EVENTS)
    assert _recs(twin) == _recs(model)
    np.testing.assert_array_equal(twin.score("u1", ("i0",), ["i0", "i5"]), model.score("u1", ("i0",), ["i0", "i5"]))


def test_pickle_round_trip(trained: tuple[str, OnlineModel]) -> None:
    name, model = trained
    before = _recs(model)
    clone = pickle.loads(pickle.dumps(model))
    assert _recs(clone) == before
    # the clone keeps learning exactly like the original
    more = stream(seed=5, n_events=100)
    learn_many(clone, more)
    twin = pickle.loads(pickle.dumps(model))
    learn_many(twin, more)
    assert _recs(clone) == _recs(twin)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_empty_model_and_unknown_user(name: str) -> None:
    model = FACTORIES[name]()
    assert model.recommend("nobody", [], 5) == []
    assert model.recommend("nobody", ["never-seen"], 5, exclude={"x"}) == []
    np.testing.assert_array_equal(model.score("nobody", [], ["a", "b"]), [0.0, 0.0])
    learn_many(model, EVENTS[:50])
    assert isinstance(model.recommend("brand-new", ["unknown-1", "unknown-2"], 5), list)
