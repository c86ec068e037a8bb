"""The shipped commands as processes: the emulator CLI the demo uses, and lockstep-controller's settings handling."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from controller.kube import Kube, load_api_client
from controller.settings import load

from .conftest import kube_settings


@pytest.fixture
def emulator_process(python: str, subprocess_env: dict[str, str], tmp_path: Path) -> Any:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [python, "-m", "controller.kube_emulator", "--listen", "127.0.0.1:0", "--kubeconfig-out", str(kubeconfig),
         "--nodes", "3"],
        env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    yield kubeconfig, line
    process.terminate()
    process.wait(10)


def test_the_emulator_command_writes_a_kubeconfig_the_official_client_uses(emulator_process: Any) -> None:
    kubeconfig, banner = emulator_process
    assert "emulator listening on http://127.0.0.1:" in banner
    kube = Kube(load_api_client(str(kubeconfig)), kube_settings())
    assert sorted(kube.cluster().nodes) == ["node-0", "node-1", "node-2"]
    assert kube.cordon("node-1", "Hang", "{}", time.time(), lambda: True)
    assert kube.cluster().nodes["node-1"].owned_reason == "Hang"


def test_invalid_settings_exit_2_with_a_clear_message(python: str, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("safety:\n  max_cordoned_ratio: 7\n")
    result = subprocess.run([python, "-m", "controller", "--config", str(config)], env=subprocess_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "max_cordoned_ratio" in result.stderr
    result = subprocess.run([python, "-m", "controller", "--config", str(tmp_path / "missing.yaml")],
                            env=subprocess_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot read config file" in result.stderr
    result = subprocess.run([python, "-m", "controller", "--listen", "nonsense"], env=subprocess_env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_flags_beat_environment_which_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("interval_seconds: 3\nsafety:\n  max_cordoned_nodes: 7\n  breaker_nodes: 9\n")
    monkeypatch.setenv("LOCKSTEP_SAFETY__BREAKER_NODES", "11")
    monkeypatch.setenv("LOCKSTEP_INTERVAL_SECONDS", "4")
    settings = load(str(config), interval_seconds=2.0, dry_run=None)
    assert (settings.interval_seconds, settings.safety.max_cordoned_nodes, settings.safety.breaker_nodes) == (2.0, 7, 11)
    assert settings.dry_run is False
