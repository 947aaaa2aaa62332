"""A synthetic interaction stream with a realistic long tail — the project's own data.

What it plants, so that tests and the demo can check that models find it (deterministic under ``seed``):
Zipf-like item popularity (``zipf_a``); taste clusters (each item in one of ``n_clusters`` genres, each user
preferring one: an event comes from it with probability ``taste``); sequential patterns (each item has a
successor in its genre, the next event with probability ``p_next``); log-normal user activity (many users
with <= 5 events); item titles and tags from the genre's vocabulary.

>>> data = generate(n_users=50, n_items=80, n_events=500, seed=1)
>>> len(data.events), len(data.items)
(500, 80)
>>> data.events == sorted(data.events, key=lambda e: (e[0], e[1], e[2]))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticData", "SyntheticItem", "generate", "GENRES"]

GENRES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("jazz", ("saxophone", "trio", "bebop", "swing", "piano", "blue note", "improvised")),
    ("metal", ("guitar", "riff", "doom", "thrash", "amplified", "heavy", "drums")),
    ("cooking", ("recipe", "kitchen", "pasta", "spice", "bake", "chef", "sauce")),
    ("space", ("galaxy", "rocket", "orbit", "astronaut", "nebula", "planet", "telescope")),
    ("gardening", ("tomato", "soil", "seeds", "greenhouse", "compost", "roses", "pruning")),
    ("mystery", ("detective", "murder", "clue", "alibi", "suspect", "noir", "inspector")),
    ("football", ("goal", "striker", "league", "stadium", "penalty", "derby", "coach")),
    ("classical", ("symphony", "violin", "orchestra", "sonata", "baroque", "cello", "opera")),
)
_ADJECTIVES = ("Midnight", "Golden", "Quiet", "Electric", "Lost", "Northern", "Hidden", "Bright", "Old",
               "Wild", "Second", "Little", "Silver", "Red", "Endless", "Secret")


@dataclass(frozen=True, slots=True)
class SyntheticItem:
    item_id: str
    title: str
    tags: tuple[str, ...]
    genre: str

    def text(self) -> str:
        return f"{self.title}. {', '.join(self.tags)}"


@dataclass(frozen=True, slots=True)
class SyntheticData:
    events: list[tuple[float, str, str, str]]  # (ts, user_id, item_id, event), time-ordered
    items: dict[str, SyntheticItem]
    item_genre: dict[str, int]
    user_genre: dict[str, int]
    successor: dict[str, str]


def generate(*, n_users: int = 2_000, n_items: int = 1_000, n_events: int = 50_000, n_clusters: int = 8,
             zipf_a: float = 1.1, taste: float = 0.8, p_next: float = 0.5, start_ts: float = 1_700_000_000.0,
             events_per_second: float = 10.0, seed: int = 0) -> SyntheticData:
    """Generate ``n_events`` events over ``n_users`` users and ``n_items`` items (see module doc)."""
    if n_clusters > len(GENRES):
        raise ValueError(f"n_clusters={n_clusters} exceeds the {len(GENRES)} genres with a vocabulary")
    if min(n_users, n_items, n_events) <= 0:
        raise ValueError("n_users, n_items and n_events must be positive")
    rng = np.random.default_rng(seed)
    item_ids = [f"i{j}" for j in range(n_items)]
    # Popularity rank is random w.r.t. genre, so every genre has head and tail items.
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_a
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    genre_of = rng.integers(0, n_clusters, size=n_items)
    members = [np.flatnonzero(genre_of == g) for g in range(n_clusters)]
    genre_p = [popularity[m] / popularity[m].sum() if len(m) else None for m in members]
    # successor: a fixed random item of the same genre (a planted sequential pattern)
    successor = np.empty(n_items, dtype=np.int64)
    for g, m in enumerate(members):
        if len(m):
            successor[m] = m[rng.permutation(len(m))]
    # heavy-tailed activity: log-normal weights decide who acts next (many light users, a few heavy ones)
    activity = rng.lognormal(0.0, 1.4, size=n_users)
    activity /= activity.sum()
    user_genre = rng.integers(0, n_clusters, size=n_users)

    users = rng.choice(n_users, size=n_events, p=activity)
    coins = rng.random((n_events, 2))
    last_item = np.full(n_users, -1, dtype=np.int64)
    gaps = rng.exponential(1.0 / events_per_second, size=n_events)
    ts = start_ts + np.cumsum(gaps)
    kinds = rng.choice(["view", "click", "cart", "purchase"], size=n_events, p=[0.3, 0.55, 0.1, 0.05])
    events = []
    for n in range(n_events):
        u = users[n]
        prev = last_item[u]
        if prev >= 0 and coins[n, 0] < p_next:
            j = successor[prev]
        elif coins[n, 1] < taste and genre_p[user_genre[u]] is not None:
            m = members[user_genre[u]]
            j = m[rng.choice(len(m), p=genre_p[user_genre[u]])]
        else:
            j = rng.choice(n_items, p=popularity)
        last_item[u] = j
        events.append((round(float(ts[n]), 3), f"u{u}", item_ids[j], str(kinds[n])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    items = {}
    for j, item in enumerate(item_ids):
        genre, vocab = GENRES[genre_of[j]]
        words = rng.choice(len(vocab), size=2, replace=False)
        title = f"{_ADJECTIVES[j % len(_ADJECTIVES)]} {vocab[words[0]]} {vocab[words[1]]} no. {j}"
        items[item] = SyntheticItem(item, title.capitalize(), (genre, vocab[words[0]]), genre)
    return SyntheticData(
        events=events,
        items=items,
        item_genre={item_ids[j]: int(genre_of[j]) for j in range(n_items)},
        user_genre={f"u{u}": int(user_genre[u]) for u in range(n_users)},
        successor={item_ids[j]: item_ids[successor[j]] for j in range(n_items)},
    )
