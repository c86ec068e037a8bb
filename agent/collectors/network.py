"""Network collector: every interface (`/sys/class/net`) and RDMA port (`/sys/class/infiniband`) on the node.

Reads through `agent.backends.sysfs`; serves counters on /metrics and, in the evidence, per-NIC rates over a
window plus hard signals (link down, link flap, speed below what the port had). Counter tables below are
data: sysfs file -> metric, with the meaning in the HELP text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.backends.sysfs import InterfaceReading, RdmaPortReading, ReadProblem, SysfsNet
from agent.collectors.base import Collector
from agent.collectors.read_errors import ReadErrors
from agent.collectors.window import Reading, RollingWindow
from agent.evidence import EvidencePart, HardSignal, HardSignalKind, NicEvidence
from agent.families import CounterFamily, GaugeFamily, MetricFamily

if TYPE_CHECKING:
    from agent.settings import AgentSettings

# /sys/class/net/<if>/statistics/<file> -> (metric name, HELP)
NET_COUNTERS: Mapping[str, tuple[str, str]] = {
    "rx_bytes": ("lockstep_net_receive_bytes", "Bytes received (sysfs statistics/rx_bytes)."),
    "tx_bytes": ("lockstep_net_transmit_bytes", "Bytes transmitted (sysfs statistics/tx_bytes)."),
    "rx_packets": ("lockstep_net_receive_packets", "Packets received (sysfs statistics/rx_packets)."),
    "tx_packets": ("lockstep_net_transmit_packets", "Packets transmitted (sysfs statistics/tx_packets)."),
    "rx_errors": ("lockstep_net_receive_errors", "Receive errors (sysfs statistics/rx_errors)."),
    "tx_errors": ("lockstep_net_transmit_errors", "Transmit errors (sysfs statistics/tx_errors)."),
    "rx_dropped": ("lockstep_net_receive_drops", "Received packets dropped (sysfs statistics/rx_dropped)."),
    "tx_dropped": ("lockstep_net_transmit_drops", "Packets dropped on transmit (sysfs statistics/tx_dropped)."),
}

# /sys/class/infiniband/<dev>/ports/<n>/counters/<file> -> (metric name, HELP, factor to the metric's unit).
# Files not listed here are exported by `lockstep_rdma_port_events_total{counter}` as sysfs gives them.
RDMA_COUNTERS: Mapping[str, tuple[str, str, int]] = {
    "port_xmit_data": (
        "lockstep_rdma_port_transmit_bytes",
        "Bytes transmitted (counters/port_xmit_data, which counts 4-byte words).",
        4,
    ),
    "port_rcv_data": (
        "lockstep_rdma_port_receive_bytes",
        "Bytes received (counters/port_rcv_data, which counts 4-byte words).",
        4,
    ),
    "port_xmit_packets": ("lockstep_rdma_port_transmit_packets", "Packets sent (counters/port_xmit_packets).", 1),
    "port_rcv_packets": ("lockstep_rdma_port_receive_packets", "Packets received (counters/port_rcv_packets).", 1),
    "port_xmit_wait": (
        "lockstep_rdma_port_transmit_wait_ticks",
        "Ticks the port had data to send but no credits or arbitration (counters/port_xmit_wait): congestion.",
        1,
    ),
    "symbol_error": (
        "lockstep_rdma_port_symbol_errors",
        "Minor link errors on any lane (counters/symbol_error): a bad cable or transceiver.",
        1,
    ),
    "link_error_recovery": (
        "lockstep_rdma_port_link_error_recoveries",
        "Link retrained after errors (counters/link_error_recovery).",
        1,
    ),
    "link_downed": (
        "lockstep_rdma_port_link_downed",
        "Times the link went down after failing to recover (counters/link_downed): flapping.",
        1,
    ),
    "port_rcv_errors": (
        "lockstep_rdma_port_receive_errors",
        "Received packets with errors (counters/port_rcv_errors).",
        1,
    ),
    "local_link_integrity_errors": (
        "lockstep_rdma_port_local_link_integrity_errors",
        "Local physical errors beyond the threshold (counters/local_link_integrity_errors).",
        1,
    ),
    "excessive_buffer_overrun_errors": (
        "lockstep_rdma_port_excessive_buffer_overrun_errors",
        "Consecutive flow-control update periods with buffer overrun (counters/excessive_buffer_overrun_errors).",
        1,
    ),
    "port_xmit_discards": (
        "lockstep_rdma_port_transmit_discards",
        "Outbound packets discarded because the port was down or congested (counters/port_xmit_discards).",
        1,
    ),
}

# hw_counters that mean the transport had to resend (RoCE/IB reliable connection); their sum is
# `retransmits_per_second` in the evidence. Every hw counter is exported by lockstep_rdma_port_transport_events_total.
RETRANSMIT_HW_COUNTERS = (
    "local_ack_timeout_err",  # no ACK within the QP timeout: the requester resent
    "packet_seq_err",  # NAK sequence error received: the requester resent from the lost PSN
    "implied_nak_seq_err",  # a response implied lost packets: the requester resent
    "roce_adp_retrans",  # adaptive retransmission fired (ConnectX RoCE)
)
# counters/ files that are link or receive errors; their sum is `errors_per_second` of an RDMA port.
RDMA_ERROR_COUNTERS = (
    "symbol_error",
    "link_error_recovery",
    "port_rcv_errors",
    "local_link_integrity_errors",
    "excessive_buffer_overrun_errors",
)
RDMA_STATE_ACTIVE = 4
RDMA_PHYS_STATE_DISABLED = 3
ARPHRD_ETHER = 1
ARPHRD_INFINIBAND = 32

NicKind = Literal["ethernet", "roce", "infiniband", "other"]


@dataclass(frozen=True)
class NicSample:
    """What the evidence needs from one interface or port at one moment (counters are cumulative)."""

    kind: NicKind
    up: bool
    disabled: bool  # switched off on purpose (interface admin down, RDMA port phys_state Disabled)
    link_speed_bits_per_second: float | None
    tx_bytes: int
    rx_bytes: int
    errors: int
    drops: int
    retransmits: int
    carrier_changes: int
    xmit_wait_ticks: int | None


Snapshot = Reading[Mapping[str, NicSample]]  # every NIC at one moment


class NetworkCollector(Collector):
    """Interfaces and RDMA ports: counters on /metrics, windowed rates and link hard signals as evidence."""

    name = "network"

    def __init__(
        self,
        sysfs: SysfsNet,
        *,
        exclude_interfaces: str = "",
        window_seconds: float = 10.0,
        xmit_wait_bytes_per_tick: float = 8.0,
    ) -> None:
        self.sysfs = sysfs
        self.exclude = re.compile(exclude_interfaces) if exclude_interfaces else None
        self.xmit_wait_bytes_per_tick = xmit_wait_bytes_per_tick
        self.read_errors = ReadErrors(self.name)
        self._lock = threading.Lock()
        self._window: RollingWindow[Mapping[str, NicSample]] = RollingWindow(window_seconds)
        self._max_speed: dict[str, float] = {}  # highest link speed seen per NIC since the agent started
        self._seen_up: set[str] = set()  # NICs this agent has seen up: only those can go down
        self._since: dict[tuple[str, str], float] = {}  # (signal kind, NIC) -> Unix s the condition began

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> NetworkCollector:
        section = settings.network
        return cls(
            SysfsNet(section.sysfs_root),
            exclude_interfaces=section.exclude_interfaces,
            window_seconds=settings.evidence_window_seconds,
            xmit_wait_bytes_per_tick=section.xmit_wait_bytes_per_tick,
        )

    def close(self) -> None:
        self.sysfs.close()

    def collect(self) -> Iterable[MetricFamily]:
        interfaces, ports = self._read()
        yield from _interface_families(interfaces)
        yield from _rdma_families(ports)
        yield self.read_errors.family()

    def evidence(self) -> EvidencePart:
        interfaces, ports = self._read()
        base, now = self._window.span()
        nics = [self._nic_evidence(name, now, base) for name in now.value]
        physical = {i.name for i in interfaces if i.physical} | {p.name for p in ports}
        return EvidencePart(
            nics=[nic for nic in nics if nic.name in physical],
            hard_signals=self._hard_signals(now, base, physical),
        )

    def _read(self) -> tuple[list[InterfaceReading], list[RdmaPortReading]]:
        """Read everything once, remember the sample for rates, count unreadable files."""
        problems: list[ReadProblem] = []
        interfaces = [
            reading
            for name in self.sysfs.interfaces()
            if not (self.exclude and self.exclude.search(name))
            and (reading := self.sysfs.read_interface(name, problems)) is not None
        ]
        ports = [
            port_reading
            for device, port in self.sysfs.rdma_ports()
            if (port_reading := self.sysfs.read_rdma_port(device, port, problems)) is not None
        ]
        for problem in problems:
            self.read_errors.note(problem.source, problem.reason)
        samples = {i.name: _interface_sample(i) for i in interfaces} | {p.name: _port_sample(p) for p in ports}
        self._window.add(samples)
        with self._lock:
            self._seen_up.update(name for name, sample in samples.items() if sample.up)
            for name, sample in samples.items():
                if sample.link_speed_bits_per_second is not None:
                    seen = self._max_speed.get(name, 0.0)
                    self._max_speed[name] = max(seen, sample.link_speed_bits_per_second)
        return interfaces, ports

    def _nic_evidence(self, name: str, now: Snapshot, base: Snapshot) -> NicEvidence:
        current = now.value[name]
        before = base.value.get(name)
        window = now.monotonic - base.monotonic
        if before is None or window <= 0:
            return NicEvidence(
                name=name,
                kind=current.kind,
                up=current.up,
                link_speed_bits_per_second=current.link_speed_bits_per_second,
            )

        def rate(field: str) -> float:
            delta = getattr(current, field) - getattr(before, field)
            return max(delta, 0) / window  # a counter reset (driver reload) is no negative traffic

        xmit_wait_ratio = None
        speed = current.link_speed_bits_per_second
        if current.xmit_wait_ticks is not None and before.xmit_wait_ticks is not None and speed:
            waited_bytes = max(current.xmit_wait_ticks - before.xmit_wait_ticks, 0) * self.xmit_wait_bytes_per_tick
            xmit_wait_ratio = min(waited_bytes / (speed / 8 * window), 1.0)
        return NicEvidence(
            name=name,
            kind=current.kind,
            up=current.up,
            link_speed_bits_per_second=speed,
            tx_bytes_per_second=rate("tx_bytes"),
            rx_bytes_per_second=rate("rx_bytes"),
            errors_per_second=rate("errors"),
            drops_per_second=rate("drops"),
            retransmits_per_second=rate("retransmits"),
            xmit_wait_ratio=xmit_wait_ratio,
            carrier_changes_in_window=max(current.carrier_changes - before.carrier_changes, 0),
            window_seconds=window,
        )

    def _hard_signals(self, now: Snapshot, base: Snapshot, physical: set[str]) -> list[HardSignal]:
        """Link lost (seen up before, not switched off), flapping in the window, speed below the port's best.

        A port that was down since the agent started, or that someone disabled, is no signal: unused ports and
        maintenance must never look like faults.
        """
        signals: list[HardSignal] = []
        window = now.monotonic - base.monotonic
        for name, current in now.value.items():
            if name not in physical:
                continue
            before = base.value.get(name)
            flaps = max(current.carrier_changes - before.carrier_changes, 0) if before else 0
            with self._lock:
                lost = not current.up and not current.disabled and name in self._seen_up
            conditions: list[tuple[HardSignalKind, bool, str, float]] = [
                ("nic_link_down", lost, "link lost", 1.0),
                ("nic_link_flap", flaps > 0, f"{flaps} link state changes in {window:.0f} s", float(flaps)),
            ]
            best = self._max_speed.get(name)
            speed = current.link_speed_bits_per_second
            if best and speed is not None:
                degraded = speed < best
                conditions.append(
                    ("nic_speed_degraded", degraded, f"{speed / 1e9:g} Gb/s, had {best / 1e9:g} Gb/s", 1.0)
                )
            for kind, active, detail, count in conditions:
                since = self._condition_since(kind, name, active, base.wall if kind == "nic_link_flap" else now.wall)
                if since is not None:
                    signals.append(
                        HardSignal(
                            kind=kind,
                            device=name,
                            detail=f"{name}: {detail}",
                            count=count,
                            first_seen=since,
                            last_seen=now.wall,
                        )
                    )
        return signals

    def _condition_since(self, kind: str, name: str, active: bool, started: float) -> float | None:
        """Unix s since when a condition holds continuously, or None if it does not hold now."""
        key = (kind, name)
        with self._lock:
            if not active:
                self._since.pop(key, None)
                return None
            return self._since.setdefault(key, started)


def _interface_sample(reading: InterfaceReading) -> NicSample:
    stats = reading.statistics
    kinds: dict[int | None, NicKind] = {ARPHRD_ETHER: "ethernet", ARPHRD_INFINIBAND: "infiniband"}
    return NicSample(
        kind=kinds.get(reading.arp_type, "other"),
        up=reading.operstate in ("up", "unknown"),
        disabled=reading.admin_up is False,
        link_speed_bits_per_second=reading.speed_bits_per_second,
        tx_bytes=stats.get("tx_bytes", 0),
        rx_bytes=stats.get("rx_bytes", 0),
        errors=stats.get("rx_errors", 0) + stats.get("tx_errors", 0),
        drops=stats.get("rx_dropped", 0) + stats.get("tx_dropped", 0),
        retransmits=0,
        carrier_changes=reading.carrier_changes or 0,
        xmit_wait_ticks=None,
    )


def _port_sample(reading: RdmaPortReading) -> NicSample:
    counters, hw = reading.counters, reading.hw_counters
    tx_bytes = counters.get("port_xmit_data", 0) * 4
    rx_bytes = counters.get("port_rcv_data", 0) * 4
    return NicSample(
        kind=_port_kind(reading),
        up=reading.state == RDMA_STATE_ACTIVE,
        disabled=reading.phys_state == RDMA_PHYS_STATE_DISABLED,
        link_speed_bits_per_second=reading.rate_bits_per_second,
        tx_bytes=tx_bytes,
        rx_bytes=rx_bytes,
        errors=sum(counters.get(name, 0) for name in RDMA_ERROR_COUNTERS),
        drops=counters.get("port_xmit_discards", 0),
        retransmits=sum(hw.get(name, 0) for name in RETRANSMIT_HW_COUNTERS),
        carrier_changes=counters.get("link_downed", 0),
        xmit_wait_ticks=counters.get("port_xmit_wait"),
    )


def _port_kind(reading: RdmaPortReading) -> NicKind:
    return "roce" if reading.link_layer == "Ethernet" else "infiniband"


def _interface_families(interfaces: list[InterfaceReading]) -> Iterable[MetricFamily]:
    labels = ["interface"]
    counters = {stat: CounterFamily(name, help_, labels=labels) for stat, (name, help_) in NET_COUNTERS.items()}
    carrier_changes = CounterFamily(
        "lockstep_net_carrier_changes", "Link up/down transitions (sysfs carrier_changes).", labels=labels
    )
    speed = GaugeFamily(
        "lockstep_net_link_speed_bytes_per_second",
        "Negotiated link speed (sysfs speed, Mb/s, converted to bytes/s); absent while the link is down.",
        labels=labels,
    )
    mtu = GaugeFamily("lockstep_net_mtu_bytes", "MTU (sysfs mtu).", labels=labels)
    up = GaugeFamily("lockstep_net_up", "1 if operstate is up (or unknown, e.g. loopback).", labels=labels)
    info = GaugeFamily(
        "lockstep_net_info",
        "Interface facts (sysfs operstate, type); always 1.",
        labels=["interface", "operstate", "kind", "physical"],
    )
    for i in interfaces:
        name = (i.name,)
        for stat, value in i.statistics.items():
            counters[stat].add_metric(name, value)
        if i.carrier_changes is not None:
            carrier_changes.add_metric(name, i.carrier_changes)
        if i.speed_bits_per_second is not None:
            speed.add_metric(name, i.speed_bits_per_second / 8)
        if i.mtu_bytes is not None:
            mtu.add_metric(name, i.mtu_bytes)
        sample = _interface_sample(i)
        up.add_metric(name, 1.0 if sample.up else 0.0)
        info.add_metric((i.name, i.operstate, sample.kind, str(i.physical).lower()), 1.0)
    return [*counters.values(), carrier_changes, speed, mtu, up, info]


def _rdma_families(ports: list[RdmaPortReading]) -> Iterable[MetricFamily]:
    labels = ["device", "port"]
    named = {
        file: (CounterFamily(name, help_, labels=labels), factor)
        for file, (name, help_, factor) in RDMA_COUNTERS.items()
    }
    other = CounterFamily(
        "lockstep_rdma_port_events",
        "Port counters without a metric of their own (counters/<counter>), as sysfs gives them.",
        labels=[*labels, "counter"],
    )
    hw = CounterFamily(
        "lockstep_rdma_port_transport_events",
        "Vendor transport counters (hw_counters/<counter>), e.g. out_of_sequence, rnr_nak_retry_err, "
        "local_ack_timeout_err, np_cnp_sent, rp_cnp_handled, roce_adp_retrans; see the README.",
        labels=[*labels, "counter"],
    )
    state = GaugeFamily("lockstep_rdma_port_state", "Logical port state number (state; 4 = ACTIVE).", labels=labels)
    phys = GaugeFamily(
        "lockstep_rdma_port_physical_state", "Physical port state number (phys_state; 5 = LinkUp).", labels=labels
    )
    active = GaugeFamily("lockstep_rdma_port_active", "1 if the port state is ACTIVE (state).", labels=labels)
    rate = GaugeFamily(
        "lockstep_rdma_port_rate_bytes_per_second",
        "Port data rate (rate, e.g. '200 Gb/sec (4X HDR)', converted to bytes/s).",
        labels=labels,
    )
    info = GaugeFamily(
        "lockstep_rdma_port_info",
        "Port facts (link_layer, state, phys_state, the device's netdevs); always 1.",
        labels=[*labels, "kind", "state", "phys_state", "netdev"],
    )
    for p in ports:
        port = (p.device, str(p.port))
        unnamed = {}
        for file, value in p.counters.items():
            if file in named:
                family, factor = named[file]
                family.add_metric(port, value * factor)
            else:
                unnamed[file] = value
        other.add_metrics_by_key(port, unnamed)
        hw.add_metrics_by_key(port, p.hw_counters)
        if p.state is not None:
            state.add_metric(port, p.state)
            active.add_metric(port, 1.0 if p.state == RDMA_STATE_ACTIVE else 0.0)
        if p.phys_state is not None:
            phys.add_metric(port, p.phys_state)
        if p.rate_bits_per_second is not None:
            rate.add_metric(port, p.rate_bits_per_second / 8)
        info.add_metric((*port, _port_kind(p), p.state_name, p.phys_state_name, ",".join(p.netdevs)), 1.0)
    return [*(family for family, _ in named.values()), other, hw, state, phys, active, rate, info]
