"""Host collector: the few host facts the controller and dashboards need that node_exporter lacks.

TCP retransmits (from `/proc/<pid>/net/snmp` through `agent.backends.procfs`) show a slow or lossy path even where
NIC counters stay clean (a shaped or congested link); the boot id tells the controller a node rebooted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from agent.backends.procfs import Procfs, ProcfsError, TcpSegments
from agent.collectors.base import Collector
from agent.collectors.read_errors import ReadErrors
from agent.collectors.window import RollingWindow
from agent.evidence import EvidencePart, HostEvidence
from agent.families import CounterFamily, GaugeFamily

if TYPE_CHECKING:
    from agent.settings import AgentSettings


class HostCollector(Collector):
    name = "host"

    def __init__(self, procfs: Procfs, *, window_seconds: float = 10.0) -> None:
        self.procfs = procfs
        self.read_errors = ReadErrors(self.name)
        self._window: RollingWindow[TcpSegments] = RollingWindow(window_seconds)

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> HostCollector:
        section = settings.host
        return cls(
            Procfs(section.procfs_root, network_namespace_pid=section.tcp_namespace_pid),
            window_seconds=settings.evidence_window_seconds,
        )

    def collect(self) -> Iterable[Metric]:
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
        families: list[Metric] = [out, retransmitted]
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
            )
        )

    def _read_tcp(self) -> TcpSegments:
        """Read and remember the TCP counters; unreadable counters fail this collector's run."""
        try:
            tcp = self.procfs.tcp_segments()
        except ProcfsError as error:
            self.read_errors.note(error.source, error.reason)
            raise
        self._window.add(tcp)
        return tcp


def _rate(before: int, after: int, seconds: float) -> float:
    return max(after - before, 0) / seconds
