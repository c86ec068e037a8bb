"""Slow egress without loss: the bulk TCP paths between one job's nodes point at the node whose sends queue.

A node whose egress is slow (shaped, degraded, congested) queues what it sends, so its bulk sends to the job's
other nodes (agents report per remote address: `HostEvidence.tcp_paths`) show both (1) an RTT of ms while the
fabric's base RTT (the lowest minimum RTT, tcpi_min_rtt, of the job's paths not touching it) is far lower, and
(2) a delivery rate limited by the network, far below what the job's other paths carry (in a collective paced
by the slow node they wait for data: application-limited, i.e. not slow; each carries at least its highest
delivery rate however limited, so a healthy sender that the network paces at line rate is not slow either).
The base is the other paths' minimum RTT, not their smoothed one: they carry the slow node's data as it trickles
in, and their receivers' delayed ACKs and the hosts' scheduling lift their smoothed RTT to the queue's level for
windows at a time (measured: 6 ms next to an 8 ms queue on a loaded demo), while their minimum stays the
fabric's. The receiver of a slow sender is thus not blamed (its own sends wait for data), nor the sender to a
slow reader (the reader's receive window holds it, not the network: the agent reports no network-limited rate
for such sends). A node is reported when all its bulk sends show both and no other node of the job does (an
ambiguous pattern blames nobody). Paths to addresses that are not the job's nodes (remote storage, the
controller, other jobs) are ignored; the job's node addresses are the local addresses of its agents' paths (a
node that sends nothing in bulk is not mapped: paths to it are ignored). Input: the evidence documents of the
job's nodes; output: `SlowLink` findings. Each cycle logs at DEBUG which condition each node fails.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from agent.evidence import Evidence
from controller.detect.config import DetectionConfig
from controller.model import Finding, Severity

DETECTOR = "link"
log = logging.getLogger(__name__)


class Path(NamedTuple):
    rtt_seconds: float
    delivery_bytes_per_second: float  # inf: never network-limited (application- or receiver-limited)
    min_rtt_seconds: float  # its RTT when nothing waits (tcpi_min_rtt); the smoothed RTT if not reported
    carries_bytes_per_second: float  # at least: its highest delivery rate however limited (else as above)


Edges = dict[tuple[str, str], Path]  # (sending node, receiving node) -> its bulk path


def job_paths(nodes: Sequence[str], evidence: Mapping[str, Evidence], min_samples: int = 1) -> Edges:
    """The bulk TCP paths between the job's nodes seen in at least `min_samples` socket dumps, by (sender,
    receiver) node; a path seen once may be a one-off burst (the model's broadcast at start)."""
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
            rate = path.delivery_bytes_per_second
            rate = math.inf if rate is None else rate
            least = path.rtt_seconds if path.min_rtt_seconds is None else path.min_rtt_seconds
            bound = path.delivery_bound_bytes_per_second
            carries = bound if bound is not None and 0 < bound < math.inf else rate
            usable = (
                0 <= path.rtt_seconds < math.inf
                and 0 <= least < math.inf
                and rate > 0
                and path.samples >= min_samples
            )  # nan fails
            if peer is not None and peer != node and usable:
                edges[(node, peer)] = Path(path.rtt_seconds, rate, min(least, path.rtt_seconds), carries)
            elif peer is not None and peer != node:
                log.debug(
                    "egress: path %s->%s left out: rtt %.2f ms, rate %s, samples %d (need %d)",
                    node,
                    peer,
                    path.rtt_seconds * 1e3,
                    _mbit(rate),
                    path.samples,
                    min_samples,
                )
    return edges


def find_slow_egress(
    job: str,
    nodes: Sequence[str],
    edges: Edges,
    config: DetectionConfig,
    context: Mapping[str, object] | None,
) -> list[Finding]:
    """The one node of `job` whose bulk sends all queue and are network-limited while other paths are not."""
    if not config.egress_rtt_enabled:
        return []
    suspects = []
    for node in nodes:
        sent = [path for (src, _), path in edges.items() if src == node]
        others = [path for (src, dst), path in edges.items() if node not in (src, dst)]
        if not sent or not others:
            continue
        rtt, base_rtt = min(p.rtt_seconds for p in sent), min(p.min_rtt_seconds for p in others)
        rate = max(p.delivery_bytes_per_second for p in sent)
        peers_rate = statistics.median(p.carries_bytes_per_second for p in others)
        failed = [
            name
            for name, holds in (
                ("rtt", rtt >= config.egress_rtt_floor_seconds),
                ("base ratio", rtt >= config.egress_rtt_base_multiple * base_rtt),
                ("network-limited", rate < math.inf),  # every send was network-limited at times
                ("delivery ratio", rate <= config.egress_delivery_ratio * peers_rate),
            )
            if not holds
        ]
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "egress: job %s node %s: %d sends, rtt %.2f ms, base %.3f ms, rate %s, peers %s: %s",
                job,
                node,
                len(sent),
                rtt * 1e3,
                base_rtt * 1e3,
                _mbit(rate),
                _mbit(peers_rate, "unlimited"),
                "fails " + ", ".join(failed) if failed else "suspect",
            )
        if not failed:
            suspects.append((node, rtt, base_rtt, rate, peers_rate))
    if len(suspects) != 1:
        if len(suspects) > 1:
            log.debug(
                "egress: job %s: %d suspects (%s): ambiguous, nobody blamed",
                job,
                len(suspects),
                ", ".join(s[0] for s in suspects),
            )
        return []
    node, rtt, base_rtt, rate, peers_rate = suspects[0]
    return [
        Finding(
            detector=DETECTOR,
            reason="SlowLink",
            node=node,
            severity=Severity.STATISTICAL,
            summary=f"{node}'s sends to the other nodes of job {job} queue: RTT {rtt * 1e3:.1f} ms or more (the "
            f"job's base: {base_rtt * 1e3:.2f} ms), network-limited at {rate * 8 / 1e6:.0f} Mbit/s",
            confidence=0.7,
            job=job,
            nodes=(node,),
            evidence={
                "signal": "RTT and delivery rate of bulk TCP sends between the job's nodes (sock_diag)",
                "signals": {
                    "egress_rtt_seconds": {"value": rtt, "base": base_rtt},
                    "egress_delivery_bytes_per_second": {"value": rate, "peers_median": _finite(peers_rate)},
                },
                "paths": {
                    f"{src}->{dst}": {
                        "rtt_seconds": p.rtt_seconds,
                        "delivery_bytes_per_second": _finite(p[1]),
                    }
                    for (src, dst), p in sorted(edges.items())
                },
                "peers": [n for n in nodes if n != node],
                **(context or {}),
            },
        )
    ]


def _finite(rate: float) -> float | None:
    """JSON has no infinity: an application-limited rate is None."""
    return rate if math.isfinite(rate) else None


def _mbit(rate: float, infinite: str = "not network-limited") -> str:
    return f"{rate * 8 / 1e6:.1f} Mbit/s" if math.isfinite(rate) else infinite
