"""Memory (docs/design.md §7): bytes per active user state in the worker, and per user and per catalogue item in
the scorer's online models, with ``tracemalloc`` (numpy buffers included), plus learn_one time at each size.

* worker: ``UserState.to_bytes()`` at history length 50 (the changelog record), and the in-memory
  footprint of a ``user_state`` table entry, measured in the real worker app's table store
  (``create_app(settings, role="worker")``, Faust ``memory://`` store: key bytes -> value bytes). Each
  user has 50..499 events over a 10k catalogue and its consumed set holds their distinct items (4 bytes
  each, base64 in the record); the same again for users at the ``TAILCAST_CONSUMED_MAX`` cap (right
  after a compaction; between two, a state holds up to an eighth more entries);
* scorer, users: ``OnlineRecommender.create(...)`` (content dim 384, the MiniLM dimension, default arms)
  fed a synthetic stream (Zipf items over a fixed 10k catalogue, 2 events per new user) growing
  10k -> 100k -> 1M users (1M is fitted linearly from the first two sizes when it would take over ~2 min,
  and the figure says so); the scorer's per-user bookkeeping (``ScorerCore`` high-water marks) and the
  blender's pending shown list (kept for the user's next event, at most ``max_pending`` users) separately;
* scorer, items: the same recommender over a catalogue growing 10k -> 200k items (content vectors set for
  every item, 5 events per item from a 10k-user pool, so every model knows every item), and the
  co-visitation table at saturation (every item at its ``max_neighbours`` cap), the per-item cost a
  long-running scorer converges to.

Growth factors are memory ratios between sizes (a linear model gives 10x for 10x users, less with a
fixed part). Time per learn_one is measured in a separate pass without tracemalloc (which slows
allocation), as the mean over the events that grew the model to that size.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np

__all__ = ["run"]

CONTENT_DIM = 384  # all-MiniLM-L6-v2, the scorer's default text encoder
HISTORY = 50


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _by_file(top: int = 4) -> str:
    """The traced memory of the largest allocating source files (where the bytes were allocated)."""
    stats = tracemalloc.take_snapshot().statistics("filename")
    parts = []
    for stat in stats[:top]:
        name = stat.traceback[0].filename
        short = "/".join(name.split("/")[-2:])
        parts.append(f"{short} {stat.size / 2**20:.1f}")
    return "MiB by file: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------- worker state
def worker_state(n: int = 50_000) -> dict[str, float]:
    """Serialized size and in-memory table-entry footprint of a user state at history length 50, for users
    with 50..499 events (consumed set: their distinct items) and for users at the consumed cap."""
    import tempfile

    from streams.agents.ingest import UserState, consumed_of
    from streams.app import create_app
    from streams.config import load_settings

    rng = np.random.default_rng(0)
    items = [f"i{j}" for j in range(10_000)]

    def state(u: int, events: int, cap: int) -> tuple[bytes, bytes, int]:
        """A user after ``events`` events, as the worker keeps it right after a compaction."""
        history = [items[j] for j in rng.integers(0, len(items), events)]
        s = UserState(sequence=history[-HISTORY:], count=events, last_ts=1.7e9 + u * 0.1,
                      applied={u % 4: u * 7}, consumed=consumed_of(history)[-4 * cap:])
        return f"u{u}".encode(), s.to_bytes(), len(s.consumed) // 4

    def entry_bytes(store, pairs) -> float:
        tracemalloc.start()
        try:
            before = _traced()
            for k, v in pairs:
                store[bytes(bytearray(k))] = bytes(bytearray(v))  # fresh objects, allocated while traced
            after = _traced()
        finally:
            tracemalloc.stop()
        return (after - before) / len(pairs)

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings({"TAILCAST_KAFKA": "127.0.0.1:9", "TAILCAST_STATE_DIR": tmp})
        cap = settings.worker.consumed_max
        role = create_app(settings, role="worker")
        store = role.parts["table"].data  # the Faust store behind the table (memory://: a dict inside)
        users = [state(u, int(rng.integers(HISTORY, 500)), cap) for u in range(n)]
        n_cap = max(1, n // 10)
        at_cap = [state(n + u, 3 * cap, cap) for u in range(n_cap)]  # 3 x cap events: > cap distinct items
        figures = {
            "user_state_serialized_bytes": sum(len(v) for _, v, _ in users) / n,
            "user_key_bytes": sum(len(k) for k, _, _ in users) / n,
            "user_state_consumed_items": sum(c for _, _, c in users) / n,
            "user_state_table_entry_bytes": entry_bytes(store, [(k, v) for k, v, _ in users]),
            "user_state_consumed_max": float(cap),
            "user_state_serialized_bytes_at_cap": sum(len(v) for _, v, _ in at_cap) / n_cap,
            "user_state_table_entry_bytes_at_cap": entry_bytes(store, [(k, v) for k, v, _ in at_cap]),
        }
        assert len(store) == n + n_cap, f"store holds {len(store)} of {n + n_cap} states"
        assert all(c == cap for _, _, c in at_cap)
    return figures


# ------------------------------------------------------------------------------------ scorer, users
def _arms():
    from online.arms import parse_arms
    from streams.config import SETTINGS

    default = next(s.default for s in SETTINGS if s.env == "TAILCAST_ARMS")
    return parse_arms(default)


def _recommender():
    from online.recommender import OnlineRecommender

    return OnlineRecommender.create(arms=_arms(), content_dim=CONTENT_DIM, seed=0)


def _zipf_items(rng: np.random.Generator, n_items: int, size: int) -> np.ndarray:
    """Item indices with a Zipf(1.1)-like popularity over ``n_items`` (random rank order)."""
    p = 1.0 / np.arange(1, n_items + 1) ** 1.1
    p /= p.sum()
    perm = rng.permutation(n_items)
    return perm[rng.choice(n_items, size=size, p=p)]


def _user_stream(start: int, stop: int, n_items: int, seed: int) -> Iterator[tuple[str, str, float, list[str]]]:
    """2 events for each new user ``start..stop-1``, interleaved in blocks, with the user's history."""
    rng = np.random.default_rng(seed + start)
    block = 5000
    for b0 in range(start, stop, block):
        users = np.arange(b0, min(stop, b0 + block))
        first = _zipf_items(rng, n_items, len(users))
        second = _zipf_items(rng, n_items, len(users))
        ts = 1.7e9 + b0
        for u, i in zip(users.tolist(), first.tolist()):
            yield f"u{u}", f"i{i}", ts, []
        for u, i, j in zip(users.tolist(), second.tolist(), first.tolist()):
            yield f"u{u}", f"i{i}", ts + 1, [f"i{j}"]


def scorer_users(stages: list[int], *, n_items: int = 10_000, fit_over_s: float = 120.0,
                 log=print) -> dict[str, float]:
    figures: dict[str, float] = {}
    # pass 1: time per learn_one (no tracemalloc)
    rec = _recommender()
    prev = 0
    measured: list[int] = []
    per_event = 0.0
    for stage, users in enumerate(stages, 1):
        n_events = 2 * (users - prev)
        # tracemalloc (pass 2) roughly triples the time; fit the size instead when it would be too long
        if len(measured) >= 2 and per_event * n_events * 4 > fit_over_s:
            break
        events = list(_user_stream(prev, users, n_items, seed=1))
        t = time.perf_counter()
        for user, item, ts, hist in events:
            rec.learn_one(user, item, ts, hist)
        per_event = (time.perf_counter() - t) / len(events)
        figures[f"users_stage{stage}"] = float(users)
        figures[f"users_stage{stage}_learn_one_us"] = 1e6 * per_event
        measured.append(users)
        prev = users
    del rec
    # pass 2: memory (tracemalloc), same stream
    tracemalloc.start()
    try:
        base = _traced()
        rec = _recommender()
        mem: dict[int, float] = {0: _traced() - base}
        prev = 0
        for users in measured:
            for user, item, ts, hist in _user_stream(prev, users, n_items, seed=1):
                rec.learn_one(user, item, ts, hist)
            mem[users] = _traced() - base
            prev = users
            log(f"  recommender with {users:,} users: {mem[users] / 2**20:.1f} MiB traced ({_by_file()})")
        # the pending shown list of a served user (blender feedback), and ScorerCore's per-user marks
        users_served = 300
        before = _traced()
        rng = np.random.default_rng(3)
        for u in rng.choice(measured[-1], users_served, replace=False).tolist():
            rec.recommend(f"u{u}", [f"i{j}" for j in _zipf_items(rng, n_items, 10).tolist()], 10,
                          arm=rec.assign_arm(f"u{u}"))
        figures["pending_list_bytes_per_served_user"] = (_traced() - before) / users_served
        figures["pending_lists_max_users"] = float(rec.pools.max_pending)
        del rec
        from streams.agents.scorer import ScorerCore

        core = ScorerCore(recommender=None, arms=None, k=10)
        before = _traced()
        for u in range(100_000):
            core.warm(f"u{u}", 2)
        figures["scorer_core_bytes_per_user"] = (_traced() - before) / 100_000
        del core
    finally:
        tracemalloc.stop()
    s1, s2 = measured[0], measured[1]
    per_user = (mem[s2] - mem[s1]) / (s2 - s1)
    figures["recommender_bytes_per_user"] = per_user
    figures["recommender_users_growth_stage2_vs_1"] = mem[s2] / mem[s1]
    if len(stages) > 2:
        s3 = stages[2]
        if s3 in mem:
            figures["recommender_bytes_per_user_stage3"] = (mem[s3] - mem[s2]) / (s3 - s2)
            figures["recommender_users_growth_stage3_vs_1"] = mem[s3] / mem[s1]
        else:  # linear fit through the two measured sizes
            fitted = mem[s2] + per_user * (s3 - s2)
            figures["users_stage3"] = float(s3)
            figures["recommender_users_growth_stage3_vs_1_fitted"] = fitted / mem[s1]
            log(f"  {s3:,} users: fitted linearly ({fitted / 2**20:.0f} MiB), measuring it would exceed "
                f"~{fit_over_s:.0f}s")
    return figures


# ------------------------------------------------------------------------------------ scorer, items
def _item_stream(start: int, stop: int, n_users: int, seed: int) -> Iterator[tuple[str, str, float, list[str]]]:
    """5 events for each new item ``start..stop-1`` by random users of a fixed pool, with their last 5 items."""
    rng = np.random.default_rng(seed + start)
    hist: dict[int, list[str]] = {}
    items = np.repeat(np.arange(start, stop), 5)
    rng.shuffle(items)
    users = rng.integers(0, n_users, size=len(items))
    for n, (u, i) in enumerate(zip(users.tolist(), items.tolist())):
        h = hist.setdefault(u, [])
        yield f"u{u}", f"i{i}", 1.7e9 + start + n * 0.01, list(h[-5:])
        h.append(f"i{i}")


def scorer_items(stages: list[int], *, n_users: int = 10_000, log=print) -> dict[str, float]:
    figures: dict[str, float] = {}
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(stages[-1], CONTENT_DIM)).astype(np.float32)
    # pass 1: time
    rec = _recommender()
    prev = 0
    for stage, items in enumerate(stages, 1):
        rec.content.set_vectors([f"i{j}" for j in range(prev, items)], vectors[prev:items])
        events = list(_item_stream(prev, items, n_users, seed=5))
        t = time.perf_counter()
        for user, item, ts, hist in events:
            rec.learn_one(user, item, ts, hist)
        figures[f"items_stage{stage}"] = float(items)
        figures[f"items_stage{stage}_learn_one_us"] = 1e6 * (time.perf_counter() - t) / len(events)
        prev = items
    del rec
    # pass 2: memory
    tracemalloc.start()
    try:
        base = _traced()
        rec = _recommender()
        mem: dict[int, float] = {}
        prev = 0
        for items in stages:
            rec.content.set_vectors([f"i{j}" for j in range(prev, items)], vectors[prev:items].copy())
            for user, item, ts, hist in _item_stream(prev, items, n_users, seed=5):
                rec.learn_one(user, item, ts, hist)
            mem[items] = _traced() - base
            prev = items
            log(f"  recommender with {items:,} items: {mem[items] / 2**20:.1f} MiB traced ({_by_file()})")
        del rec
        # co-visitation at saturation: every item at its neighbour cap
        from online.covisit import CoVisitation

        n_sat = 1000
        before = _traced()
        cv = CoVisitation()
        order = np.random.default_rng(7).integers(0, n_sat, size=n_sat * 3 * cv.max_neighbours // 5)
        hist: list[str] = []
        for n, i in enumerate(order.tolist()):
            cv.learn_one("u", f"i{i}", 1.7e9 + n, hist[-cv.lookback:])
            hist.append(f"i{i}")
        figures["covisit_saturated_bytes_per_item"] = (_traced() - before) / n_sat
        del cv
    finally:
        tracemalloc.stop()
    s1, s2 = stages[0], stages[-1]
    figures["recommender_bytes_per_item"] = (mem[s2] - mem[s1]) / (s2 - s1)
    figures["recommender_items_growth_last_vs_first"] = mem[s2] / mem[s1]
    figures["content_vector_bytes_per_item"] = float(CONTENT_DIM * 2)  # 16-bit rows
    return figures


# ---------------------------------------------------------------------------------------------- run
def run(*, quick: bool = False, log=print) -> dict[str, float]:
    user_stages = [2_000, 20_000, 1_000_000] if quick else [10_000, 100_000, 1_000_000]
    item_stages = [2_000, 20_000] if quick else [10_000, 200_000]
    log(f"memory: worker user state; recommender users {' -> '.join(f'{s:,}' for s in user_stages)}, "
        f"items {' -> '.join(f'{s:,}' for s in item_stages)} (tracemalloc)")
    figures = worker_state(n=10_000 if quick else 50_000)
    figures.update(scorer_users(user_stages, fit_over_s=0.0 if quick else 120.0, log=log))
    figures.update(scorer_items(item_stages, log=log))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(json.dumps(run(quick=args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
