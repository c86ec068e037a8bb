"""Helpers of the probe tests: a collective collector on a temporary socket, real DDP jobs, polling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.collectors.collective import CollectiveCollector
from agent.evidence import RankEvidence
from agent.settings import CollectiveSettings

REPO = Path(__file__).resolve().parents[2]
DDP_JOB = REPO / "tools" / "ddp_job.py"
PTH = REPO / "agent" / "probe" / "lockstep-probe.pth"


def start_collector(socket_dir: Path, **overrides: object) -> CollectiveCollector:
    fields: dict[str, object] = {"socket_dir": str(socket_dir), "trust": "process", **overrides}
    settings = CollectiveSettings.model_validate(fields)
    collector = CollectiveCollector(settings)
    collector.start()
    return collector


class Job:
    """A running tools/ddp_job.py in its own session (so every rank can be killed at once)."""

    def __init__(self, args: list[str], env: dict[str, str], pid_dir: Path) -> None:
        self.pid_dir = pid_dir
        pid_dir.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(DDP_JOB), "--pid-dir", str(pid_dir), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def rank_pid(self, rank: int, timeout: float = 60.0) -> int:
        path = self.pid_dir / f"rank{rank}.pid"
        wait_for(lambda: path.exists() and path.read_text().strip() != "", timeout, f"rank {rank} pid file")
        return int(path.read_text())

    def finish(self, timeout: float = 240.0) -> str:
        """Wait for the job to end by itself; its output (fails the test if it failed)."""
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, out
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)
            self.proc.communicate(timeout=30)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ranks_by_number(collector: CollectiveCollector, group: str = "default") -> dict[int, RankEvidence]:
    return {r.rank: r for r in collector.evidence().ranks if r.process_group == group}


def run_ranks(source: str, ranks: int, env: dict[str, str], tmp_path: Path) -> list[dict[str, Any]]:
    """Run a script that spawns `ranks` ranks (argv: a free port, an output prefix, a socket directory); the
    JSON each rank wrote to `<prefix>.<rank>`."""
    script = tmp_path / "ranks.py"
    script.write_text(source)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "rank"
    subprocess.run([sys.executable, str(script), str(port), str(out), str(tmp_path / "sock")], env=env, check=True,
                   timeout=300, capture_output=True)  # fmt: skip
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(ranks)]
