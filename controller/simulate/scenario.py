"""Scenario files for `lockstep simulate`: a cluster, jobs on it, a time line of faults with ground truth.

Plain dataclasses loaded from YAML with clear errors; the format is documented in README.md ("Simulation").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

FAULT_KINDS = {
    # kind: whether the fault blames a node (its `node`/`nodes` must be found)
    "straggler": True,  # compute of the node's ranks (or of `ranks`) slower by `slowdown` (0.2 = 20%)
    "hang": True,  # the node's ranks stop issuing collectives (SIGSTOP, a wedged GPU)
    "slow_link": True,  # the node's link is shaped: the job's transfers take (1 + slowdown) x longer, it retransmits
    "hard": True,  # a hard signal on the node: `signal` (HardSignal kind), `xid` for kind xid
    "switch_fault": False,  # every node behind `label` has a lossy link: a fabric finding, no node verdict
    "link_between": False,  # the path between two nodes is lossy: both see retransmits; fabric, no verdict
    # negative controls: never a verdict
    "job_slowdown": False,  # every rank of `job` computes `slowdown` slower (data loader, evaluation)
    "job_pause": False,  # every rank of `job` stops issuing collectives for `duration` (checkpoint)
    "noisy_window": False,  # one rank of the node is late by `delay_step_ratio` for `duration` seconds (GC pause)
    "restart": False,  # `job` is torn down at `start` and relaunched after `gap_seconds` with new pids (seq reset)
    "scale": False,  # like restart, relaunched on `nodes_after` (new world size)
    "teardown": False,  # `job` ends at `start`; its nodes log XID 43/45 while the processes die
    "clock_offset": False,  # the node's clock is `offset_seconds` off (its arrivals shift, its waits do not)
    "agent_down": False,  # the node's agent does not answer (evidence None) for `duration`
}
FABRIC_KINDS = {"switch_fault", "link_between"}


class ScenarioError(ValueError):
    """The scenario file is malformed; the message says where."""


@dataclass(frozen=True)
class JobSpec:
    name: str
    nodes: tuple[int, ...]
    ranks_per_node: int = 8
    step_seconds: float = 1.0
    collectives_per_step: int = 4
    comm_share: float = 0.2  # share of the step spent transferring (all-reduce after the last arrival)
    bytes_per_collective: int = 25_000_000
    start: float = 0.0
    gpu_offset: int = 0  # first GPU slot used on each node (two jobs can share a node)


@dataclass(frozen=True)
class FaultSpec:
    kind: str
    start: float
    end: float | None = None
    node: int | None = None
    nodes: tuple[int, ...] = ()
    job: str | None = None
    label: str | None = None
    slowdown: float = 0.2
    duration: float = 10.0
    delay_step_ratio: float = 0.5
    offset_seconds: float = 0.03
    gap_seconds: float = 15.0
    nodes_after: tuple[int, ...] = ()
    ranks: tuple[int, ...] = ()  # local ranks affected (straggler); empty = all on the node
    signal: str = "xid"
    xid: int | None = None
    expect_detected: bool = False
    expect_reason: str | None = None
    within_seconds: float | None = None

    @property
    def negative_control(self) -> bool:
        return not FAULT_KINDS[self.kind] and self.kind not in FABRIC_KINDS

    @property
    def fabric(self) -> bool:
        return self.kind in FABRIC_KINDS


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int
    gpus_per_node: int
    switches: int
    cycle_seconds: float
    duration_seconds: float
    seed: int
    noise_scale: float
    jobs: tuple[JobSpec, ...]
    faults: tuple[FaultSpec, ...]
    min_recall: float = 0.95
    max_false_verdicts: int = 0
    path: str = ""

    def node_name(self, index: int) -> str:
        return f"node-{index:04d}"

    def switch_of(self, index: int) -> str:
        per_switch = max(1, -(-self.nodes // self.switches))
        return f"switch-{index // per_switch}"


def _tuple(value: Any, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, str) and "-" in value:  # "0-7"
        lo, hi = value.split("-", 1)
        return tuple(range(int(lo), int(hi) + 1))
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    raise ScenarioError(f"{where}: expected a node index, a list or a range 'A-B', got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str, **fixed: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ScenarioError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    try:
        return cls(**{**data, **fixed})
    except TypeError as error:
        raise ScenarioError(f"{where}: {error}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ScenarioError(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping")
    cluster = data.get("cluster", {})
    jobs = []
    for i, job in enumerate(data.get("jobs", [])):
        job = dict(job)
        job["nodes"] = _tuple(job.get("nodes"), f"{path}: jobs[{i}].nodes")
        jobs.append(_build(JobSpec, job, f"{path}: jobs[{i}]"))
    faults = []
    for i, fault in enumerate(data.get("faults", [])):
        fault = dict(fault)
        where = f"{path}: faults[{i}]"
        if fault.get("kind") not in FAULT_KINDS:
            raise ScenarioError(
                f"{where}: kind must be one of {sorted(FAULT_KINDS)}, got {fault.get('kind')!r}"
            )
        for key in ("nodes", "nodes_after", "ranks"):
            if key in fault:
                fault[key] = _tuple(fault[key], f"{where}.{key}")
        expect = fault.pop("expect", {}) or {}
        blames = FAULT_KINDS[fault["kind"]] or fault["kind"] in FABRIC_KINDS
        fixed = {
            "expect_detected": bool(expect.get("detected", blames)),
            "expect_reason": expect.get("reason"),
            "within_seconds": expect.get("within_seconds"),
        }
        faults.append(_build(FaultSpec, fault, where, **fixed))
    nodes = int(cluster.get("nodes", 8))
    for job in jobs:
        if not job.nodes or max(job.nodes) >= nodes:
            raise ScenarioError(f"{path}: job {job.name} uses nodes {job.nodes} outside 0..{nodes - 1}")
    names = {job.name for job in jobs}
    for fault in faults:
        if fault.job is not None and fault.job not in names:
            raise ScenarioError(f"{path}: fault {fault.kind} names unknown job {fault.job!r}")
    expect = data.get("expect", {}) or {}
    return Scenario(
        name=str(data.get("name", Path(path).stem)),
        description=str(data.get("description", "")),
        nodes=nodes,
        gpus_per_node=int(cluster.get("gpus_per_node", 8)),
        switches=int(cluster.get("switches", 1)),
        cycle_seconds=float(data.get("cycle_seconds", 5.0)),
        duration_seconds=float(data.get("duration_seconds", 120.0)),
        seed=int(data.get("seed", 1)),
        noise_scale=float(data.get("noise_scale", 1.0)),
        jobs=tuple(jobs),
        faults=tuple(faults),
        min_recall=float(expect.get("min_recall", 0.95)),
        max_false_verdicts=int(expect.get("max_false_verdicts", 0)),
        path=str(path),
    )
