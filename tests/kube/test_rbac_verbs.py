"""Exactly which API verbs Lockstep uses, recorded by the emulator over every code path.

`controller/rbac_verbs.json` is what the Helm chart's RBAC must grant (no more, no less). Regenerate it after a
deliberate change with `LOCKSTEP_UPDATE_GOLDEN=1 python -m pytest tests/kube/test_rbac_verbs.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from controller import cli
from controller.kube_emulator import Request
from controller.model import NodeVerdict, Verdict

from .conftest import Cluster, faulty

GOLDEN = Path(__file__).resolve().parents[2] / "controller" / "rbac_verbs.json"


def rules(requests: list[Request]) -> list[dict[str, Any]]:
    verbs: dict[tuple[str, str], set[str]] = {}
    for request in requests:
        resource = request.resource + (f"/{request.subresource}" if request.subresource else "")
        verbs.setdefault((request.group, resource), set()).add(request.verb)
    return [{"apiGroups": [group], "resources": [resource], "verbs": sorted(v)}
            for (group, resource), v in sorted(verbs.items())]


async def test_the_recorded_verbs_are_exactly_the_ones_in_rbac_verbs_json(cluster: Cluster, capsys: Any) -> None:
    await cluster.add_nodes(8)
    loop = cluster.loop(leader=True, identity="a", auto_release_after_seconds=60, release_memory_seconds=60,
                        breaker_nodes=4, max_cordoned_ratio=1.0, scripted=True)
    assert loop.leader is not None and loop.kube is not None
    stop = threading.Event()
    watchers = loop.kube.watch(stop, watch_seconds=1)  # nodes and agent pods: list + watch
    while loop.kube._nodes is None or not loop.kube._nodes.synced or not loop.kube._agents.synced:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    loop.leader.step()  # create the lease
    loop.leader.step()  # renew it (update)
    cluster.engine.script.update({"node-0": faulty("node-0"), "node-1": faulty("node-1"),
                                  "node-2": NodeVerdict("node-2", Verdict.SUSPECT, 0.6, "Straggler")})
    await loop.cycle()  # cordon (patch nodes, patch nodes/status, create events), discovery (list pods, nodes)
    cluster.emulator.patch_node("node-1", lambda n: {**n, "spec": {**n["spec"], "unschedulable": False}})
    cluster.engine.script["node-0"] = NodeVerdict("node-0", Verdict.HEALTHY, 1.0, since=time.time() - 120)
    await loop.cycle()  # probation release of node-0, person release of node-1
    cluster.engine.script["node-1"] = NodeVerdict("node-1", Verdict.HEALTHY, 1.0, since=time.time() - 120)
    await loop.cycle()  # forget the person's release of node-1
    for index in range(3, 8):
        cluster.engine.script[f"node-{index}"] = faulty(f"node-{index}")
    await loop.cycle()  # breaker opens: configmap created
    loop.settings.safety.breaker_nodes = 100
    await loop.cycle()
    cluster.emulator.change("configmaps", "lockstep-breaker", lambda c: {**c, "data": {**c["data"], "state": "closed"}},
                            namespace="lockstep")
    await loop.cycle()  # opens again: configmap patched
    loop.leader.release()
    stop.set()
    controller_rules = rules(cluster.emulator.store.requests)

    for watcher in watchers:  # the watches end (watch_seconds) and see stop
        await asyncio.to_thread(watcher.join, 30)
    del cluster.emulator.store.requests[:]
    assert cli.main(["release", "node-3", "--kubeconfig", cluster.kubeconfig]) in (0, 1)
    assert cli.main(["release", "--breaker", "--kubeconfig", cluster.kubeconfig]) == 0
    capsys.readouterr()
    operator_rules = rules(cluster.emulator.store.requests)

    recorded = {"controller": controller_rules, "operator": operator_rules}
    if os.environ.get("LOCKSTEP_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(recorded, indent=2) + "\n")
    assert json.loads(GOLDEN.read_text()) == recorded
