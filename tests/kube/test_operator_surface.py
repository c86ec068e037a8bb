"""The operator surface: the read-only HTTP API, the metrics, and `lockstep status / explain / release`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from controller import cli
from controller.kube import ANNOTATION_RELEASED_REASON, TAINT_KEY
from controller.loop import ControllerLoop
from controller.server import build_app

from .conftest import Cluster


async def serve(loop: ControllerLoop) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(build_app(loop))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.fixture
async def served(cluster: Cluster) -> AsyncIterator[tuple[Cluster, ControllerLoop, str]]:
    await cluster.add_nodes(4)
    await cluster.agents.kill("node-3")
    cluster.agents.break_gpu("node-1")
    loop = cluster.loop(max_cordoned_ratio=1.0)
    runner, url = await serve(loop)
    yield cluster, loop, url
    await runner.cleanup()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def lockstep(capsys: Any, *argv: str) -> tuple[int, str]:
    code = await asyncio.to_thread(cli.main, list(argv))
    return code, capsys.readouterr().out


async def test_not_ready_until_a_cycle_completed_then_ready(served: tuple[Cluster, ControllerLoop, str]) -> None:
    _, loop, url = served
    assert (await asyncio.to_thread(get, url + "/healthz"))[0] == 200
    assert (await asyncio.to_thread(get, url + "/readyz"))[0] == 503
    await loop.cycle()
    assert (await asyncio.to_thread(get, url + "/readyz"))[0] == 200


async def test_nodes_api_shows_verdicts_kubernetes_state_and_unknown_agents(
    served: tuple[Cluster, ControllerLoop, str]
) -> None:
    _, loop, url = served
    await loop.cycle()
    await loop.cycle()
    status, body = await asyncio.to_thread(get, url + "/api/v1/nodes")
    nodes = {n["node"]: n for n in json.loads(body)["nodes"]}
    assert status == 200
    assert nodes["node-1"]["verdict"] == "faulty" and nodes["node-1"]["held_by_lockstep"] is True
    assert nodes["node-1"]["findings"][0]["evidence"]["xid"] == 79
    assert nodes["node-3"]["verdict"] == "unknown" and nodes["node-3"]["agent_error"]
    assert nodes["node-0"]["verdict"] == "healthy" and nodes["node-0"]["evidence_age_seconds"] is not None
    status, body = await asyncio.to_thread(get, url + "/api/v1/jobs")
    assert status == 200 and json.loads(body)["jobs"] == []


async def test_metrics_pass_promtool_and_carry_verdicts_cordons_and_timings(
    served: tuple[Cluster, ControllerLoop, str], tmp_path: Any
) -> None:
    _, loop, url = served
    await loop.cycle()
    status, body = await asyncio.to_thread(get, url + "/metrics")
    text = body.decode()
    assert status == 200
    assert 'lockstep_node_verdict{node="node-1",verdict="faulty"} 1.0' in text
    assert 'lockstep_node_verdict{node="node-3",verdict="unknown"} 1.0' in text
    assert 'lockstep_controller_cordons_total{reason="CriticalXid"} 1.0' in text
    assert 'lockstep_controller_cycle_duration_seconds{phase="fetch"}' in text
    assert "lockstep_controller_agents_reachable 3.0" in text
    assert "lockstep_controller_breaker_open 0.0" in text
    assert "NaN" not in text
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stderr.decode() + checked.stdout.decode()


async def test_cordoned_gauge_names_each_node_held_and_drops_it_once_a_person_releases_it(
    served: tuple[Cluster, ControllerLoop, str], capsys: Any
) -> None:
    cluster, loop, url = served
    await loop.cycle()
    text = (await asyncio.to_thread(get, url + "/metrics"))[1].decode()
    assert 'lockstep_node_cordoned{node="node-1",reason="CriticalXid"} 1.0' in text
    assert 'lockstep_node_cordoned{node="node-0"' not in text
    assert (await lockstep(capsys, "release", "node-1", "--kubeconfig", cluster.kubeconfig))[0] == 0
    await loop.cycle()
    text = (await asyncio.to_thread(get, url + "/metrics"))[1].decode()
    assert "# TYPE lockstep_node_cordoned gauge" in text and 'lockstep_node_cordoned{' not in text


async def test_status_prints_a_table_of_nodes_and_explain_the_evidence_chain(
    served: tuple[Cluster, ControllerLoop, str], capsys: Any
) -> None:
    _, loop, url = served
    await loop.cycle()
    code, out = await lockstep(capsys, "status", "--controller", url)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("node-1 "))
    assert "FAULTY" in row and "CriticalXid" in row and "cordoned+tainted by Lockstep" in row
    assert "unknown" in next(line for line in out.splitlines() if line.startswith("node-3 "))

    code, out = await lockstep(capsys, "explain", "node-1", "--controller", url)
    assert code == 0
    assert "node node-1: FAULTY" in out
    assert "hard evidence (acts at once)" in out
    assert "What was seen: node-1 GPU-0: XID 79" in out
    assert "Signal: xid" in out
    assert "xid: 79" in out and "why: XID 79: GPU has fallen off the bus" in out

    code, out = await lockstep(capsys, "explain", "node-3", "--controller", url)
    assert "never a fault" in out

    assert (await lockstep(capsys, "explain", "nope", "--controller", url))[0] == 1
    assert (await lockstep(capsys, "status", "--controller", "http://127.0.0.1:9"))[0] == 1


async def test_release_goes_through_the_kubernetes_api_and_is_remembered(
    served: tuple[Cluster, ControllerLoop, str], capsys: Any
) -> None:
    cluster, loop, _ = served
    await loop.cycle()
    code, out = await lockstep(capsys, "release", "node-1", "--kubeconfig", cluster.kubeconfig)
    assert code == 0 and "released" in out
    node = cluster.emulator.node("node-1")
    assert not node["spec"].get("unschedulable")
    assert not [t for t in node["spec"].get("taints") or [] if t["key"] == TAINT_KEY]
    assert node["metadata"]["annotations"][ANNOTATION_RELEASED_REASON] == "CriticalXid"
    await loop.cycle()
    assert not cluster.emulator.node("node-1")["spec"].get("unschedulable"), "not re-cordoned for the same finding"

    code, out = await lockstep(capsys, "release", "node-0", "--kubeconfig", cluster.kubeconfig)
    assert code == 0 and "nothing changed" in out


async def test_release_breaker_closes_the_breaker_in_the_cluster(cluster: Cluster, capsys: Any) -> None:
    await cluster.add_nodes(6)
    cluster.agents.break_gpu(*(f"node-{index}" for index in range(6)))
    loop = cluster.loop(breaker_nodes=3)
    await loop.cycle()
    assert loop.snapshot.breaker.open
    code, out = await lockstep(capsys, "release", "--breaker", "--kubeconfig", cluster.kubeconfig)
    assert code == 0 and "reset" in out
    data = cluster.emulator.objects("configmaps", namespace="lockstep")[0]["data"]
    assert data["state"] == "closed" and "kubeconfig user emulator" in data["resetBy"]
    await loop.cycle()
    assert not loop.snapshot.breaker.open
    assert (await lockstep(capsys, "release"))[0] == 2


def test_explain_names_the_signal_the_peers_and_the_windows_of_a_statistical_finding() -> None:
    from controller.operator_cli import explain

    node = {
        "node": "gpu-3", "verdict": "faulty", "confidence": 0.91, "reason": "Straggler", "since": 1_700_000_000,
        "kubernetes": {"managed": True}, "held_by_lockstep": False, "blocked": "node cap: Lockstep holds 3 of at most 3",
        "agent_url": "http://10.0.0.3:9445", "evidence_age_seconds": 1.5,
        "findings": [{
            "detector": "straggler", "reason": "Straggler", "severity": "statistical", "confidence": 0.91,
            "job": "llama", "summary": "rank 3 arrives 41 ms late at every all-reduce and waits 2 ms; peers wait 40 ms",
            "nodes": ["gpu-3", "gpu-0", "gpu-1"], "observed_at": 1_700_000_100,
            "evidence": {"signal": "collective lateness and wait", "peers": ["gpu-0", "gpu-1"],
                         "windows": 5, "window_seconds": 10.0, "lateness_seconds": 0.041234},
        }],
    }
    text = explain(node)
    assert "node gpu-3: FAULTY (confidence 0.91)" in text
    assert "Not cordoned although faulty: node cap" in text
    assert "1. Straggler in job llama: statistical evidence (acts only when it persists)" in text
    assert "Signal: collective lateness and wait" in text
    assert "Peers compared: gpu-0, gpu-1" in text
    assert "windows: 5" in text and "lateness_seconds: 0.04123" in text
