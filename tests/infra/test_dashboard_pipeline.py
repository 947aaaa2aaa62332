"""Every Grafana panel's query returns data from a REAL pipeline: a worker, a scorer and a trainer on the
embedded broker, scraped by a real Prometheus (Debian's package), after a replayed synthetic stream."""

from __future__ import annotations

import asyncio
import threading
import urllib.request

import orjson
import pytest

from online.synthetic import generate
from streams.topics import EVENTS, IMPRESSIONS, ensure_topics

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _has(url: str, name: str) -> bool:
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return False
    return any(line.startswith(name) for line in body.splitlines())


def test_every_dashboard_panel_returns_data_from_a_live_pipeline(pipeline_env, kio, wait, harness, dashboard,
                                                                   prometheus_bin, tmp_path):
    pipeline_env.env.update(TAILCAST_MODEL_POLL_S="1", TAILCAST_TRAIN_MAX_SECONDS="20")
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    for role in ("worker", "scorer", "trainer"):
        pipeline_env.start(role)
    data = generate(n_users=200, n_items=300, n_events=3000, seed=5)
    events = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]
    # a client's impressions (the A/B row): each shows the item its user clicks next, a second before
    ids = sorted(data.items)
    impressions = [(u.encode(), orjson.dumps({"user_id": u, "list_id": f"{u}:{n}:0", "ts": ts - 1, "items": [
        {"item_id": item, "position": pos} for pos, item in enumerate([i, *ids[n % 50:n % 50 + 4]])]}))
        for n, (ts, u, i, _) in enumerate(data.events)]
    kio.produce(EVENTS, events + [(b"x", b"{broken")])
    scorer = pipeline_env.metrics_url("scorer")
    wait(lambda: _has(scorer, "tailcast_scorer_model_info{"), timeout=120,
         message="the trainer's first checkpoint to be in service")
    # keep events (and a bad one now and then) flowing while Prometheus scrapes, so rate() windows have samples
    done = threading.Event()

    def steady_stream() -> None:
        n = 0
        while not done.wait(0.5):
            kio.produce(IMPRESSIONS, impressions[n:n + 50] + [(b"x", b'{"user_id": "x"}')])
            kio.produce(EVENTS, events[n:n + 50] + [(b"x", b"{broken")])
            n = (n + 50) % len(events)

    feeder = threading.Thread(target=steady_stream, daemon=True)
    feeder.start()
    try:  # (the refresh-duration panels need a trainer refresh inside the window: on a loaded machine, minutes)
        report = harness.check_dashboard_live(
            {f"tailcast-{role}": [pipeline_env.metrics_url(role)] for role in ("worker", "scorer", "trainer")},
            dashboard=dashboard, prometheus_bin=prometheus_bin, workdir=tmp_path / "prometheus", deadline_s=180)
    finally:
        done.set()
        feeder.join()
    assert len(report.targets) == 3
    assert not report.missing, report.describe()
