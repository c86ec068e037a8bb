"""The dashboards and rules against the real thing: real agents (fake NVML with faults, fixture and real
sysfs), a real DDP training job with the probe, the real controller acting on the Kubernetes API emulator, and
a real Prometheus scraping them with the shipped rules. Every dashboard query returns data; every metric a
dashboard or rule names is exported; the hardware alerts fire on the agents' real output."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    ALERTS,
    EXTERNAL_METRICS,
    REPO,
    dashboard_queries,
    grafana_to_promql,
    metric_names,
    referenced_metrics,
)
from live import Daemon, free_port, query, start, start_prometheus, wait_for
from prometheus_client.parser import text_string_to_metric_families

from controller.kube import ANNOTATION_CORDONED, ANNOTATION_REASON, ANNOTATION_SINCE, TAINT_KEY
from controller.kube_emulator import Emulator, Fault

pytestmark = pytest.mark.slow

NAMESPACE = "lockstep"
AGENT_LABELS = {"app.kubernetes.io/name": "lockstep-agent"}
JOB = "deploy-train"
FIXTURE_SYSFS = REPO / "tests" / "fixtures" / "sysfs" / "gpu-node"
# node-b's GPUs: hard faults the controller acts on and the hardware alerts fire on.
NODE_B_FAULTS = {
    "gpus": {
        "1": {
            "xid": [79],
            "ecc": {"volatile_uncorrected": 2, "volatile_corrected": 7},
            "remapped_rows": {"correctable": 2, "failure": 1, "pending": 1},
            "thermal_throttle": 1,
            "nvlink_errors": {"0": {"replay": 5}},
        },
        "2": {"lost": 1},
    }
}


@dataclass
class LiveCluster:
    prometheus: str
    emulator: Emulator
    endpoints: dict[str, str]  # name -> /metrics URL of each agent and the controller
    daemons: list[Daemon] = field(default_factory=list)


def _python_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def _start_agent(
    workdir: Path, name: str, nvml_faults: dict[str, Any], sysfs_root: str
) -> tuple[Daemon, int, Path]:
    node_dir = workdir / name
    (node_dir / "sock").mkdir(parents=True)
    (node_dir / "nvml.json").write_text(json.dumps(nvml_faults))
    config = {
        "collective": {"socket_dir": str(node_dir / "sock")},
        "network": {"sysfs_root": sysfs_root},
        "nvml": {"library_path": str(REPO / "build" / "fake-nvml" / "libnvidia-ml.so.1")},
    }
    (node_dir / "agent.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    env = _python_env({"FAKE_NVML_CONFIG": str(node_dir / "nvml.json")})
    daemon = start(
        [sys.executable, "-m", "agent", "--listen", f"127.0.0.1:{port}", "--node-name", name,
         "--config", str(node_dir / "agent.yaml")],
        node_dir / "agent.log", env,
    )  # fmt: skip
    return daemon, port, node_dir / "sock"


def _probe_site(workdir: Path) -> Path:
    """A site directory with the probe's .pth bootstrap, as `pip install lockstep` puts it in site-packages
    (this machine's site-packages is shared, so the test does not install into it)."""
    site_dir = workdir / "site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(REPO / "agent" / "probe" / "lockstep-probe.pth", site_dir)
    (site_dir / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n"
    )
    return site_dir


def _start_rank(workdir: Path, rank: int, socket_dir: Path, master_port: int, slowdown: Path) -> Daemon:
    env = _python_env({
        "PYTHONPATH": os.pathsep.join([str(_probe_site(workdir)), str(REPO)]),
        "LOCKSTEP_PROBE": "1", "LOCKSTEP_SOCKET_DIR": str(socket_dir), "LOCKSTEP_JOB": JOB,
        "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
    })  # fmt: skip
    return start(
        [sys.executable, str(REPO / "tools" / "ddp_job.py"), "--steps", "0", "--step-seconds", "0.05",
         "--extra-allreduces", "2", "--slowdown-file", str(slowdown)],
        workdir / f"rank{rank}.log", env,
    )  # fmt: skip


def _held_since_an_earlier_fault(node: dict[str, Any]) -> dict[str, Any]:
    """What Lockstep leaves on a node it cordoned (before this controller started): mark, taint, cordon."""
    node["metadata"].setdefault("annotations", {}).update(
        {ANNOTATION_REASON: "GpuLost", ANNOTATION_SINCE: "2020-01-01T00:00:00Z", ANNOTATION_CORDONED: "true"}
    )
    node["spec"]["unschedulable"] = True
    node["spec"]["taints"] = [{"key": TAINT_KEY, "value": "GpuLost", "effect": "NoSchedule"}]
    return node


def _uncordoned(node: dict[str, Any]) -> dict[str, Any]:
    node["spec"]["unschedulable"] = False
    return node


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    workdir = tmp_path_factory.mktemp("live")
    subprocess.run(["make", "-C", str(REPO), "fake-nvml", f"PYTHON={sys.executable}"], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    emulator = Emulator()
    emulator.start_in_thread()
    kubeconfig = emulator.write_kubeconfig(str(workdir / "kubeconfig"))
    daemons: list[Daemon] = []
    try:
        agent_a, port_a, sock_a = _start_agent(workdir, "node-a", {}, "/sys")
        agent_b, port_b, sock_b = _start_agent(workdir, "node-b", NODE_B_FAULTS, str(FIXTURE_SYSFS))
        daemons += [agent_a, agent_b]
        for name, port in (
            ("node-a", port_a),
            ("node-b", port_b),
            ("node-c", free_port()),
        ):  # node-c: agent gone
            emulator.add_node(name)
            emulator.add_pod(NAMESPACE, f"lockstep-agent-{name}", name, "127.0.0.1", AGENT_LABELS, port)
        emulator.patch_node("node-c", _held_since_an_earlier_fault)  # its agent is gone while it is repaired
        for port, agent in ((port_a, agent_a), (port_b, agent_b)):
            wait_for(lambda p=port: _metrics_text(f"http://127.0.0.1:{p}/metrics"), 60, f"agent {agent.log}")

        slowdown = workdir / "slowdown"
        slowdown.write_text("1 2.5\n")  # rank 1 (node-b) computes 2.5x slower: a straggler its peer waits for
        master_port = free_port()
        ranks = [
            _start_rank(workdir, 0, sock_a, master_port, slowdown),
            _start_rank(workdir, 1, sock_b, master_port, slowdown),
        ]
        daemons += ranks

        # One API error the controller must survive, counted in lockstep_controller_api_errors_total.
        emulator.inject(Fault(verb="patch", resource="nodes", count=1, status=500))
        controller_port = free_port()
        config = {
            "interval_seconds": 1.0,
            "kube": {"namespace": NAMESPACE, "agent_namespace": NAMESPACE, "api_timeout_seconds": 2.0,
                     "agent_label_selector": "app.kubernetes.io/name=lockstep-agent", "api_backoff_seconds": 0.05},
            "leader": {"lease_duration_seconds": 4.0, "renew_deadline_seconds": 3.0, "retry_period_seconds": 0.5},
            "fetch": {"timeout_seconds": 1.0, "backoff_initial_seconds": 1.0, "backoff_max_seconds": 2.0},
            "safety": {"max_cordoned_ratio": 1.0},  # node-c is held already; node-b may join it
        }  # fmt: skip
        (workdir / "controller.yaml").write_text(yaml.safe_dump(config))
        controller = start(
            [sys.executable, "-m", "controller", "--listen", f"127.0.0.1:{controller_port}",
             "--config", str(workdir / "controller.yaml"), "--kubeconfig", kubeconfig],
            workdir / "controller.log", _python_env({}),
        )  # fmt: skip
        daemons.append(controller)

        prometheus, prometheus_url = start_prometheus(
            workdir,
            {
                "lockstep-agent": [
                    {"targets": [f"127.0.0.1:{port_a}"], "labels": {"node": "node-a"}},
                    {"targets": [f"127.0.0.1:{port_b}"], "labels": {"node": "node-b"}},
                ],
                "lockstep-controller": [{"targets": [f"127.0.0.1:{controller_port}"]}],
            },
            [ALERTS],
        )
        daemons.append(prometheus)
        cluster = LiveCluster(
            prometheus_url, emulator,
            {"node-a": f"http://127.0.0.1:{port_a}/metrics", "node-b": f"http://127.0.0.1:{port_b}/metrics",
             "controller": f"http://127.0.0.1:{controller_port}/metrics"},
            daemons,
        )  # fmt: skip

        # The controller cordons node-b for its hard GPU faults; then a person uncordons it by hand (as
        # `kubectl uncordon` does), and the controller cleans up its taint and counts the release.
        wait_for(lambda: emulator.node("node-b")["spec"].get("unschedulable"), 120,
                 f"node-b cordoned (controller log: {controller.log})")  # fmt: skip
        emulator.patch_node("node-b", _uncordoned)
        wait_for(
            lambda: query(prometheus_url, "lockstep_controller_releases_total")["result"],
            60,
            "release counted",
        )

        # A hang at the end: rank 1 stops, rank 0 is left with a pending collective (its age is exported).
        wait_for(lambda: query(prometheus_url, f'lockstep_collective_step_period_seconds{{job="{JOB}"}}')["result"],
                 120, "the training job's step period")  # fmt: skip
        time.sleep(5)  # rate windows fill with the straggler's lockstep
        ranks[1].process.send_signal(signal.SIGSTOP)
        wait_for(
            lambda: query(prometheus_url, "lockstep_collective_pending_age_seconds")["result"],
            60,
            "pending age",
        )
        yield cluster
    finally:
        for daemon in reversed(daemons):
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGCONT)
            daemon.stop()
        emulator.stop_thread()


def test_every_dashboard_query_returns_data(live: LiveCluster) -> None:
    # Panels on other exporters' metrics (kube-state-metrics) have no data here: no such exporter runs.
    ours = [(b, t, e) for b, t, e in dashboard_queries() if not metric_names(e) <= set(EXTERNAL_METRICS)]
    assert len(ours) >= len(dashboard_queries()) - len(EXTERNAL_METRICS)

    def empty() -> list[str]:
        return [
            f"{board}: {title}: {expr}"
            for board, title, expr in ours
            if not query(live.prometheus, grafana_to_promql(expr, rate_interval="20s"))["result"]
        ]

    missing: list[str] = []

    def all_answered() -> bool:
        missing[:] = empty()
        return not missing

    try:
        wait_for(all_answered, 90, "every dashboard query to return data", interval_s=3)
    except AssertionError:
        pytest.fail("queries without data:\n" + "\n".join(missing))


def exported_names(text: str) -> set[str]:
    """Sample names in an exposition, plus the names an empty counter or histogram family would carry."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_every_metric_the_dashboards_and_rules_name_is_exported(live: LiveCluster) -> None:
    exported = set().union(*(exported_names(_metrics_text(url)) for url in live.endpoints.values()))
    exported.add("up")  # Prometheus's own per-target series
    missing = {
        name: sorted(where)
        for name, where in referenced_metrics().items()
        if name not in exported and name not in EXTERNAL_METRICS
    }
    assert missing == {}, json.dumps(missing, indent=2)


def test_hardware_alerts_fire_on_the_real_agents_output_and_only_for_the_faulty_node(
    live: LiveCluster,
) -> None:
    expected = {
        "LockstepGpuCriticalXid",
        "LockstepGpuLost",
        "LockstepGpuRowRemapFailure",
        "LockstepGpuUncorrectableEcc",
    }

    def firing() -> set[tuple[str, str]]:
        result = query(live.prometheus, 'ALERTS{alertstate="firing"}')["result"]
        return {(a["metric"]["alertname"], a["metric"].get("node", "")) for a in result}

    try:
        wait_for(
            lambda: {(name, "node-b") for name in expected} <= firing(), 90, "hardware alerts for node-b"
        )
    except AssertionError:
        pytest.fail(f"firing: {sorted(firing())}; expected {sorted(expected)} for node-b")
    # node-a's GPUs are healthy (its NICs are this machine's real ones, which other tests may flap).
    assert not {(name, node) for name, node in firing() if node == "node-a" and name in expected}, firing()


def test_the_cordon_alert_names_the_node_lockstep_holds_and_not_a_healthy_one(live: LiveCluster) -> None:
    def cordoned() -> set[str]:
        result = query(live.prometheus, 'ALERTS{alertname="LockstepNodeCordoned",alertstate="firing"}')["result"]
        return {a["metric"].get("node", "") for a in result}

    wait_for(lambda: "node-c" in cordoned(), 90, "LockstepNodeCordoned for node-c")
    assert "node-a" not in cordoned()
