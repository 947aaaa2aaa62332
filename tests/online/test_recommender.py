from __future__ import annotations

import numpy as np
import pytest

from online.arms import parse_arms
from online.base import Candidate
from online.recommender import OnlineRecommender, UnknownArmError, UnknownSourceError

ARMS = parse_arms("control:0.5:0.0,tail:0.5:0.6")


def active_items(pop) -> list[str]:
    """The items with an event in the popularity window, in first-seen order."""
    return [item for item in pop.item_index.names if pop.window_count(item)]


def make(**kwargs) -> OnlineRecommender:
    return OnlineRecommender.create(arms=ARMS, content_dim=8, seed=0, **kwargs)


def warm(rec: OnlineRecommender, n_events: int = 3000, seed: int = 0) -> dict[str, list[str]]:
    """A Zipf stream over 200 items where B always follows A; returns the users' histories."""
    rng = np.random.default_rng(seed)
    hist: dict[str, list[str]] = {}
    n = 0
    while n < n_events:
        user = f"u{int(rng.integers(0, 150))}"
        h = hist.setdefault(user, [])
        seq = ["A", "B"] if rng.random() < 0.1 else [f"i{min(int(rng.zipf(1.3)), 200)}"]
        for item in seq:
            rec.learn_one(user, item, float(n), tuple(h[-50:]))
            h.append(item)
            n += 1
    return hist


def test_cold_start_mixes_popular_and_fresh_tail() -> None:
    rec = make()
    warm(rec)
    for n in range(5):  # brand-new items, one event each
        rec.learn_one(f"x{n}", f"new-{n}", 5000.0 + n, ())
    recs = rec.recommend("newcomer", [], 0, arm="control")
    sources = {c.source for c in recs}
    assert len(recs) == 10 and {"popularity", "fresh"} <= sources
    assert any(c.item.startswith("new-") and rec.is_tail(c.item) for c in recs)


def test_history_user_gets_covisit_with_anchor_and_no_history_items() -> None:
    rec = make()
    hist = warm(rec)
    recs = rec.recommend("someone", ["i3", "A"], 2, arm="control")  # blender still on its prior
    b = [c for c in recs if c.item == "B"]
    assert b and recs.index(b[0]) < 3 and b[0].source == "covisit" and b[0].anchor == "A"
    user, h = next((u, h) for u, h in hist.items() if len(h) > 20)
    recs = rec.recommend(user, h[-50:], len(h), arm="tail", exclude={"i1"})
    assert len(recs) == 10 and not {c.item for c in recs} & (set(h[-50:]) | {"i1"})


def test_never_clicked_item_is_recommendable_through_its_vector() -> None:
    rec = make()
    warm(rec)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(201, 8)).astype(np.float32)
    rec.content.set_vectors([f"i{j}" for j in range(1, 201)] + ["catalogue-only"], vecs)
    rec.content.set_vectors(["catalogue-only"], vecs[4:5] + 0.01)  # a near twin of i5
    recs = rec.recommend("fan", ["i5"], 1, arm="control")
    hit = [c for c in recs if c.item == "catalogue-only"]
    assert hit and hit[0].source == "content" and hit[0].anchor == "i5" and hit[0].reason() == "similar to i5"


def test_feedback_is_exact_and_consumed_once() -> None:
    rec = make()
    warm(rec)
    shown = rec.recommend("u1", ["i2", "i3"], 2, arm="control")
    before = rec.blender.n_learned
    assert rec.feedback("u1", [shown[1], shown[0]], shown[0].item) == 0  # not the list shown: no learning
    shown = rec.recommend("u1", ["i2", "i3"], 2, arm="control")
    assert rec.feedback("u1", shown, shown[3].item) == 1 + rec.pools.negatives
    assert rec.blender.n_learned == before + 1 + rec.pools.negatives and rec.blender.n_clicked == 1
    assert rec.feedback("u1", shown, shown[3].item) == 0  # consumed
    # learn_one labels the latest list's pool itself
    after_first = rec.blender.n_learned
    rec.recommend("u2", ["i2"], 1, arm="tail")
    rec.learn_one("u2", "i9", 9999.0, ("i2",))
    assert rec.blender.n_learned == after_first + 1 + rec.pools.negatives


def test_the_ranker_learns_from_candidates_it_did_not_show() -> None:
    rec = make()
    warm(rec)
    shown = rec.recommend("u3", ["i2", "i3"], 2, arm="control")
    _, pool = rec.pools.get("u3")
    names = rec.retrieval.items.names
    unshown = [names[i] for i in pool.items.tolist() if names[i] not in {c.item for c in shown}]
    assert len(unshown) > 50  # the pool is far deeper than the list
    clicks = rec.blender.n_clicked
    assert rec.feedback("u3", None, unshown[-1]) == 1 + rec.pools.negatives
    assert rec.blender.n_clicked == clicks + 1
    rec.recommend("u3", ["i2", "i3"], 2, arm="control")
    assert rec.feedback("u3", None, "never-proposed") == 0  # not in the pool: nothing to rank it against


def test_pool_observer_sees_each_labelled_pool_whole_with_the_clicked_row() -> None:
    rec = make()
    warm(rec)
    seen = []
    rec.pool_observer = lambda X, hit: seen.append((X, hit))
    shown = rec.recommend("u3", ["i2", "i3"], 2, arm="control")
    assert rec.feedback("u3", None, shown[0].item) > 0
    ((X, hit),) = seen
    assert X.shape[1] == rec.blender.n_features and X.shape[0] > len(shown)
    # the clicked row is the learned positive: the same features the ranker scored for the shown item
    assert rec.blender.predict_matrix(X[[hit]])[0] == pytest.approx(shown[0].score, rel=1e-5)
    rec.recommend("u3", ["i2", "i3"], 2, arm="control")
    rec.feedback("u3", None, "never-proposed")
    assert seen[-1] == (None, -1)


def test_consumed_items_are_never_recommended() -> None:
    from online.base import item_hashes

    rec = make()
    warm(rec)
    user, h = "heavy", []
    for n, item in enumerate(sorted(active_items(rec.popularity))[:80]):  # more than the window holds
        rec.learn_one(user, item, 4000.0 + n, tuple(h[-50:]))
        h.append(item)
    extra = {"transformer": [Candidate(item, 1.0, "transformer") for item in sorted(set(h))[:20]]}
    for arm in ("control", "tail"):
        recs = rec.recommend(user, h[-50:], len(h), arm=arm, extra=extra, consumed=item_hashes(set(h)))
        assert len(recs) == 10 and not {c.item for c in recs} & set(h)
    recs = rec.recommend(user, h[-50:], len(h), arm="control")  # without the consumed set: only the window
    assert not {c.item for c in recs} & set(h[-50:])


def test_blender_learns_from_the_stream() -> None:
    rec = make()
    hist: dict[str, list[str]] = {}
    rng = np.random.default_rng(3)
    for n in range(1500):  # half of the events follow a chain i -> i+1, the rest are random
        user = f"u{int(rng.integers(0, 60))}"
        h = hist.setdefault(user, [])
        item = f"i{(int(h[-1][1:]) + 1) % 80}" if h and rng.random() < 0.5 else f"i{int(rng.integers(0, 80))}"
        rec.learn_one(user, item, float(n), tuple(h[-50:]))
        h.append(item)
        rec.recommend(user, h[-50:], len(h), arm=rec.assign_arm(user))
    assert rec.blender.warmed_up
    auc = rec.blender.auc()
    singles = ("popularity", "covisit", "transitions", "last", "mf", "fresh")
    assert np.isfinite([auc[s] for s in ("blend", *singles)]).all()
    assert np.isnan(auc["content"]) and np.isnan(auc["transformer"])  # no item vectors, no model: no signal
    assert auc["blend"] > 0.7 and auc["blend"] >= max(auc[s] for s in singles)
    recs = rec.recommend("fan", ["i5"], 1, arm="control")  # the learned ranker puts the chain first
    assert recs[0].item == "i6" and recs[0].source in ("covisit", "transitions", "last") and recs[0].anchor == "i5"


def test_pending_lists_are_lru_capped() -> None:
    rec = make(max_pending=3)
    warm(rec, n_events=300)
    for n in range(5):
        rec.recommend(f"p{n}", ["i1"], 1, arm="control")
    assert rec.pools.users() == ["p2", "p3", "p4"]


def test_tail_arm_shows_more_tail_to_tail_lovers() -> None:
    rec = make()
    hist = warm(rec)
    tail_items = [it for it in active_items(rec.popularity) if rec.is_tail(it)]
    lovers = [(f"lover{n}", tail_items[n : n + 8]) for n in range(0, 40, 4)]  # all-tail histories

    def n_tail(arm: str, users) -> int:
        return sum(rec.is_tail(c.item) for u, h in users for c in rec.recommend(u, h, len(h), arm=arm))

    assert n_tail("tail", lovers) > n_tail("control", lovers)
    # the tail arm never shows fewer tail items, whatever the user
    everyone = [(u, h[-50:]) for u, h in hist.items() if len(h) >= 5][:30]
    for u, h in everyone:
        assert n_tail("tail", [(u, h)]) >= n_tail("control", [(u, h)])
    assert n_tail("tail", everyone) > n_tail("control", everyone)


def test_extra_sources() -> None:
    rec = make()
    warm(rec, n_events=500)
    extra = {"transformer": [Candidate("seq-only", 3.0, "transformer"), Candidate("i1", 2.0, "transformer")]}
    recs = rec.recommend("u", ["i1"], 1, arm="control", extra=extra)
    assert any(c.item == "seq-only" and c.source == "transformer" for c in recs)
    assert "i1" not in {c.item for c in recs}
    with pytest.raises(UnknownSourceError, match="gpt"):
        rec.recommend("u", ["i1"], 1, arm="control", extra={"gpt": []})


def test_a_source_the_gate_leaves_out_of_a_segment_serves_nothing_there_but_still_fills_the_pool() -> None:
    rec = make()
    warm(rec, n_events=500)
    extra = {"transformer": [Candidate("seq-only", 3.0, "transformer"), Candidate("i2", 2.0, "transformer")]}
    col = rec.blender.sources.index("transformer")
    seg = rec.blender.segment(1)  # the gate as judge leaves it after many pools said it hurts
    rec.blender._gain[seg, col], rec.blender._gain_sq[seg, col], rec.blender._n_judged[seg] = -0.01, 1e-4, 4096
    users = ["new", "heavy"]
    lists = rec.recommend_many(users, [["i1"], ["i1"]], [1, 40], arms=["control"] * 2, extras=[extra] * 2)
    assert "seq-only" not in {c.item for c in lists[0]} and "transformer" not in {c.source for c in lists[0]}
    assert "seq-only" in {c.item for c in lists[1]}  # the heavy users' segment still serves it
    for user in users:  # both pools hold its proposals, so that the gate keeps judging it
        _, pool = rec.pools.get(user)
        assert col in pool.cols.tolist()
    extra["covisit"] = [Candidate("i3", 1.0, "covisit")]  # covisit listed twice: the other merge, same rule
    assert "seq-only" not in {c.item for c in rec.recommend("new", ["i1"], 1, arm="control", extra=extra)}
    assert "seq-only" in {c.item for c in rec.recommend("heavy", ["i1"], 40, arm="control", extra=extra)}


def test_candidates_outside_the_batch_models_vocabulary_are_flagged_for_the_ranker() -> None:
    rec = make()
    warm(rec, n_events=500)
    extra = {"transformer": [Candidate("i1", 2.0, "transformer"), Candidate("i2", 1.0, "transformer")]}

    def flags() -> dict[str, bool]:
        rec.recommend("u", ["i5"], 1, arm="control", extra=extra)
        _, pool = rec.pools.get("u")
        names = rec.retrieval.items.names
        return {names[i]: bool(u) for i, u in zip(pool.items.tolist(), pool.unknown.tolist())}

    assert not any(flags().values())  # no batch model served: nothing is unknown to one
    rec.set_batch_vocabulary({"i1", "i2", "i3"})
    got = flags()
    assert not got["i1"] and not got["i2"] and len(got) > 3
    assert all(unknown == (item not in {"i1", "i2", "i3"}) for item, unknown in got.items())
    x = rec.pools.get("u")[1].features(rec.blender, [0])
    assert x[0, rec.blender.feature_names.index("batch_unknown")] == float(got[rec.retrieval.items.names[
        int(rec.pools.get("u")[1].items[0])]])
    rec.learn_one("u", "new-item", 1e6, ("i5",))  # our index grows after the vocabulary was set
    rec.recommend("v", [], 0, arm="control")
    assert rec.batch_unknown(np.array([rec.retrieval.items.get("new-item")])).tolist() == [True]
    rec.set_batch_vocabulary(None)
    assert not any(flags().values())


def test_unknown_arm_and_bad_wiring() -> None:
    rec = make()
    with pytest.raises(UnknownArmError, match="nope"):
        rec.recommend("u", [], 0, arm="nope")
    assert rec.assign_arm("u") in {"control", "tail"}
    with pytest.raises(UnknownSourceError, match="fresh"):
        from online.blender import FeedbackBlender

        OnlineRecommender(
            popularity=rec.popularity, covisit=rec.covisit, transitions=rec.transitions, mf=rec.mf,
            content=rec.content,
            blender=FeedbackBlender(sources=["popularity", "covisit", "mf", "content"]), arms=ARMS,
        )


def test_recommend_many_equals_one_call_per_user() -> None:
    import pickle

    rec = make()
    hist = warm(rec)
    rng = np.random.default_rng(2)
    rec.content.set_vectors([f"i{j}" for j in range(1, 201)], rng.normal(size=(200, 8)).astype(np.float32))
    users = [u for u, h in hist.items() if len(h) > 3][:12] + ["cold-user"]
    histories = [tuple(hist.get(u, [])[-50:]) for u in users]
    counts = [len(hist.get(u, [])) for u in users]
    arms = [rec.assign_arm(u) for u in users]
    twin = pickle.loads(pickle.dumps(rec))
    batch = rec.recommend_many(users, histories, counts, arms=arms)
    one_by_one = [twin.recommend(u, h, n, arm=a) for u, h, n, a in zip(users, histories, counts, arms)]
    assert [[(c.item, c.source, c.anchor) for c in cands] for cands in batch] == [
        [(c.item, c.source, c.anchor) for c in cands] for cands in one_by_one
    ]
    for a, b in zip(batch, one_by_one):
        np.testing.assert_allclose([c.score for c in a], [c.score for c in b], rtol=1e-5)
    assert rec.pools.users()[-len(users):] == users  # every list is pending feedback
    with pytest.raises(ValueError, match="differ in length"):
        rec.recommend_many(users, histories[:-1], counts, arms=arms)


def test_forget_drops_the_users_pending_pool_and_mf_row_only() -> None:
    """Erasure (#17): nothing is learned from the forgotten user's last list, and MF scores them as unknown."""
    rec = make()
    hist = warm(rec)
    user, other = sorted(hist, key=lambda u: -len(hist[u]))[:2]
    rec.recommend(user, hist[user], 5, arm="control")
    shown = rec.recommend(other, hist[other], 5, arm="control")
    before = rec.blender.n_learned
    rec.forget(user)
    assert rec.mf.user_vector(user, []) is None and rec.mf.user_vector(other, []) is not None
    rec.learn_one(user, "i1", 1e6, tuple(hist[user]))  # the pool of the user's last list is gone: no example
    assert rec.blender.n_learned == before and rec.mf.user_vector(user, []) is not None  # a new row
    assert rec.feedback(other, shown, shown[0].item) == 1 + rec.pools.negatives  # the others' pools stay


def test_an_arm_without_some_sources_never_gets_their_candidates() -> None:
    """#17: arms may differ in sources (``off=`` in TAILCAST_ARMS); the other arm is untouched."""
    arms = "full:1:0.0,bare:1:0.0:off=covisit+transitions+last+mf+content+transformer+vae"
    rec, same = (OnlineRecommender.create(arms=parse_arms(spec), content_dim=8, seed=0)
                 for spec in (arms, "full:1:0.0,bare:1:0.0"))
    hists, hists_same = warm(rec), warm(same)
    extra = {"transformer": [Candidate("i3", 1.0, "transformer")]}
    for user, h in list(hists.items())[:20]:
        bare = rec.recommend(user, h[-50:], len(h), arm="bare", extra=extra)
        assert bare and {c.source for c in bare} <= {"popularity", "fresh"}, [c.source for c in bare]
        full = rec.recommend(user, h[-50:], len(h), arm="full", extra=extra)
        assert {c.source for c in full} - {"popularity", "fresh"}
        assert [c.item for c in full] == [c.item for c in same.recommend(user, hists_same[user][-50:],
                                                                         len(h), arm="full", extra=extra)]


def test_a_recommender_pickled_before_the_feedback_store_and_retrieval_had_classes_restores_and_learns_alike() -> None:
    """A snapshot of the layout before ``online.feedback`` and ``online.retrieval`` (pool settings, RNG, an emptied
    ``_pending`` and the retrieval's fields on the recommender) restores to a recommender that serves and learns
    as one pickled without its pools does."""
    import pickle
    import random
    from collections import OrderedDict

    rec = make(max_pending=7)
    hist = warm(rec, n_events=800)
    for user in list(hist)[:10]:
        rec.recommend(user, hist[user][-50:], len(hist[user]), arm="tail")
    with rec.pools.set_aside():  # what a snapshot holds
        now = pickle.loads(pickle.dumps(rec))
        state = dict(pickle.loads(pickle.dumps(rec)).__dict__)
    assert len(rec.pools) == 7 and not len(now.pools)
    store = state.pop("pools")
    rng = random.Random()
    rng.setstate(store._rng.getstate())
    state.update(pool_depth=store.pool_depth, pool_negatives=store.negatives, max_pending=store.max_pending,
                 _rng=rng, _pending=OrderedDict(), _rerankers={})
    retrieval = dict(state.pop("retrieval").__dict__)  # its fields were the recommender's, two named otherwise
    state.update(retrieval, _items=retrieval.pop("items"), _pop=retrieval.pop("popularity_counts"))
    old = object.__new__(OnlineRecommender)
    old.__setstate__(state)
    assert old.pools.max_pending == 7 and old.pools.negatives == now.pools.negatives and not len(old.pools)
    users = [u for u, h in hist.items() if len(h) > 3][:6]
    runs = []
    for twin in (now, old):
        got = [twin.recommend(u, hist[u][-50:], len(hist[u]), arm="control") for u in users]
        learned = [twin.feedback(u, None, got[n][-1].item) for n, u in enumerate(users)]
        runs.append(([[c.item for c in g] for g in got], learned, twin.blender.n_learned))
    assert runs[0] == runs[1] and sum(runs[0][1]) > 0


def test_the_item_indices_share_one_key_table_and_keep_their_indices() -> None:
    """Every model's item index reads one key table (one string an item); sharing keeps each model's indices,
    a pickle keeps the sharing, an index pickled before tables (a list of names) loads onto its own, and
    ``indices`` says -1 for a key of the table this index does not hold."""
    import pickle

    from online.base import IdIndex, KeyTable

    rec = OnlineRecommender.create(arms=parse_arms("control:1:0.0"), content_dim=8, seed=0)
    for n in range(60):
        rec.learn_one(f"u{n % 7}", "i" + str(n % 13), float(n), ["i" + str((n + 1) % 13)])  # fresh strings
    rec.content.set_vectors(["c1", "i3"], np.eye(2, 8, dtype=np.float32))
    models = (rec.popularity, rec.covisit, rec.transitions, rec.mf, rec.content)
    table = rec.retrieval.items.table
    assert all(m.item_index.table is table for m in models)
    assert all(a is table.keys[table.ids[a]] for m in models for a in m.item_index.names)  # one string an item
    assert rec.covisit.item_index.indices(["c1", "i3", "nope"]).tolist() == [-1, rec.covisit.item_index.get("i3"), -1]
    again = pickle.loads(pickle.dumps(rec))
    assert all(m.item_index.table is again.retrieval.items.table for m in
               (again.popularity, again.covisit, again.transitions, again.mf, again.content))
    assert [m.item_index.names for m in models] == [m.item_index.names for m in
                                                      (again.popularity, again.covisit, again.transitions, again.mf,
                                                       again.content)]
    own = IdIndex()
    own.__setstate__(["b", "a"])  # the layout before
    before = own.indices(["a", "b", "c"]).tolist()
    own.share(KeyTable())
    assert before == own.indices(["a", "b", "c"]).tolist() == [1, 0, -1]
