"""Slow link: every rank of the job slows together, so lateness shows nothing; the node's own link counters do.

For each job spanning several nodes, each node's network figures are compared with the median of the job's
*other* nodes (which carry the same collective traffic): TCP retransmit share, NIC error/drop/retransmit
rates, InfiniBand/RoCE transmit wait, link speed, and the burst throughput of its periodic collective
traffic. A node far out of line on any of them is reported. Input: evidence documents of the job's nodes;
output: `SlowLink` findings (the fabric check may turn several of them into one fabric finding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from agent.evidence import Evidence
from controller.detect.config import DetectionConfig
from controller.detect.straggler import leave_one_out_median
from controller.model import Finding, Severity

DETECTOR = "link"


class LinkFigures(NamedTuple):
    """One node's network figures for one cycle (nan = not measured); a tuple: one row of the comparison."""

    tcp_retransmit_ratio: float
    bad_packets_per_second: float
    xmit_wait_ratio: float
    link_speed_bits_per_second: float
    burst_bytes_per_second: float


FEATURES = LinkFigures._fields


def link_figures(evidence: Evidence, config: DetectionConfig) -> LinkFigures:
    """Sum or pick the figures of the NICs that carry traffic; TCP figures come from the optional `host` part."""
    nics = [
        nic
        for nic in evidence.nics
        if nic.up and (nic.tx_bytes_per_second > 0 or nic.rx_bytes_per_second > 0)
    ]
    host = evidence.host
    sent = host.tcp_out_segments_per_second if host is not None else 0.0
    tcp_ratio = host.tcp_retransmit_segments_per_second / sent if host is not None and sent > 0 else np.nan
    waits = [nic.xmit_wait_ratio for nic in nics if nic.xmit_wait_ratio is not None]
    speeds = [nic.link_speed_bits_per_second for nic in nics if nic.link_speed_bits_per_second]
    bursts = [
        p.burst_bytes_per_second
        for p in evidence.periodicity
        if p.period_seconds is not None and p.regularity >= config.periodicity_min_regularity
    ]
    return LinkFigures(
        tcp_retransmit_ratio=float(tcp_ratio),
        bad_packets_per_second=float(
            sum(n.errors_per_second + n.drops_per_second + n.retransmits_per_second for n in nics)
        ),
        xmit_wait_ratio=float(max(waits)) if waits else np.nan,
        link_speed_bits_per_second=float(min(speeds)) if speeds else np.nan,
        burst_bytes_per_second=float(max(bursts)) if bursts else np.nan,
    )


def find_slow_links(
    jobs: Sequence[tuple[str, Sequence[str], Mapping[str, object] | None]],
    figures: Mapping[str, LinkFigures],
    config: DetectionConfig,
) -> list[list[Finding]]:
    """For each job (name, nodes, context for the evidence): its nodes whose link figures are far out of line
    with the job's other nodes. Jobs with the same number of nodes are compared together, as one array."""
    members = [[node for node in nodes if node in figures] for _, nodes, _ in jobs]
    out: list[list[Finding]] = [[] for _ in jobs]
    by_size: dict[int, list[int]] = {}
    for j, nodes in enumerate(members):
        if len(nodes) >= 2:
            by_size.setdefault(len(nodes), []).append(j)
    for indices in by_size.values():
        # (jobs, nodes, FEATURES); a figure is compared only where every node of the job has it
        values = np.array([[figures[node] for node in members[j]] for j in indices], dtype=np.float64)
        measured = ~np.isnan(values).any(axis=1, keepdims=True)
        peers = np.where(measured, leave_one_out_median(values), np.nan)
        tcp, bad, xwait, speed, burst = np.moveaxis(values, -1, 0)
        p_tcp, p_bad, p_xwait, p_speed, p_burst = np.moveaxis(peers, -1, 0)
        with np.errstate(invalid="ignore"):
            checks = np.stack(  # (J, N, F), in the order of FEATURES
                [
                    (tcp >= config.tcp_retransmit_ratio) & (tcp >= config.link_peer_multiple * p_tcp),
                    (bad >= config.link_error_rate_floor_per_second)
                    & (bad >= config.link_peer_multiple * p_bad),
                    (xwait >= config.xmit_wait_ratio) & (xwait >= 2 * p_xwait),
                    speed < config.link_speed_ratio * p_speed,
                    burst < config.burst_bandwidth_ratio * p_burst,
                ],
                axis=-1,
            )
        for k in np.flatnonzero(checks.any(axis=(1, 2))).tolist():
            j = indices[k]
            out[j] = _findings(jobs[j][0], members[j], values[k], peers[k], checks[k], jobs[j][2])
    return out


def _findings(
    job: str,
    nodes: list[str],
    values: np.ndarray,
    peers: np.ndarray,
    checks: np.ndarray,
    context: Mapping[str, object] | None,
) -> list[Finding]:
    """One finding per node of `job` with a figure out of line (`checks`, like `values`: nodes x FEATURES)."""
    findings = []
    for i, node in enumerate(nodes):
        signals = {
            name: {"value": float(values[i, col]), "peers_median": float(peers[i, col])}
            for col, name in enumerate(FEATURES)
            if bool(checks[i, col])
        }
        if not signals:
            continue
        findings.append(
            Finding(
                detector=DETECTOR,
                reason="SlowLink",
                node=node,
                severity=Severity.STATISTICAL,
                summary=f"{node}'s network is out of line with the other nodes of job {job}: {', '.join(signals)}",
                confidence=min(0.95, 0.6 + 0.15 * (len(signals) - 1)),
                job=job,
                nodes=(node,),
                evidence={
                    "signal": "NIC and TCP counters vs the job's other nodes",
                    "signals": signals,
                    "peers": [n for n in nodes if n != node],
                    **(context or {}),
                },
            )
        )
    return findings
