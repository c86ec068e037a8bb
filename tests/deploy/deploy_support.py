"""Shared helpers of the deploy tests: render the chart with the real Helm engine, read the alert rules and the
dashboards, and list every metric they name (the one list the live tests check against real agent output)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "lockstep"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"
DASHBOARDS = REPO / "dashboards"
RUNBOOKS = REPO / "docs" / "runbooks.md"

RELEASE = "lockstep"
NAMESPACE = "gpu-health"

# Every optional feature of the chart switched on at once.
ALL_FEATURES: dict[str, Any] = {
    "agent": {
        "hostNetwork": True,
        "runtimeClassName": "nvidia",
        "config": {"nvml": {"enabled": True}},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "podAnnotations": {"a": "b"},
        "podLabels": {"team": "ml"},
    },
    "controller": {
        "dryRun": False,
        "priorityClassName": "system-cluster-critical",
        "config": {"fetch": {"timeout_seconds": 3.0}},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
            }
        ],
    },
    "image": {"digest": "sha256:" + "a" * 64},
    "imagePullSecrets": [{"name": "registry"}],
    "commonLabels": {"owner": "platform"},
    "serviceAccount": {"agent": {"annotations": {"x": "y"}}, "controller": {"annotations": {"x": "y"}}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboards": {"enabled": True, "namespace": "monitoring"},
    "networkPolicy": {"enabled": True},
    "rbac": {"create": True, "operatorRole": True},
}
# The Prometheus operator's alternative: PodMonitors instead of ServiceMonitors.
POD_MONITORS: dict[str, Any] = {"serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": True}}


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, by the real Helm engine (libhelm through helm-python-sdk)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=release, namespace=NAMESPACE, is_install=True)


def objects(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt excluded)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(render(values, release).items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def all_rules() -> list[dict[str, Any]]:
    """Every alerting and recording rule of the shipped rules file."""
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in all_rules() if "alert" in rule]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every panel target and query variable."""
    queries: list[tuple[str, str, str]] = []
    for name, board in dashboards().items():
        for panel in panels(board):
            queries.extend((name, panel["title"], t["expr"]) for t in panel["targets"])
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                match = re.fullmatch(r"label_values\((.*), *\w+\)", var["query"]["query"])
                assert match, var
                queries.append((name, f"variable {var['name']}", match.group(1)))
    return queries


def grafana_to_promql(expr: str, rate_interval: str = "5m") -> str:
    """Substitute Grafana's variables as Grafana would with "All" selected."""
    return (
        expr.replace("$__rate_interval", rate_interval).replace('"$node"', '".*"').replace('"$job"', '".*"')
    )


# Metrics from other exporters a dashboard may use, with their source (not exported by Lockstep itself).
EXTERNAL_METRICS = {"kube_node_spec_taint": "kube-state-metrics (kube-prometheus-stack)"}

# Not inside a recording rule's name (`level:metric:operations`) nor part of a longer word.
_METRIC = re.compile(r"(?<![:\w])(lockstep_[a-z0-9_]+|up|kube_[a-z0-9_]+)(?![:\w])")


def metric_names(expr: str) -> set[str]:
    """Exported metric names a PromQL expression selects (label names never start with `lockstep_`)."""
    return set(_METRIC.findall(expr))


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used: the one list of names the dashboards and alert rules rely on."""
    used: dict[str, set[str]] = {}
    for rule in all_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule.get('alert') or rule['record']}")
    for board, title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"{board}: {title}")
    return used
