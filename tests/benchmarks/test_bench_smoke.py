"""`make bench` in miniature: the quick ingest, memory and freshness benchmarks run and write well-formed figures
(the freshness entry once failed for a stop without a test noticing).

No timing thresholds: the machine is shared, so only the shape of the results is checked.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.alone
@pytest.mark.timeout(240)
def test_quick_bench_writes_positive_figures(quick_bench):
    results, stdout = quick_bench("ingest,memory")
    assert {"ingest", "memory"} <= set(results)
    assert set(results) <= {"ingest", "memory", "targets"}
    for benchmark, figures in results.items():
        assert isinstance(figures, dict) and figures, benchmark
        for figure, value in figures.items():
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (benchmark, figure, value)
    for figure in ("raw_aiokafka_events_per_s", "bare_faust_events_per_s", "worker_events_per_s",
                   "worker_vs_bare_ratio", "worker_vs_raw_ratio"):
        assert figure in results["ingest"], figure
    for figure in ("user_state_serialized_bytes", "user_state_table_entry_bytes", "recommender_bytes_per_user",
                   "recommender_bytes_per_item"):
        assert figure in results["memory"], figure
    assert "ingest_worker_vs_0.75_bare_faust" in results["targets"]
    assert "== docs/design.md §7 targets" in stdout


@pytest.mark.alone
@pytest.mark.timeout(240)
def test_quick_freshness_bench_writes_latency_and_cpu_figures(quick_bench):
    results, stdout = quick_bench("freshness")
    fr = results["freshness"]
    assert fr["rate_500_recommendations"] > 0 and fr["rate_500_achieved_events_per_s"] > 0
    assert 0 < fr["rate_500_p50_ms"] <= fr["rate_500_p99_ms"]
    for role in ("worker", "scorer", "broker", "load"):  # the broker and the load generator share the cores too
        assert fr[f"rate_500_{role}_cpu_share"] > 0 and fr[f"rate_500_{role}_cpu_us_per_event"] > 0, role
    assert all(math.isfinite(v) for k, v in fr.items() if not k.endswith("drain_s")), fr
    assert "500/s for" in stdout and "broker" in stdout
