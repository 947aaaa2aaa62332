"""The benchmark tests' runner of ``python -m benchmarks.run --quick``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick_bench(tmp_path):
    """``run(only)``: ``python -m benchmarks.run --quick --only ONLY``, asserted to succeed; the figures it wrote
    and what it printed."""

    def run(only: str) -> tuple[dict, str]:
        out = tmp_path / "bench.json"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", only, "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=230)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(out.read_text()), proc.stdout

    return run
