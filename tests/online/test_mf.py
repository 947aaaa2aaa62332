from __future__ import annotations

import numpy as np
import pytest

from online.mf import OnlineMF
from online.popularity import DecayedPopularity


def planted_clusters(seed: int = 0, n_users: int = 200, n_clusters: int = 4, per: int = 40, n_train: int = 10):
    """User u likes cluster u % 4 (40 items each): 10 training items and 1 held-out item, all distinct,
    from their cluster. Events are interleaved in time across users (a stream, not user by user)."""
    rng = np.random.default_rng(seed)
    users = []
    for u in range(n_users):
        items = rng.choice(per, n_train + 1, replace=False) + (u % n_clusters) * per
        users.append((f"u{u}", [f"i{j}" for j in items[:-1]], f"i{items[-1]}"))
    events, hist, ts = [], {}, 0.0
    for t in range(n_train):
        for name, train, _ in users:
            h = hist.setdefault(name, [])
            events.append((name, train[t], ts, tuple(h)))
            h.append(train[t])
            ts += 1.0
    return users, events


def hit_rate(model, users, prefix: str = "") -> float:
    return float(np.mean([target in {c.item for c in model.recommend(prefix + u, train, 10)} for u, train, target in users]))


def test_learns_planted_clusters_far_above_popularity() -> None:
    users, events = planted_clusters()
    mf = OnlineMF(dim=32, lr=0.2, seed=0)
    pop = DecayedPopularity()
    for e in events:  # a single online pass
        mf.learn_one(*e)
        pop.learn_one(*e)
    mf.flush()
    hr_mf, hr_pop = hit_rate(mf, users), hit_rate(pop, users)
    # the best possible is ~10/30: the held-out item is one of the 30 cluster items not yet seen
    assert hr_mf >= 0.25 and hr_mf >= 3 * hr_pop, (hr_mf, hr_pop)
    # users the model never saw, with the same histories: scored from their history item vectors
    assert hit_rate(mf, users, prefix="cold-") >= 0.25


def test_cold_user_with_history_gets_their_cluster() -> None:
    users, events = planted_clusters(seed=1)
    mf = OnlineMF(dim=16, lr=0.2, seed=0)
    for _ in range(2):
        for e in events:
            mf.learn_one(*e)
    recs = mf.recommend("stranger", ["i0", "i1", "i2"], 10)  # cluster 0 = i0..i39
    assert sum(int(c.item[1:]) < 40 for c in recs) >= 8


def test_recommend_matches_score_and_excludes() -> None:
    users, events = planted_clusters(n_users=40)
    mf = OnlineMF(dim=8, seed=2, batch_size=7)
    for e in events:
        mf.learn_one(*e)
    name, train, _ = users[0]
    recs = mf.recommend(name, train, 20, exclude={"i5"})
    assert not {c.item for c in recs} & (set(train) | {"i5"})
    everything = [f"i{j}" for j in range(160)]
    scores = mf.score(name, train, everything)
    allowed = [j for j in range(160) if everything[j] not in set(train) | {"i5"} and everything[j] in mf]
    best = sorted(allowed, key=lambda j: -scores[j])[:20]
    assert [c.item for c in recs] == [everything[j] for j in best]


def test_buffered_events_reach_the_factors() -> None:
    mf = OnlineMF(dim=4, seed=0, batch_size=64)
    for n in range(10):
        mf.learn_one("u", f"i{n % 3}", float(n), ())
    before = mf._q[:3].copy()
    mf.flush()
    assert not np.allclose(before, mf._q[:3])
    assert not mf._buf_u


def test_user_rows_are_bounded_lru() -> None:
    mf = OnlineMF(dim=4, max_users=5, seed=0, batch_size=3)
    for n in range(40):
        mf.learn_one(f"u{n % 10}", f"i{n % 7}", float(n), ())
    assert len(mf._users) == 5 and mf._p.shape[0] <= 5
    assert list(mf._users) == [f"u{n}" for n in range(5, 10)]


def test_item_table_grows() -> None:
    mf = OnlineMF(dim=4, seed=0)
    for n in range(3000):
        mf.learn_one(f"u{n % 50}", f"i{n}", float(n), ())
    assert len(mf) == 3000 and mf._q.shape[0] >= 3000
    assert np.isfinite(mf.score("u1", ["i5"], ["i2999", "i0"])).all()


def test_rejects_bad_config() -> None:
    with pytest.raises(ValueError, match="dim"):
        OnlineMF(dim=0)


def test_forget_frees_the_users_row_for_the_next_new_user_and_keeps_the_others():
    """Erasure (#17): a forgotten user's row is zeroed and handed to the next new user; no other user's row
    moves or changes, and the model stays bounded."""
    mf = OnlineMF(dim=4, max_users=3, seed=0, batch_size=4)
    for n, user in enumerate(["u1", "u2", "u3", "u1", "u2"]):  # LRU order now u3, u1, u2
        mf.learn_one(user, f"i{n % 3}", float(n), [])
    row = mf._users["u2"]
    assert mf.forget("u2") and not mf.forget("u2") and not mf.forget("never")
    assert mf.user_vector("u2", []) is None and not mf._p[row].any()  # unknown: scored from history alone
    u1 = mf.user_vector("u1", []).copy()
    mf.learn_one("u4", "i0", 9.0, [])  # takes u2's row: nobody is evicted although the model was full
    assert mf._users["u4"] == row and sorted(mf._users) == ["u1", "u3", "u4"]
    mf.learn_one("u5", "i1", 10.0, [])  # full: the least recently active user (u3) goes
    mf.flush()
    assert sorted(mf._users) == ["u1", "u4", "u5"] and sorted(mf._users.values()) == [0, 1, 2]
    assert np.array_equal(mf.user_vector("u1", []), u1)  # a user row moves only with its own events


def test_the_step_is_the_gradient_of_the_served_score() -> None:
    """The SGD step ascends ``log sigmoid(x_ui - x_uj)`` (L2 on every row but the history's) for the user
    vector as served, ``p_u + w * mean(q_h)``: the history items' vectors are trained too."""
    torch = pytest.importorskip("torch")

    def model() -> OnlineMF:  # h1, h2 and j known; the 2-slot negative pool holds j and, once learned, i
        mf = OnlineMF(dim=4, seed=1, batch_size=1, n_negatives=1, negative_pool=2, lr=0.1, reg=0.01,
                      history_weight=0.5)
        for n, item in enumerate(("h1", "h2", "j")):
            mf.learn_one("u0", item, float(n), ["h1", "h2"][:n])
        mf._b[:3] = np.array([0.3, -0.2, 0.1], dtype=np.float32)
        return mf

    mf = model()
    mf.learn_one("u1", "i", 3.0, ["h1", "h2"])  # a new user and item: their rows' initial draws are needed
    after_p, after_q, after_b = mf._p[mf._users["u1"]].copy(), mf._q[:4].copy(), mf._b[:4].copy()
    replay = model()
    replay.batch_size = 2  # buffer u1's event: its rows exist, the step has not run
    replay.learn_one("u1", "i", 3.0, ["h1", "h2"])
    assert replay._pool[int(replay._uniform(1)[0] * 2)] == 2  # the step's negative is j (seed 1), not i
    p = torch.tensor(replay._p[replay._users["u1"]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor(replay._q[:4], dtype=torch.float64, requires_grad=True)  # rows h1, h2, j, i
    b = torch.tensor(replay._b[:4], dtype=torch.float64, requires_grad=True)
    u = p + 0.5 * q[:2].mean(dim=0)
    x = (u @ q[3] + b[3]) - (u @ q[2] + b[2])
    objective = torch.nn.functional.logsigmoid(x) - 0.01 / 2 * (p @ p + q[3] @ q[3] + q[2] @ q[2] + b[3] ** 2
                                                                + b[2] ** 2)
    objective.backward()
    for got, param in ((after_p, p), (after_q, q), (after_b, b)):
        np.testing.assert_allclose(got, (param + 0.1 * param.grad).detach().numpy(), rtol=1e-5, atol=1e-6)
