"""Periodic batch refresh: trainer publishes, the scorer hot-swaps under load, corrupt checkpoints are refused."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import urllib.request

import orjson
import pytest

from online.synthetic import generate
from streams.topics import EVENTS, RECOMMENDATIONS

pytestmark = pytest.mark.integration


def _metric(url: str, name: str) -> float:
    try:
        body = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " "))


def test_trainer_checkpoint_is_hot_swapped_without_loss_and_a_corrupt_one_is_refused(pipeline_env, kio, wait):
    import asyncio

    from streams.topics import ensure_topics

    pipeline_env.env.update(TAILCAST_MODEL_POLL_S="1", TAILCAST_TRAIN_MAX_SECONDS="30")
    asyncio.run(ensure_topics(pipeline_env.settings.kafka))
    pipeline_env.start("worker")
    pipeline_env.start("scorer")
    data = generate(n_users=120, n_items=150, n_events=4000, seed=11)
    events = [(u.encode(), orjson.dumps({"user_id": u, "item_id": i, "ts": ts})) for ts, u, i, _ in data.events]
    first, rest = events[:2000], events[2000:]
    expected = collections.Counter(k.decode() for k, _ in events)
    kio.produce(EVENTS, first)
    # the worker coalesces a user's events within a micro-batch into one request: wait until the scorer
    # has read every request the worker emitted for the first half
    worker_url, scorer_url = pipeline_env.metrics_url("worker"), pipeline_env.metrics_url("scorer")
    wait(lambda: _metric(worker_url, "tailcast_worker_events_valid_total") == len(first), timeout=60,
         message="the worker to apply the first half")
    wait(lambda: 0 < _metric(worker_url, "tailcast_worker_score_requests_total")
         <= _metric(scorer_url, "tailcast_scorer_requests_consumed_total"),
         timeout=60, message="the scorer to consume the first half's requests")
    trainer = subprocess.run([sys.executable, "-m", "streams.cli", "trainer", "--once"],
                             env={**pipeline_env.env, "TAILCAST_METRICS_PORT": "0"}, capture_output=True, text=True,
                             timeout=180)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    checkpoints = sorted((pipeline_env.workdir / "checkpoints").glob("v*.pt"))
    assert len(checkpoints) == 1
    version = checkpoints[0].stem
    from models.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoints[0]).has_vae  # TAILCAST_TRAIN_VAE_MAX_SECONDS > 0 by default: a second source

    # a steady stream while the scorer picks the checkpoint up and swaps it in between micro-batches
    def produce_rest():
        for n in range(0, len(rest), 100):
            kio.produce(EVENTS, rest[n:n + 100])

    producer = threading.Thread(target=produce_rest)
    producer.start()
    wait(lambda: any(rec["model_version"] == version for *_, rec in kio.read_all(RECOMMENDATIONS)), timeout=60,
         message=f"lists from {version}")
    producer.join()

    wait(lambda: kio.latest_counts() == dict(expected), timeout=90, message="every user's final state served")
    recs = [rec for *_, rec in kio.read_all(RECOMMENDATIONS)]
    # one "event" list per state; a state is scored again only as a marked repeat with its own list_id:
    # after the swap with the new model, or because its list came out empty
    events = collections.Counter((r["user_id"], r["user_event_count"]) for r in recs if r["refresh"] == "event")
    assert max(events.values()) == 1, "a state was published twice as an event list"
    assert len({r["list_id"] for r in recs}) == len(recs)
    assert {r["model_version"] for r in recs if r["refresh"] == "model"} == {version}
    per_version = collections.Counter((r["user_id"], r["user_event_count"], r["model_version"]) for r in recs
                                      if r["refresh"] != "empty")
    assert max(per_version.values()) == 1, "a state was scored twice by the same model"
    # the swapped-in encoder's candidates reach the ranker: they are in its candidate pools, labelled by the
    # next events, so the ranker exports an AUC series for the source (none for a source that never proposed).
    # Whether they are then shown, and credited, is the ranker's call (it may learn the encoder is weak).
    sources = collections.Counter(i["source"] for r in recs if r["model_version"] == version for i in r["items"])
    auc = 'tailcast_blender_auc_ratio{source="transformer"}'
    wait(lambda: _metric(scorer_url, auc) > 0, timeout=60,
         message=f"the scorer's ranker to have labelled transformer candidates (items shown by source: {sources})")
    # lists never go back in time per user, whatever the model
    last = {}
    for r in recs:
        assert r["user_event_count"] >= last.get(r["user_id"], 0)
        last[r["user_id"]] = r["user_event_count"]

    # a corrupt newer checkpoint: counted, logged, and the previous model keeps serving
    (pipeline_env.workdir / "checkpoints" / "v9999-20990101T000000Z.pt").write_bytes(b"definitely not torch")
    url = pipeline_env.metrics_url("scorer")
    wait(lambda: _metric(url, "tailcast_scorer_model_load_failures_total") == 1, timeout=30,
         message="the load failure to be counted")
    assert "v9999" in pipeline_env.log("scorer") and f"still serving {version}" in pipeline_env.log("scorer")
    kio.produce(EVENTS, [(b"newcomer", orjson.dumps({"user_id": "newcomer", "item_id": "i1"}))])
    rec = wait(lambda: [r for *_, r in kio.read_all(RECOMMENDATIONS) if r["user_id"] == "newcomer"], timeout=30,
               message="a list for a new user")[0]
    assert rec["model_version"] == version
