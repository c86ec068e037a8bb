"""Host collector: the few host facts the controller and dashboards need that node_exporter lacks.

TCP retransmits (from `/proc/<pid>/net/snmp` through `agent.backends.procfs`) show a slow or lossy path even where
NIC counters stay clean (a shaped or congested link); the boot id tells the controller a node rebooted. The RTT of the node's bulk TCP sends per remote
address (`agent.collectors.send_rtt`, from sock_diag) shows a slow egress that queues instead of dropping. The
sockets are dumped by a background job (agent/collectors/ticker.py) every SOCKET_DUMP_INTERVAL_SECONDS: a dump
costs ~1 ms of CPU, which scrapes and evidence pulls would otherwise wait for.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.backends.procfs import Procfs, ProcfsError, TcpSegments
from agent.backends.sockdiag import SockDiag, SockDiagError
from agent.collectors.base import Collector
from agent.collectors.order_stats import median
from agent.collectors.read_errors import ReadErrors
from agent.collectors.send_rtt import SendRtt
from agent.collectors.ticker import TICKER
from agent.collectors.window import RollingWindow
from agent.evidence import EvidencePart, HostEvidence, TcpPath
from agent.families import CounterFamily, GaugeFamily, MetricFamily

if TYPE_CHECKING:
    from agent.settings import AgentSettings

log = logging.getLogger(__name__)
MAX_PATHS = 64  # evidence size bound: a node talks to far fewer peers in bulk at once
# How often the sockets are dumped (5 dumps in the 10 s window). A scrape or evidence pull dumps them itself only
# when the background has not for twice as long (not started, or behind).
SOCKET_DUMP_INTERVAL_SECONDS = 2.0


class HostCollector(Collector):
    name = "host"

    def __init__(
        self,
        procfs: Procfs,
        *,
        window_seconds: float = 10.0,
        send_rtt: SendRtt | None = None,
        sock_diag: SockDiag | None = None,
    ) -> None:
        self.procfs = procfs
        self.send_rtt = send_rtt
        self.sock_diag = sock_diag  # what send_rtt dumps with, closed with this collector
        self.read_errors = ReadErrors(self.name)
        self._window: RollingWindow[TcpSegments] = RollingWindow(window_seconds)
        self._dumped_at = -math.inf  # monotonic s of the last socket dump

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> HostCollector:
        section = settings.host
        window = settings.evidence_window_seconds
        own = section.tcp_namespace_pid == "self" or _same_network_namespace(section.procfs_root / "1/ns/net")
        if section.send_rtt and not own:
            log.warning(
                "TCP send RTT off: the agent is not in the node's network namespace (use hostNetwork)"
            )
        sock_diag = SockDiag() if section.send_rtt and own else None
        return cls(
            Procfs(section.procfs_root, network_namespace_pid=section.tcp_namespace_pid),
            window_seconds=window,
            send_rtt=None if sock_diag is None else SendRtt(sock_diag.flows, window_seconds=window),
            sock_diag=sock_diag,
        )

    def start(self) -> None:
        if self.send_rtt is not None:  # slack: shares the wakeups of the other background jobs
            TICKER.add(self, self._dump_sockets, SOCKET_DUMP_INTERVAL_SECONDS, SOCKET_DUMP_INTERVAL_SECONDS / 4)

    def close(self) -> None:
        TICKER.remove(self)
        if self.sock_diag is not None:
            self.sock_diag.close()

    def collect(self) -> Iterable[MetricFamily]:
        tcp = self._read_tcp()
        out = CounterFamily(
            "lockstep_host_tcp_out_segments",
            "TCP segments sent, retransmissions excluded (/proc/<pid>/net/snmp Tcp OutSegs).",
        )
        retransmitted = CounterFamily(
            "lockstep_host_tcp_retransmitted_segments",
            "TCP segments retransmitted: a lossy or shaped path (/proc/<pid>/net/snmp Tcp RetransSegs).",
        )
        out.add_metric([], float(tcp.out_segments))
        retransmitted.add_metric([], float(tcp.retransmitted_segments))
        families: list[MetricFamily] = [out, retransmitted, *self._send_rtt_families()]
        try:
            boot_id = self.procfs.boot_id()
        except ProcfsError as error:
            self.read_errors.note(error.source, error.reason)
        else:
            boot = GaugeFamily(
                "lockstep_host_boot_info",
                "The kernel's boot id (/proc/sys/kernel/random/boot_id); changes on every reboot. Always 1.",
                labels=["boot_id"],
            )
            boot.add_metric([boot_id], 1.0)
            families.append(boot)
        return [*families, self.read_errors.family()]

    def evidence(self) -> EvidencePart:
        self._read_tcp()
        base, now = self._window.span()
        window = now.monotonic - base.monotonic
        if window <= 0:
            return EvidencePart(host=HostEvidence())
        return EvidencePart(
            host=HostEvidence(
                tcp_retransmit_segments_per_second=_rate(
                    base.value.retransmitted_segments, now.value.retransmitted_segments, window
                ),
                tcp_out_segments_per_second=_rate(base.value.out_segments, now.value.out_segments, window),
                window_seconds=window,
                tcp_paths=self._paths()[:MAX_PATHS],
            )
        )

    def _paths(self) -> list[TcpPath]:
        """The bulk send paths of the window (none if not measured); the sockets are dumped here only when the
        background job has not for 2 * SOCKET_DUMP_INTERVAL_SECONDS."""
        if self.send_rtt is None:
            return []
        if time.monotonic() - self._dumped_at >= 2 * SOCKET_DUMP_INTERVAL_SECONDS:
            self._dump_sockets()
        return self.send_rtt.paths()

    def _dump_sockets(self) -> None:
        """One sample of the sockets' send RTT (the background job, every SOCKET_DUMP_INTERVAL_SECONDS)."""
        if self.send_rtt is None:
            return
        self._dumped_at = time.monotonic()
        try:
            self.send_rtt.sample()
        except SockDiagError as error:
            self.read_errors.note("sock_diag", str(error))

    def _send_rtt_families(self) -> list[MetricFamily]:
        paths = self._paths()
        if not paths:
            return []
        rtt = GaugeFamily(
            "lockstep_host_tcp_send_rtt_seconds",
            "Median over remote addresses of the RTT of bulk TCP sends (lower quartile of tcpi_rtt samples of "
            "the busiest flow per address over the evidence window; sock_diag INET_DIAG_INFO).",
        )
        rtt.add_metric([], median(np.array([p.rtt_seconds for p in paths])))
        count = GaugeFamily(
            "lockstep_host_tcp_send_paths",
            "Remote addresses this node sent bulk TCP data to within the evidence window (sock_diag).",
        )
        count.add_metric([], float(len(paths)))
        return [rtt, count]

    def _read_tcp(self) -> TcpSegments:
        """Read and remember the TCP counters; unreadable counters fail this collector's run."""
        try:
            tcp = self.procfs.tcp_segments()
        except ProcfsError as error:
            self.read_errors.note(error.source, error.reason)
            raise
        self._window.add(tcp)
        return tcp


def _same_network_namespace(node_namespace: Path) -> bool:
    """Whether the agent runs in the network namespace of `node_namespace` (/proc/1/ns/net of the node)."""
    try:
        theirs, ours = os.stat(node_namespace), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _rate(before: int, after: int, seconds: float) -> float:
    return max(after - before, 0) / seconds
