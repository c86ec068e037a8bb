"""Controller overhead outside detection, for 10,000 nodes: parse the node list, run the policy, build /metrics.

Budget (DESIGN.md): a whole cycle for 10,000 nodes x 8 ranks under 1 s of one core; detection's own share is
measured by the detection benchmark. Prints seconds per step and the share of the 1 s budget.
"""

from __future__ import annotations

import time

from controller import policy
from controller.kube import node_state
from controller.model import Finding, NodeVerdict, Severity, Verdict
from controller.settings import SafetySettings

NODES = 10_000


def node_object(index: int) -> dict:
    return {
        "metadata": {
            "name": f"node-{index}",
            "labels": {"kubernetes.io/hostname": f"node-{index}", "pool": "gpu"},
            "annotations": {"example.com/owner": "team"},
        },
        "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "conditions": [
                {"type": t, "status": "False"}
                for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
            ]
        },
    }


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    objects = [node_object(i) for i in range(NODES)]
    now = time.time()
    finding = Finding("hard", "GpuLost", "node-7", Severity.HARD, "node-7 GPU-0: XID 79")
    verdicts = {
        f"node-{i}": NodeVerdict(f"node-{i}", Verdict.HEALTHY, 1.0, since=now - 60) for i in range(NODES)
    }
    for i in range(0, NODES, 97):  # ~100 faulty nodes: caps and breaker have work to do
        verdicts[f"node-{i}"] = NodeVerdict(f"node-{i}", Verdict.FAULTY, 1.0, "GpuLost", (finding,), now)
    states: dict[str, policy.NodeState] = {}

    def parse() -> None:
        states.clear()
        states.update((o["metadata"]["name"], node_state(o)) for o in objects)

    parse_seconds = best_of(5, parse)
    decide_seconds = best_of(
        5,
        lambda: policy.decide(
            verdicts, states, policy.BreakerState(), policy.Memory(), SafetySettings(), now
        ),
    )
    total = parse_seconds + decide_seconds
    print(f"nodes: {NODES}")
    print(f"parse node list: {parse_seconds * 1000:.1f} ms")
    print(f"policy decide:   {decide_seconds * 1000:.1f} ms")
    print(f"share of the 1 s cycle budget: {total:.1%}")


if __name__ == "__main__":
    main()
