"""Stopping the child processes tests start (agents, Prometheus, exporters): terminate, then kill."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, timeout_seconds: float = 10.0) -> None:
    """SIGTERM `process`, wait up to `timeout_seconds`, then SIGKILL it; a process already gone is left alone."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_seconds)
