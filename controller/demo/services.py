"""The demo's daemons: an agent per node, the Kubernetes API emulator, the controller and (when installed)
Prometheus with Lockstep's alert rules. Each is a real process started the way an operator would start it."""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from controller.demo.cluster import Cluster, Node, free_port
from controller.demo.http import responds, wait_until
from controller.demo.paths import ALERT_RULES, FAKE_NVML_DIR
from controller.demo.processes import Child, ProcessSet

log = logging.getLogger(__name__)


def agent_config(node: Node) -> dict[str, object]:
    """The agent's YAML config for a demo node: where its node's training processes find the probe socket.

    Inside the node's network namespace the agent reads that namespace's interfaces (/sys/class/net) and, since
    the namespace shares the host's /proc, its TCP counters from /proc/self/net/snmp (on a real node the agent
    reads PID 1's, the node's namespace, its default).
    """
    return {"collective": {"socket_dir": str(node.socket_dir)}, "host": {"tcp_namespace_pid": "self"}}


def start_agent(processes: ProcessSet, node: Node, env: Mapping[str, str]) -> Child:
    config_path = node.directory / "agent.yaml"
    config_path.write_text(yaml.safe_dump(agent_config(node)))
    agent_env = dict(env)
    agent_env.update(
        {
            "LD_LIBRARY_PATH": str(FAKE_NVML_DIR),
            "FAKE_NVML_CONFIG": str(node.nvml_config),
            "LOCKSTEP_SOCKET_DIR": str(node.socket_dir),
            "NODE_NAME": node.name,
        }
    )
    argv = [*node.exec_prefix(), sys.executable, "-m", "agent"]
    argv += [
        "--listen",
        f"{node.ip}:{node.agent_port}",
        "--node-name",
        node.name,
        "--config",
        str(config_path),
    ]
    return processes.start(f"agent-{node.name}", argv, agent_env)


def wait_ready(child: Child, url: str, timeout_seconds: float) -> None:
    """Wait for `url` to answer, failing early with the log tail if the process died."""

    def ready() -> bool:
        if not child.running():
            raise RuntimeError(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        return responds(url)

    wait_until(ready, timeout_seconds, child.name)


@dataclass
class Emulator:
    """The Kubernetes API emulator (an HTTP-level stand-in for kube-apiserver, not a real cluster)."""

    child: Child
    kubeconfig: Path


def start_emulator(
    processes: ProcessSet, work_dir: Path, env: Mapping[str, str], timeout_seconds: float
) -> Emulator:
    kubeconfig = work_dir / "kubeconfig"
    argv = [
        sys.executable,
        "-m",
        "controller.kube_emulator",
        "--listen",
        "127.0.0.1:0",
        "--kubeconfig-out",
        str(kubeconfig),
    ]
    child = processes.start("kube-emulator", argv, env)

    def written() -> bool:
        if not child.running():
            raise RuntimeError(f"kube emulator exited with {child.popen.returncode}:\n{child.log_tail()}")
        return kubeconfig.exists() and kubeconfig.stat().st_size > 0

    wait_until(written, timeout_seconds, "kube emulator")
    return Emulator(child, kubeconfig)


@dataclass
class Controller:
    child: Child
    url: str


def start_controller(
    processes: ProcessSet, kubeconfig: Path, env: Mapping[str, str], timeout_seconds: float
) -> Controller:
    """The controller acting on the Kubernetes API at `kubeconfig`; it finds the agents through their pods there
    (not `--agent-url`, a mode that never acts)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "controller",
        "--listen",
        f"127.0.0.1:{port}",
        "--kubeconfig",
        str(kubeconfig),
    ]
    child = processes.start("controller", argv, env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(child, f"{url}/healthz", timeout_seconds)
    return Controller(child, url)


def alert_rule_files() -> list[Path]:
    return [ALERT_RULES] if ALERT_RULES.exists() else []


@dataclass
class Prometheus:
    child: Child
    url: str
    rule_files: list[Path]


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def start_prometheus(
    processes: ProcessSet, cluster: Cluster, controller_url: str, work_dir: Path, timeout_seconds: float
) -> Prometheus:
    binary = prometheus_binary()
    assert binary is not None
    port = free_port()
    rules = alert_rule_files()
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(p) for p in rules],
        "scrape_configs": [
            {
                "job_name": "lockstep-agent",
                "honor_labels": True,  # the collective metrics' `job` label is the training job, keep it
                "static_configs": [
                    {"targets": [f"{n.ip}:{n.agent_port}"], "labels": {"node": n.name}} for n in cluster.nodes
                ],
            },
            {
                "job_name": "lockstep-controller",
                "static_configs": [{"targets": [controller_url.split("//", 1)[1]]}],
            },
        ],
    }
    directory = work_dir / "prometheus"
    directory.mkdir(exist_ok=True)
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        binary,
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    child = processes.start("prometheus", argv, {"PATH": "/usr/bin:/bin"}, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    wait_ready(child, f"{url}/-/ready", timeout_seconds)
    return Prometheus(child, url, rules)
