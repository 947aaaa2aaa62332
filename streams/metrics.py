"""Prometheus instruments, one typed container per subsystem, the registry always passed in.

Names follow ``tailcast_<subsystem>_<name>_<unit>``; latencies are in seconds, as histograms.
Tests read values with ``registry.get_sample_value(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streams.records import CATALOG_CHANGES, DLQ_REASONS

__all__ = ["WorkerMetrics", "ScorerMetrics", "LongTailMetrics", "ABMetrics", "TrainerMetrics", "ApiMetrics", "serve_metrics", "read_metric"]

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


@dataclass(frozen=True, slots=True)
class WorkerMetrics:
    events_consumed: Counter
    events_valid: Counter
    dlq_records: Counter
    duplicates_skipped: Counter
    offsets_skipped: Counter
    recovery_checks: Counter
    rerouted: Counter
    users_forgotten: Counter
    user_states: Gauge
    score_requests: Counter
    batch_size: Histogram
    consumer_lag: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        m = cls(
            events_consumed=Counter("tailcast_worker_events_consumed", "Records read from the events topic",
                                    registry=registry),
            events_valid=Counter("tailcast_worker_events_valid", "Events that passed validation and were applied",
                                 registry=registry),
            dlq_records=Counter("tailcast_worker_dlq_records", "Records sent to events.dlq, by reason",
                                ["reason"], registry=registry),
            duplicates_skipped=Counter("tailcast_worker_duplicates_skipped",
                                       "Redelivered events already applied to user state (idempotency)",
                                       registry=registry),
            offsets_skipped=Counter("tailcast_worker_offsets_skipped",
                                    "Offsets of events that never reached the ingest agent between records it "
                                    "received (lost records; transaction markers count too)", registry=registry),
            recovery_checks=Counter("tailcast_worker_recovery_checks",
                                    "Table recoveries checked against the changelog's ends, by outcome: whole, "
                                    "short (records left unread, counted in offsets_skipped) or unchecked "
                                    "(the check's Fetch failed)", ["outcome"], registry=registry),
            rerouted=Counter("tailcast_worker_rerouted",
                             "Events re-published to the partition their user_id hashes to", registry=registry),
            users_forgotten=Counter("tailcast_worker_users_forgotten",
                                    "Erasure requests applied (#17): the user's state deleted, a tombstone on the "
                                    "changelog and a forget marker on score-requests", registry=registry),
            user_states=Gauge("tailcast_worker_user_states", "User states held by this worker",
                              registry=registry),
            score_requests=Counter("tailcast_worker_score_requests", "Score requests emitted",
                                   registry=registry),
            batch_size=Histogram("tailcast_worker_batch_size_events", "Events per worker micro-batch",
                                 buckets=BATCH_SIZE_BUCKETS, registry=registry),
            consumer_lag=Gauge("tailcast_worker_consumer_lag_messages", "Records not yet consumed, by topic",
                               ["topic"], registry=registry),
        )
        for reason in DLQ_REASONS:  # export zeros so rates and alerts have series from the start
            m.dlq_records.labels(reason=reason)
        for outcome in RECOVERY_OUTCOMES:
            m.recovery_checks.labels(outcome=outcome)
        return m


@dataclass(frozen=True, slots=True)
class ScorerMetrics:
    requests_consumed: Counter
    requests_coalesced: Counter
    recommendations: Counter
    latency: Histogram
    batch_size: Histogram
    batch_latency: Histogram
    model_info: Gauge
    model_loaded: Gauge
    model_load_failures: Counter
    pending: Gauge
    consumer_lag: Gauge
    blender_auc: Gauge
    catalog_items: Gauge
    catalog_records: Counter
    events_learned: Counter
    snapshots_written: Counter
    snapshot_failures: Counter
    snapshot_timestamp: Gauge
    snapshot_seconds: Gauge
    snapshot_bytes: Gauge
    restore_seconds: Gauge
    first_list_seconds: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ScorerMetrics:
        m = cls(
            requests_consumed=Counter("tailcast_scorer_requests_consumed", "Score requests read",
                                      registry=registry),
            requests_coalesced=Counter("tailcast_scorer_requests_coalesced",
                                       "Requests superseded by a newer state of the same user (not scored)",
                                       registry=registry),
            recommendations=Counter("tailcast_scorer_recommendations_published", "Recommendation lists published",
                                    ["arm"], registry=registry),
            latency=Histogram("tailcast_scorer_event_to_recommendation_latency_seconds",
                              "Wall time from the oldest newly reflected event's Kafka timestamp to publication",
                              ["arm"], buckets=LATENCY_BUCKETS, registry=registry),
            batch_size=Histogram("tailcast_scorer_batch_size_users", "Users scored per micro-batch",
                                 buckets=BATCH_SIZE_BUCKETS, registry=registry),
            batch_latency=Histogram("tailcast_scorer_batch_latency_seconds", "Time to score one micro-batch",
                                    buckets=BATCH_SECONDS_BUCKETS, registry=registry),
            model_info=Gauge("tailcast_scorer_model_info", "1 for the model version in service",
                             ["version", "device"], registry=registry),
            model_loaded=Gauge("tailcast_scorer_model_loaded_timestamp_seconds",
                               "When the model in service was loaded", registry=registry),
            model_load_failures=Counter("tailcast_scorer_model_load_failures",
                                        "Checkpoints that failed to load (the previous model stays)",
                                        registry=registry),
            pending=Gauge("tailcast_scorer_pending_requests", "Requests buffered, waiting to be scored",
                          registry=registry),
            consumer_lag=Gauge("tailcast_scorer_consumer_lag_messages", "Records not yet consumed, by topic",
                               ["topic"], registry=registry),
            blender_auc=Gauge("tailcast_blender_auc_ratio",
                              "Online ROC AUC on click feedback: the blender and each single source",
                              ["source"], registry=registry),
            catalog_items=Gauge("tailcast_scorer_catalog_items", "Items with a content vector",
                                registry=registry),
            catalog_records=Counter("tailcast_scorer_catalog_records",
                                    "Records read from the items topic, by what they did: upsert, hide, restore "
                                    "(a visible record of a hidden or deleted item), delete (a tombstone) or "
                                    "invalid (skipped)", ["change"], registry=registry),
            events_learned=Counter("tailcast_scorer_events_learned",
                                   "Events applied to the online models, by path: served (this scorer's "
                                   "partitions), others (the other scorers' partitions) or replay (the log "
                                   "replayed after a snapshot was restored, #16)", ["path"], registry=registry),
            snapshots_written=Counter("tailcast_scorer_snapshots_written",
                                      "Snapshots of the online state written (warm restart, #16)",
                                      registry=registry),
            snapshot_failures=Counter("tailcast_scorer_snapshot_failures",
                                      "Snapshots not written (write) or refused at start-up: corrupt, "
                                      "incompatible (load), or not matching the log (log)", ["stage"],
                                      registry=registry),
            snapshot_timestamp=Gauge("tailcast_scorer_snapshot_timestamp_seconds",
                                     "When the newest snapshot written or restored was taken (age: time() - it)",
                                     registry=registry),
            snapshot_seconds=Gauge("tailcast_scorer_snapshot_seconds",
                                   "How long the last snapshot held scoring (pickling the state)",
                                   registry=registry),
            snapshot_bytes=Gauge("tailcast_scorer_snapshot_bytes", "Size of the last snapshot written",
                                 registry=registry),
            restore_seconds=Gauge("tailcast_scorer_restore_seconds",
                                  "Start-up: loading the newest snapshot and replaying the log from its "
                                  "offsets (0 on a cold start)", registry=registry),
            first_list_seconds=Gauge("tailcast_scorer_first_list_seconds",
                                     "From the process start to its first published list", registry=registry),
        )
        for change in CATALOG_CHANGES:  # zeros from the start, so rates have series
            m.catalog_records.labels(change=change)
        for path in ("served", "others", "replay"):
            m.events_learned.labels(path=path)
        for stage in ("write", "load", "log"):
            m.snapshot_failures.labels(stage=stage)
        return m


@dataclass(frozen=True, slots=True)
class LongTailMetrics:
    tail_share: Gauge
    coverage: Gauge
    gini: Gauge
    aplt: Gauge
    novelty: Gauge
    ndcg: Gauge
    hit_rate: Gauge
    window_events: Gauge
    paired_events: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> LongTailMetrics:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("arm",)) -> Gauge:
            return Gauge(name, doc, list(labels), registry=registry)

        return cls(
            tail_share=gauge("tailcast_longtail_tail_share_ratio", "Share of recommended slots filled by tail items"),
            coverage=gauge("tailcast_longtail_coverage_ratio", "Distinct recommended active items / active items"),
            gini=gauge("tailcast_longtail_gini_ratio", "Gini coefficient of exposure over active items"),
            aplt=gauge("tailcast_longtail_aplt_ratio", "Average percentage of long-tail items per list"),
            novelty=gauge("tailcast_longtail_novelty_bits", "Mean self-information of recommended items"),
            ndcg=gauge("tailcast_longtail_ndcg_ratio", "Prequential NDCG@K"),
            hit_rate=gauge("tailcast_longtail_hit_rate_ratio",
                           "Prequential HR@K; target=tail: tail target items; bucket: user's prior event count",
                           ("arm", "target", "bucket")),
            window_events=gauge("tailcast_longtail_window_events", "Events in the metric window"),
            paired_events=Counter("tailcast_longtail_paired_events",
                                  "Events paired with the latest preceding recommendation: exact, stale or none",
                                  ["arm", "pairing"], registry=registry),
        )

    def set_record(self, record: dict) -> None:
        """Export one ``longtail-metrics`` record (docs/design.md §3) as gauges."""
        arm = record["arm"]
        self.tail_share.labels(arm=arm).set(record["tail_share"])
        self.coverage.labels(arm=arm).set(record["coverage"])
        self.gini.labels(arm=arm).set(record["gini"])
        self.aplt.labels(arm=arm).set(record["aplt"])
        self.novelty.labels(arm=arm).set(record["novelty"])
        self.ndcg.labels(arm=arm).set(record["ndcg"])
        self.window_events.labels(arm=arm).set(record["window_events"])
        self.hit_rate.labels(arm=arm, target="all", bucket="all").set(record["hr"])
        self.hit_rate.labels(arm=arm, target="tail", bucket="all").set(record["tail_hr"])
        for bucket, value in record["hr_by_bucket"].items():
            self.hit_rate.labels(arm=arm, target="all", bucket=bucket).set(value)


@dataclass(frozen=True, slots=True)
class ABMetrics:
    """Impressions and the clicks credited to them, per arm (``online.ab``; in the scorer process). Counters,
    so that the dashboard sums them over scorers before it divides: CTR = clicks / slots, with segment
    ``head`` or ``tail`` (the item's status when displayed)."""

    impressions: Counter
    slots: Counter
    clicks: Counter
    rejected: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ABMetrics:
        return cls(
            impressions=Counter("tailcast_ab_impressions", "Impressions (lists clients displayed) by arm",
                                ["arm"], registry=registry),
            slots=Counter("tailcast_ab_slots", "Displayed items by arm and head/tail segment", ["arm", "segment"],
                          registry=registry),
            clicks=Counter("tailcast_ab_clicks", "Displayed items clicked afterwards (one click a slot)",
                           ["arm", "segment"], registry=registry),
            rejected=Counter("tailcast_ab_impressions_rejected", "Impression records sent to events.dlq",
                             ["reason"], registry=registry),
        )


@dataclass(frozen=True, slots=True)
class TrainerMetrics:
    refreshes: Counter
    last_refresh: Gauge
    refresh_duration: Histogram
    valid_ndcg: Gauge
    events_buffered: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> TrainerMetrics:
        return cls(
            refreshes=Counter("tailcast_trainer_refresh", "Batch refreshes completed", registry=registry),
            last_refresh=Gauge("tailcast_trainer_last_refresh_timestamp_seconds", "When the last refresh finished",
                               registry=registry),
            # a refresh trains a model: seconds to tens of minutes
            refresh_duration=Histogram("tailcast_trainer_refresh_duration_seconds", "Duration of a refresh",
                                       buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600), registry=registry),
            valid_ndcg=Gauge("tailcast_trainer_valid_ndcg_ratio",
                             "Validation NDCG@10 of the published models (model: transformer, vae)",
                             ["model"], registry=registry),
            events_buffered=Gauge("tailcast_trainer_events_buffered", "Events held for the next refresh",
                                  registry=registry),
        )


@dataclass(frozen=True, slots=True)
class ApiMetrics:
    requests: Counter
    latency: Histogram
    routed: Counter
    lists_received: Counter
    lists_unreadable: Counter
    users: Gauge
    consumer_lag: Gauge
    banned_items: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ApiMetrics:
        return cls(
            requests=Counter("tailcast_api_requests", "HTTP requests answered, by endpoint and status code",
                             ["endpoint", "code"], registry=registry),
            latency=Histogram("tailcast_api_request_latency_seconds",
                              "Time to answer a request, routing to the owning instance included",
                              ["endpoint"], buckets=API_LATENCY_BUCKETS, registry=registry),
            routed=Counter("tailcast_api_requests_routed",
                           "Requests for a user another instance owns, forwarded to it", registry=registry),
            lists_received=Counter("tailcast_api_lists_received", "Lists read from the recommendations topic",
                                   registry=registry),
            lists_unreadable=Counter("tailcast_api_lists_unreadable",
                                     "Records on the recommendations topic that are not a list (skipped)",
                                     registry=registry),
            users=Gauge("tailcast_api_users", "Users whose latest list this instance holds", registry=registry),
            consumer_lag=Gauge("tailcast_api_consumer_lag_messages", "Records not yet consumed, by topic",
                               ["topic"], registry=registry),
            banned_items=Gauge("tailcast_api_banned_items",
                               "Items dropped from every list served: hidden or deleted on the items topic",
                               registry=registry),
        )


def serve_metrics(registry: CollectorRegistry, port: int) -> None:
    """Serve ``/metrics`` for ``registry`` on ``port`` (0 = disabled) in a daemon thread."""
    if port:
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:
            raise SystemExit(f"tailcast: cannot serve /metrics on port {port} ({exc.strerror}); "
                             "set TAILCAST_METRICS_PORT to a free port, or 0 to disable") from None


def read_metric(url: str, name: str, labels: str = "", *, timeout: float = 5.0) -> float:
    """The sum of the series ``name{labels}`` (``labels`` as a /metrics page writes them, e.g.
    ``'path="served"'``; "" for a series without labels) on the /metrics page at ``url``; 0 when absent.
    Raises ``OSError`` when the page cannot be read. For the tests and benchmarks that watch a process."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        lines = response.read().decode().splitlines()
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    return sum(float(line.split()[-1]) for line in lines if line.startswith(prefix))
