"""Child processes of the demo (agents, emulator, controller, Prometheus, training ranks), each in its own
session with its output in a log file, so that one call stops every one of them, stopped ranks included."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One process the demo started: what it is, its Popen handle and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal_group(self, signum: int) -> None:
        """Send a signal to the child's whole session (it may have forked: `ip netns exec`, launchers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signum)


class ProcessSet:
    """Starts children with logs under `log_dir` and stops all of them, in reverse start order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None) -> Child:
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, popen, log_path)
        self.children.append(child)
        log.debug("started %s (pid %d): %s", name, popen.pid, " ".join(argv))
        return child

    def stop(self, child: Child, grace_seconds: float = 3.0) -> None:
        """SIGCONT (a stopped rank cannot act on SIGTERM), SIGTERM, then SIGKILL after the grace period."""
        if child.running():
            child.signal_group(signal.SIGCONT)
            child.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while child.running() and time.monotonic() < deadline:
                time.sleep(0.05)
        # Kill the session even if the leader exited: `ip netns exec` children may outlive it.
        child.signal_group(signal.SIGKILL)
        try:
            child.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %d) did not exit after SIGKILL", child.name, child.pid)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child, grace_seconds=2.0)
