"""`lockstep simulate` as an operator runs it: a passing scenario exits 0, a failing one 1, a malformed one 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _simulate(python: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "controller.cli", "simulate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_simulate_prints_detection_per_fault_and_exits_zero(
    python: str, subprocess_env: dict[str, str]
) -> None:
    done = _simulate(python, subprocess_env, "scenarios/hang-two-nodes.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "faulty as Hang" in done.stdout and "recall 1.00" in done.stdout


def test_unmet_expectation_exits_one(python: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    scenario = tmp_path / "impossible.yaml"
    scenario.write_text(
        "cluster: {nodes: 4, gpus_per_node: 1}\nduration_seconds: 40\n"
        "jobs: [{name: j, nodes: 0-3, ranks_per_node: 1, step_seconds: 0.5}]\n"
        "faults: [{kind: straggler, node: 1, start: 10, slowdown: 0.3, expect: {within_seconds: 5}}]\n"
    )
    done = _simulate(python, subprocess_env, str(scenario))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout


def test_malformed_scenario_is_a_clear_error(
    python: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("jobs: [{name: j, nodes: 0-3}]\nfaults: [{kind: meteor, start: 3}]\n")
    done = _simulate(python, subprocess_env, str(scenario))
    assert done.returncode == 2
    assert "kind must be one of" in done.stdout
