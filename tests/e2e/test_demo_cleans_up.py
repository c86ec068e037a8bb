"""`lockstep demo` removes everything it made when it is stopped: namespaces, links, processes, files."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from controller.demo.stale import sweep_stale_runs

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]


def leftovers(prefix: str) -> list[str]:
    """Namespaces, links, /etc/netns entries and processes whose name carries the run's prefix."""
    found = []
    found += [
        n
        for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        if n.startswith(prefix)
    ]
    found += [
        line
        for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
        if prefix in line
    ]
    found += [str(p) for p in Path("/etc/netns").glob(f"{prefix}*")] if Path("/etc/netns").exists() else []
    found += [
        line
        for line in subprocess.run(
            ["ps", "-eo", "pid,args"], capture_output=True, text=True
        ).stdout.splitlines()
        if prefix in line and "ps -eo" not in line
    ]
    return found


def start_demo_until_training(
    python: str, env: dict[str, str]
) -> tuple[subprocess.Popen[str], str, list[str]]:
    """Run `lockstep demo` until its job starts; returns the process, its run prefix and its output so far."""
    argv = [
        python,
        "-m",
        "controller.cli",
        "demo",
        "--fault",
        "none",
        "--nodes",
        "2",
        "--no-prometheus",
        "--fault-at",
        "600",
    ]
    demo = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert demo.stdout is not None
    prefix, output = None, []
    deadline = time.monotonic() + 120
    for line in demo.stdout:
        output.append(line)
        if prefix is None and (match := re.search(r"(lsdemo-[0-9a-f]{4})-node0", line)):
            prefix = match.group(1)
        if " job " in line or time.monotonic() > deadline:
            break
    assert prefix is not None, "".join(output)
    assert leftovers(prefix), "the demo's cluster should exist while it runs"
    return demo, prefix, output


def test_sigterm_while_training_leaves_no_namespace_link_or_process(
    python: str, subprocess_env: dict[str, str]
) -> None:
    demo, prefix, output = start_demo_until_training(python, subprocess_env)
    try:
        demo.send_signal(signal.SIGTERM)
        output.append(demo.communicate(timeout=60)[0])
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, "".join(output)
    assert leftovers(prefix) == []


def test_leftovers_of_a_killed_demo_are_swept_by_the_next_run_and_live_runs_are_not(
    python: str, subprocess_env: dict[str, str]
) -> None:
    killed, killed_prefix, _ = start_demo_until_training(python, subprocess_env)
    killed.kill()
    killed.wait(timeout=30)
    assert leftovers(killed_prefix), "SIGKILL gives the demo no chance to clean up"
    alive, alive_prefix, _ = start_demo_until_training(python, subprocess_env)  # sweeps when it starts
    try:
        assert leftovers(killed_prefix) == []
        assert alive_prefix not in sweep_stale_runs()
        assert leftovers(alive_prefix), "a running demo must be left alone"
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.communicate(timeout=60)
    assert leftovers(alive_prefix) == []
