"""The scorer's impressions core in memory: records read as the contract says, counters equal to the ledger."""

from __future__ import annotations

import orjson
import pytest
from prometheus_client import CollectorRegistry

from online.arms import ArmAssigner, parse_arms
from streams.agents.impressions import Impressions
from streams.agents.ingest import pseudonymize
from streams.agents.scorer import LearnedEvent
from streams.metrics import ABMetrics
from streams.records import BadEvent


def _imp(user: str, items: list[str], ts: float, list_id: str = "l") -> bytes:
    return orjson.dumps({"user_id": user, "list_id": list_id, "ts": ts,
                         "items": [{"item_id": i, "position": n} for n, i in enumerate(items)]})


def _core(key: str | None = None):
    registry = CollectorRegistry()
    arms = ArmAssigner.from_configs(parse_arms("control:0.5:0.0,tail:0.5:0.5"))
    core = Impressions(arms=arms, is_tail=lambda item: item.startswith("t"), metrics=ABMetrics.create(registry),
                       max_bytes=10_000, pseudonymize_key=key)
    return core, registry, arms


def test_counters_follow_the_ledger_and_records_carry_intervals():
    core, registry, arms = _core()
    users = [f"u{n}" for n in range(40)]
    for n, user in enumerate(users):
        core.add(core.read(_imp(user, ["h1", "t1", "t2", "h2"], 100.0 + n), default_ts=0.0))
    core.clicks([LearnedEvent(user, "t1" if n % 3 else "h1", 200.0 + n, 2) for n, user in enumerate(users)])
    core.clicks([LearnedEvent(user, "t1", 300.0, 3) for user in users])  # the same slots again: no new credit
    for arm in core.ledger.arms():
        c = core.ledger.counts[arm]
        n_users = sum(arms.assign(u) == arm for u in users)
        assert c.impressions == n_users and c.slots == 4 * n_users and c.tail_slots == 2 * n_users
        get = registry.get_sample_value
        assert get("tailcast_ab_impressions_total", {"arm": arm}) == c.impressions
        assert get("tailcast_ab_slots_total", {"arm": arm, "segment": "tail"}) == c.tail_slots
        assert get("tailcast_ab_slots_total", {"arm": arm, "segment": "head"}) == c.slots - c.tail_slots
        assert get("tailcast_ab_clicks_total", {"arm": arm, "segment": "tail"}) == c.tail_clicks
        assert get("tailcast_ab_clicks_total", {"arm": arm, "segment": "head"}) == c.clicks - c.tail_clicks
        # t1 (or h1), then t1 again: credited only where it is a new slot (after h1)
        assert c.clicks == n_users + sum(arms.assign(u) == arm for n, u in enumerate(users) if n % 3 == 0)
        record = core.record(arm)
        assert record["ctr"]["low"] < record["ctr"]["value"] == c.clicks / c.slots < record["ctr"]["high"]
    assert core.record("nobody") is None


def test_pseudonymised_users_get_the_scorers_id_and_arm():
    core, _, arms = _core(key="secret")
    imp = core.read(_imp("alice", ["t1"], 5.0), default_ts=0.0)
    assert imp.user == pseudonymize("alice", "secret") != "alice"
    assert imp.arm == arms.assign(imp.user)
    core.add(imp)
    core.clicks([LearnedEvent(imp.user, "t1", 6.0, 1)])
    assert core.ledger.counts[imp.arm].clicks == 1
    core.forget(imp.user)
    assert core.ledger.n_users == 0


@pytest.mark.parametrize("raw,reason", [
    (b"{broken", "not_json"),
    (b'{"user_id": "u1", "items": []}', "missing_field"),
    (b'{"user_id": "u1", "list_id": "l", "items": [{"item_id": "i", "position": "0"}]}', "wrong_type"),
    (b'{"user_id": "u1", "list_id": "l", "items": [], "ts": -5}', "bad_timestamp"),
    (None, "empty_payload"),
])
def test_bad_records_raise_with_a_dlq_reason(raw, reason):
    core, _, _ = _core()
    with pytest.raises(BadEvent) as exc:
        core.read(raw, default_ts=1.0)
    assert exc.value.reason == reason
