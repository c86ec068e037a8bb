"""End to end on one node: a DDP job under the probe -> `lockstep-agent` -> /api/v1/evidence and /metrics."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.evidence import Evidence

from .jobs import wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@pytest.fixture
def agent_url(subprocess_env: dict[str, str], python: str, socket_dir: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [python, "-m", "agent", "--listen", f"127.0.0.1:{port}", "--node-name", "probe-node",
         "--no-collector.nvml", "--collective.socket-dir", str(socket_dir), "--collective.trust", "process"],
        env=subprocess_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        try:
            get(url + "/readyz")
            return (socket_dir / "probe.sock").exists()
        except OSError:
            return False

    try:
        wait_for(ready, 60, "the agent")
        yield url
    finally:
        agent.terminate()
        agent.wait(timeout=30)
        log.close()


def test_agent_serves_every_rank_of_a_probed_job_in_evidence_and_metrics(ddp_job, agent_url: str, tmp_path: Path) -> None:
    ddp_job("--nproc", "2", "--steps", "40", "--extra-allreduces", "2").finish()

    def evidence() -> Evidence:
        return Evidence.model_validate_json(get(agent_url + "/api/v1/evidence"))

    wait_for(lambda: len(evidence().ranks) == 2 and all(r.last_seq == 40 * 3 for r in evidence().ranks), 30,
             "both ranks up to the final barrier in the evidence")  # fmt: skip
    document = evidence()
    assert document.node == "probe-node" and document.collectors.get("collective") is True
    for rank in document.ranks:
        assert rank.samples[-1].op == "barrier"
        assert rank.collectives_in_window == 40 * 3 + 1
        assert rank.wait_seconds_p50 is not None and rank.step_period_seconds is not None
    metrics = get(agent_url + "/metrics")
    job = document.ranks[0].job
    assert f'lockstep_collective_collectives_total{{job="{job}",op="all_reduce",process_group="default",rank="1"}} 120.0' in metrics
    exposition = tmp_path / "metrics.prom"
    exposition.write_text("\n".join(line for line in metrics.splitlines() if "lockstep_collective" in line
                                    or "lockstep_traffic" in line) + "\n")  # fmt: skip
    check = subprocess.run(["promtool", "check", "metrics"], stdin=exposition.open(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(get(agent_url + "/api/v1/evidence"))["schema_version"] == 1
    assert time.time() - document.collected_at < 60
