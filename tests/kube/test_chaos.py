"""Chaos against the emulator: faults, concurrent writers and changing verdicts over many cycles; the safety
invariants hold after every cycle (seeded, so a failure replays)."""

from __future__ import annotations

import random
from typing import Any

from controller.kube import ANNOTATION_CORDONED, ANNOTATION_REASON, LABEL_MANAGED, TAINT_KEY
from controller.kube_emulator import Fault

from .conftest import Cluster

CAP = 3


def check_invariants(cluster: Cluster, writer_taints: dict[str, set[str]]) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.emulator.objects("nodes")}
    held = []
    for name, node in nodes.items():
        annotations = node["metadata"].get("annotations") or {}
        taint_keys = {t["key"] for t in node["spec"].get("taints") or []}
        ours = TAINT_KEY in taint_keys
        assert ours == (ANNOTATION_REASON in annotations), f"{name}: taint and annotation disagree (half-applied)"
        if ours:
            held.append(name)
            if annotations.get(ANNOTATION_CORDONED) == "true":
                assert node["spec"].get("unschedulable") is True, f"{name}: tainted but not cordoned"
        assert writer_taints.get(name, set()) <= taint_keys, f"{name}: another writer's taint was lost"
        if (node["metadata"].get("labels") or {}).get(LABEL_MANAGED) == "false":
            assert not ours, f"{name}: unmanaged node touched"
    assert len(held) <= CAP, f"node cap broken: {held}"


async def test_safety_invariants_hold_under_faults_conflicts_and_churn(cluster: Cluster) -> None:
    rng = random.Random(20261121)
    names = await cluster.add_nodes(12)
    cluster.emulator.patch_node("node-11", lambda n: {**n, "metadata": {**n["metadata"], "labels": {
        **n["metadata"]["labels"], LABEL_MANAGED: "false"}}})
    loop = cluster.loop(max_cordoned_nodes=CAP, max_cordoned_ratio=1.0, max_cordons_per_window=100, breaker_nodes=100,
                        auto_release_after_seconds=0)  # released as soon as healthy: churn in both directions
    writer_taints: dict[str, set[str]] = {}

    def writer(node: str, key: str) -> Any:
        def write() -> None:
            cluster.emulator.patch_node(node, lambda n: {**n, "spec": {**n["spec"], "taints": [
                *(n["spec"].get("taints") or []), {"key": key, "effect": "NoSchedule"}]}})
            writer_taints.setdefault(node, set()).add(key)
        return write

    for step in range(30):
        broken = set(rng.sample(names, rng.randint(0, 6)))
        cluster.agents.signals.clear()
        cluster.agents.break_gpu(*broken)
        for _ in range(rng.randint(0, 3)):
            node = rng.choice(names)
            cluster.emulator.inject(Fault(verb="patch", resource="nodes", name=node, count=1,
                                          before=writer(node, f"chaos.example.com/w{step}")))
        if rng.random() < 0.3:
            cluster.emulator.inject(Fault(verb=rng.choice(["patch", "get", "create", "list"]), count=rng.randint(1, 4),
                                          status=rng.choice([500, 503, 429])))
        await loop.cycle()
        check_invariants(cluster, writer_taints)
    assert sum(loop.counters.cordons.values()) >= 3, "the chaos must have made Lockstep act"
    assert loop.kube is not None and loop.kube.stats.conflicts["patch nodes"] >= 1, "writers must have raced us"
