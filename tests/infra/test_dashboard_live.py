"""Does every dashboard query return data from real exporters? (a real Prometheus, scraping every second)

For now the exporters are fakes: one ``prometheus_client`` registry per process (worker, scorer, trainer)
serving every metric of ``metric_catalog`` on a loopback port while a thread keeps the values moving, as
live processes do. That tests the harness (``prom_harness.check_dashboard_live``) and that the dashboard
needs nothing the catalog does not promise.

The live version takes the same call with the ``/metrics`` URLs of a worker and a scorer started on the
embedded broker (after some events, including one bad event so that ``tailcast_worker_dlq_records_total``
has a ``reason`` series), e.g. ``{"tailcast-worker": [worker_url], "tailcast-scorer": [scorer_url]}``; the
trainer panels need a trainer target too, or leave them out of the assertion by panel title.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

pytestmark = pytest.mark.e2e

# Which process exports a metric family, by name prefix.
PROCESS_OF_PREFIX = {
    "tailcast_worker_": "worker",
    "tailcast_scorer_": "scorer",
    "tailcast_blender_": "scorer",
    "tailcast_longtail_": "scorer",
    "tailcast_ab_": "scorer",
    "tailcast_trainer_": "trainer",
}


def _process_of(name: str) -> str:
    return next(process for prefix, process in PROCESS_OF_PREFIX.items() if name.startswith(prefix))


class FakeExporters:
    """Serves the catalog's metrics, split by process, until ``close()``."""

    def __init__(self, catalog: Any) -> None:
        self.registries = {process: CollectorRegistry() for process in set(PROCESS_OF_PREFIX.values())}
        self._children: list[tuple[Any, Any]] = []
        for metric in catalog.METRICS:
            registry = self.registries[_process_of(metric.name)]
            cls = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[metric.kind]
            instrument = cls(metric.name, f"fake {metric.name}", metric.labels, registry=registry)
            if metric.labels:
                combos = itertools.product(*(catalog.LABEL_VALUES[label] for label in metric.labels))
                self._children += [(metric, instrument.labels(*combo)) for combo in combos]
            else:
                self._children.append((metric, instrument))
        self._servers = {
            process: start_http_server(0, addr="127.0.0.1", registry=registry)[0]
            for process, registry in self.registries.items()
        }
        self._stop = threading.Event()
        self._tick()
        self._thread = threading.Thread(target=self._run, name="fake-exporters", daemon=True)
        self._thread.start()

    def urls(self) -> dict[str, list[str]]:
        """Job name -> metrics URL, with the job names of infra/prometheus/prometheus.yml."""
        return {
            f"tailcast-{process}": [f"http://127.0.0.1:{server.server_port}/metrics"]
            for process, server in sorted(self._servers.items())
        }

    def _tick(self) -> None:
        now = time.time()
        for metric, child in self._children:
            if metric.kind == "counter":
                child.inc(3)
            elif metric.kind == "histogram":
                child.observe(0.04)
                child.observe(0.2)
            else:
                child.set(now if metric.name.endswith("_timestamp_seconds") else 0.25)

    def _run(self) -> None:
        # Paces the fake's own updates (it is the producer here), not a wait on anything.
        while not self._stop.wait(0.1):
            self._tick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for server in self._servers.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def fake_exporters(metric_catalog) -> Iterator[FakeExporters]:
    exporters = FakeExporters(metric_catalog)
    try:
        yield exporters
    finally:
        exporters.close()


def test_every_panel_query_returns_data(fake_exporters, dashboard, harness, prometheus_bin, tmp_path) -> None:
    report = harness.check_dashboard_live(
        fake_exporters.urls(), dashboard=dashboard, prometheus_bin=prometheus_bin, workdir=tmp_path, deadline_s=30
    )
    assert len(report.targets) == 3
    assert {t["labels"]["job"] for t in report.targets} == {"tailcast-worker", "tailcast-scorer", "tailcast-trainer"}
    assert not report.missing, report.describe()
    assert len(report.with_data) == len(harness.dashboard_queries(dashboard))


def test_harness_reports_queries_without_data(dashboard, harness, empty_prometheus) -> None:
    """The reporting path, on a Prometheus that scrapes nothing: every query is reported, by panel."""
    variables = harness.dashboard_variables(dashboard, rate_interval="5s")
    queries = {q: harness.expand_variables(q.expr, variables) for q in harness.dashboard_queries(dashboard)}
    report = harness.poll_for_data(empty_prometheus, queries, deadline_s=0.5)
    assert not report.with_data and [q for q, _ in report.missing] == list(queries)
    assert all(result.ok for _, result in report.missing), "no data is not an error"
    text = report.describe()
    assert text.startswith(f"{len(queries)} of {len(queries)} panel queries returned no data")
    assert "'Tail exposure share' target A" in text


def test_harness_times_out_without_targets(harness, empty_prometheus) -> None:
    with pytest.raises(harness.ConditionTimeout, match="none discovered"):
        empty_prometheus.wait_for_targets_up(1, timeout_s=0.5)
