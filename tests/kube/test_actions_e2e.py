"""End to end against the Kubernetes API emulator: agents' evidence -> the real detection engine -> policy ->
writes through the official client. A GPU that fell off the bus (XID 79) is the fault; the node says CriticalXid."""

from __future__ import annotations

import json
from typing import Any

from controller.kube import ANNOTATION_EVIDENCE, ANNOTATION_REASON, ANNOTATION_RELEASED_REASON, TAINT_KEY
from controller.kube_emulator import Fault
from controller.model import NodeVerdict, Severity, Verdict

from .conftest import Cluster, faulty


def taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return node["spec"].get("taints") or []


def ours(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in taints(node) if t["key"] == TAINT_KEY]


def condition(node: dict[str, Any]) -> str:
    return next((c["status"] for c in node["status"]["conditions"] if c["type"] == "LockstepHealthy"), "")


def events(cluster: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.emulator.objects("events") if e["reason"] == reason]


def node_patches(cluster: Cluster, name: str) -> int:
    return sum(1 for r in cluster.emulator.writes() if r.resource == "nodes" and r.name == name and not r.subresource)


async def test_faulty_verdict_cordons_the_right_node_exactly_once(cluster: Cluster) -> None:
    await cluster.add_nodes(4)
    cluster.agents.break_gpu("node-2")
    loop = cluster.loop()
    for _ in range(3):
        await loop.cycle()

    node = cluster.emulator.node("node-2")
    assert node["spec"]["unschedulable"] is True
    assert ours(node) == [{"key": TAINT_KEY, "value": "CriticalXid", "effect": "NoSchedule",
                           "timeAdded": ours(node)[0]["timeAdded"]}]
    annotations = node["metadata"]["annotations"]
    assert annotations[ANNOTATION_REASON] == "CriticalXid"
    assert json.loads(annotations[ANNOTATION_EVIDENCE])["findings"][0]["evidence"]["xid"] == 79
    assert "lockstep.dev/since" in annotations
    assert condition(node) == "False"
    assert node_patches(cluster, "node-2") == 1
    assert len(events(cluster, "LockstepCordoned")) == 1
    assert events(cluster, "LockstepCordoned")[0]["involvedObject"]["name"] == "node-2"
    for other in ("node-0", "node-1", "node-3"):
        assert not cluster.emulator.node(other)["spec"].get("unschedulable")
        assert node_patches(cluster, other) == 0
    assert loop.counters.cordons["CriticalXid"] == 1


async def test_cordon_keeps_taints_and_annotations_that_others_own(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    other_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    cluster.emulator.patch_node("node-1", lambda n: {**n, "spec": {"taints": [other_taint]},
                                                     "metadata": {**n["metadata"], "annotations": {"team": "infra"}}})
    cluster.agents.break_gpu("node-1")
    await cluster.loop().cycle()
    node = cluster.emulator.node("node-1")
    assert other_taint in taints(node)
    assert len(ours(node)) == 1
    assert node["metadata"]["annotations"]["team"] == "infra"


async def test_a_concurrent_writer_meets_conflicts_and_keeps_its_taint(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    writer_taint = {"key": "example.com/maintenance", "value": "soon", "effect": "NoSchedule"}

    def concurrent_writer() -> None:  # lands between the controller's read and its write: its rv goes stale
        cluster.emulator.patch_node("node-0", lambda n: {**n, "spec": {**n["spec"], "taints": [
            *(n["spec"].get("taints") or []), writer_taint]}})

    cluster.emulator.inject(Fault(verb="patch", resource="nodes", name="node-0", count=1, before=concurrent_writer))
    cluster.agents.break_gpu("node-0")
    loop = cluster.loop()
    await loop.cycle()
    node = cluster.emulator.node("node-0")
    assert writer_taint in taints(node), "the other writer's taint was clobbered"
    assert len(ours(node)) == 1 and node["spec"]["unschedulable"] is True
    assert loop.kube is not None and loop.kube.stats.conflicts["patch nodes"] >= 1


async def test_unmanaged_and_unselected_nodes_are_never_touched(cluster: Cluster) -> None:
    await cluster.add_nodes(2, pool="gpu")
    await cluster.add_nodes(1, pool="cpu")  # node-2: not selected
    cluster.emulator.patch_node("node-1", lambda n: {**n, "metadata": {**n["metadata"], "labels": {
        **n["metadata"]["labels"], "lockstep.dev/managed": "false"}}})
    cluster.agents.break_gpu("node-0", "node-1", "node-2")
    loop = cluster.loop(node_selector="pool=gpu", max_cordoned_ratio=1.0)
    for _ in range(2):
        await loop.cycle()
    assert node_patches(cluster, "node-0") == 1
    assert node_patches(cluster, "node-1") == 0
    assert node_patches(cluster, "node-2") == 0
    assert not [e for e in cluster.emulator.objects("events") if e["involvedObject"]["name"] in ("node-1", "node-2")]


async def test_dry_run_writes_nothing(cluster: Cluster) -> None:
    await cluster.add_nodes(8)
    cluster.agents.break_gpu("node-0")
    loop = cluster.loop(dry_run=True)
    for _ in range(2):
        await loop.cycle()
    assert loop.snapshot.planned["node-0"].startswith("cordon")
    cluster.agents.break_gpu(*(f"node-{index}" for index in range(8)))
    await loop.cycle()
    assert loop.snapshot.breaker.open  # decided in memory and shown, never written
    assert cluster.emulator.writes() == []


async def test_unreachable_agent_makes_its_node_unknown_and_never_cordons(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    await cluster.agents.kill("node-1")
    loop = cluster.loop()
    for _ in range(3):
        await loop.cycle()
    assert loop.snapshot.verdicts["node-1"].verdict is Verdict.UNKNOWN
    assert node_patches(cluster, "node-1") == 0
    assert loop.fetcher.stats.reachable == 2


async def test_node_cap_and_rate_cap_hold_under_a_storm_of_bad_verdicts(cluster: Cluster) -> None:
    await cluster.add_nodes(20)
    loop = cluster.loop(max_cordoned_nodes=3, max_cordoned_ratio=0.5, max_cordons_per_window=2, breaker_nodes=100)
    for wave in range(4):  # new faulty nodes every cycle
        cluster.agents.break_gpu(*(f"node-{index}" for index in range(wave * 5, wave * 5 + 5)))
        await loop.cycle()
    held = [n for n in cluster.emulator.objects("nodes") if ours(n)]
    assert len(held) == 2, "the rate cap (2 per window) is the tighter limit here"
    assert all("rate cap" in why or "node cap" in why for why in loop.snapshot.blocked.values())
    assert len(loop.snapshot.blocked) == 18


async def test_node_cap_counts_nodes_already_held_after_a_restart(cluster: Cluster) -> None:
    await cluster.add_nodes(10)
    cluster.agents.break_gpu(*(f"node-{index}" for index in range(10)))
    first = cluster.loop(max_cordoned_nodes=2, max_cordoned_ratio=1.0, max_cordons_per_window=100, breaker_nodes=100)
    await first.cycle()
    restarted = cluster.loop(max_cordoned_nodes=2, max_cordoned_ratio=1.0, max_cordons_per_window=100, breaker_nodes=100)
    for _ in range(2):
        await restarted.cycle()
    assert len([n for n in cluster.emulator.objects("nodes") if ours(n)]) == 2


async def test_breaker_opens_in_a_storm_survives_a_restart_and_only_a_person_resets_it(cluster: Cluster) -> None:
    await cluster.add_nodes(10)
    loop = cluster.loop(breaker_nodes=4, max_cordoned_nodes=10, max_cordoned_ratio=1.0, max_cordons_per_window=10,
                        scripted=True)
    for index in range(6):
        cluster.engine.script[f"node-{index}"] = faulty(f"node-{index}")
    await loop.cycle()
    assert [n for n in cluster.emulator.objects("nodes") if ours(n)] == []
    configmap = cluster.emulator.objects("configmaps", namespace="lockstep")[0]
    assert configmap["data"]["state"] == "open"

    restarted = cluster.loop(breaker_nodes=4, max_cordoned_nodes=10, max_cordoned_ratio=1.0, max_cordons_per_window=10,
                             scripted=True)
    cluster.engine.script["node-7"] = faulty("node-7")
    await restarted.cycle()
    assert [n for n in cluster.emulator.objects("nodes") if ours(n)] == []
    assert "circuit breaker" in restarted.snapshot.blocked["node-7"]

    assert restarted.kube is not None
    restarted.kube.reset_breaker("a person", __import__("time").time())
    cluster.engine.script = {"node-8": faulty("node-8")}
    await restarted.cycle()
    assert [n["metadata"]["name"] for n in cluster.emulator.objects("nodes") if ours(n)] == ["node-8"]


async def test_api_500s_and_timeouts_mid_action_leave_no_half_applied_state(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    cluster.agents.break_gpu("node-1")
    loop = cluster.loop()
    cluster.emulator.inject(Fault(verb="patch", resource="nodes", name="node-1", count=5, status=500))
    await loop.cycle()
    node = cluster.emulator.node("node-1")
    assert not node["spec"].get("unschedulable") and not ours(node)
    assert ANNOTATION_REASON not in (node["metadata"].get("annotations") or {})
    assert loop.counters.action_failures["Cordon"] == 1

    # A hung apiserver: the write times out on our side and lands later; the retry must not double-apply.
    cluster.emulator.inject(Fault(verb="patch", resource="nodes", name="node-1", count=1, hang_seconds=1.5))
    for _ in range(3):
        await loop.cycle()
    node = cluster.emulator.node("node-1")
    assert node["spec"]["unschedulable"] is True and len(ours(node)) == 1
    assert node["metadata"]["annotations"][ANNOTATION_REASON] == "CriticalXid"
    assert condition(node) == "False"
    assert loop.counters.cordons["CriticalXid"] == 1, "the timed-out write that landed counts as our cordon, once"
    assert len(events(cluster, "LockstepCordoned")) == 1
    assert loop.kube is not None and loop.kube.stats.errors[("patch nodes", "500")] >= 1
    assert loop.kube.stats.retries["patch nodes"] >= 1


async def test_a_node_a_person_uncordoned_is_not_cordoned_again_for_the_same_reason(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    cluster.engine.script["node-2"] = faulty("node-2")
    loop = cluster.loop(scripted=True)
    await loop.cycle()
    cluster.emulator.patch_node("node-2", lambda n: {**n, "spec": {**n["spec"], "unschedulable": False}})  # kubectl uncordon
    for _ in range(3):
        await loop.cycle()
    node = cluster.emulator.node("node-2")
    assert not node["spec"].get("unschedulable")
    assert not ours(node), "Lockstep takes its taint off a node a person released"
    assert node["metadata"]["annotations"][ANNOTATION_RELEASED_REASON] == "CriticalXid"
    assert "released it" in loop.snapshot.blocked["node-2"]
    assert condition(node) == "True"
    assert len(events(cluster, "LockstepReleased")) == 1

    cluster.engine.script["node-2"] = faulty("node-2", reason="Straggler", severity=Severity.STATISTICAL)
    await loop.cycle()
    assert cluster.emulator.node("node-2")["spec"]["unschedulable"] is True, "a different finding may cordon it"


async def test_release_after_healthy_probation_undoes_only_what_lockstep_did(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    cluster.emulator.patch_node("node-0", lambda n: {**n, "spec": {"unschedulable": True}})  # a person's cordon
    cluster.engine.script["node-0"] = faulty("node-0")
    cluster.engine.script["node-1"] = faulty("node-1")
    loop = cluster.loop(auto_release_after_seconds=60, max_cordoned_ratio=1.0, scripted=True)
    await loop.cycle()
    assert all(ours(cluster.emulator.node(n)) for n in ("node-0", "node-1"))
    now = __import__("time").time()
    for name in ("node-0", "node-1"):
        cluster.engine.script[name] = NodeVerdict(name, Verdict.HEALTHY, 1.0, since=now - 120)
    await loop.cycle()
    person_cordoned, lockstep_cordoned = cluster.emulator.node("node-0"), cluster.emulator.node("node-1")
    assert not ours(person_cordoned) and person_cordoned["spec"]["unschedulable"] is True
    assert not ours(lockstep_cordoned) and not lockstep_cordoned["spec"].get("unschedulable")
    assert ANNOTATION_REASON not in (lockstep_cordoned["metadata"].get("annotations") or {})
    assert loop.counters.releases["probation"] == 2


async def test_fabric_findings_alert_and_never_cordon(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    cluster.engine.script["node-1"] = faulty("node-1", reason="FabricDegraded", severity=Severity.FABRIC)
    loop = cluster.loop(scripted=True)
    for _ in range(2):
        await loop.cycle()
    assert node_patches(cluster, "node-1") == 0
    suspect_events = events(cluster, "LockstepSuspect")
    assert len(suspect_events) == 1 and "fabric" in suspect_events[0]["message"]


async def test_a_failed_condition_or_event_write_after_the_cordon_is_made_good_later(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    cluster.agents.break_gpu("node-1")
    loop = cluster.loop()
    cluster.emulator.inject(Fault(verb="create", resource="events", count=3, status=503))
    cluster.emulator.inject(Fault(verb="patch", resource="nodes", subresource="status", count=3, status=503))
    await loop.cycle()
    node = cluster.emulator.node("node-1")
    assert node["spec"]["unschedulable"] is True and len(ours(node)) == 1, "the cordon itself landed whole"
    assert condition(node) == ""
    assert loop.counters.action_failures["Event"] == 1
    await loop.cycle()
    assert condition(cluster.emulator.node("node-1")) == "False"
    assert node_patches(cluster, "node-1") == 1, "the cordon is not repeated"


async def test_while_the_api_is_down_verdicts_stay_current_and_nothing_is_done(cluster: Cluster) -> None:
    await cluster.add_nodes(3)
    loop = cluster.loop()
    await loop.cycle()
    cluster.emulator.inject(Fault(verb="list", count=1000, status=503))
    cluster.agents.break_gpu("node-2")
    await loop.cycle()
    assert loop.snapshot.verdicts["node-2"].verdict is Verdict.FAULTY
    assert "cannot read the cluster" in loop.snapshot.error
    assert node_patches(cluster, "node-2") == 0
    cluster.emulator.store.faults.clear()
    await loop.cycle()
    assert cluster.emulator.node("node-2")["spec"]["unschedulable"] is True and not loop.snapshot.error
