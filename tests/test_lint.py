"""pyflakes over the project's packages and tests: no undefined name, unused import or unused variable. A
benchmark that only ``make bench`` runs once referred to a name no longer defined, and nothing else caught it.
An import that only a doctest uses counts as used (pyflakes does not read doctests)."""

from __future__ import annotations

from pathlib import Path

from pyflakes.api import checkPath
from pyflakes.messages import UnusedImport
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
        if isinstance(message, UnusedImport):
            name = message.message_args[0].rpartition(".")[2].split(" as ")[-1]
            examples = [line for line in Path(message.filename).read_text().splitlines()
                        if line.lstrip().startswith((">>>", "..."))]
            if any(name in line for line in examples):
                return
        self.found.append(str(message))


def test_pyflakes_finds_nothing():
    report = _Collect()
    for package in ("streams", "models", "online", "benchmarks", "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            checkPath(str(path), report)
    assert report.found == []


def test_the_check_finds_an_undefined_name_and_an_import_used_nowhere(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""\n>>> sqrt(4)\n2.0\n"""\nfrom math import pi, sqrt\n\n\ndef f():\n    return items\n')
    report = _Collect()
    checkPath(str(bad), report)
    assert len(report.found) == 2, report.found
    assert "'math.pi' imported but unused" in report.found[0] and "undefined name 'items'" in report.found[1]
