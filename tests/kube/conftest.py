"""Fixtures for the controller's Kubernetes side: the API emulator, a Kube client on it, real HTTP agents serving
evidence (with hard signals a test injects) and controller loops running the real detection engine.

`ScriptedEngine` has the engine's step() signature and returns verdicts a test scripts; it is used only where a
test needs a verdict the evidence cannot cheaply produce (a node healthy for an hour, a different finding on the
same node, a fabric-only finding)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from agent.evidence import Evidence, HardSignal, RankEvidence
from controller.detect.engine import DetectionEngine
from controller.fetch import EvidenceFetcher
from controller.kube import Kube, load_api_client
from controller.kube_emulator import Emulator
from controller.leader import LeaderElector
from controller.loop import ControllerLoop
from controller.model import Finding, NodeVerdict, Severity, Verdict
from controller.settings import ControllerSettings, KubeSettings

AGENT_LABELS = {"app.kubernetes.io/name": "lockstep-agent"}


@pytest.fixture
def emulator(tmp_path: Any) -> Iterator[Emulator]:
    emulator = Emulator()
    emulator.start_in_thread()
    emulator.write_kubeconfig(str(tmp_path / "kubeconfig"))
    yield emulator
    emulator.stop_thread()


def kube_settings(**overrides: Any) -> KubeSettings:
    """Short timeouts and backoff so failure paths run fast under test."""
    return KubeSettings(**{"api_timeout_seconds": 1.0, "api_backoff_seconds": 0.01, "api_attempts": 3, **overrides})


@pytest.fixture
def kube(emulator: Emulator, tmp_path: Any) -> Kube:
    return Kube(load_api_client(str(tmp_path / "kubeconfig")), kube_settings())


@dataclass
class ScriptedResult:
    verdicts: dict[str, NodeVerdict]
    findings: tuple[Finding, ...] = ()
    jobs: tuple[Any, ...] = ()


@dataclass
class ScriptedEngine:
    """Stand-in for DetectionEngine with the same step() signature: verdicts come from the test's script; a node
    without evidence is unknown (the engine's contract), any other unscripted node healthy."""

    script: dict[str, NodeVerdict] = field(default_factory=dict)
    calls: list[dict[str, Evidence | None]] = field(default_factory=list)

    def step(
        self, evidence: Mapping[str, Evidence | None], now: float, topology: Mapping[str, str] | None = None
    ) -> ScriptedResult:
        self.calls.append(dict(evidence))
        verdicts = {}
        for node, document in evidence.items():
            if document is None:
                verdicts[node] = NodeVerdict(node, Verdict.UNKNOWN, reason="NoEvidence", since=now)
            else:
                verdicts[node] = self.script.get(node, NodeVerdict(node, Verdict.HEALTHY, 1.0, since=now - 3600))
        return ScriptedResult(verdicts)


def faulty(node: str, reason: str = "CriticalXid", severity: Severity = Severity.HARD, since: float | None = None,
           confidence: float = 0.95) -> NodeVerdict:
    finding = Finding(
        detector="hard" if severity is Severity.HARD else "straggler",
        reason=reason,
        node=node,
        severity=severity,
        summary=f"{reason} on {node}: XID 79 (GPU fell off the bus) on GPU-0",
        confidence=confidence,
        job="llama",
        nodes=(node, "node-0", "node-2"),
        evidence={"xid": 79, "device": "GPU-0", "window_seconds": 30.0},
        observed_at=time.time(),
    )
    return NodeVerdict(node, Verdict.FAULTY, confidence, reason, (finding,), since or time.time())


def evidence_for(
    node: str, hard_signals: tuple[HardSignal, ...] = (), ranks: tuple[RankEvidence, ...] = ()
) -> Evidence:
    return Evidence(node=node, collected_at=time.time(), agent_version="test", hard_signals=list(hard_signals),
                    ranks=list(ranks))


def gpu_fell_off_the_bus() -> HardSignal:
    now = time.time()
    return HardSignal(kind="xid", device="GPU-0", xid=79, detail="XID 79", first_seen=now - 1, last_seen=now)


class FakeAgents:
    """Real HTTP agents (aiohttp) serving fresh /api/v1/evidence per node, with the hard signals and ranks a test sets;
    a node's agent can be killed (connection refused from then on)."""

    def __init__(self) -> None:
        self.runners: dict[str, web.AppRunner] = {}
        self.urls: dict[str, str] = {}
        self.signals: dict[str, tuple[HardSignal, ...]] = {}
        self.ranks: dict[str, tuple[RankEvidence, ...]] = {}  # node -> ranks its agent reports

    def break_gpu(self, *nodes: str) -> None:
        for node in nodes:
            self.signals[node] = (gpu_fell_off_the_bus(),)

    async def start(self, node: str) -> str:
        async def evidence(request: web.Request) -> web.Response:
            document = evidence_for(node, self.signals.get(node, ()), self.ranks.get(node, ()))
            return web.Response(text=document.model_dump_json(), content_type="application/json")

        app = web.Application()
        app.router.add_get("/api/v1/evidence", evidence)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.runners[node] = runner
        self.urls[node] = f"http://127.0.0.1:{port}"
        return self.urls[node]

    async def kill(self, node: str) -> None:
        """The node's agent dies: its port refuses connections from now on."""
        await self.runners.pop(node).cleanup()

    async def stop(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()


@pytest.fixture
async def agents() -> AsyncIterator[FakeAgents]:
    fake = FakeAgents()
    yield fake
    await fake.stop()


@dataclass
class Cluster:
    """An emulated cluster with nodes, agent pods pointing at fake agents, and controller loops on it."""

    emulator: Emulator
    agents: FakeAgents
    kubeconfig: str
    engine: ScriptedEngine
    loops: list[ControllerLoop] = field(default_factory=list)

    async def add_nodes(self, count: int, **labels: str) -> list[str]:
        names = []
        for index in range(len(self.emulator.objects("nodes")), len(self.emulator.objects("nodes")) + count):
            name = f"node-{index}"
            self.emulator.add_node(name, dict(labels))
            url = await self.agents.start(name)
            port = int(url.rsplit(":", 1)[1])
            self.emulator.add_pod("lockstep", f"agent-{name}", name, "127.0.0.1", AGENT_LABELS, port=port)
            names.append(name)
        return names

    def loop(
        self,
        dry_run: bool = False,
        leader: bool = False,
        identity: str = "",
        node_selector: str = "",
        scripted: bool = False,
        **safety: Any,
    ) -> ControllerLoop:
        """A controller replica on the cluster: the real detection engine, or the cluster's ScriptedEngine."""
        settings = ControllerSettings(
            dry_run=dry_run,
            interval_seconds=0.2,
            kube=kube_settings(kubeconfig=self.kubeconfig, node_selector=node_selector).model_dump(),
            leader={"identity": identity, "lease_duration_seconds": 3, "renew_deadline_seconds": 2,
                    "retry_period_seconds": 0.5},
            fetch={"timeout_seconds": 1.0, "backoff_initial_seconds": 0.0},
            safety={"auto_release_after_seconds": None, **safety},
        )
        kube = Kube(load_api_client(self.kubeconfig), settings.kube)
        elector = LeaderElector(kube, settings.leader) if leader else None
        engine: Any = self.engine if scripted else DetectionEngine()
        loop = ControllerLoop(settings, engine, EvidenceFetcher(settings.fetch), kube, elector)
        self.loops.append(loop)
        return loop


@pytest.fixture
async def cluster(emulator: Emulator, agents: FakeAgents, tmp_path: Any) -> AsyncIterator[Cluster]:
    cluster = Cluster(emulator, agents, str(tmp_path / "kubeconfig"), ScriptedEngine())
    yield cluster
    for loop in cluster.loops:
        await loop.fetcher.close()
