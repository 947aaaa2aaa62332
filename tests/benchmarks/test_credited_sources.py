"""benchmarks/credited_sources.py: each event is paired with its user's latest list from before it."""

from __future__ import annotations

from benchmarks.credited_sources import credited


def _list(user, count, *items):
    return {"arm": "a", "user_id": user, "user_event_count": count,
            "items": [{"item_id": i, "source": s} for i, s in items]}


def test_events_pair_with_the_latest_list_made_before_them_and_a_rescore_replaces_its_list():
    lists = [_list("u", 1, ("x", "mf"), ("y", "covisit")),
             _list("u", 1, ("x", "transformer"), ("z", "covisit")),  # re-scored after a swap: replaces it
             _list("v", 1, ("x", "mf")),
             _list("u", 3, ("q", "mf"))]  # made after u's third event: pairs with none of these
    events = [("u", "x"), ("v", "x"), ("u", "z"), ("u", "x"), ("v", "q")]
    # u's 1st and v's 1st events: no list yet; u's 2nd (z) and 3rd (x): the re-scored list of count 1;
    # v's 2nd (q): v's list of count 1 (a miss)
    out = credited(lists, events)["a"]
    assert out["transformer"] == {"slots": 2, "hits": 1, "hit_rate": 0.5, "share": 0.4}
    assert out["covisit"] == {"slots": 2, "hits": 1, "hit_rate": 0.5, "share": 0.4}
    assert out["mf"] == {"slots": 1, "hits": 0, "hit_rate": 0.0, "share": 0.2}


def test_k_cuts_the_lists():
    lists = [_list("u", 1, ("x", "mf"), ("y", "covisit"))]
    assert set(credited(lists, [("u", "a"), ("u", "y")], k=1)["a"]) == {"mf"}
