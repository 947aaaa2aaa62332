"""`python -m benchmarks.run --quick --only freshness`: the live freshness benchmark runs a worker, a scorer and a
broker, replays 500 events/s and writes well-formed figures, the CPU of every process included (`make bench`'s
freshness entry once failed for a stop without a test noticing).

No timing thresholds: the machine is shared, so only the shape and the sanity of the results are checked.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration


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
