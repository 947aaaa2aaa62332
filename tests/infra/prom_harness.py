"""Run a real Prometheus for tests and check a Grafana dashboard's queries against it.

Used by ``test_infra.py`` (does every panel query parse?) and ``test_dashboard_live.py`` (does every panel
query return data from live exporters?). ``conftest.py`` loads this file as the ``harness`` fixture, since
``tests/infra`` is not a package under ``--import-mode=importlib``.

Live use, with exporters already serving::

    report = check_dashboard_live(
        {"tailcast-worker": ["http://127.0.0.1:9101/metrics"],
         "tailcast-scorer": ["http://127.0.0.1:9102/metrics"]},
        dashboard=json.loads(Path("infra/grafana/dashboards/tailcast.json").read_text()),
        prometheus_bin=shutil.which("prometheus"), workdir=tmp_path)
    assert not report.missing, report.describe()

Everything waits on a condition with a deadline; nothing sleeps for a fixed time to let things happen.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_INTERVAL_S = 0.1


class PrometheusStartError(RuntimeError):
    """Prometheus exited or never became ready; the message carries the end of its log."""


class ConditionTimeout(TimeoutError):
    """A polled condition did not hold before its deadline."""


def wait_for(condition: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; return that, or raise ``ConditionTimeout``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise ConditionTimeout(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (``PrometheusServer`` retries on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- PromQL


@dataclass(frozen=True)
class QueryResult:
    """The answer of ``/api/v1/query``; ``http_status`` 400 with ``error_type`` bad_data = parse error."""

    expr: str
    http_status: int
    status: str
    error_type: str = ""
    error: str = ""
    result_type: str = ""
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.http_status == 200 and self.status == "success"

    def values(self) -> list[float]:
        """Sample values of an instant vector or scalar (``NaN`` included)."""
        if not self.ok:
            return []
        if self.result_type == "vector":
            return [float(sample["value"][1]) for sample in self.result]
        if self.result_type == "scalar":
            return [float(self.result[1])]
        if self.result_type == "matrix":
            return [float(value) for series in self.result for _, value in series["values"]]
        return []

    @property
    def has_data(self) -> bool:
        """At least one sample that is a number (a quantile over no observations is NaN: not data)."""
        return any(not math.isnan(value) for value in self.values())


class PrometheusServer:
    """A ``prometheus`` process on a free loopback port with its own storage, as a context manager.

    ``config`` is the configuration as a dict (written as JSON, which is YAML).
    """

    def __init__(
        self,
        *,
        binary: str,
        config: Mapping[str, Any],
        workdir: Path,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self.binary = binary
        self.config = config
        self.workdir = Path(workdir)
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self.workdir / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(json.dumps(self.config, indent=2))
        for _attempt in range(3):
            self.port = free_port()
            if self._start(config_path):
                return self
        raise PrometheusStartError(f"prometheus could not bind a free port:\n{self.log_tail()}")

    def _start(self, config_path: Path) -> bool:
        """Start and wait until ready; False if the port was taken meanwhile (caller retries)."""
        storage = self.workdir / f"data-{self.port}"
        with open(self._log_path, "wb") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def ready_or_exited() -> str:
            if self._process is not None and self._process.poll() is not None:
                return "exited"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    return "ready" if response.status == 200 else ""
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return ""

        try:
            state = wait_for(ready_or_exited, timeout_s=self.startup_timeout_s, what="prometheus /-/ready")
        except ConditionTimeout as exc:
            self.stop()
            raise PrometheusStartError(f"{exc}\n{self.log_tail()}") from exc
        if state == "ready":
            return True
        if "address already in use" in self.log_tail():
            return False
        raise PrometheusStartError(f"prometheus exited with {self._process.returncode}:\n{self.log_tail()}")

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:  # 400 bad_data, 422 execution error, ...
            body = error.read()
            try:
                return error.code, json.loads(body)
            except json.JSONDecodeError:
                return error.code, {"status": "error", "errorType": "http", "error": body.decode(errors="replace")}

    def query(self, expr: str) -> QueryResult:
        status_code, payload = self._get("/api/v1/query", {"query": expr})
        data = payload.get("data") or {}
        return QueryResult(
            expr=expr,
            http_status=status_code,
            status=payload.get("status", ""),
            error_type=payload.get("errorType", ""),
            error=payload.get("error", ""),
            result_type=data.get("resultType", ""),
            result=data.get("result"),
        )

    def active_targets(self) -> list[dict[str, Any]]:
        _, payload = self._get("/api/v1/targets", {"state": "active"})
        return payload.get("data", {}).get("activeTargets", [])

    def wait_for_targets_up(self, expected: int, *, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until ``expected`` active targets report health "up"; the error names those that are not."""

        def all_up() -> list[dict[str, Any]]:
            targets = self.active_targets()
            if len(targets) >= expected and all(t.get("health") == "up" for t in targets):
                return targets
            return []

        try:
            return wait_for(all_up, timeout_s=timeout_s, what=f"{expected} scrape targets up")
        except ConditionTimeout as exc:
            states = [
                f"{t.get('scrapeUrl')}: {t.get('health')} {t.get('lastError', '')}".strip()
                for t in self.active_targets()
            ]
            raise ConditionTimeout(f"{exc}; targets: {states or 'none discovered'}") from exc


def empty_config() -> dict[str, Any]:
    """A configuration that scrapes nothing: enough to parse and evaluate queries."""
    return {"global": {"evaluation_interval": "1m"}, "scrape_configs": []}


def static_scrape_config(
    targets: Mapping[str, Sequence[str]] | Sequence[str], *, scrape_interval: str = "1s"
) -> dict[str, Any]:
    """A configuration scraping the given ``/metrics`` URLs, by job (a plain list is job "tailcast")."""
    by_job = {"tailcast": list(targets)} if not isinstance(targets, Mapping) else dict(targets)
    scrape_configs = []
    for job, urls in by_job.items():
        for index, raw_url in enumerate(urls):
            url = urllib.parse.urlsplit(raw_url if "//" in raw_url else f"http://{raw_url}")
            if not url.hostname or not url.port:
                raise ValueError(f"scrape target {raw_url!r} needs a host and a port")
            scrape_configs.append(
                {
                    # job_name must be unique per scrape config; the `job` label is the caller's.
                    "job_name": f"{job}-{index}",
                    "scheme": url.scheme or "http",
                    "metrics_path": url.path or "/metrics",
                    "scrape_interval": scrape_interval,
                    "scrape_timeout": scrape_interval,
                    "static_configs": [{"targets": [url.netloc], "labels": {"job": job}}],
                }
            )
    return {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": scrape_configs}


# ------------------------------------------------------------------------------------------- dashboard


@dataclass(frozen=True)
class PanelQuery:
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str

    def label(self) -> str:
        return f"panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, rows included, with the children of collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """The PromQL of every target of every non-row panel, as written (Grafana variables unexpanded)."""
    queries = []
    for panel in iter_panels(dashboard):
        if panel.get("type") == "row":
            continue
        for target in panel.get("targets", []) or []:
            queries.append(
                PanelQuery(
                    panel_id=panel.get("id", -1),
                    panel_title=panel.get("title", ""),
                    ref_id=target.get("refId", "?"),
                    expr=target.get("expr", ""),
                )
            )
    return queries


def dashboard_variables(dashboard: Mapping[str, Any], *, rate_interval: str = "1m") -> dict[str, str]:
    """Values to expand Grafana variables with: "All" (or the current value) for template variables,
    ``rate_interval`` for the interval built-ins."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": "1h"}
    for variable in dashboard.get("templating", {}).get("list", []):
        name = variable.get("name")
        if not name:
            continue
        if variable.get("includeAll"):
            values[name] = variable.get("allValue") or ".*"
        else:
            current = (variable.get("current") or {}).get("value", "")
            values[name] = current[0] if isinstance(current, list) and current else str(current)
    return values


def expand_variables(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}`` and ``[[name]]`` as Grafana would (longest names first)."""
    for name in sorted(variables, key=len, reverse=True):
        value = variables[name]
        expr = expr.replace("${" + name + "}", value).replace("[[" + name + "]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m: value, expr)
    return expr


# PromQL words that look like identifiers but are not metric names.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
     "group_right", "inf", "nan", "atan2", "start", "end"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (functions, keywords, labels and strings removed).

    >>> sorted(metric_names('sum by (le) (rate(a_bucket{arm=~"$arm"}[$__rate_interval])) / on (x) b offset 1h'))
    ['a_bucket', 'b']
    >>> metric_names('histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))')
    {'c_bucket'}
    """
    stripped = _STRINGS.sub('""', expr)
    stripped = _MATCHERS.sub(" ", stripped)
    stripped = _RANGES.sub(" ", stripped)
    stripped = _GROUPING.sub(" ", stripped)
    return {name for name in _IDENTIFIER.findall(stripped) if name.lower() not in _KEYWORDS}


# ------------------------------------------------------------------------------------------ live check


@dataclass
class LiveReport:
    """Outcome of ``check_dashboard_live``: ``missing`` holds the queries that never returned data."""

    with_data: list[PanelQuery] = field(default_factory=list)
    missing: list[tuple[PanelQuery, QueryResult]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{len(self.missing)} of {len(self.missing) + len(self.with_data)} panel queries returned no data:"]
        for query, result in self.missing:
            why = f"{result.error_type}: {result.error}" if not result.ok else f"result {result.result!r}"[:200]
            lines.append(f"  {query.label()}: {query.expr}\n      -> {why}")
        return "\n".join(lines)


def poll_for_data(prometheus: PrometheusServer, queries: Mapping[PanelQuery, str], *, deadline_s: float) -> LiveReport:
    """Query each expanded expression (``queries``: panel query -> PromQL) until it returns data or
    ``deadline_s`` passes; the report's ``missing`` holds the last answer of those that never did."""
    pending = dict(queries)
    report = LiveReport()
    last: dict[PanelQuery, QueryResult] = {}
    deadline = time.monotonic() + deadline_s
    while pending:
        for query, expr in list(pending.items()):
            result = prometheus.query(expr)
            last[query] = result
            if result.has_data:
                report.with_data.append(query)
                del pending[query]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    report.missing = [(query, last[query]) for query in pending]
    return report


def check_dashboard_live(
    targets: Mapping[str, Sequence[str]] | Sequence[str],
    *,
    dashboard: Mapping[str, Any],
    prometheus_bin: str,
    workdir: Path,
    deadline_s: float = 60.0,
    targets_timeout_s: float = 30.0,
    rate_interval: str = "5s",
) -> LiveReport:
    """Scrape ``targets`` every second with a fresh Prometheus and poll every panel query of ``dashboard``
    until each returns data or ``deadline_s`` passes. Returns the report; raises ``ConditionTimeout`` if the
    targets never come up, ``PrometheusStartError`` if Prometheus does not start.

    ``rate_interval`` stands in for ``$__rate_interval``: at a 1 s scrape interval, 5 s holds enough samples
    for ``rate()``. Prometheus hands newly discovered targets to its scrapers every 5 s, so a run takes at
    least that long.
    """
    config = static_scrape_config(targets, scrape_interval="1s")
    variables = dashboard_variables(dashboard, rate_interval=rate_interval)
    queries = {query: expand_variables(query.expr, variables) for query in dashboard_queries(dashboard)}
    with PrometheusServer(binary=prometheus_bin, config=config, workdir=workdir) as prometheus:
        up = prometheus.wait_for_targets_up(len(config["scrape_configs"]), timeout_s=targets_timeout_s)
        report = poll_for_data(prometheus, queries, deadline_s=deadline_s)
    report.targets = up
    return report
