"""Synthetic agents for `lockstep simulate`: the `Evidence` document each node's agent would serve at time t.

From the simulated collective times (physics.py) it builds exactly what the real agent reports — the rank
window summaries and recent samples on the node's own (possibly offset) clock, pending collectives, NIC
counters and traffic periodicity — and adds the scenario's faults: hard signals, retransmits on shaped links.
"""

from __future__ import annotations

import numpy as np

from agent.evidence import (
    CollectiveSample,
    Evidence,
    HardSignal,
    HostEvidence,
    NicEvidence,
    RankEvidence,
    TrafficPeriodicity,
)
from controller.detect.config import DetectionConfig
from controller.detect.straggler import STEPS_PER_WINDOW
from controller.simulate.physics import Incarnation, RankTrack
from controller.simulate.scenario import FaultSpec, Scenario

AGENT_SAMPLES_PER_RANK = 128  # what an agent sends per rank by default (its `collective.evidence_samples`)
WINDOW_SECONDS = 10.0
LINK_BITS_PER_SECOND = 100e9
TEARDOWN_SECONDS = 20.0  # how long XID 43/45 keep coming while a killed job's processes die


class Agents:
    """All simulated agents of a scenario; `evidence(t)` is one polling round of the controller."""

    def __init__(self, scenario: Scenario, runs: list[Incarnation], rng: np.random.Generator) -> None:
        self.scenario = scenario
        self.runs = runs
        self.rng = rng
        self.offsets = np.zeros(scenario.nodes)
        for f in scenario.faults:
            if f.kind == "clock_offset" and f.node is not None:
                self.offsets[f.node] = f.offset_seconds

    def evidence(self, t: float) -> dict[str, Evidence | None]:
        out: dict[str, Evidence | None] = {}
        for node in range(self.scenario.nodes):
            name = self.scenario.node_name(node)
            down = any(
                f.kind == "agent_down" and f.node == node and f.start <= t < f.start + f.duration
                for f in self.scenario.faults
            )
            out[name] = None if down else self._document(node, t - float(self.rng.uniform(0.0, 0.5)))
        return out

    def _document(self, node: int, t: float) -> Evidence:
        offset = float(self.offsets[node])
        ranks: list[RankEvidence] = []
        busy: list[Incarnation] = []
        for run in self.runs:
            if run.start <= t < run.end and node in run.nodes:
                busy.append(run)
                ranks.extend(
                    _rank_evidence(track, run, t, offset) for track in run.ranks if track.node == node
                )
        faults = [f for f in self.scenario.faults if f.start <= t and (f.end is None or t < f.end)]
        return Evidence(
            node=self.scenario.node_name(node),
            collected_at=t + offset,
            agent_version="simulated",
            collectors={"collective": True, "network": True, "nvml": True},
            hard_signals=self._hard_signals(node, t, offset, faults),
            nics=[nic := self._nic(node, busy, faults)],
            host=self._host(node, nic, faults),
            periodicity=self._periodicity(node, busy, faults),
            ranks=ranks,
        )

    def _lossy(self, node: int, faults: list[FaultSpec]) -> float:
        """Retransmits per second on the node's link from shaping or loss (0 when healthy)."""
        rate = 0.0
        for f in faults:
            if (f.kind == "slow_link" and f.node == node) or (
                f.kind == "switch_fault" and self.scenario.switch_of(node) == f.label
            ):
                rate = max(rate, 400.0)
            elif f.kind == "link_between" and node in f.nodes:
                rate = max(rate, 150.0)
        return rate

    def _nic(self, node: int, busy: list[Incarnation], faults: list[FaultSpec]) -> NicEvidence:
        traffic = sum(
            r.job.bytes_per_collective
            * r.job.collectives_per_step
            / r.job.step_seconds
            * r.job.ranks_per_node
            for r in busy
        )
        return NicEvidence(
            name="eth0",
            kind="roce",
            link_speed_bits_per_second=LINK_BITS_PER_SECOND,
            tx_bytes_per_second=traffic,
            rx_bytes_per_second=traffic,
            errors_per_second=0.0,
            drops_per_second=float(self.rng.poisson(0.2)),
            retransmits_per_second=self._lossy(node, faults) * float(self.rng.uniform(0.7, 1.3))
            + float(self.rng.poisson(0.5)),
            xmit_wait_ratio=float(self.rng.uniform(0.0, 0.05)),
            window_seconds=WINDOW_SECONDS,
        )

    def _host(self, node: int, nic: NicEvidence, faults: list[FaultSpec]) -> HostEvidence:
        """TCP segment rates: a shaped or lossy link makes the kernel retransmit (tc tbf drops, lossy paths)."""
        sent = nic.tx_bytes_per_second / 1448 + 50.0  # MSS-sized segments plus background traffic
        return HostEvidence(
            tcp_out_segments_per_second=sent,
            tcp_retransmit_segments_per_second=sent * 0.03 * bool(self._lossy(node, faults))
            + float(self.rng.poisson(0.2)),
            window_seconds=WINDOW_SECONDS,
        )

    def _periodicity(
        self, node: int, busy: list[Incarnation], faults: list[FaultSpec]
    ) -> list[TrafficPeriodicity]:
        if not busy:
            return []
        job = busy[0].job
        burst = 0.8 * LINK_BITS_PER_SECOND / 8 * float(self.rng.uniform(0.9, 1.1))
        for f in faults:
            if self._lossy(node, [f]) and f.kind != "link_between":
                burst /= 1 + f.slowdown
        return [
            TrafficPeriodicity(
                interface="eth0",
                period_seconds=job.step_seconds,
                burst_bytes_per_second=burst,
                mean_bytes_per_second=burst * job.comm_share,
                regularity=float(self.rng.uniform(0.8, 0.95)),
                window_seconds=WINDOW_SECONDS,
            )
        ]

    def _hard_signals(self, node: int, t: float, offset: float, faults: list[FaultSpec]) -> list[HardSignal]:
        signals = []
        for f in faults:
            if f.kind == "hard" and f.node == node:
                signals.append(
                    HardSignal(
                        kind=f.signal,  # type: ignore[arg-type]
                        device="GPU-0000-sim" if f.signal != "nic_link_down" else "mlx5_0/1",
                        detail=f"simulated {f.signal}" + (f" {f.xid}" if f.xid else ""),
                        xid=f.xid,
                        first_seen=f.start + offset,
                        last_seen=t + offset,
                    )
                )
        for f in self.scenario.faults:
            job_nodes = {n for r in self.runs if r.job.name == f.job for n in r.nodes}
            if (
                f.kind in ("teardown", "restart", "scale")
                and node in job_nodes
                and f.start <= t < f.start + TEARDOWN_SECONDS
            ):
                for code in (43, 45):
                    signals.append(
                        HardSignal(
                            kind="xid",
                            device="GPU-0000-sim",
                            xid=code,
                            count=8,
                            first_seen=f.start + offset,
                            last_seen=t + offset,
                        )
                    )
        return signals


def samples_per_rank(collectives_per_step: int) -> int:
    """Samples per rank in a simulated evidence document: as many as the controller compares with its default
    thresholds (`samples_per_rank`, or STEPS_PER_WINDOW steps of a job issuing more than half of that a step), at
    most what an agent sends. An agent's 128 for every job would cost the replay up to 4x for the same verdicts;
    fewer than the controller compares would starve the jobs of many collectives a step."""
    compared = max(DetectionConfig.samples_per_rank, STEPS_PER_WINDOW * collectives_per_step)
    return min(AGENT_SAMPLES_PER_RANK, compared)


def _rank_evidence(track: RankTrack, run: Incarnation, t: float, offset: float) -> RankEvidence:
    """What the agent reports for one rank at time t: completed collectives, the pending one, a summary."""
    done = int(np.searchsorted(track.completion, t, side="right"))
    issued = int(np.searchsorted(track.arrival, t, side="right"))
    first = max(0, done - samples_per_rank(run.job.collectives_per_step))
    arrival = track.arrival[first:done]
    wait = track.completion[first:done] - arrival
    samples = [
        CollectiveSample.model_construct(
            seq=first + i,
            op="allreduce",
            bytes=run.job.bytes_per_collective,
            arrival=float(a) + offset,
            wait_seconds=float(w),
        )
        for i, (a, w) in enumerate(zip(arrival, wait, strict=True))
    ]
    recent = track.completion[:done] >= t - WINDOW_SECONDS
    in_window = int(recent.sum())
    window_waits = (track.completion[:done] - track.arrival[:done])[recent]
    gaps = track.arrival[1:done] - track.completion[: max(0, done - 1)]
    gaps = gaps[recent[1:]] if done > 1 else gaps
    step_starts = track.arrival[:done][:: run.job.collectives_per_step]
    step_starts = step_starts[step_starts >= t - WINDOW_SECONDS]
    last_progress = max(
        float(track.arrival[issued - 1]) if issued else run.start,
        float(track.completion[done - 1]) if done else run.start,
    )
    pending = issued > done
    return RankEvidence(
        job=run.job.name,
        rank=track.rank,
        world_size=track.world_size,
        local_rank=track.local_rank,
        pod=f"{run.job.name}-{track.rank}",
        namespace="default",
        pid=track.pid,
        window_seconds=WINDOW_SECONDS,
        collectives_in_window=in_window,
        collectives_per_second=in_window / WINDOW_SECONDS,
        step_period_seconds=float(np.median(np.diff(step_starts))) if len(step_starts) >= 3 else None,
        last_seq=issued - 1,  # as the agent: the highest sequence number issued (pending included)
        last_progress_at=last_progress + offset,
        pending_seq=done if pending else None,
        pending_op="allreduce" if pending else None,
        pending_since=float(track.arrival[done]) + offset if pending else None,
        wait_seconds_p50=float(np.median(window_waits)) if in_window else None,
        wait_seconds_p90=float(np.quantile(window_waits, 0.9)) if in_window else None,
        compute_gap_seconds_p50=float(np.median(gaps)) if len(gaps) else None,
        bytes_per_second=in_window * run.job.bytes_per_collective / WINDOW_SECONDS,
        samples=samples,
    )
