"""Round-trip time of the node's bulk TCP sends, per remote address, from sock_diag dumps (host collector).

A slow egress (a shaped or degraded NIC, a congested port) queues the node's outgoing packets: the smoothed
RTT of its sending flows, and of the ACKs it returns to flows into it, rise by the queueing delay (ms) while
healthy paths stay sub-ms, and its sends are the only ones limited by the network (not by the application
running out of data, nor by a receiver that reads slowly: its receive window) at a delivery rate far below
the job's other paths. Each dump keeps, per (local, remote) address pair, the flow that had the most
bytes acknowledged since the previous dump (the job's collective traffic), if at least `min_bytes`; idle and
loopback flows are skipped. A path also reports its minimum RTT (the fabric's RTT when nothing waits: the base
a queue is measured against) and its highest delivery rate however limited (what it carries at least). Each
dump logs at DEBUG what limited each bulk send (application, receive window, network). The controller
compares the paths between the nodes of one job and ignores the rest (remote storage, the controller, other
jobs), since only it knows which addresses are the job's nodes.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agent.backends.sockdiag import TcpFlow
from agent.collectors.order_stats import median, quantile
from agent.evidence import TcpPath

log = logging.getLogger(__name__)
MIN_BYTES = 64 * 1024  # bytes acknowledged between two dumps that make a flow "bulk" (control traffic: ~kB)
RECEIVER_LIMITED_SHARE = 0.5  # of the busy time between two dumps held by the peer's receive window
RTT_QUANTILE = 0.25
"""The window's samples are summarised by their lower quartile: delayed ACKs of app-limited sends inflate
some samples on any path, while a standing egress queue lifts all of them."""


@dataclass(frozen=True)
class _Sample:
    monotonic: float  # s
    rtt_seconds: float
    min_rtt_seconds: float  # inf: no RTT sample yet
    bytes_acked: int  # since the previous dump
    delivery_bytes_per_second: float | None  # None: app- or receiver-limited (not the network's pace)
    delivered_bytes_per_second: float  # the latest delivery rate however limited: a lower bound of the path's


class SendRtt:
    """Samples of the busiest flow per address pair over the last `window_seconds`; fed one dump at a time."""

    def __init__(self, dump: Callable[[], list[TcpFlow]], *, window_seconds: float = 10.0) -> None:
        self._dump = dump
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._previous: dict[int, TcpFlow] = {}  # socket cookie -> the socket at the previous dump
        self._samples: dict[tuple[str, str], list[_Sample]] = {}

    def sample(self) -> None:
        """Dump the sockets once and remember the busiest flow of each address pair (SockDiagError propagates)."""
        flows = self._dump()
        now = time.monotonic()
        with self._lock:
            busiest: dict[tuple[str, str], tuple[int, TcpFlow, TcpFlow]] = {}
            for flow in flows:
                before = self._previous.get(flow.cookie, flow)
                moved = flow.bytes_acked - before.bytes_acked
                pair = (flow.local, flow.remote)
                if (
                    moved >= MIN_BYTES
                    and not _loopback(flow)
                    and moved > busiest.get(pair, (0, flow, flow))[0]
                ):
                    busiest[pair] = (moved, flow, before)
            self._previous = {flow.cookie: flow for flow in flows}
            for pair, (moved, flow, before) in busiest.items():
                held = _receiver_limited(before, flow)
                rate = None if flow.app_limited or held else flow.delivery_rate_bytes_per_second
                sample = _Sample(
                    now,
                    flow.rtt_seconds,
                    flow.min_rtt_seconds,
                    moved,
                    rate,
                    flow.delivery_rate_bytes_per_second,
                )
                self._samples.setdefault(pair, []).append(sample)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "bulk send %s->%s: %d kB acked, rtt %.2f ms (min %.3f ms), %s",
                        *pair,
                        moved // 1000,
                        flow.rtt_seconds * 1e3,
                        flow.min_rtt_seconds * 1e3,
                        _limit(flow, held),
                    )
            horizon = now - self.window_seconds
            for pair in list(self._samples):
                kept = [s for s in self._samples[pair] if s.monotonic > horizon]
                if kept:
                    self._samples[pair] = kept
                else:
                    del self._samples[pair]

    def paths(self) -> list[TcpPath]:
        """One entry per address pair with bulk sends in the window, busiest first."""
        with self._lock:
            paths = [
                TcpPath(
                    local_address=local,
                    remote_address=remote,
                    rtt_seconds=quantile(np.array([s.rtt_seconds for s in samples]), RTT_QUANTILE),
                    min_rtt_seconds=_finite(min(s.min_rtt_seconds for s in samples)),
                    bytes_per_second=sum(s.bytes_acked for s in samples) / self.window_seconds,
                    samples=len(samples),
                    delivery_bytes_per_second=_median([s.delivery_bytes_per_second for s in samples]),
                    delivery_bound_bytes_per_second=max(s.delivered_bytes_per_second for s in samples)
                    or None,
                )
                for (local, remote), samples in self._samples.items()
            ]
        return sorted(paths, key=lambda p: -p.bytes_per_second)


def _median(rates: list[float | None]) -> float | None:
    """Median of the network-limited samples' delivery rates; None when there are none."""
    limited = [rate for rate in rates if rate is not None]
    return median(np.array(limited)) if limited else None


def _limit(flow: TcpFlow, receiver_limited: bool) -> str:
    """What held the flow's latest delivery interval, for the debug log."""
    if flow.app_limited:
        return "app-limited"
    if receiver_limited:
        return "receive-window-limited"
    return f"network-limited at {flow.delivery_rate_bytes_per_second * 8 / 1e6:.1f} Mbit/s"


def _finite(seconds: float) -> float | None:
    return seconds if math.isfinite(seconds) else None


def _receiver_limited(before: TcpFlow, after: TcpFlow) -> bool:
    """Whether the peer's receive window held the socket for most of its busy time between two dumps."""
    busy = after.busy_seconds - before.busy_seconds
    held = after.receive_window_limited_seconds - before.receive_window_limited_seconds
    return busy > 0 and held > RECEIVER_LIMITED_SHARE * busy


def _loopback(flow: TcpFlow) -> bool:
    return ipaddress.ip_address(flow.remote).is_loopback or ipaddress.ip_address(flow.local).is_loopback
