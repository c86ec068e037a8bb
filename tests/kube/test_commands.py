"""The shipped commands as processes: the emulator CLI the demo uses, and lockstep-controller's settings handling."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.kube import Kube, KubeError, load_api_client
from controller.settings import load

from .conftest import Cluster, FakeAgents, kube_settings


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

    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    request = urllib.request.Request(server + "/_emulator/faults", method="POST",
                                     data=json.dumps({"verb": "list", "resource": "nodes", "count": 5, "status": 503}).encode())
    assert urllib.request.urlopen(request, timeout=10).status == 201
    with pytest.raises(KubeError, match="HTTP 503"):
        kube.cluster()
    with urllib.request.urlopen(server + "/_emulator/requests", timeout=10) as response:
        recorded = json.loads(response.read())
    assert {"verb": "patch", "group": "", "resource": "nodes", "subresource": "", "namespace": "", "name": "node-1",
            "content_type": "application/merge-patch+json"} in recorded


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


class Controller:
    """`lockstep-controller` as a process; its URL is read from its startup log line."""

    def __init__(self, python: str, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen([python, "-m", "controller", "--listen", "127.0.0.1:0", "--interval", "0.5",
                                         *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            match = re.search(r"listening on ([\d.]+):(\d+)", line)
            if match:
                self.url = f"http://{match.group(1)}:{match.group(2)}"
                break
        else:
            raise AssertionError("controller did not start:\n" + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)

    def nodes(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/api/v1/nodes", timeout=10) as response:
            return json.loads(response.read())

    def wait_for(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            document = self.nodes()
            if predicate(document):
                return document
            time.sleep(0.2)
        raise AssertionError(f"timed out; last: {document}\n" + "".join(self.log))

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


async def test_controller_with_agent_urls_shows_verdicts_and_writes_nothing(
    python: str, subprocess_env: dict[str, str], agents: FakeAgents
) -> None:
    healthy, broken = await agents.start("gpu-a"), await agents.start("gpu-b")
    agents.break_gpu("gpu-b")
    controller = await asyncio.to_thread(
        Controller, python, subprocess_env, "--agent-url", healthy, "--agent-url", broken,
        "--agent-url", "http://127.0.0.1:9")
    try:
        document = await asyncio.to_thread(controller.wait_for, lambda d: len(d["nodes"]) == 2)
        verdicts = {n["node"]: n["verdict"] for n in document["nodes"]}
        assert verdicts == {"gpu-a": "healthy", "gpu-b": "faulty"}
        assert [a for a in document["agents"] if a["url"] == "http://127.0.0.1:9"][0]["error"]
    finally:
        assert await asyncio.to_thread(controller.stop) == 0


async def test_controller_process_cordons_on_the_emulator_and_gives_its_lease_back_on_sigterm(
    python: str, subprocess_env: dict[str, str], cluster: Cluster
) -> None:
    await cluster.add_nodes(3)
    cluster.agents.break_gpu("node-1")
    env = {**subprocess_env, "LOCKSTEP_LEADER__IDENTITY": "replica-1", "LOCKSTEP_SAFETY__MAX_CORDONED_RATIO": "1"}
    controller = await asyncio.to_thread(Controller, python, env, "--kubeconfig", cluster.kubeconfig)
    try:
        await asyncio.to_thread(
            controller.wait_for, lambda d: any(n["held_by_lockstep"] for n in d["nodes"]), 60)
        assert cluster.emulator.node("node-1")["spec"]["unschedulable"] is True
        lease = cluster.emulator.objects("leases", group="coordination.k8s.io", namespace="lockstep")[0]
        assert lease["spec"]["holderIdentity"] == "replica-1"
    finally:
        assert await asyncio.to_thread(controller.stop) == 0
    lease = cluster.emulator.objects("leases", group="coordination.k8s.io", namespace="lockstep")[0]
    assert not lease["spec"].get("holderIdentity"), "a stopping leader gives the lease back"
    assert [n["metadata"]["name"] for n in cluster.emulator.objects("nodes") if n["spec"].get("unschedulable")] == [
        "node-1"]
