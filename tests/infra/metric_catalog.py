"""The Prometheus metrics tailcast promises, as the infra files may use them.

This is the list the lead fixed for the exporters (STYLE item 10: ``tailcast_<subsystem>_<name>_<unit>``).
The dashboard and alert tests allow only these names, and the fake exporter in
``test_dashboard_live.py`` serves exactly these. When an exporter gains or renames a metric, change it
here and in ``infra/`` in the same commit.

Loaded by ``conftest.py`` (the ``metric_catalog`` fixture); plain data, no pytest.

>>> "tailcast_scorer_batch_latency_seconds_bucket" in series_names()
True
>>> "tailcast_scorer_batch_latency_seconds" in series_names()  # a histogram has no series of its own
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    """One metric family: ``name`` as written in PromQL (counters keep their ``_total``)."""

    name: str
    kind: Kind
    labels: tuple[str, ...] = ()
    # Labels an exporter may leave out (``tailcast_blender_auc_ratio`` without ``arm``).
    optional_labels: tuple[str, ...] = ()


def _table(text: str) -> tuple[Metric, ...]:
    """The catalog from one line a metric: its name, kind and labels (``label?``: optional); ``#``: a comment."""
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(Metric(name, kind, tuple(label.rstrip("?") for label in labels),
                        tuple(label[:-1] for label in labels if label.endswith("?")))
                 for name, kind, *labels in rows)


METRICS: tuple[Metric, ...] = _table("""
# worker (TAILCAST_METRICS_PORT default 9101)
tailcast_worker_events_consumed_total                      counter
tailcast_worker_events_valid_total                         counter
tailcast_worker_dlq_records_total                          counter   reason
tailcast_worker_duplicates_skipped_total                   counter
tailcast_worker_offsets_skipped_total                      counter
tailcast_worker_recovery_checks_total                      counter   outcome
tailcast_worker_user_states                                gauge
tailcast_worker_score_requests_total                       counter
tailcast_worker_batch_size_events                          histogram
tailcast_worker_consumer_lag_messages                      gauge     topic
# scorer (default 9102)
tailcast_scorer_requests_consumed_total                    counter
tailcast_scorer_requests_coalesced_total                   counter
tailcast_scorer_recommendations_published_total            counter   arm
tailcast_scorer_event_to_recommendation_latency_seconds    histogram arm
tailcast_scorer_batch_size_users                           histogram
tailcast_scorer_batch_latency_seconds                      histogram
tailcast_scorer_model_info                                 gauge     version device
tailcast_scorer_model_loaded_timestamp_seconds             gauge
tailcast_scorer_model_load_failures_total                  counter
tailcast_scorer_pending_requests                           gauge
tailcast_scorer_consumer_lag_messages                      gauge     topic
tailcast_blender_auc_ratio                                 gauge     arm? source
tailcast_blender_source_gain_ratio                         gauge     segment source
tailcast_blender_source_served                             gauge     segment source
tailcast_scorer_catalog_records_total                      counter   change
tailcast_scorer_online_index_rows                          gauge     model
tailcast_scorer_events_learned_total                       counter   path
tailcast_scorer_snapshot_timestamp_seconds                 gauge
tailcast_scorer_restore_seconds                            gauge
tailcast_scorer_first_list_seconds                         gauge
tailcast_scorer_snapshot_failures_total                    counter   stage
# long-tail exposure agent (in the scorer process)
tailcast_longtail_tail_share_ratio                         gauge     arm
tailcast_longtail_coverage_ratio                           gauge     arm
tailcast_longtail_gini_ratio                               gauge     arm
tailcast_longtail_aplt_ratio                               gauge     arm
tailcast_longtail_novelty_bits                             gauge     arm
tailcast_longtail_ndcg_ratio                               gauge     arm
tailcast_longtail_hit_rate_ratio                           gauge     arm target bucket
tailcast_longtail_window_events                            gauge     arm
tailcast_longtail_paired_events_total                      counter   arm pairing
# impressions agent (in the scorer process, #17)
tailcast_ab_impressions_total                              counter   arm
tailcast_ab_slots_total                                    counter   arm segment
tailcast_ab_clicks_total                                   counter   arm segment
tailcast_ab_impressions_rejected_total                     counter   reason
# trainer (default 9103)
tailcast_trainer_refresh_total                             counter
tailcast_trainer_last_refresh_timestamp_seconds            gauge
tailcast_trainer_refresh_duration_seconds                  histogram
tailcast_trainer_valid_ndcg_ratio                          gauge     model
tailcast_trainer_refresh_interval_seconds                  gauge
""")

# Series Prometheus itself adds to every target.
BUILTIN_SERIES = frozenset({"up"})

# Label values the contracts fix (docs/design.md §3 and §4) or that are typical, for fakes and tests.
LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "arm": ("control", "tail"),
    "reason": ("not_json", "missing_field"),
    "topic": ("events", "score-requests"),
    "version": ("v1",),
    "device": ("cpu",),
    "source": ("blend", "popularity", "covisitation", "mf", "transformer", "vae"),
    "model": ("transformer", "vae"),
    "target": ("all", "tail"),
    "bucket": ("all", "<=5", "6-20", ">20"),
    "pairing": ("exact", "stale", "none"),
    "outcome": ("whole", "short", "unchecked"),
    "change": ("upsert", "hide", "restore", "delete", "invalid"),
    "path": ("served", "others", "replay"),
    "segment": ("head", "tail"),
    "stage": ("load", "log", "write"),
}

# Default metrics port per process (TAILCAST_METRICS_PORT unset); prometheus.local.yml scrapes these.
DEFAULT_PORTS = {"worker": 9101, "scorer": 9102, "trainer": 9103}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names() -> frozenset[str]:
    """Every name a PromQL expression may select: counters and gauges as named, histograms by series."""
    names: set[str] = set(BUILTIN_SERIES)
    for metric in METRICS:
        if metric.kind == "histogram":
            names.update(metric.name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(metric.name)
    return frozenset(names)


def family_of(series: str) -> str:
    """The family a series name belongs to (strips a histogram suffix).

    >>> family_of("tailcast_trainer_refresh_duration_seconds_count")
    'tailcast_trainer_refresh_duration_seconds'
    >>> family_of("tailcast_worker_user_states")
    'tailcast_worker_user_states'
    """
    histograms = {m.name for m in METRICS if m.kind == "histogram"}
    for suffix in HISTOGRAM_SUFFIXES:
        if series.endswith(suffix) and series[: -len(suffix)] in histograms:
            return series[: -len(suffix)]
    return series
