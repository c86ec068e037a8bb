"""The agent process: starts, becomes ready, serves evidence, stops cleanly on SIGTERM (how Kubernetes stops a pod)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from agent.evidence import Evidence
from tests.agent.conftest import PROCFS_GPU_NODE, SYSFS_GPU_NODE, free_port, http_get, wait_until


def test_the_agent_becomes_ready_and_exits_0_on_sigterm(
    subprocess_env: dict[str, str], python: str, tmp_path: Path
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            python, "-m", "agent", "--listen", f"127.0.0.1:{port}",
            "--network.sysfs-root", str(SYSFS_GPU_NODE), "--host.procfs-root", str(PROCFS_GPU_NODE),
            "--collective.socket-dir", str(tmp_path),
        ],  # fmt: skip
        env=subprocess_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        def ready() -> bool:
            try:
                return http_get(f"http://127.0.0.1:{port}/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, what="agent ready")
        status, content_type, body = http_get(f"http://127.0.0.1:{port}/api/v1/evidence")
        assert status == 200 and content_type.startswith("application/json")
        evidence = Evidence.model_validate_json(body)
        assert {nic.name for nic in evidence.nics} >= {"mlx5_0/1", "mlx5_1/1", "ens1f0np0"}
        assert evidence.host is not None and evidence.host.window_seconds > 0, "rates since the first collection"
        assert evidence.collectors["network"] and evidence.collectors["host"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "serving on" in output and "stopping" in output
