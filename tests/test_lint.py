"""pyflakes over the project's packages and tests: no undefined name, unused import or unused variable. A
benchmark that only ``make bench`` runs once referred to a name no longer defined, and nothing else caught it."""

from __future__ import annotations

from pathlib import Path

from pyflakes.api import checkPath
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]


class _Collect(Reporter):
    def __init__(self) -> None:
        self.found: list[str] = []

    def unexpectedError(self, filename, msg) -> None:
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.found.append(f"{filename}:{lineno}: {msg}")

    def flake(self, message) -> None:
        self.found.append(str(message))


def test_pyflakes_finds_nothing():
    report = _Collect()
    for package in ("streams", "models", "online", "benchmarks", "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            checkPath(str(path), report)
    assert report.found == []


def test_the_check_finds_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return items\n")
    report = _Collect()
    checkPath(str(bad), report)
    assert len(report.found) == 1 and "undefined name 'items'" in report.found[0]
