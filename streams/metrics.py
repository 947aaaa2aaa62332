"""Prometheus instruments, one container per subsystem, the registry always passed in: names
``tailcast_<subsystem>_<name>_<unit>``, latencies in seconds as histograms.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.records import CATALOG_CHANGES, DLQ_REASONS

__all__ = ["WorkerMetrics", "ScorerMetrics", "LongTailMetrics", "ABMetrics", "TrainerMetrics", "ApiMetrics",
           "serve_metrics", "read_metric"]

# Freshness buckets: the target is p99 < 250 ms at 1k events/s, so resolve 5 ms .. 1 s finely, then coarse
# buckets up to 60 s to still see a backlog when the scorer falls behind.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
# Batch-processing time: a micro-batch should take milliseconds; seconds mean trouble.
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How a worker's table recovery compared with the changelog's ends (streams.agents.ingest, #20).
RECOVERY_OUTCOMES = ("whole", "short", "unchecked")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# Read API request time: the target is p99 < 10 ms (docs/design.md §7), so resolve 0.25 ms .. 10 ms finely;
# a request routed to another instance adds a hop, and seconds mean a stalled event loop.
API_LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                       5.0)
# A trainer refresh trains a model: seconds to tens of minutes.
REFRESH_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class Instruments:
    """A subsystem's instruments, one attribute each, built by :meth:`create` from :attr:`SPECS`."""

    #: attribute -> (Counter, Gauge or Histogram; name; help; labels; histogram buckets), the last two optional.
    SPECS: ClassVar[dict[str, tuple]] = {}
    #: attribute -> (label, values): series exported at zero from the start, so that rates and alerts have them.
    ZEROS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    def __init__(self, **instruments: Any) -> None:
        self.__dict__.update(instruments)

    @classmethod
    def create(cls, registry: CollectorRegistry):
        m = cls(**{attr: _instrument(registry, *spec) for attr, spec in cls.SPECS.items()})
        for attr, (label, values) in cls.ZEROS.items():
            for value in values:
                getattr(m, attr).labels(**{label: value})
        return m


def _instrument(registry: CollectorRegistry, kind: type, name: str, doc: str, labels: tuple[str, ...] = (),
                buckets: tuple[float, ...] | None = None):
    return kind(name, doc, list(labels), registry=registry, **({"buckets": buckets} if buckets else {}))


class WorkerMetrics(Instruments):
    SPECS = {
        "events_consumed": (Counter, "tailcast_worker_events_consumed", "Records read from the events topic"),
        "events_valid": (Counter, "tailcast_worker_events_valid", "Events that passed validation and were applied"),
        "dlq_records": (Counter, "tailcast_worker_dlq_records", "Records sent to events.dlq, by reason", ("reason",)),
        "duplicates_skipped": (Counter, "tailcast_worker_duplicates_skipped",
                               "Redelivered events already applied to user state (idempotency)"),
        "offsets_skipped": (Counter, "tailcast_worker_offsets_skipped",
                            "Offsets of events that never reached the ingest agent between records it received "
                            "(lost records; transaction markers count too)"),
        "recovery_checks": (Counter, "tailcast_worker_recovery_checks",
                            "Table recoveries checked against the changelog's ends, by outcome: whole, short "
                            "(records left unread, counted in offsets_skipped) or unchecked (the check's Fetch "
                            "failed)", ("outcome",)),
        "rerouted": (Counter, "tailcast_worker_rerouted",
                     "Events re-published to the partition their user_id hashes to"),
        "users_forgotten": (Counter, "tailcast_worker_users_forgotten",
                            "Erasure requests applied (#17): the user's state deleted, a tombstone on the changelog "
                            "and a forget marker on score-requests"),
        "user_states": (Gauge, "tailcast_worker_user_states", "User states held by this worker"),
        "score_requests": (Counter, "tailcast_worker_score_requests", "Score requests emitted"),
        "batch_size": (Histogram, "tailcast_worker_batch_size_events", "Events per worker micro-batch", (),
                       BATCH_SIZE_BUCKETS),
        "consumer_lag": (Gauge, "tailcast_worker_consumer_lag_messages", "Records not yet consumed, by topic",
                         ("topic",)),
    }
    ZEROS = {"dlq_records": ("reason", DLQ_REASONS), "recovery_checks": ("outcome", RECOVERY_OUTCOMES)}


class ScorerMetrics(Instruments):
    SPECS = {
        "requests_consumed": (Counter, "tailcast_scorer_requests_consumed", "Score requests read"),
        "requests_coalesced": (Counter, "tailcast_scorer_requests_coalesced",
                               "Requests superseded by a newer state of the same user (not scored)"),
        "recommendations": (Counter, "tailcast_scorer_recommendations_published", "Recommendation lists published",
                            ("arm",)),
        "latency": (Histogram, "tailcast_scorer_event_to_recommendation_latency_seconds",
                    "Wall time from the oldest newly reflected event's Kafka timestamp to publication", ("arm",),
                    LATENCY_BUCKETS),
        "batch_size": (Histogram, "tailcast_scorer_batch_size_users", "Users scored per micro-batch", (),
                       BATCH_SIZE_BUCKETS),
        "batch_latency": (Histogram, "tailcast_scorer_batch_latency_seconds", "Time to score one micro-batch", (),
                          BATCH_SECONDS_BUCKETS),
        "model_info": (Gauge, "tailcast_scorer_model_info", "1 for the model version in service",
                       ("version", "device")),
        "model_loaded": (Gauge, "tailcast_scorer_model_loaded_timestamp_seconds",
                         "When the model in service was loaded"),
        "model_load_failures": (Counter, "tailcast_scorer_model_load_failures",
                                "Checkpoints that failed to load (the previous model stays)"),
        "pending": (Gauge, "tailcast_scorer_pending_requests", "Requests buffered, waiting to be scored"),
        "consumer_lag": (Gauge, "tailcast_scorer_consumer_lag_messages", "Records not yet consumed, by topic",
                         ("topic",)),
        "blender_auc": (Gauge, "tailcast_blender_auc_ratio",
                        "Online ROC AUC on click feedback: the blender and each single source", ("source",)),
        "source_gain": (Gauge, "tailcast_blender_source_gain_ratio",
                        "The source gate: each source's running NDCG@k gain from serving it, per user segment "
                        "(new, regular, heavy)", ("segment", "source")),
        "source_served": (Gauge, "tailcast_blender_source_served",
                          "The source gate: 1 while a source serves a user segment, 0 while its gain there is "
                          "negative beyond two standard errors", ("segment", "source")),
        "catalog_items": (Gauge, "tailcast_scorer_catalog_items", "Items with a content vector"),
        "online_index_rows": (Gauge, "tailcast_scorer_online_index_rows",
                              "Items the faiss index of an online model holds, by model (content, mf); 0 while "
                              "the model scans every item (under 50,000 items, or before its first build)",
                              ("model",)),
        "catalog_records": (Counter, "tailcast_scorer_catalog_records",
                            "Records read from the items topic, by what they did: upsert, hide, restore (a visible "
                            "record of a hidden or deleted item), delete (a tombstone) or invalid (skipped)",
                            ("change",)),
        "events_learned": (Counter, "tailcast_scorer_events_learned",
                           "Events applied to the online models, by path: served (this scorer's partitions), "
                           "others (the other scorers' partitions) or replay (the log replayed after a snapshot "
                           "was restored, #16)", ("path",)),
        "snapshots_written": (Counter, "tailcast_scorer_snapshots_written",
                              "Snapshots of the online state written (warm restart, #16)"),
        "snapshot_failures": (Counter, "tailcast_scorer_snapshot_failures",
                              "Snapshots not written (write) or refused at start-up: corrupt, incompatible (load), "
                              "or not matching the log (log)", ("stage",)),
        "snapshot_timestamp": (Gauge, "tailcast_scorer_snapshot_timestamp_seconds",
                               "When the newest snapshot written or restored was taken (age: time() - it)"),
        "snapshot_seconds": (Gauge, "tailcast_scorer_snapshot_seconds",
                             "How long the last snapshot held scoring (pickling the state)"),
        "snapshot_bytes": (Gauge, "tailcast_scorer_snapshot_bytes", "Size of the last snapshot written"),
        "restore_seconds": (Gauge, "tailcast_scorer_restore_seconds",
                            "Start-up: loading the newest snapshot and replaying the log from its offsets (0 on a "
                            "cold start)"),
        "first_list_seconds": (Gauge, "tailcast_scorer_first_list_seconds",
                               "From the process start to its first published list"),
    }
    ZEROS = {"catalog_records": ("change", CATALOG_CHANGES), "events_learned": ("path", ("served", "others", "replay")),
             "snapshot_failures": ("stage", ("write", "load", "log"))}


class LongTailMetrics(Instruments):
    SPECS = {
        "tail_share": (Gauge, "tailcast_longtail_tail_share_ratio", "Share of recommended slots filled by tail items",
                       ("arm",)),
        "coverage": (Gauge, "tailcast_longtail_coverage_ratio", "Distinct recommended active items / active items",
                     ("arm",)),
        "gini": (Gauge, "tailcast_longtail_gini_ratio", "Gini coefficient of exposure over active items", ("arm",)),
        "aplt": (Gauge, "tailcast_longtail_aplt_ratio", "Average percentage of long-tail items per list", ("arm",)),
        "novelty": (Gauge, "tailcast_longtail_novelty_bits", "Mean self-information of recommended items", ("arm",)),
        "ndcg": (Gauge, "tailcast_longtail_ndcg_ratio", "Prequential NDCG@K", ("arm",)),
        "hit_rate": (Gauge, "tailcast_longtail_hit_rate_ratio",
                     "Prequential HR@K; target=tail: tail target items; bucket: user's prior event count",
                     ("arm", "target", "bucket")),
        "window_events": (Gauge, "tailcast_longtail_window_events", "Events in the metric window", ("arm",)),
        "paired_events": (Counter, "tailcast_longtail_paired_events",
                          "Events paired with the latest preceding recommendation: exact, stale or none",
                          ("arm", "pairing")),
    }

    def set_record(self, record: dict) -> None:
        """Export one ``longtail-metrics`` record (docs/design.md §3) as gauges."""
        arm = record["arm"]
        for attr in ("tail_share", "coverage", "gini", "aplt", "novelty", "ndcg", "window_events"):
            getattr(self, attr).labels(arm=arm).set(record[attr])
        self.hit_rate.labels(arm=arm, target="all", bucket="all").set(record["hr"])
        self.hit_rate.labels(arm=arm, target="tail", bucket="all").set(record["tail_hr"])
        for bucket, value in record["hr_by_bucket"].items():
            self.hit_rate.labels(arm=arm, target="all", bucket=bucket).set(value)


class ABMetrics(Instruments):
    """Impressions and the clicks credited to them, per arm and head/tail segment (``online.ab``): counters,
    so that the dashboard sums them over scorers before dividing (CTR = clicks / slots)."""

    SPECS = {
        "impressions": (Counter, "tailcast_ab_impressions", "Impressions (lists clients displayed) by arm", ("arm",)),
        "slots": (Counter, "tailcast_ab_slots", "Displayed items by arm and head/tail segment", ("arm", "segment")),
        "clicks": (Counter, "tailcast_ab_clicks", "Displayed items clicked afterwards (one click a slot)",
                   ("arm", "segment")),
        "rejected": (Counter, "tailcast_ab_impressions_rejected", "Impression records sent to events.dlq",
                     ("reason",)),
    }


class TrainerMetrics(Instruments):
    SPECS = {
        "refreshes": (Counter, "tailcast_trainer_refresh", "Batch refreshes completed"),
        "last_refresh": (Gauge, "tailcast_trainer_last_refresh_timestamp_seconds", "When the last refresh finished"),
        "refresh_duration": (Histogram, "tailcast_trainer_refresh_duration_seconds", "Duration of a refresh", (),
                             REFRESH_BUCKETS),
        "valid_ndcg": (Gauge, "tailcast_trainer_valid_ndcg_ratio",
                       "Validation NDCG@10 of the published models (model: transformer, vae)", ("model",)),
        "events_buffered": (Gauge, "tailcast_trainer_events_buffered", "Events held for the next refresh"),
        "refresh_interval": (Gauge, "tailcast_trainer_refresh_interval_seconds",
                             "The refresh interval the trainer runs with (TAILCAST_TRAIN_INTERVAL_S)"),
    }


class ApiMetrics(Instruments):
    SPECS = {
        "requests": (Counter, "tailcast_api_requests", "HTTP requests answered, by endpoint and status code",
                     ("endpoint", "code")),
        "latency": (Histogram, "tailcast_api_request_latency_seconds",
                    "Time to answer a request, routing to the owning instance included", ("endpoint",),
                    API_LATENCY_BUCKETS),
        "routed": (Counter, "tailcast_api_requests_routed",
                   "Requests for a user another instance owns, forwarded to it"),
        "lists_received": (Counter, "tailcast_api_lists_received", "Lists read from the recommendations topic"),
        "lists_unreadable": (Counter, "tailcast_api_lists_unreadable",
                             "Records on the recommendations topic that are not a list (skipped)"),
        "users": (Gauge, "tailcast_api_users", "Users whose latest list this instance holds"),
        "consumer_lag": (Gauge, "tailcast_api_consumer_lag_messages", "Records not yet consumed, by topic", ("topic",)),
        "banned_items": (Gauge, "tailcast_api_banned_items",
                         "Items dropped from every list served: hidden or deleted on the items topic"),
    }


def serve_metrics(registry: CollectorRegistry, port: int) -> None:
    """Serve ``/metrics`` for ``registry`` on ``port`` (0 = disabled) in a daemon thread."""
    if port:
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:
            raise SystemExit(f"tailcast: cannot serve /metrics on port {port} ({exc.strerror}); "
                             "set TAILCAST_METRICS_PORT to a free port, or 0 to disable") from None


def read_metric(url: str, name: str, labels: str = "", *, timeout: float = 5.0) -> float:
    """The sum of the series ``name{labels}`` (e.g. ``'path="served"'``) on the /metrics page at ``url``, 0
    when absent; ``OSError`` when the page cannot be read. For the tests and benchmarks."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        lines = response.read().decode().splitlines()
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))
