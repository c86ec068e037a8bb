"""Lockstep physics for `lockstep simulate`: when every rank of a job issues and completes each collective.

A data-parallel step: each rank computes, issuing its collectives (DDP buckets) as the backward pass reaches
them; collective c completes when the LAST rank has issued it (and the previous one is done) plus the
transfer time. So a slow rank arrives late and waits little, its peers arrive on time and wait for it; a slow
link stretches every transfer, so everyone waits longer and nobody is late. The noise — per-collective arrival
jitter, completion spread, transfer and step-length variation — is drawn from the distributions measured on
a real gloo DDP job (`noise_gloo.json`, written by tools/capture_gloo_noise.py), scaled to the job's step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.simulate.scenario import FaultSpec, JobSpec, Scenario

NOISE_FILE = Path(__file__).with_name("noise_gloo.json")


@dataclass(frozen=True)
class Noise:
    """Inverse CDFs of the measured noise (quantile -> value)."""

    quantiles: np.ndarray
    lateness_step_ratio: np.ndarray
    completion_spread_step_ratio: np.ndarray
    transfer_ratio: np.ndarray  # transfer / median transfer
    step_jitter_ratio: np.ndarray

    @classmethod
    def load(cls, path: Path = NOISE_FILE) -> Noise:
        data = json.loads(path.read_text())
        transfer = np.array(data["transfer_step_ratio"])
        return cls(
            quantiles=np.array(data["quantiles"]),
            lateness_step_ratio=np.array(data["lateness_step_ratio"]),
            completion_spread_step_ratio=np.array(data["completion_spread_step_ratio"]),
            transfer_ratio=transfer / np.median(transfer),
            step_jitter_ratio=np.array(data["step_jitter_ratio"]) / np.median(data["step_jitter_ratio"]),
        )

    def draw(self, rng: np.random.Generator, table: np.ndarray, size: int | tuple[int, ...]) -> np.ndarray:
        return np.interp(rng.random(size), self.quantiles, table)


@dataclass
class RankTrack:
    """One rank of one incarnation of a job: true issue and completion times of its collectives (s)."""

    job: str
    node: int
    rank: int
    local_rank: int
    world_size: int
    pid: int
    arrival: np.ndarray  # by seq; inf = never issued
    completion: np.ndarray  # by seq; inf = never completed


@dataclass
class Incarnation:
    """A job from launch (`start`) to teardown (`end`): its processes, with sequence numbers from 0."""

    job: JobSpec
    start: float
    end: float
    nodes: tuple[int, ...]
    ranks: list[RankTrack]


def incarnations(scenario: Scenario, noise: Noise, rng: np.random.Generator) -> list[Incarnation]:
    """Every job's incarnations (restarts and rescales start new ones), simulated over the whole run."""
    out: list[Incarnation] = []
    pid = 1000
    for job in scenario.jobs:
        start, nodes = job.start, job.nodes
        breaks = sorted(
            (f for f in scenario.faults if f.job == job.name and f.kind in ("restart", "scale", "teardown")),
            key=lambda f: f.start,
        )
        for fault in [*breaks, None]:
            end = fault.start if fault is not None else scenario.duration_seconds + 1
            out.append(_simulate(scenario, job, start, end, nodes, pid, noise, rng))
            pid += 1000
            if fault is None or fault.kind == "teardown":
                break
            start = fault.start + fault.gap_seconds
            nodes = fault.nodes_after or nodes
    return out


def _active(fault: FaultSpec, t: float) -> bool:
    return fault.start <= t and (fault.end is None or t < fault.end)


def _simulate(
    scenario: Scenario,
    job: JobSpec,
    start: float,
    end: float,
    nodes: tuple[int, ...],
    first_pid: int,
    noise: Noise,
    rng: np.random.Generator,
) -> Incarnation:
    per_node = job.ranks_per_node
    node_of = np.repeat(np.array(nodes), per_node)
    local_of = np.tile(np.arange(per_node), len(nodes))
    ranks = len(node_of)
    collectives = job.collectives_per_step
    step = job.step_seconds
    compute = step * (1 - job.comm_share)
    transfer = step * job.comm_share / collectives
    share = (np.arange(collectives) + 1) / collectives  # compute done when bucket c is issued
    scale = scenario.noise_scale
    faults = scenario.faults
    job_switches = {scenario.switch_of(n) for n in nodes}

    arrivals: list[np.ndarray] = []
    completions: list[np.ndarray] = []
    ready = np.full(ranks, start, dtype=np.float64)
    done_before = start
    hung = np.zeros(ranks, dtype=bool)
    while float(ready.min()) < end and not hung.any():
        t = float(np.median(ready))
        speed = np.ones(ranks)
        link = 1.0
        for f in faults:
            if not _active(f, t):
                continue
            on_node = node_of == f.node
            if f.kind == "straggler" and f.node in nodes:
                affected = on_node & (np.isin(local_of, f.ranks) if f.ranks else True)
                speed = np.where(affected, speed * (1 + f.slowdown), speed)
            elif f.kind == "job_slowdown" and f.job == job.name:
                speed = speed * (1 + f.slowdown)
            elif (
                (f.kind == "slow_link" and f.node in nodes)
                or (f.kind == "switch_fault" and f.label in job_switches)
                or (f.kind == "link_between" and set(f.nodes) <= set(nodes))
            ):
                link = max(link, 1 + f.slowdown)
            elif f.kind == "job_pause" and f.job == job.name and t < f.start + step:
                ready = ready + f.duration  # every rank stops together (checkpoint), once
        jitter = float(noise.draw(rng, noise.step_jitter_ratio, 1)[0]) ** scale
        lateness = noise.draw(rng, noise.lateness_step_ratio, (ranks, collectives)) * step * scale
        arrival = ready[:, None] + compute * jitter * speed[:, None] * share[None, :] + lateness
        arrival = np.maximum.accumulate(np.maximum(arrival, ready[:, None]), axis=1)
        for f in faults:
            if f.kind == "noisy_window" and f.node in nodes and f.start <= t < f.start + f.duration:
                arrival[(node_of == f.node) & (local_of == 0)] += f.delay_step_ratio * step
            if f.kind == "hang" and f.node in nodes:
                stopped = (node_of == f.node) & (arrival.max(axis=1) >= f.start)
                arrival[stopped] = np.where(arrival[stopped] >= f.start, np.inf, arrival[stopped])
                hung |= stopped
        last = np.max(arrival, axis=0)
        moves = noise.draw(rng, noise.transfer_ratio, collectives) * transfer * link
        done = np.empty(collectives)
        for c in range(collectives):
            done_before = max(float(last[c]), done_before) + float(moves[c])
            done[c] = done_before
        spread = noise.draw(rng, noise.completion_spread_step_ratio, (ranks, collectives)) * step * scale
        completion = np.maximum(done[None, :] + spread, arrival + 1e-4)
        completion = np.maximum.accumulate(completion, axis=1)
        arrivals.append(arrival)
        completions.append(completion)
        ready = completion[:, -1].copy()
    arrival_all = np.concatenate(arrivals, axis=1) if arrivals else np.empty((ranks, 0))
    completion_all = np.concatenate(completions, axis=1) if completions else np.empty((ranks, 0))
    tracks = [
        RankTrack(
            job=job.name,
            node=int(node_of[r]),
            rank=r,
            local_rank=int(local_of[r]) + job.gpu_offset,
            world_size=ranks,
            pid=first_pid + r,
            arrival=arrival_all[r],
            completion=completion_all[r],
        )
        for r in range(ranks)
    ]
    return Incarnation(job=job, start=start, end=end, nodes=nodes, ranks=tracks)
