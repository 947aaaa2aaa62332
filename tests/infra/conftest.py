"""Fixtures for the infrastructure tests: the harness and catalog modules, the files under test, and the
Prometheus binaries.

``prometheus`` and ``promtool`` come from Debian's ``prometheus`` package (``apt-get install -y
prometheus``). Without them the tests that need them skip, naming the package, except under CI (``CI``
set to true), where a missing binary is a failure: a green run must not hide a missing install step.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def _load_sibling(filename: str) -> ModuleType:
    """Import a helper module beside this file (``tests/infra`` is not a package under importlib mode)."""
    name = f"tailcast_tests_infra_{Path(filename).stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / filename)
    assert spec is not None and spec.loader is not None, filename
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


_harness = _load_sibling("prom_harness.py")
_catalog = _load_sibling("metric_catalog.py")


@pytest.fixture(scope="session")
def harness() -> ModuleType:
    """``prom_harness``: ``PrometheusServer``, ``check_dashboard_live``, ``metric_names``, ..."""
    return _harness


@pytest.fixture(scope="session")
def metric_catalog() -> ModuleType:
    """``metric_catalog``: ``METRICS``, ``series_names()``, ``LABEL_VALUES``, ``DEFAULT_PORTS``."""
    return _catalog


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads((REPO_ROOT / "infra/grafana/dashboards/tailcast.json").read_text())


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"`{name}` not found: install Debian's prometheus package (apt-get install -y prometheus)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{message}; CI must install it before running the tests")
    pytest.skip(message)


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return _binary("prometheus")


@pytest.fixture(scope="session")
def empty_prometheus(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory):
    """A running Prometheus that scrapes nothing: its query API tells whether an expression parses."""
    workdir = tmp_path_factory.mktemp("prometheus-empty")
    with _harness.PrometheusServer(binary=prometheus_bin, config=_harness.empty_config(), workdir=workdir) as server:
        yield server
