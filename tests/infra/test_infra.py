"""Checks on the provisioned infrastructure files (STYLE item 14): Prometheus config and alerts, the Grafana
dashboard and provisioning, docker-compose.yml, the Dockerfile.

Tools: ``promtool`` and ``prometheus`` from Debian's ``prometheus`` package (see conftest.py for when
their absence skips and when it fails); pyyaml and jsonschema from the ``test`` extra. No Docker engine:
the compose file is validated against the Compose Specification JSON schema, vendored at
``infra/compose-spec.schema.json`` from check-jsonschema 0.39.0
(``check_jsonschema/builtin_schemas/vendor/compose-spec.json``, Apache-2.0, ``infra/compose-spec.LICENSE``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

PROM_DIR = Path("infra/prometheus")
GRAFANA_DIR = Path("infra/grafana")

REQUIRED_ROWS = ["Long-tail exposure", "Quality", "A/B", "Throughput", "Freshness", "Kafka", "Model"]
ARM_QUERY = "label_values(tailcast_longtail_tail_share_ratio, arm)"

# Settings the containers may set (a subset of streams/config.py SETTINGS, which
# test_compose_settings_load_in_the_app checks against the application itself).
DOCUMENTED_SETTINGS = {
    "TAILCAST_KAFKA",
    "TAILCAST_METRICS_PORT",
    "TAILCAST_CHECKPOINT_DIR",
    "TAILCAST_STATE_DIR",
    "TAILCAST_PARTITIONS",
    "TAILCAST_DEVICE",
    "TAILCAST_TRAIN_INTERVAL_S",
}
# What every tailcast container must be given, with these exact values.
APP_ENV = {
    "TAILCAST_KAFKA": "kafka:9092",
    "TAILCAST_METRICS_PORT": "9100",
    "TAILCAST_CHECKPOINT_DIR": "/checkpoints",
    "TAILCAST_STATE_DIR": "/state",
    "TAILCAST_PARTITIONS": "6",
}
APP_SERVICES = ("worker", "scorer", "scorer-cpu", "trainer")
SCALABLE_SERVICES = ("worker", "scorer", "scorer-cpu")
# Topic -> (partitions, extra kafka-topics.sh arguments).
TOPICS = {
    "events": (6, ""),
    "items": (1, "--config cleanup.policy=compact"),
    "events.dlq": (1, ""),
    "score-requests": (6, ""),
    "recommendations": (6, ""),
    "longtail-metrics": (1, ""),
    "impressions": (6, ""),
}
REQUIRED_ALERTS = {
    "TailcastTailShareCollapsed",
    "TailcastTailShareDropped",
    "TailcastDLQRateHigh",
    "TailcastWorkerRecordsSkipped",
    "TailcastWorkerConsumerLagGrowing",
    "TailcastScorerConsumerLagGrowing",
    "TailcastModelStale",
    "TailcastProcessDown",
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _volume_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, mode) for short-syntax mounts; source is "" for an anonymous volume."""
    mounts = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax: {entry!r}"
        parts = entry.split(":")
        if len(parts) == 1:
            mounts.append(("", parts[0], "rw"))
        else:
            mounts.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return mounts


# ------------------------------------------------------------------------------------------ Prometheus


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.local.yml"])
def test_promtool_check_config(promtool_bin: str, repo_root: Path, config: str) -> None:
    """promtool parses the config and the rule files it names (relative to the config's folder)."""
    proc = _run([promtool_bin, "check", "config", config], cwd=repo_root / PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_rules(promtool_bin: str, repo_root: Path) -> None:
    proc = _run([promtool_bin, "check", "rules", "alerts.yml"], cwd=repo_root / PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rule_unit_tests(promtool_bin: str, repo_root: Path) -> None:
    """alerts.test.yml: DLQ share, skipped offsets, tail collapse and drop, process down/absent, stale model."""
    proc = _run([promtool_bin, "test", "rules", "alerts.test.yml"], cwd=repo_root / PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = _load_yaml(repo_root / PROM_DIR / "alerts.test.yml")["tests"]
    # Alerts with a case that fires and one that stays quiet.
    fires = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    required = {"TailcastDLQRateHigh", "TailcastTailShareCollapsed", "TailcastTailShareDropped",
                "TailcastWorkerRecordsSkipped"}
    assert required <= fires & quiet


def test_alert_rules_are_complete(repo_root: Path, harness, metric_catalog) -> None:
    rules = [rule for group in _load_yaml(repo_root / PROM_DIR / "alerts.yml")["groups"] for rule in group["rules"]]
    names = {rule["alert"] for rule in rules}
    assert REQUIRED_ALERTS <= names, f"missing alerts: {REQUIRED_ALERTS - names}"
    allowed = metric_catalog.series_names()
    for rule in rules:
        assert rule["labels"].get("severity") in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule.get("annotations", {})), rule["alert"]
        unknown = harness.metric_names(rule["expr"]) - allowed
        assert not unknown, f"{rule['alert']} uses unknown metrics {sorted(unknown)}"


def test_scrape_configs_match_compose_and_default_ports(
    repo_root: Path, compose: dict[str, Any], metric_catalog
) -> None:
    """Compose config: DNS service discovery (type A) of compose services on the metrics port, every 5 s.
    Local config: the processes' default ports on 127.0.0.1."""
    services = compose["services"]
    resolvable = set(services)
    for service in services.values():
        for network in (service.get("networks") or {}).values() if isinstance(service.get("networks"), dict) else []:
            resolvable.update((network or {}).get("aliases", []))
    metrics_port = int(APP_ENV["TAILCAST_METRICS_PORT"])

    config = _load_yaml(repo_root / PROM_DIR / "prometheus.yml")
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for process in ("worker", "scorer", "trainer"):
        job = jobs[f"tailcast-{process}"]
        [sd] = job["dns_sd_configs"]
        assert sd["type"] == "A" and sd["port"] == metrics_port
        assert set(sd["names"]) <= resolvable, f"{sd['names']} are not compose services or aliases"
        assert process in sd["names"]
    [sd] = jobs["tailcast-api"]["dns_sd_configs"]  # the read API serves /metrics on its HTTP port
    assert sd["names"] == ["api"] and sd["port"] == int(services["api"]["environment"]["TAILCAST_API_PORT"])

    local = _load_yaml(repo_root / PROM_DIR / "prometheus.local.yml")
    local_jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    assert set(jobs) == set(local_jobs), "both configs must use the same job names (alerts match on them)"
    for process, port in metric_catalog.DEFAULT_PORTS.items():
        [static] = local_jobs[f"tailcast-{process}"]["static_configs"]
        assert static["targets"] == [f"127.0.0.1:{port}"]
    [static] = local_jobs["tailcast-api"]["static_configs"]
    assert static["targets"] == ["127.0.0.1:8080"]


def test_catalog_matches_application_instruments(metric_catalog) -> None:
    """The catalog the dashboard and alerts are checked against is what the application exports:
    same names (counters with _total), kinds and labels. Extra application metrics are allowed."""
    metrics = pytest.importorskip("streams.metrics", reason="streams/metrics.py is missing")
    from prometheus_client import CollectorRegistry

    exported = {}
    for container in (metrics.WorkerMetrics, metrics.ScorerMetrics, metrics.LongTailMetrics, metrics.ABMetrics,
                      metrics.TrainerMetrics):
        instance = container.create(CollectorRegistry())
        for field_name in container.SPECS:
            instrument = getattr(instance, field_name)
            kind = instrument._type  # prometheus_client keeps these private; no public accessor
            name = instrument._name + ("_total" if kind == "counter" else "")
            exported[name] = (kind, tuple(instrument._labelnames))
    problems = []
    for metric in metric_catalog.METRICS:
        if metric.name not in exported:
            problems.append(f"{metric.name}: not exported")
            continue
        kind, labels = exported[metric.name]
        required = tuple(label for label in metric.labels if label not in metric.optional_labels)
        if kind != metric.kind or not set(required) <= set(labels) <= set(metric.labels):
            problems.append(
                f"{metric.name}: exported as {kind}{list(labels)}, catalog says {metric.kind}{list(metric.labels)}"
            )
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------- dashboard


def test_dashboard_structure(dashboard: dict[str, Any], harness) -> None:
    """Seven rows in order, unique ids, every panel with the datasource variable and at least one query,
    panels inside the 24-column grid and not overlapping."""
    panels = list(harness.iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert [p["title"] for p in panels if p["type"] == "row"] == REQUIRED_ROWS

    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no target"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target.get("expr", "").strip(), f"{panel['title']!r} {target['refId']} has no expr"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    arm = variables["arm"]
    assert arm["type"] == "query" and arm["datasource"]["uid"] == "${datasource}"
    assert arm["definition"] == ARM_QUERY and arm["query"]["query"] == ARM_QUERY
    assert arm["includeAll"] and arm["multi"] and arm["allValue"] == ".*"


def test_dashboard_uses_only_known_metrics(dashboard: dict[str, Any], harness, metric_catalog) -> None:
    """Every name an expression selects is in the catalog (histograms only through their _bucket, _sum,
    _count series), and every metric family of the catalog appears on some panel."""
    allowed = metric_catalog.series_names()
    used: set[str] = set()
    unknown = []
    for query in harness.dashboard_queries(dashboard):
        names = harness.metric_names(query.expr)
        assert names, f"{query.label()} selects no metric: {query.expr}"
        used |= names
        unknown += [f"{query.label()}: {name}" for name in sorted(names - allowed)]
    assert not unknown, "unknown metric names:\n" + "\n".join(unknown)
    families = {metric.name for metric in metric_catalog.METRICS}
    unused = families - {metric_catalog.family_of(name) for name in used}
    assert not unused, f"metrics on no panel: {sorted(unused)}"


def test_metric_name_parser_rejects_unknown_names(harness, metric_catalog) -> None:
    """The name check above would catch a typo, a bare histogram name and a name hidden in a binary op."""
    allowed = metric_catalog.series_names()
    exprs = {
        "sum(rate(tailcast_worker_events_consumd_total[5m]))": "tailcast_worker_events_consumd_total",
        "histogram_quantile(0.9, tailcast_scorer_batch_latency_seconds)": "tailcast_scorer_batch_latency_seconds",
        'up{job="x"} / on (instance) group_left node_load1': "node_load1",
    }
    for expr, bad in exprs.items():
        assert harness.metric_names(expr) - allowed == {bad}, expr


def test_dashboard_queries_parse(dashboard: dict[str, Any], harness, empty_prometheus) -> None:
    """A real Prometheus evaluates every panel query (variables expanded): a parse error is HTTP 400
    bad_data; an empty result is fine (nothing is scraped)."""
    variables = harness.dashboard_variables(dashboard)
    failures = []
    for query in harness.dashboard_queries(dashboard):
        result = empty_prometheus.query(harness.expand_variables(query.expr, variables))
        if not result.ok:
            failures.append(
                f"{query.label()}: {query.expr}\n    {result.http_status} {result.error_type}: {result.error}"
            )
    assert not failures, "queries Prometheus rejects:\n" + "\n".join(failures)


def test_prometheus_rejects_a_bad_query(empty_prometheus) -> None:
    """Control for the test above: the API really reports parse errors."""
    result = empty_prometheus.query("sum(rate(tailcast_worker_events_consumed_total[5m])")
    assert result.http_status == 400 and result.error_type == "bad_data"
    assert empty_prometheus.query("sum(rate(tailcast_worker_events_consumed_total[5m]))").ok


# ---------------------------------------------------------------------------------- Grafana provisioning


def _grafana_mounts(compose: dict[str, Any]) -> dict[str, str]:
    """Grafana container path -> repository path of its bind mounts."""
    return {
        target: source.removeprefix("./")
        for source, target, _ in _volume_mounts(compose["services"]["grafana"])
        if source.startswith("./")
    }


def test_grafana_provisioning_matches_compose_mounts(
    repo_root: Path, compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    mounts = _grafana_mounts(compose)
    assert mounts.get("/etc/grafana/provisioning") == "infra/grafana/provisioning"

    [datasource] = _load_yaml(repo_root / GRAFANA_DIR / "provisioning/datasources/prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    current = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")["current"]
    assert current["value"] == datasource["uid"], "the dashboard's default datasource is the provisioned one"

    [provider] = _load_yaml(repo_root / GRAFANA_DIR / "provisioning/dashboards/tailcast.yml")["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path in mounts, f"provider path {path} is not a grafana mount ({sorted(mounts)})"
    dashboards_dir = repo_root / mounts[path]
    assert (dashboards_dir / "tailcast.json").is_file()
    home = _env(compose["services"]["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/tailcast.json"


# -------------------------------------------------------------------------------------- docker compose


def test_compose_validates_against_compose_spec(repo_root: Path, compose: dict[str, Any]) -> None:
    schema = json.loads((repo_root / "infra/compose-spec.schema.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator_class(schema).iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)
    # Control: the vendored schema does reject a misspelt service key.
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["container_nmae"] = "worker"
    assert not validator_class(schema).is_valid(broken)


def test_compose_services_and_references(compose: dict[str, Any]) -> None:
    """Every service runs an image or a build; pinned third-party images; declared volumes and networks;
    depends_on names existing services."""
    services = compose["services"]
    assert {"kafka", "kafka-init", "prometheus", "grafana", *APP_SERVICES} <= set(services)
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {}) | {"default"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        image = service.get("image", "")
        if "build" not in service:
            assert re.fullmatch(r"[\w./-]+:v?\d+(\.\d+)+", image), f"{name}: pin {image!r} to a version tag"
        for source, _, _ in _volume_mounts(service):
            if source and not source.startswith(("./", "/")):
                assert source in declared_volumes, f"{name}: volume {source!r} is not declared"
        networks = service.get("networks") or {}
        assert set(networks) <= declared_networks, name
        assert set(service.get("depends_on") or {}) <= set(services), name


def test_compose_app_services(compose: dict[str, Any]) -> None:
    """The tailcast containers: entry command, exact settings, only documented TAILCAST_* keys, metrics
    port exposed, scalable ones without fixed names or host ports, checkpoints shared (trainer writes)."""
    services = compose["services"]
    for name in APP_SERVICES:
        service = services[name]
        env = _env(service)
        assert set(env) <= DOCUMENTED_SETTINGS, f"{name}: undocumented settings {set(env) - DOCUMENTED_SETTINGS}"
        assert {key: env.get(key) for key in APP_ENV} == APP_ENV, name
        assert APP_ENV["TAILCAST_METRICS_PORT"] in [str(port) for port in service.get("expose", [])], name
        assert service["command"] == [name.removesuffix("-cpu")], name
        assert service["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
        mounts = {target: (source, mode) for source, target, mode in _volume_mounts(service)}
        assert mounts.get("/state") == ("", "rw"), f"{name}: /state must be a per-container anonymous volume"
    for name in SCALABLE_SERVICES:
        forbidden = {"container_name", "hostname", "ports"} & set(services[name])
        assert not forbidden, f"{name} cannot be scaled with {forbidden}"
    assert dict((t, (s, m)) for s, t, m in _volume_mounts(services["trainer"]))["/checkpoints"] == ("checkpoints", "rw")
    for name in ("scorer", "scorer-cpu"):
        mounts = dict((t, (s, m)) for s, t, m in _volume_mounts(services[name]))
        assert mounts["/checkpoints"] == ("checkpoints", "ro")
        assert mounts["/checkpoints/snapshots"] == ("snapshots", "rw"), f"{name}: warm-restart snapshots (#16)"


def test_compose_scorer_gpu_and_cpu_fallback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    [device] = services["scorer"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert _env(services["scorer"])["TAILCAST_DEVICE"] == "cuda"
    assert "TORCH_INDEX_URL" in services["scorer"]["build"]["args"]
    cpu = services["scorer-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert _env(cpu)["TAILCAST_DEVICE"] == "cpu"
    assert "scorer" in cpu["networks"]["default"]["aliases"], "scrape job tailcast-scorer finds it by that name"


def test_compose_kafka_kraft(compose: dict[str, Any]) -> None:
    env = _env(compose["services"]["kafka"])
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0]: item.split("://")[1] for item in env["KAFKA_LISTENERS"].split(",")}
    advertised = {item.split("://")[0]: item.split("://")[1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(listeners) <= set(protocol_map) and set(advertised) <= set(listeners)
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised, "the controller listener stays internal"
    assert APP_ENV["TAILCAST_KAFKA"] in advertised.values(), "in-network clients must be advertised kafka:9092"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1", "single node"


def test_compose_topic_creation(compose: dict[str, Any]) -> None:
    """kafka-init creates each topic with its partition count (items compacted), idempotently."""
    init = compose["services"]["kafka-init"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    script = "\n".join(init["command"])
    created = {}
    for line in script.splitlines():
        if "--create" not in line:
            continue
        args = shlex.split(line)
        assert "--if-not-exists" in args and args[args.index("--replication-factor") + 1] == "1", line
        topic = args[args.index("--topic") + 1]
        extra = " ".join(args[i] + " " + args[i + 1] for i, a in enumerate(args) if a == "--config")
        created[topic] = (int(args[args.index("--partitions") + 1]), extra)
    assert created == TOPICS


def test_compose_settings_load_in_the_app(compose: dict[str, Any], metric_catalog) -> None:
    """Each app container's environment passes the application's own validation (streams/config.py:
    unknown TAILCAST_* keys and bad values fail there), and agrees with kafka-init and the scrape port."""
    config = pytest.importorskip("streams.config", reason="streams/config.py (the settings module) is missing")
    topics = pytest.importorskip("streams.topics", reason="streams/topics.py is missing")
    for name in APP_SERVICES:
        settings = config.load_settings(_env(compose["services"][name]))
        role = name.removesuffix("-cpu")
        assert settings.metrics_port_for(role) == int(APP_ENV["TAILCAST_METRICS_PORT"]), name
        assert settings.kafka.servers == APP_ENV["TAILCAST_KAFKA"], name
        # The topics the app would create itself are the ones kafka-init creates.
        declared = {
            spec.name: (spec.partitions, "--config cleanup.policy=compact" if spec.compacted else "")
            for spec in topics.topic_specs(settings.kafka.partitions)
        }
        assert declared == TOPICS, name
    defaults = config.load_settings({})
    default_ports = {role: defaults.metrics_port_for(role) for role in metric_catalog.DEFAULT_PORTS}
    assert default_ports == metric_catalog.DEFAULT_PORTS, "prometheus.local.yml scrapes the default ports"


# ------------------------------------------------------------------------------------------ Dockerfile


def test_dockerfile_and_dockerignore(repo_root: Path) -> None:
    """Pinned python:3.11-slim base, torch from TORCH_INDEX_URL, `pip install .`, non-root user,
    `tailcast` entry point; every package pyproject installs is copied and not excluded."""
    text = (repo_root / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)  # continuation lines
    instructions = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), "pin python:3.11.x-slim"
    assert "FROM ${PYTHON_IMAGE}" in instructions
    assert any(i.startswith("ARG TORCH_INDEX_URL=") for i in instructions)
    assert any('--index-url "${TORCH_INDEX_URL}"' in i for i in instructions)
    assert any(re.match(r"RUN pip install \.( |$)", i) for i in instructions)
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert instructions[-2:] == ['ENTRYPOINT ["tailcast"]', 'CMD ["--help"]']

    packages = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    top_level = sorted({package.split(".")[0] for package in packages})
    ignore = [line.strip() for line in (repo_root / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*", ".dockerignore is an allow-list: it starts by excluding everything"
    for package in top_level:
        assert f"COPY {package} ./{package}" in instructions, package
        assert f"!{package}/" in ignore, package
    assert "!pyproject.toml" in ignore
