"""The README's quick start is itself tested: its two commands exist and the demo shows recommendations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_the_two_commands_are_make_targets_and_ci_runs_the_test_one():
    block = re.search(r"## The two commands\s+```sh\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}: \$\(STAMP\)", makefile, re.M), f"Makefile lacks `{target}` after install"
    assert "pip install --quiet torch==2.13.0" in makefile
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.M)


def test_every_command_has_help():
    from streams.cli import build_parser

    parser = build_parser()
    for name in ("broker", "worker", "scorer", "api", "trainer", "forget", "replay", "tail", "demo", "evaluate"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert f"`tailcast {name}" in README


@pytest.mark.alone
@pytest.mark.integration
def test_demo_prints_recommendations_within_60_seconds(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILCAST_")}
    env.update(TAILCAST_METRICS_PORT="0", TAILCAST_STATE_DIR=str(tmp_path / "state"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--duration", "45", "--events", "20000"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    shown = re.findall(r"^    (u\d+) after (\d+) events \[(\w+), ([^\]]+)\]: (i\d+) \((\w+)", out, re.M)
    assert len(shown) >= 3, out[-3000:]
    first = float(re.search(r"first after ([\d.]+)s", out).group(1))
    assert first < 60, out[-3000:]
