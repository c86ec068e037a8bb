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


def test_scenario_sweep_of_a_two_node_job_finds_every_fault_and_blames_nobody_for_a_job_slowdown(
    python: str, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    # tools/scenario_sweep.py writes one scenario per fault kind; a node-wide 30% straggler in a job of two
    # 8-rank nodes was missed while a node was measured against a median holding half its own ranks
    written = subprocess.run(
        [python, "tools/scenario_sweep.py", "--out", str(tmp_path), "--steps", "0.5", "--collectives", "4",
         "--nodes", "2", "--ranks-per-node", "8", "--slowdowns", "0.3"],
        cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert len(list(tmp_path.glob("*.yaml"))) == 4
    done = _simulate(python, subprocess_env, str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "faulty as Straggler" in done.stdout and "4/4 scenarios passed" in done.stdout
