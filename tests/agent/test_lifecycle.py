"""The agent process: starts, becomes ready, serves evidence and metrics without loading OpenSSL, stops cleanly on
SIGTERM (how Kubernetes stops a pod)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from agent.evidence import Evidence
from agent.exposition import OPENMETRICS
from tests.agent.conftest import PROCFS_GPU_NODE, SYSFS_GPU_NODE, free_port, http_get, wait_until

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


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
        status, content_type, metrics = http_get(f"http://127.0.0.1:{port}/metrics", accept=PROMETHEUS_ACCEPT)
        assert status == 200 and content_type.startswith("application/openmetrics-text") and metrics.endswith("# EOF\n")
        dots = "application/openmetrics-text;version=1.0.0;escaping=dots"  # prometheus_client's encoder elsewhere
        status, content_type, _ = http_get(f"http://127.0.0.1:{port}/metrics", accept=dots)
        assert (status, content_type) == (200, OPENMETRICS), "without the library: the format the agent writes"
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps, "the agent process leaves OpenSSL out"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "serving on" in output and "stopping" in output


def test_numpy_starts_no_blas_threads_in_the_agent(subprocess_env: dict[str, str], python: str) -> None:
    count = "import numpy, os; print(len(os.listdir('/proc/self/task')))"
    env = {k: v for k, v in subprocess_env.items() if k != "OPENBLAS_NUM_THREADS"}
    plain = subprocess.run([python, "-c", count], env=env, capture_output=True, text=True, check=True)
    agent = subprocess.run(
        [python, "-c", f"from agent.cli import _single_threaded_blas; _single_threaded_blas(); {count}"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert int(agent.stdout) == 1, "the agent's numpy runs on the thread that calls it"
    assert int(plain.stdout) > 1 or os.cpu_count() == 1, "a plain numpy starts a BLAS thread per core but one"
