"""Every tailcast setting, declared once, typed, and validated at start-up: the only module that reads
``TAILCAST_*`` variables. :func:`load_settings` fails fast with a :class:`ConfigError` naming the variable;
the README's settings table is generated from :data:`SETTINGS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from online.arms import Arms, parse_arms

__all__ = ["ConfigError", "KafkaSettings", "WorkerSettings", "ScorerSettings", "LongTailSettings", "TrainerSettings",
           "Settings", "SETTINGS", "load_settings", "settings_table", "with_settings_table"]


class ConfigError(ValueError):
    """A ``TAILCAST_*`` variable is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its name, default (as text), parser and meaning."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """A parser of numbers ``cast`` reads and ``ok`` accepts; ``ValueError(rule)`` for the others."""
    def parse(text: str) -> Any:
        value = cast(text)
        if not ok(value):
            raise ValueError(rule)
        return value

    return parse


_positive_int = _number(int, lambda v: v > 0, "must be a positive integer")
_positive_float = _number(float, lambda v: v > 0, "must be a positive number")
_non_negative_float = _number(float, lambda v: v >= 0, "must be a number >= 0")
_share = _number(float, lambda v: 0.0 < v < 1.0, "must be strictly between 0 and 1")
_port = _number(int, lambda v: 0 < v < 65536, "must be a port number 1-65535")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _optional_text(text: str) -> str | None:
    return text or None


#: Where the embedded broker listens when TAILCAST_KAFKA is unset (`tailcast broker` listens on the address
#: TAILCAST_KAFKA names, which is how to move it).
EMBEDDED_PORT = 19092
#: Items each published record holds in all, ``items`` (TAILCAST_K) then ``more``: what the read API stores, so
#: that a caller can ask for more than k, or still get k after a hide.
LIST_DEPTH = 50
#: The worker's micro-batch: at most this many events, or what arrived within this many seconds.
WORKER_BATCH = 1000
WORKER_BATCH_WAIT_S = 0.02
#: The most epochs of each model in a trainer refresh; early stopping on validation and the time budgets end it first.
TRAIN_EPOCHS = 30
#: The trainer refreshes before TAILCAST_TRAIN_INTERVAL_S once this many new events, and at least as many as
#: it last trained on, have come (the log has doubled): quick refreshes while the log is young.
TRAIN_MIN_EVENTS = 1000

SETTINGS: tuple[Setting, ...] = (
    Setting("TAILCAST_KAFKA", "", _optional_text,
            "Kafka bootstrap servers (host:port[,host:port]). Unset: the embedded Tansu broker (memory only) "
            f"on 127.0.0.1:{EMBEDDED_PORT}; `tailcast broker` listens on the address it names."),
    Setting("TAILCAST_PARTITIONS", "4", _positive_int,
            "Partitions of the user-keyed topics (events, score-requests, recommendations, impressions)."),
    Setting("TAILCAST_REPLICATION", "1", _positive_int,
            "Replication factor of the topics tailcast creates (use 3 on a production cluster)."),
    Setting("TAILCAST_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
            _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), "Kafka security protocol."),
    Setting("TAILCAST_KAFKA_SASL_MECHANISM", "PLAIN",
            _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SASL mechanism (SASL_* protocols)."),
    Setting("TAILCAST_KAFKA_SASL_USERNAME", "", _optional_text, "SASL username."),
    Setting("TAILCAST_KAFKA_SASL_PASSWORD", "", _optional_text, "SASL password (never logged)."),
    Setting("TAILCAST_KAFKA_SSL_CAFILE", "", _optional_text, "CA bundle for SSL/SASL_SSL."),
    Setting("TAILCAST_PROCESSING_GUARANTEE", "at_least_once", _choice("at_least_once", "exactly_once"),
            "Faust processing guarantee. exactly_once needs Kafka transactions (real Kafka only)."),
    Setting("TAILCAST_STATE_DIR", "var/state", Path, "Faust data directory (local table state)."),
    Setting("TAILCAST_METRICS_PORT", "", _optional_text,
            "Prometheus /metrics port; default 9101 worker, 9102 scorer, 9103 trainer (the api serves /metrics on "
            "TAILCAST_API_PORT); 0 disables."),
    Setting("TAILCAST_API_PORT", "8080", _port,
            "HTTP port of `tailcast api` (GET /recommendations/{user_id}, /healthz, /metrics); each instance "
            "is reached by the others at http://<hostname>:<port>."),
    Setting("TAILCAST_LOG_LEVEL", "info", _choice("debug", "info", "warn", "error", "crit"), "Log level."),
    Setting("TAILCAST_HISTORY_LEN", "50", _positive_int, "Recent items kept per user (sequence length)."),
    Setting("TAILCAST_CONSUMED_MAX", "2000", _positive_int,
            "Distinct consumed items kept per user, as 4-byte hashes, for the scorer's exclusion set; the "
            "least recently consumed go first. Lower it to shrink the user state."),
    Setting("TAILCAST_MAX_EVENT_BYTES", "65536", _positive_int,
            "Largest accepted event; larger ones go to events.dlq as `oversized`."),
    Setting("TAILCAST_PSEUDONYMIZE_KEY", "", _optional_text,
            "If set, user ids are replaced at ingest by a keyed BLAKE2b hash; raw ids never pass the edge."),
    Setting("TAILCAST_K", "10", _positive_int, "Length of each recommendation list."),
    Setting("TAILCAST_EXCLUDE_CONSUMED", "all", _choice("all", "recent"),
            "Items never recommended to a user: `all` they consumed (up to TAILCAST_CONSUMED_MAX), or only "
            "the `recent` TAILCAST_HISTORY_LEN (for repeat-consumption catalogues such as groceries)."),
    Setting("TAILCAST_ARMS", "control:0.5:0.0,tail:0.5:0.5", parse_arms,
            "A/B arms as name:traffic_weight:rerank_strength[:off=SOURCE+SOURCE], comma-separated (`off`: "
            "candidate sources the arm's users do not get, e.g. `off=transformer+vae`); a `salt=NAME` element "
            "sets the salt of the user-to-arm hash (default `tailcast`): a new salt reshuffles the users."),
    Setting("TAILCAST_WINDOW_EVENTS", "100000", _positive_int,
            "Sliding window (events) for head/tail split and long-tail metrics."),
    Setting("TAILCAST_HEAD_SHARE", "0.2", _share, "Share of active items that form the head."),
    Setting("TAILCAST_METRICS_INTERVAL_S", "5", _non_negative_float,
            "How often a longtail-metrics record is published per arm (seconds); 0 runs no exposure "
            "(long-tail metrics) agent in the scorer."),
    Setting("TAILCAST_DEVICE", "auto", _choice("auto", "cpu", "cuda"), "Torch device for the scorer/trainer."),
    Setting("TAILCAST_CHECKPOINT_DIR", "var/checkpoints", Path, "Where the trainer publishes checkpoints."),
    Setting("TAILCAST_MODEL_POLL_S", "10", _positive_float, "How often the scorer looks for a new checkpoint."),
    Setting("TAILCAST_TORCH_THREADS", "1", _positive_int,
            "Torch intra-op and numpy BLAS threads in the scorer and trainer (1 keeps a small box responsive)."),
    Setting("TAILCAST_QUANTIZE", "none", _choice("none", "int8", "bf16"), "CPU inference precision."),
    Setting("TAILCAST_TEXT_ENCODER", "minilm", _choice("minilm", "hashing"),
            "Item text encoder: the pretrained all-MiniLM-L6-v2, or a token-hashing fallback."),
    Setting("TAILCAST_TRAIN_INTERVAL_S", "600", _positive_float, "Trainer refresh interval (seconds)."),
    Setting("TAILCAST_TRAIN_MAX_SECONDS", "300", _positive_float,
            "Wall-clock budget of each encoder training in a refresh (each candidate to select, the kept one refit)."),
    Setting("TAILCAST_TRAIN_VAE_MAX_SECONDS", "120", _non_negative_float,
            "Wall-clock budget of each Mult-VAE training in a refresh (one to select, one refit), served as the "
            "`vae` candidate source; 0 trains no Mult-VAE."),
)

_BY_ENV = {s.env: s for s in SETTINGS}


def _read(env: Mapping[str, str], name: str) -> Any:
    setting = _BY_ENV[name]
    raw = env.get(name, setting.default)
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc} ({setting.help})") from None


def _switch(name: str, doc: str) -> property:
    """A part that a setting of 0 switches off: on while the field ``name`` is above 0."""
    return property(lambda self: getattr(self, name) > 0, doc=doc)


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap: str | None
    partitions: int
    replication: int
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str | None
    sasl_password: str | None = field(repr=False)
    ssl_cafile: str | None
    processing_guarantee: str

    @property
    def embedded(self) -> bool:
        """True when tailcast must run its own (memory-only) broker."""
        return self.bootstrap is None

    @property
    def servers(self) -> str:
        """Bootstrap servers to connect to (the embedded broker's loopback address when unset)."""
        return self.bootstrap or f"127.0.0.1:{EMBEDDED_PORT}"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    history_len: int
    max_event_bytes: int
    pseudonymize_key: str | None = field(repr=False)
    consumed_max: int = 2000
    exclude_consumed: str = "all"  # "all" consumed items (up to consumed_max), or "recent" only


@dataclass(frozen=True, slots=True)
class ScorerSettings:
    k: int
    arms: Arms  # a tuple of ArmConfig, with the assignment salt
    device: str
    checkpoint_dir: Path
    model_poll_s: float
    torch_threads: int
    quantize: str
    text_encoder: str


@dataclass(frozen=True, slots=True)
class LongTailSettings:
    window_events: int
    head_share: float
    interval_s: float  # 0: no exposure agent

    exposure_agent = _switch("interval_s", "Whether the scorer runs the exposure (long-tail metrics) agent.")


@dataclass(frozen=True, slots=True)
class TrainerSettings:
    interval_s: float
    max_seconds: float
    vae_max_seconds: float = 120.0  # 0: no Mult-VAE

    vae = _switch("vae_max_seconds", "Whether a refresh trains (and the checkpoint serves) a Mult-VAE.")


@dataclass(frozen=True, slots=True)
class Settings:
    kafka: KafkaSettings
    worker: WorkerSettings
    scorer: ScorerSettings
    longtail: LongTailSettings
    trainer: TrainerSettings
    state_dir: Path
    metrics_port: int | None
    log_level: str
    api_port: int = 8080

    def metrics_port_for(self, role: str) -> int:
        """The /metrics port of a role: TAILCAST_METRICS_PORT, else the role's default; 0 = disabled. The api
        has none: it serves /metrics on TAILCAST_API_PORT."""
        if role == "api":
            return 0
        if self.metrics_port is not None:
            return self.metrics_port
        return {"worker": 9101, "scorer": 9102, "trainer": 9103}.get(role, 0)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every ``TAILCAST_*`` variable (``env`` defaults to ``os.environ``)."""
    env = os.environ if env is None else env
    unknown = sorted(k for k in env if k.startswith("TAILCAST_") and k not in _BY_ENV)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_BY_ENV))}")

    def r(name: str) -> Any:
        return _read(env, name)

    port_text = r("TAILCAST_METRICS_PORT")
    try:
        metrics_port = None if port_text is None else int(port_text)
        if metrics_port is not None and not 0 <= metrics_port < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"TAILCAST_METRICS_PORT={port_text!r}: must be a port number 0-65535") from None
    def room(cls, prefix: str = "", **names: str):
        """``cls`` with each field read from ``TAILCAST_<prefix><FIELD>``, or from the variable ``names`` gives."""
        return cls(**{f.name: r(names.get(f.name, f"TAILCAST_{prefix}{f.name.upper()}")) for f in fields(cls)})

    kafka = room(KafkaSettings, "KAFKA_", bootstrap="TAILCAST_KAFKA", partitions="TAILCAST_PARTITIONS",
                 replication="TAILCAST_REPLICATION", processing_guarantee="TAILCAST_PROCESSING_GUARANTEE")
    if kafka.security_protocol.startswith("SASL") and not (kafka.sasl_username and kafka.sasl_password):
        raise ConfigError("TAILCAST_KAFKA_SECURITY_PROTOCOL=SASL_* needs TAILCAST_KAFKA_SASL_USERNAME and "
                          "TAILCAST_KAFKA_SASL_PASSWORD")
    if kafka.embedded and kafka.processing_guarantee == "exactly_once":
        raise ConfigError("TAILCAST_PROCESSING_GUARANTEE=exactly_once needs a real Kafka (TAILCAST_KAFKA): "
                          "the embedded broker has no transactions")
    return Settings(
        kafka=kafka,
        worker=room(WorkerSettings),
        scorer=room(ScorerSettings),
        longtail=room(LongTailSettings, interval_s="TAILCAST_METRICS_INTERVAL_S"),
        trainer=room(TrainerSettings, "TRAIN_"),
        state_dir=r("TAILCAST_STATE_DIR"),
        metrics_port=metrics_port,
        log_level=r("TAILCAST_LOG_LEVEL"),
        api_port=r("TAILCAST_API_PORT"),
    )


def settings_table() -> str:
    """The README's settings table, as markdown."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    rows += [f"| `{s.env}` | `{s.default}` | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)


def with_settings_table(readme: str) -> str:
    r"""``readme`` with its settings table (from the header row to the first line that is not a table row)
    replaced by :func:`settings_table`. ``python -m streams.config README.md`` rewrites the file.

    >>> new = with_settings_table("# x\n\n| variable | default | meaning |\n| `OLD` | `` | gone |\n\nafter\n")
    >>> new == "# x\n\n" + settings_table() + "\n\nafter\n"
    True
    """
    lines = readme.split("\n")
    header = settings_table().split("\n", 1)[0]
    if header not in lines:
        raise ValueError(f"no settings table (a line {header!r}) to replace")
    start = lines.index(header)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join([*lines[:start], settings_table(), *lines[end:]])


if __name__ == "__main__":
    import sys

    for path in map(Path, sys.argv[1:]):
        path.write_text(with_settings_table(path.read_text()))
