"""What Prometheus sees: a golden /metrics for the fixture node, `promtool check metrics`, a real Prometheus scrape.

Regenerate the golden file with `LOCKSTEP_UPDATE_GOLDEN=1 python -m pytest tests/agent/test_exposition.py`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.backends.procfs import Procfs
from agent.backends.sysfs import SysfsNet
from agent.collectors.host import HostCollector
from agent.collectors.network import NetworkCollector
from agent.collectors.runner import CollectorRunner
from tests.agent.conftest import PROCFS_GPU_NODE, SYSFS_GPU_NODE, free_port, http_get, wait_until
from tests.processes import stop_process

GOLDEN = Path(__file__).resolve().parent / "golden" / "fixture-node.metrics"


def fixture_node_metrics() -> str:
    """The fixture node's exposition with the one varying value (collector durations) replaced."""
    runner = CollectorRunner(
        [NetworkCollector(SysfsNet(SYSFS_GPU_NODE)), HostCollector(Procfs(PROCFS_GPU_NODE))],
        node_name="fixture-node",
        timeout_seconds=10,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(runner)
    try:
        text = generate_latest(registry).decode()
    finally:
        runner.close()
    return re.sub(r"^(lockstep_collector_duration_seconds\{[^}]*\}) \S+$", r"\1 <duration>", text, flags=re.M)


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )


def test_fixture_node_metrics_match_the_golden_file() -> None:
    text = fixture_node_metrics()
    if os.environ.get("LOCKSTEP_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with LOCKSTEP_UPDATE_GOLDEN=1 to accept the new output"


def test_promtool_accepts_the_golden_file_and_the_live_agent_output(start_agent) -> None:
    golden = promtool_check(GOLDEN.read_text().replace("<duration>", "0.001"))
    assert golden.returncode == 0, golden.stdout + golden.stderr
    url = start_agent(
        "--network.sysfs-root", str(SYSFS_GPU_NODE), "--host.procfs-root", str(PROCFS_GPU_NODE), "--node-name", "n1"
    )
    live = promtool_check(http_get(url + "/metrics")[2])
    assert live.returncode == 0, live.stdout + live.stderr


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start a real Prometheus (Debian package) on a free port scraping one target every second; returns its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"  # a slow scrape on a busy machine just retries
            f"scrape_configs:\n  - job_name: lockstep-agent\n    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        with open(tmp_path / "prometheus.log", "wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        "prometheus",
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        stop_process(process, timeout_seconds=15)


def test_a_real_prometheus_scrapes_the_agent_and_answers_queries_about_it(start_agent, start_prometheus) -> None:
    url = start_agent(
        "--network.sysfs-root", str(SYSFS_GPU_NODE), "--host.procfs-root", str(PROCFS_GPU_NODE), "--node-name", "gpu-7"
    )
    prometheus_url = start_prometheus(url.removeprefix("http://"))

    def query(expr: str) -> list[dict]:
        try:
            status, _, body = http_get(f"{prometheus_url}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=5)
        except OSError:
            return []
        return json.loads(body)["data"]["result"] if status == 200 else []

    wait_until(lambda: bool(query("lockstep_agent_info")), timeout=60, what="Prometheus to scrape the agent")
    info = query("lockstep_agent_info")[0]["metric"]
    assert info["node"] == "gpu-7" and info["job"] == "lockstep-agent"
    assert query('max_over_time(up{job="lockstep-agent"}[5m])')[0]["value"][1] == "1"
    ib_bytes = query('lockstep_rdma_port_transmit_bytes_total{device="mlx5_1"}')[0]["value"][1]
    words = int((SYSFS_GPU_NODE / "class/infiniband/mlx5_1/ports/1/counters/port_xmit_data").read_text())
    assert float(ib_bytes) == words * 4
    assert query('lockstep_collector_success{collector="network"}')[0]["value"][1] == "1"
