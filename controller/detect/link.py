"""Slow link: every rank of the job slows together, so lateness shows nothing; the node's own link counters do.

For each job spanning several nodes, each node's network figures are compared with the median of the job's
*other* nodes (which carry the same collective traffic): TCP retransmit share, NIC error/drop/retransmit
rates, InfiniBand/RoCE transmit wait, link speed, and the burst throughput of its periodic collective
traffic. A node far out of line on any of them is reported. Input: evidence documents of the job's nodes;
output: `SlowLink` findings (the fabric check may turn several of them into one fabric finding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from agent.evidence import Evidence
from controller.detect.config import DetectionConfig
from controller.detect.straggler import leave_one_out_median
from controller.model import Finding, Severity

DETECTOR = "link"
FEATURES = (
    "tcp_retransmit_ratio",
    "bad_packets_per_second",
    "xmit_wait_ratio",
    "link_speed_bits_per_second",
    "burst_bytes_per_second",
)


@dataclass(frozen=True)
class LinkFigures:
    """One node's network figures for one cycle (nan = not measured)."""

    tcp_retransmit_ratio: float
    bad_packets_per_second: float
    xmit_wait_ratio: float
    link_speed_bits_per_second: float
    burst_bytes_per_second: float

    def as_row(self) -> list[float]:
        return [getattr(self, name) for name in FEATURES]


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
    job: str,
    nodes: Sequence[str],
    figures: Mapping[str, LinkFigures],
    config: DetectionConfig,
    context: Mapping[str, object] | None = None,
) -> list[Finding]:
    """Nodes of one job whose link figures are far out of line with the job's other nodes."""
    nodes = [node for node in nodes if node in figures]
    if len(nodes) < 2:
        return []
    values = np.array([figures[node].as_row() for node in nodes], dtype=np.float64)
    measured = ~np.isnan(values).any(axis=0)  # compare a figure only where every node measures it
    peers = np.full_like(values, np.nan)
    peers[:, measured] = leave_one_out_median(values[:, measured])
    tcp, bad, xwait, speed, burst = values.T
    p_tcp, p_bad, p_xwait, p_speed, p_burst = peers.T
    with np.errstate(invalid="ignore"):
        checks = {
            "tcp_retransmit_ratio": (tcp >= config.tcp_retransmit_ratio)
            & (tcp >= config.link_peer_multiple * p_tcp),
            "bad_packets_per_second": (bad >= config.link_error_rate_floor_per_second)
            & (bad >= config.link_peer_multiple * p_bad),
            "xmit_wait_ratio": (xwait >= config.xmit_wait_ratio) & (xwait >= 2 * p_xwait),
            "link_speed_bits_per_second": speed < config.link_speed_ratio * p_speed,
            "burst_bytes_per_second": burst < config.burst_bandwidth_ratio * p_burst,
        }
    findings = []
    for i, node in enumerate(nodes):
        signals = {
            name: {"value": float(values[i, col]), "peers_median": float(peers[i, col])}
            for col, name in enumerate(FEATURES)
            if bool(checks[name][i])
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
