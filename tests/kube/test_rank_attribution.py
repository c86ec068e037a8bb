"""Ranks are mapped to nodes through the agents' evidence AND the training pods: a rank an agent reports for a pod
that Kubernetes runs on another node is left out of detection, counted and logged once, so it cannot get the
reporting node cordoned."""

from __future__ import annotations

import logging
import time
from typing import Any

from agent.evidence import Evidence, RankEvidence
from controller.attribution import CLAIMED_POD_NAME_BYTES, MisattributedRank, check_ranks
from controller.kube import TAINT_KEY
from controller.metrics import registry
from controller.operator_cli import explain
from controller.server import node_reports

from .conftest import Cluster

JOB = "ml/llama"


def rank(number: int, pod: str, namespace: str = "ml", behind: bool = False) -> RankEvidence:
    """A rank of a 2-rank job: waiting 60 s in collective 10, or (`behind`) stopped at 5 without a pending one."""
    now = time.time()
    return RankEvidence(
        job=JOB, rank=number, world_size=2, pod=pod, namespace=namespace, pid=100 + number, window_seconds=30.0,
        last_seq=5 if behind else 9, pending_seq=None if behind else 10, pending_op=None if behind else "all_reduce",
        pending_since=None if behind else now - 60, last_progress_at=now - 60,
    )  # fmt: skip


def document(node: str, *ranks: RankEvidence) -> Evidence:
    return Evidence(node=node, collected_at=time.time(), ranks=list(ranks))


def test_a_rank_whose_pod_runs_on_the_reporting_node_is_kept_and_one_elsewhere_is_dropped() -> None:
    pods = {("ml", "train-0"): "node-0", ("ml", "train-1"): "node-1"}
    evidence = {
        "node-0": document("node-0", rank(0, "train-0")),
        "node-2": document("node-2", rank(0, "train-0"), rank(1, "train-1"), rank(1, "gone")),
        "node-3": None,
    }
    checked, dropped = check_ranks(evidence, pods)
    assert checked["node-0"] is evidence["node-0"]  # nothing to drop: the same document
    assert checked["node-2"] is not None and checked["node-2"].ranks == []
    assert checked["node-3"] is None
    assert evidence["node-2"] is not None and len(evidence["node-2"].ranks) == 3  # the input is left alone
    assert dropped == [
        MisattributedRank("node-2", JOB, 0, "ml", "train-0", "node-0"),
        MisattributedRank("node-2", JOB, 1, "ml", "train-1", "node-1"),
        MisattributedRank("node-2", JOB, 1, "ml", "gone", None),
    ]
    assert "runs on node-1" in dropped[1].describe() and "is not running" in dropped[2].describe()


def test_ranks_without_a_namespace_are_not_checked_their_pod_may_be_the_hostname() -> None:
    checked, dropped = check_ranks({"gpu-7": document("gpu-7", rank(0, "gpu-7", namespace=""))}, {})
    assert dropped == [] and checked["gpu-7"] is not None and len(checked["gpu-7"].ranks) == 1


def test_a_pod_name_the_probe_cut_to_its_wire_size_matches_the_pod_on_the_node_it_begins() -> None:
    name = "llama-70b-pretrain-" + "x" * 80 + "-worker-3"
    cut = name[:CLAIMED_POD_NAME_BYTES]
    pods = {("ml", name): "node-1", ("ml", cut + "-other"): "node-0"}
    checked, dropped = check_ranks({"node-1": document("node-1", rank(1, cut))}, pods)
    assert dropped == []
    _, dropped = check_ranks({"node-2": document("node-2", rank(1, cut))}, pods)
    assert [d.node for d in dropped] == ["node-2"]


async def misattributed_hang(cluster: Cluster, pod_of_rank_1_on: str, caplog: Any) -> dict[str, Any]:
    """Rank 0 (node-0) has waited 60 s in a collective; rank 1, stopped behind it, is reported by node-2's agent
    (a shared socket directory, or a forgery) while Kubernetes runs its pod on `pod_of_rank_1_on`. Returns the
    nodes after enough cycles for the real engine to act (its restart grace passes on the loop's clock)."""
    nodes = await cluster.add_nodes(3)
    cluster.emulator.add_pod("ml", "train-0", "node-0", "10.0.0.10")
    cluster.emulator.add_pod("ml", "train-1", pod_of_rank_1_on, "10.0.0.11")
    cluster.agents.ranks = {"node-0": (rank(0, "train-0"),), "node-2": (rank(1, "train-1", behind=True),)}
    loop = cluster.loop(max_cordoned_ratio=1.0)
    clock = [time.time()]
    loop.clock = lambda: clock[0]
    with caplog.at_level(logging.WARNING, logger="controller.loop"):
        for _ in range(4):
            await loop.cycle()
            clock[0] += 20.0  # past the engine's restart grace after two cycles
    return {"loop": loop, "nodes": {n: cluster.emulator.node(n) for n in nodes}}


def tainted(node: dict[str, Any]) -> bool:
    return any(t["key"] == TAINT_KEY for t in node["spec"].get("taints") or [])


async def test_a_rank_attributed_to_an_innocent_node_never_gets_it_cordoned(cluster: Cluster, caplog: Any) -> None:
    seen = await misattributed_hang(cluster, "node-1", caplog)
    loop = seen["loop"]
    assert not any(tainted(node) for node in seen["nodes"].values()), "no node cordoned"
    assert all(v.verdict.value != "faulty" for v in loop.snapshot.verdicts.values())
    assert [(r.node, r.rank, r.pod_node) for r in loop.snapshot.misattributed] == [("node-2", 1, "node-1")]
    assert registry(loop).get_sample_value("lockstep_controller_misattributed_ranks", {"node": "node-2"}) == 1.0
    reports = {report["node"]: report for report in node_reports(loop)}
    assert reports["node-2"]["misattributed_ranks"] == [loop.snapshot.misattributed[0].describe()]
    assert "Not trusted, left out of detection: the agent on node-2" in explain(reports["node-2"])
    warnings = [r.getMessage() for r in caplog.records if "not trusting a rank" in r.getMessage()]
    assert len(warnings) == 1, "logged once, not every cycle"
    assert "node-2 reports rank 1 of job ml/llama for pod ml/train-1, which runs on node-1" in warnings[0]


async def test_the_same_rank_reported_from_its_own_pods_node_is_blamed_as_before(
    cluster: Cluster, caplog: Any
) -> None:
    seen = await misattributed_hang(cluster, "node-2", caplog)
    assert tainted(seen["nodes"]["node-2"]), "the control: the stopped rank's node is cordoned for the hang"
    assert not tainted(seen["nodes"]["node-0"]) and not tainted(seen["nodes"]["node-1"])
    assert seen["loop"].snapshot.misattributed == []


async def test_with_rank_checking_off_only_the_agent_pods_are_listed(cluster: Cluster) -> None:
    await cluster.add_nodes(1)
    loop = cluster.loop()
    loop.settings.kube.check_rank_pods = False  # the Kube client shares this settings object
    await loop.cycle()
    assert loop.snapshot.cluster.pods is None and loop.snapshot.misattributed == []
    pod_lists = [r for r in cluster.emulator.store.requests if r.verb == "list" and r.resource == "pods"]
    assert [r.namespace for r in pod_lists] == ["lockstep"]  # the agents' namespace, no cluster-wide list
