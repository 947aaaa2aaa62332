from __future__ import annotations

import pytest

from streams.config import SETTINGS, ConfigError, load_settings, with_settings_table


def test_defaults_are_valid():
    s = load_settings({})
    assert s.kafka.embedded and s.kafka.servers == "127.0.0.1:19092"
    assert s.metrics_port_for("worker") == 9101 and s.metrics_port_for("scorer") == 9102
    assert [a.name for a in s.scorer.arms] == ["control", "tail"]


@pytest.mark.parametrize("env,name", [
    ({"TAILCAST_PARTITIONS": "0"}, "TAILCAST_PARTITIONS"),
    ({"TAILCAST_HEAD_SHARE": "1.5"}, "TAILCAST_HEAD_SHARE"),
    ({"TAILCAST_DEVICE": "tpu"}, "TAILCAST_DEVICE"),
    ({"TAILCAST_ARMS": "a:x:0"}, "TAILCAST_ARMS"),
    ({"TAILCAST_METRICS_PORT": "99999"}, "TAILCAST_METRICS_PORT"),
    ({"TAILCAST_TYPO": "1"}, "TAILCAST_TYPO"),
    ({"TAILCAST_CONSUMED_MAX": "0"}, "TAILCAST_CONSUMED_MAX"),
    ({"TAILCAST_TRAIN_VAE_MAX_SECONDS": "-1"}, "TAILCAST_TRAIN_VAE_MAX_SECONDS"),
    ({"TAILCAST_METRICS_INTERVAL_S": "-0.5"}, "TAILCAST_METRICS_INTERVAL_S"),
    ({"TAILCAST_EXCLUDE_CONSUMED": "none"}, "TAILCAST_EXCLUDE_CONSUMED"),
    ({"TAILCAST_PROCESSING_GUARANTEE": "exactly_once"}, "TAILCAST_PROCESSING_GUARANTEE"),
    ({"TAILCAST_KAFKA": "k:9092", "TAILCAST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "TAILCAST_KAFKA_SASL_USERNAME"),
])
def test_errors_name_the_variable(env, name):
    with pytest.raises(ConfigError, match=name):
        load_settings(env)


def test_consumed_settings():
    default = load_settings({})
    assert default.worker.consumed_max == 2000 and default.worker.exclude_consumed == "all"
    s = load_settings({"TAILCAST_CONSUMED_MAX": "300", "TAILCAST_EXCLUDE_CONSUMED": "recent"})
    assert s.worker.consumed_max == 300 and s.worker.exclude_consumed == "recent"


def test_secrets_are_not_in_repr():
    s = load_settings({"TAILCAST_KAFKA": "k:9092", "TAILCAST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                       "TAILCAST_KAFKA_SASL_USERNAME": "u", "TAILCAST_KAFKA_SASL_PASSWORD": "hunter2",
                       "TAILCAST_PSEUDONYMIZE_KEY": "pepper"})
    assert "hunter2" not in repr(s) and "pepper" not in repr(s)


def test_readme_settings_table_is_the_generated_one():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert with_settings_table(readme) == readme, "regenerate it: python -m streams.config README.md"
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in readme]
    assert not missing, f"README lacks {missing}"


def test_few_settings():
    """Settings are what a user sets; tuned internals are named constants beside their use (#19 asks for
    at most 32; lower this bound as settings go, never raise it without a reason in docs/decisions.md)."""
    assert len(SETTINGS) <= 32, [s.env for s in SETTINGS]


@pytest.mark.parametrize("name", ["TAILCAST_GC_THRESHOLD", "TAILCAST_FETCH_MAX_WAIT_MS", "TAILCAST_SCORER_BATCH",
                                  "TAILCAST_TRAIN_VAE", "TAILCAST_EXPOSURE_AGENT", "TAILCAST_TRAIN_EPOCHS",
                                  "TAILCAST_TRAIN_TEXT", "TAILCAST_TRAIN_MIN_EVENTS"])
def test_internals_are_not_settings(name):
    """A variable that used to be a setting is refused by name, not silently ignored."""
    with pytest.raises(ConfigError, match=f"unknown setting.*{name}"):
        load_settings({name: "1"})


def test_a_zero_budget_trains_no_vae_and_the_trainer_always_tries_item_text():
    """TAILCAST_TRAIN_VAE_MAX_SECONDS=0 is the old TAILCAST_TRAIN_VAE=false; text is always "auto"."""
    from streams.config import TRAIN_EPOCHS
    from streams.trainer import refresh_config

    default = load_settings({})
    assert default.trainer.vae and default.trainer.vae_max_seconds == 120.0
    config = refresh_config(default)
    assert config.vae and config.vae_max_seconds == 120.0 and config.text == "auto" and config.epochs == TRAIN_EPOCHS
    off = load_settings({"TAILCAST_TRAIN_VAE_MAX_SECONDS": "0"})
    assert not off.trainer.vae and off.trainer.vae_max_seconds == 0.0
    config = refresh_config(off)
    assert not config.vae and config.text == "auto"


def test_a_zero_metrics_interval_runs_no_exposure_agent(tmp_path):
    """TAILCAST_METRICS_INTERVAL_S=0 is the old TAILCAST_EXPOSURE_AGENT=false: the scorer app has no exposure
    agent (and no longtail-metrics timer); any interval > 0 has it."""
    import asyncio

    from streams.app import create_app

    assert load_settings({}).longtail.exposure_agent
    assert load_settings({"TAILCAST_METRICS_INTERVAL_S": "0.5"}).longtail.exposure_agent

    def agents(interval: str) -> set[str]:
        async def build() -> set[str]:
            settings = load_settings({"TAILCAST_KAFKA": "127.0.0.1:1", "TAILCAST_STATE_DIR": str(tmp_path),
                                      "TAILCAST_TEXT_ENCODER": "hashing", "TAILCAST_DEVICE": "cpu",
                                      "TAILCAST_CHECKPOINT_DIR": str(tmp_path / "ck"),
                                      "TAILCAST_METRICS_INTERVAL_S": interval})
            assert settings.longtail.exposure_agent == (float(interval) > 0)
            return {name.rsplit(".", 1)[-1] for name in create_app(settings, role="scorer").app.agents}

        return asyncio.run(build())

    assert "exposure" in agents("5")
    assert "exposure" not in agents("0") and "score" in agents("0")


def test_sasl_ssl_settings_reach_every_kafka_client(tmp_path):
    import ssl

    from streams.app import faust_credentials
    from streams.kafka import client_kwargs

    env = {"TAILCAST_KAFKA": "k1:9093,k2:9093", "TAILCAST_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "TAILCAST_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "TAILCAST_KAFKA_SASL_USERNAME": "svc",
           "TAILCAST_KAFKA_SASL_PASSWORD": "pw"}
    kafka = load_settings(env).kafka
    kw = client_kwargs(kafka)
    assert kw["bootstrap_servers"] == "k1:9093,k2:9093" and kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_username"] == "svc"
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(kafka)
    assert creds.username == "svc" and creds.mechanism.value == "SCRAM-SHA-512"
    assert client_kwargs(load_settings({}).kafka).keys() == {"bootstrap_servers", "security_protocol"}


def test_gc_threshold_sets_the_young_generation_and_zero_keeps_pythons():
    import gc

    from streams.cli import GC_YOUNG_THRESHOLD, freeze_startup_heap

    before = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:]) == (20_000, *before[1:])
        gc.set_threshold(*before)
        freeze_startup_heap(12345)
        assert gc.get_threshold() == (12345, *before[1:])
        gc.set_threshold(*before)
        freeze_startup_heap(0)
        assert gc.get_threshold() == before
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
