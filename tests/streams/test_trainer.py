"""The trainer's event log, in memory: each event once, and erasure (#17) as the markers on score-requests
order it."""

from __future__ import annotations

import streams.trainer as trainer
from streams.config import load_settings
from streams.records import Forget, ScoreRequest, read_request
from streams.trainer import EventLog


def req(user: str, items: list[str], count: int) -> ScoreRequest:
    return ScoreRequest(user, items, [(i, float(count), "click") for i in items], count, float(count), 1.0, 1.0)


def feed(log: EventLog, records: list[ScoreRequest | Forget]) -> None:
    """As the trainer's follower reads them: markers forget, requests add; erasures applied once per batch."""
    for record in records:
        record = read_request(record.to_bytes())
        if isinstance(record, Forget):
            log.forget(record.user_id)
        else:
            log.add_request(record)
    log.erase()


def test_a_forgotten_users_events_go_and_their_events_after_the_marker_stay():
    log = EventLog(100)
    feed(log, [req("u1", ["a", "b"], 2), req("u2", ["x"], 1), req("u1", ["c"], 3), Forget("u1", 5.0),
               req("u1", ["d"], 1), req("u2", ["y"], 2)])
    assert [(u, i) for u, i, _ in log.events] == [("u2", "x"), ("u1", "d"), ("u2", "y")]
    assert (log.new_since_refresh, log.erased_since_refresh) == (6, 3)
    # the high-water mark went with the user: their new events count from 1, and a repeat is still dropped
    feed(log, [req("u1", ["d"], 1), req("u1", ["e"], 2)])
    assert [(u, i) for u, i, _ in log.events] == [("u2", "x"), ("u1", "d"), ("u2", "y"), ("u1", "e")]


def test_a_replay_of_the_log_from_its_beginning_drops_the_users_events_again():
    """A restarted trainer reads score-requests from the beginning: the marker follows the user's requests."""
    stream = [req("u1", ["a"], 1), req("u2", ["x"], 1), req("u1", ["b"], 2), Forget("u1", 5.0), req("u2", ["y"], 2)]
    first, replayed = EventLog(100), EventLog(100)
    feed(first, stream)
    for start in range(0, len(stream), 2):  # batches cut elsewhere
        feed(replayed, stream[start:start + 2])
    assert list(first.events) == list(replayed.events) == [("u2", "x", 1.0), ("u2", "y", 2.0)]


def test_trainer_exports_the_refresh_interval_its_stale_alerts_compare_with(monkeypatch):
    """infra/prometheus/alerts.yml fires when a model is older than twice this gauge (alerts.test.yml)."""
    seen = {}

    async def no_loop(settings, metrics, *, once):
        seen["interval"] = metrics.refresh_interval._value.get()

    monkeypatch.setattr(trainer, "serve_metrics", lambda registry, port: None)
    monkeypatch.setattr(trainer, "_run", no_loop)
    assert trainer.run_trainer(load_settings({"TAILCAST_TRAIN_INTERVAL_S": "900"})) == 0
    assert seen == {"interval": 900.0}
