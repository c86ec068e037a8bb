"""Slow egress without loss: the RTT of the bulk TCP paths between one job's nodes points at the node that queues.

A node whose egress is slow (shaped, degraded, congested) queues what it sends: its data to the other nodes
and the ACKs it returns to their data. So every path *touching* it, measured by either end (agents report per
remote address: `HostEvidence.tcp_paths`), carries its queueing delay (ms), while paths between healthy nodes
stay near the fabric's base RTT. A node is reported when the lowest RTT of all its measured paths (it sends on
one and receives on one at least) is above an absolute floor and a multiple of the median of the job's paths
that do not touch it, and no other node of the job qualifies as well (an ambiguous pattern, e.g. a whole ring
lagging behind one slow step, blames nobody). Paths to addresses that are not the job's nodes (remote storage,
the controller, other jobs) are ignored; the job's node addresses are the local addresses of its agents' paths.
Input: the evidence documents of the job's nodes; output: `SlowLink` findings.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from agent.evidence import Evidence
from controller.detect.config import DetectionConfig
from controller.model import Finding, Severity

DETECTOR = "link"

Edges = dict[tuple[str, str], float]  # (sending node, receiving node) -> RTT, s


def job_paths(nodes: Sequence[str], evidence: Mapping[str, Evidence]) -> Edges:
    """The RTT of the bulk TCP paths between the job's nodes, by (sender, receiver) node."""
    owner = {
        path.local_address: node
        for node in nodes
        if (host := evidence[node].host) is not None
        for path in host.tcp_paths
    }
    edges: Edges = {}
    for node in nodes:
        host = evidence[node].host
        for path in host.tcp_paths if host is not None else ():
            peer = owner.get(path.remote_address)
            if peer is not None and peer != node and 0 <= path.rtt_seconds < math.inf:  # nan fails too
                edges[(node, peer)] = max(edges.get((node, peer), 0.0), path.rtt_seconds)
    return edges


def find_slow_egress(
    job: str,
    nodes: Sequence[str],
    edges: Edges,
    config: DetectionConfig,
    context: Mapping[str, object] | None,
) -> list[Finding]:
    """The one node of `job` whose every path is slow while the paths not touching it are not, if any."""
    if not config.egress_rtt_enabled:
        return []
    suspects = []
    for node in nodes:
        sent = [rtt for (src, _), rtt in edges.items() if src == node]
        received = [rtt for (_, dst), rtt in edges.items() if dst == node]
        others = [rtt for (src, dst), rtt in edges.items() if node not in (src, dst)]
        if not sent or not received or not others:
            continue
        lowest, baseline = min(sent + received), statistics.median(others)
        if lowest >= config.egress_rtt_floor_seconds and lowest >= config.egress_rtt_peer_multiple * baseline:
            suspects.append((node, lowest, baseline))
    if len(suspects) != 1:
        return []
    node, lowest, baseline = suspects[0]
    return [
        Finding(
            detector=DETECTOR,
            reason="SlowLink",
            node=node,
            severity=Severity.STATISTICAL,
            summary=f"{node}'s TCP paths to and from the other nodes of job {job} all wait "
            f"{lowest * 1e3:.1f} ms or more (the job's other paths: {baseline * 1e3:.2f} ms): its egress queues",
            confidence=0.7,
            job=job,
            nodes=(node,),
            evidence={
                "signal": "RTT of bulk TCP paths between the job's nodes (sock_diag)",
                "signals": {"egress_rtt_seconds": {"value": lowest, "peers_median": baseline}},
                "paths_rtt_seconds": {f"{src}->{dst}": rtt for (src, dst), rtt in sorted(edges.items())},
                "peers": [n for n in nodes if n != node],
                **(context or {}),
            },
        )
    ]
