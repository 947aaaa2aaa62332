"""Fresh online models and synthetic streams for ``timeit`` figures of their learning cost, e.g.

    .venv/bin/python -m timeit -s "from benchmarks.micro import covisit, learn_many; m, ev = covisit()" \\
        "learn_many(m, ev)"

(per-event figure = time / 100k; ``mf``, ``popularity`` the same way; the blender: ``m, ev = blender()``,
``"m.learn_many(ev)"``, per-example figure = time / 20k).

>>> m, ev = popularity(n_events=100)
>>> learn_many(m, ev), len(m) > 0
(100, True)
"""

from __future__ import annotations

import numpy as np

from online.base import learn_many
from online.blender import FeedbackBlender
from online.covisit import CoVisitation
from online.mf import OnlineMF
from online.popularity import DecayedPopularity

__all__ = ["blender", "covisit", "learn_many", "mf", "popularity"]


def _zipf_items(rng: np.random.Generator, n_events: int, n_items: int) -> list[str]:
    return [f"i{j}" for j in (rng.zipf(1.2, n_events) % n_items)]


def covisit(n_events: int = 100_000, n_items: int = 20_000, n_users: int = 5000, seed: int = 0):
    """A fresh co-visitation model and a Zipf event stream with per-user histories (the last 50 items)."""
    rng = np.random.default_rng(seed)
    items = _zipf_items(rng, n_events, n_items)
    users = rng.integers(0, n_users, n_events)
    hist: dict[int, list[str]] = {}
    events = []
    for n, (u, it) in enumerate(zip(users.tolist(), items)):
        h = hist.setdefault(u, [])
        events.append((f"u{u}", it, float(n), tuple(h[-50:])))
        h.append(it)
    return CoVisitation(), events


def mf(n_events: int = 100_000, n_items: int = 20_000, n_users: int = 5000, seed: int = 0):
    """A fresh MF model and a Zipf event stream (no histories)."""
    rng = np.random.default_rng(seed)
    items = _zipf_items(rng, n_events, n_items)
    users = [f"u{u}" for u in rng.integers(0, n_users, n_events).tolist()]
    return OnlineMF(), [(u, it, float(n), ()) for n, (u, it) in enumerate(zip(users, items))]


def popularity(n_events: int = 100_000, n_items: int = 20_000, seed: int = 0):
    """A fresh popularity model (a 50k-event window) and a Zipf event stream."""
    items = _zipf_items(np.random.default_rng(seed), n_events, n_items)
    events = [(f"u{n % 5000}", it, float(n), ()) for n, it in enumerate(items)]
    return DecayedPopularity(window_events=50_000), events


def blender(n_examples: int = 20_000, seed: int = 0):
    """A blender over 6 sources and a synthetic labelled stream of feature dicts."""
    rng = np.random.default_rng(seed)
    sources = ["popularity", "covisit", "mf", "content", "fresh", "transformer"]
    model = FeedbackBlender(sources=sources)
    s = rng.random((n_examples, len(sources)))
    y = rng.random(n_examples) < 1 / (1 + np.exp(-(3 * s[:, 1] + 2 * s[:, 2] - 3)))
    examples = [
        (
            model.features(dict(zip(sources, row.tolist())), is_tail=bool(n % 3), user_event_count=n % 40),
            bool(label),
        )
        for n, (row, label) in enumerate(zip(s, y))
    ]
    return model, examples
