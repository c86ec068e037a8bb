"""Write a grid of simulator scenarios: each fault kind on jobs of other shapes than the shipped scenarios.

The shipped scenarios (scenarios/*.yaml) pin the detectors' targets on a few job shapes. This grid varies what a
cluster will vary: the step period, the collectives per step (one DDP bucket .. many FSDP collectives), the nodes
of the job and its ranks per node. Each scenario holds one job and one fault on its last node from `--start`: a
straggler (per `--slowdowns`), a slow link, a hang, and a whole-job slowdown that must blame nobody. Run them with
`lockstep simulate DIR`, which scores each (found or not, when, false verdicts) and prints the totals.

The simulator scales the measured gloo noise to each job's step period (controller/simulate/physics.py): at steps
of several seconds its per-collective tails reach seconds, more than real jobs show, so read misses and false
verdicts there as questions to check on a real job, not as facts.

    python tools/scenario_sweep.py --out /tmp/sweep [--steps 0.2 0.5 2] [--collectives 1 6] [--nodes 2 3 4 6]
                                   [--ranks-per-node 1 2] [--slowdowns 0.2 0.5] && lockstep simulate /tmp/sweep
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import yaml

EXPECTED_REASON = {"straggler": "Straggler", "slow_link": "SlowLink", "hang": "Hang"}


def scenario(
    index: int, kind: str, slowdown: float, step: float, collectives: int, nodes: int, per_node: int, args: Any
) -> dict[str, Any]:
    """One scenario: job `j` on nodes 0..nodes-1, the fault on the last one (or on the whole job)."""
    fault: dict[str, Any] = {"kind": kind, "start": args.start}
    if kind in ("straggler", "slow_link", "job_slowdown"):
        fault["slowdown"] = slowdown
    if kind == "job_slowdown":
        fault["job"] = "j"
    else:
        fault["node"] = nodes - 1
        fault["expect"] = {"reason": EXPECTED_REASON[kind], "within_seconds": args.within}
    label = f"{kind}{slowdown:g}" if "slowdown" in fault else kind
    return {
        "name": f"sweep-{index:03d}-{label}-step{step:g}-c{collectives}-{nodes}x{per_node}",
        "description": f"{kind} on a job of {nodes} nodes x {per_node} ranks, {step:g} s steps, "
        f"{collectives} collectives a step",
        "cluster": {"nodes": nodes, "gpus_per_node": 8, "switches": 1},
        "cycle_seconds": 5,
        "duration_seconds": args.start + args.within + 30,
        "seed": args.seed + index,
        "jobs": [
            {
                "name": "j",
                "nodes": f"0-{nodes - 1}",
                "ranks_per_node": per_node,
                "step_seconds": step,
                "collectives_per_step": collectives,
            }
        ],
        "faults": [fault],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write the scenario files to")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.2, 0.5, 2.0], help="step periods (s)")
    parser.add_argument("--collectives", type=int, nargs="+", default=[1, 6], help="collectives per step")
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 3, 4, 6], help="nodes of the job")
    parser.add_argument("--ranks-per-node", type=int, nargs="+", default=[1, 2], help="ranks on each node")
    parser.add_argument(
        "--slowdowns", type=float, nargs="+", default=[0.2, 0.5], help="straggler compute slowdowns (0.2 = 20%%)"
    )
    parser.add_argument("--link-slowdown", type=float, default=2.0, help="slow link: transfers take 1+this longer")
    parser.add_argument("--start", type=float, default=60.0, help="when the fault starts (s)")
    parser.add_argument("--within", type=float, default=90.0, help="a fault must be faulty within this (s)")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first scenario (+1 each)")
    args = parser.parse_args(argv)
    if min(args.nodes) < 2:
        parser.error("--nodes: a job needs at least 2 nodes to compare them")
    args.out.mkdir(parents=True, exist_ok=True)
    faults = [("straggler", s) for s in args.slowdowns] + [
        ("slow_link", args.link_slowdown),
        ("hang", 0.0),
        ("job_slowdown", 0.3),
    ]
    shapes = itertools.product(args.steps, args.collectives, args.nodes, args.ranks_per_node)
    index = 0
    for (step, collectives, nodes, per_node), (kind, slowdown) in itertools.product(shapes, faults):
        index += 1
        data = scenario(index, kind, slowdown, step, collectives, nodes, per_node, args)
        (args.out / f"{data['name']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"wrote {index} scenarios to {args.out}; run: lockstep simulate {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
