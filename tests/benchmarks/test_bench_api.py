"""`python -m benchmarks.run --quick --only api`: the read API benchmark runs the pipeline, fires its requests, writes
well-formed figures and its §7 target.

No timing thresholds: the machine is shared, so only the shape and the sanity of the results are checked.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.alone
@pytest.mark.timeout(240)
def test_quick_api_bench_writes_latency_figures(quick_bench):
    results, stdout = quick_bench("api")
    assert set(results) == {"api", "targets"}
    api = results["api"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in api.values()), api
    assert api["requests"] == 3000  # 3 s at 1,000 requests/s, the ramp left out
    assert api["ok_200"] + api["not_found_404"] + api["errors"] == api["requests"]
    assert api["ok_200"] > 0 and api["not_found_404"] > 0  # one request in ten asks for an unknown user
    assert api["rps"] > 0 and 0 < api["p50_ms"] <= api["p99_ms"] <= api["p999_ms"] <= api["max_ms"]
    assert api["stream_events_per_s"] > 0 and api["stream_lists_per_s"] > 0  # the stream ran beside the load
    assert 0 < api["server_mean_ms"] and 0 < api["api_cpu_share"]
    assert 0 < api["bare_p50_ms"] <= api["bare_p99_ms"] and api["bare_rps"] > 0  # the floor, measured alike
    # the same load at equal CPU priority first, then with the stream's roles at nice 10 (the headline)
    assert api["stream_nice"] == 10 and 0 < api["equal_priority_p50_ms"] <= api["equal_priority_p99_ms"]
    assert results["targets"]["api_10ms_vs_p99_at_1k_rps"] == pytest.approx(10.0 / api["p99_ms"])
    assert "api_10ms_vs_p99_at_1k_rps" in stdout
