"""What the demo reads back while it runs: verdicts from the controller's status API, cordons and taints from
the Kubernetes API (the emulator), alert states from Prometheus. Changes become timeline events."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from controller.demo.http import get_json
from controller.demo.timeline import Timeline

log = logging.getLogger(__name__)

TAINT_KEY = "lockstep.dev/unhealthy"


@dataclass(frozen=True)
class NodeView:
    """One node as the controller and the Kubernetes API show it right now."""

    verdict: str = "unknown"
    reason: str = ""
    summary: str = ""
    cordoned: bool = False
    taint: str | None = None  # value of the lockstep taint ("<reason>:NoSchedule"), None when absent


def parse_controller_nodes(document: Any) -> dict[str, tuple[str, str, str]]:
    """Node name -> (verdict, reason, summary) from the controller's `/api/v1/nodes` document."""
    verdicts = {}
    for item in document.get("nodes", []):
        name = item.get("node")
        if not name:
            continue
        summaries = [f.get("summary", "") for f in item.get("findings", []) if isinstance(f, dict)]
        verdicts[str(name)] = (
            str(item.get("verdict", "unknown")),
            str(item.get("reason", "")),
            "; ".join(s for s in summaries if s),
        )
    return verdicts


@dataclass
class Observer:
    """Polls everything once per `poll()` and records what changed on the timeline."""

    timeline: Timeline
    controller_url: str
    kubeconfig: Path
    node_names: list[str]
    prometheus_url: str | None = None
    views: dict[str, NodeView] = field(default_factory=dict)
    alerts: dict[str, str] = field(default_factory=dict)  # "alertname{node}" -> state
    ever_blamed: set[str] = field(default_factory=set)  # faulty, cordoned or tainted at any poll
    ever_suspect: set[str] = field(default_factory=set)
    errors: int = 0
    _core: Any = None

    def __post_init__(self) -> None:
        api_client = kube_config.new_client_from_config(config_file=str(self.kubeconfig))
        self._core = kube_client.CoreV1Api(api_client)
        self.views = {name: NodeView() for name in self.node_names}

    def poll(self) -> None:
        verdicts = self._controller_verdicts()
        kube_nodes = self.kube_nodes()
        for name in self.node_names:
            verdict, reason, summary = verdicts.get(
                name, (self.views[name].verdict, self.views[name].reason, "")
            )
            cordoned, taint = kube_nodes.get(name, (self.views[name].cordoned, self.views[name].taint))
            self._record(name, NodeView(verdict, reason, summary, cordoned, taint))
        if self.prometheus_url:
            self._poll_alerts()

    def _controller_verdicts(self) -> dict[str, tuple[str, str, str]]:
        try:
            return parse_controller_nodes(get_json(f"{self.controller_url}/api/v1/nodes"))
        except (OSError, ValueError) as error:
            self.errors += 1
            log.debug("controller status API: %s", error)
            return {}

    def kube_nodes(self) -> dict[str, tuple[bool, str | None]]:
        """Node name -> (cordoned, Lockstep taint value or None), read from the Kubernetes API now."""
        try:
            nodes = self._core.list_node(_request_timeout=3).items
        except Exception as error:  # noqa: BLE001 - any API failure is one missed poll, counted
            self.errors += 1
            log.debug("kubernetes API: %s", error)
            return {}
        seen = {}
        for node in nodes:
            spec = node.spec or kube_client.V1NodeSpec()
            taint = next((f"{t.value}:{t.effect}" for t in spec.taints or [] if t.key == TAINT_KEY), None)
            seen[node.metadata.name] = (bool(spec.unschedulable), taint)
        return seen

    def _record(self, name: str, new: NodeView) -> None:
        old = self.views[name]
        self.views[name] = new
        if new.verdict == "faulty" or new.cordoned or new.taint:
            self.ever_blamed.add(name)
        if new.verdict == "suspect":
            self.ever_suspect.add(name)
        # A node's first verdict (unknown -> healthy at the controller's first cycle) is no news.
        if new.verdict != old.verdict and (old.verdict, new.verdict) != ("unknown", "healthy"):
            detail = f" ({new.reason})" if new.reason else ""
            summary = f": {new.summary}" if new.summary else ""
            self.timeline.add(new.verdict, f"{name} is {new.verdict}{detail}{summary}", node=name)
        if new.cordoned and not old.cordoned:
            self.timeline.add(
                "cordoned", f"{name} cordoned (spec.unschedulable read back from the API)", node=name
            )
        if not new.cordoned and old.cordoned:
            self.timeline.add("uncordoned", f"{name} schedulable again", node=name)
        if new.taint and new.taint != old.taint:
            self.timeline.add(
                "tainted", f"{name} tainted {TAINT_KEY}={new.taint} (read back from the API)", node=name
            )

    def _poll_alerts(self) -> None:
        try:
            document = get_json(f"{self.prometheus_url}/api/v1/alerts")
        except (OSError, ValueError) as error:
            log.debug("prometheus alerts: %s", error)
            return
        current = {}
        for alert in document.get("data", {}).get("alerts", []):
            labels = dict(alert.get("labels", {}))
            name = labels.pop("alertname", "?")
            labels.pop("severity", None)
            where = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            current[f"{name}{{{where}}}"] = str(alert.get("state", "?"))
        # Pending alerts wait out their `for:`; only firing ones (and their end) are news.
        for key, state in current.items():
            if state == "firing" and self.alerts.get(key) != "firing":
                self.timeline.add("alert", f"Prometheus alert {key} firing")
        for key, state in self.alerts.items():
            if state == "firing" and current.get(key) != "firing":
                self.timeline.add("alert", f"Prometheus alert {key} no longer firing")
        self.alerts = current
