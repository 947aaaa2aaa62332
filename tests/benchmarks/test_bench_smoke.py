"""`make bench` in miniature: the quick ingest and memory benchmarks run and write well-formed figures.

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
