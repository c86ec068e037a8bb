"""The evidence document an agent serves at `/api/v1/evidence`: the contract between agent and controller.

Agent collectors fill their part of it; the controller pulls it from every node and runs its detectors on it.
This module is the agent's only public API for the controller (import-linter enforces that). All times are
Unix seconds on the agent's clock; durations are seconds; rates are per second. Changing a field's meaning
needs a new `schema_version`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1

HardSignalKind = Literal[
    "xid",  # an XID event; `xid` holds the code, detection decides from its table whether it is critical
    "ecc_uncorrectable",  # volatile uncorrectable ECC errors went up
    "row_remap_failure",  # NVML says a row remap failed: the GPU needs replacing
    "row_remap_pending",  # a row remap waits for a GPU reset
    "retired_pages_pending",  # pages waiting to be retired (pre-Ampere)
    "gpu_lost",  # NVML lost the GPU (NVML_ERROR_GPU_IS_LOST) or it vanished from the device list
    "nvlink_down",  # an NVLink that the GPU has is inactive
    "pcie_degraded",  # PCIe link generation or width below the maximum while the GPU is busy
    "thermal_throttle",  # hardware/software thermal slowdown active; first_seen = since when, continuously
    "power_throttle",  # hardware power brake / power cap slowdown active; first_seen = since when
    "nic_link_down",  # a NIC or RDMA port that carried traffic is down
    "nic_link_flap",  # carrier changes / link_downed went up within the window
    "nic_speed_degraded",  # link speed below the node's usual speed for that port
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class HardSignal(_Model):
    """A fact about the node's hardware that needs no statistics to mean trouble (or, for throttling, a duration)."""

    kind: HardSignalKind
    device: str = Field(description="GPU uuid, or NIC / RDMA port name (mlx5_0/1)")
    detail: str = Field(default="", description="plain words, e.g. 'XID 79: GPU has fallen off the bus'")
    xid: int | None = Field(default=None, description="XID code, for kind 'xid'")
    count: float = Field(default=1.0, description="how many events in the window (XIDs, ECC errors, flaps)")
    first_seen: float = Field(description="Unix s when first seen (continuously since, for conditions)")
    last_seen: float = Field(description="Unix s when last seen")


class GpuEvidence(_Model):
    """A GPU's current state, for context in explanations and for the controller's GPU counts."""

    index: int
    uuid: str
    model: str = ""
    pci_bus_id: str = ""
    utilization_ratio: float | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    sm_clock_hertz: float | None = None
    healthy: bool = True


class NicEvidence(_Model):
    """One network interface or RDMA port, with rates over the agent's window (s)."""

    name: str = Field(description="interface name (eth0) or RDMA port (mlx5_0/1)")
    kind: Literal["ethernet", "roce", "infiniband", "other"] = "ethernet"
    up: bool = True
    link_speed_bits_per_second: float | None = None
    tx_bytes_per_second: float = 0.0
    rx_bytes_per_second: float = 0.0
    errors_per_second: float = 0.0
    drops_per_second: float = 0.0
    retransmits_per_second: float = 0.0
    xmit_wait_ratio: float | None = Field(
        default=None, description="share of time the port had data to send but no credits (port_xmit_wait)"
    )
    carrier_changes_in_window: int = 0
    window_seconds: float = 0.0


class TrafficPeriodicity(_Model):
    """Zero-touch view of collective traffic on an interface, from NIC byte counters sampled at >= 10 Hz."""

    interface: str
    period_seconds: float | None = Field(description="dominant period of the traffic bursts; None if aperiodic")
    burst_bytes_per_second: float = Field(description="throughput inside bursts (high quantile of samples)")
    mean_bytes_per_second: float = 0.0
    regularity: float = Field(description="0..1, autocorrelation peak at the period; 1 = perfectly periodic")
    window_seconds: float


class CollectiveSample(_Model):
    """One collective of one rank: the unit the controller lines up across ranks by (process group, seq)."""

    seq: int
    op: str
    bytes: int = 0
    arrival: float = Field(description="Unix s when the rank issued the collective")
    wait_seconds: float | None = Field(
        default=None, description="issue to completion, s, where the backend allows measuring it"
    )


class RankEvidence(_Model):
    """Window summary of one rank of one job in one process group, as seen by the agent on its node."""

    job: str
    rank: int
    world_size: int
    process_group: str = "default"
    local_rank: int | None = None
    pod: str = ""
    namespace: str = ""
    pid: int = 0
    window_seconds: float
    collectives_in_window: int = 0
    collectives_per_second: float = 0.0
    step_period_seconds: float | None = Field(default=None, description="period of the rank's collective pattern")
    last_seq: int = -1
    last_progress_at: float = Field(description="Unix s of the last collective issued or completed")
    pending_seq: int | None = Field(default=None, description="the collective issued and not yet completed")
    pending_op: str | None = None
    pending_since: float | None = None
    wait_seconds_p50: float | None = None
    wait_seconds_p90: float | None = None
    compute_gap_seconds_p50: float | None = Field(
        default=None, description="time between completing one collective and issuing the next, s"
    )
    bytes_per_second: float = 0.0
    dropped_records: int = Field(default=0, description="probe records lost (probe buffer full, agent away)")
    process_state: str | None = Field(
        default=None,
        description="state of the rank's process (/proc/<pid>/stat): R running, S sleeping, D in I/O, T stopped",
    )
    process_write_bytes_per_second: float | None = Field(
        default=None,
        description="bytes the rank's process wrote (files, pipes, sockets: /proc/<pid>/io wchar) per second since "
        "the agent's previous look, seconds before: a rank writing a checkpoint is busy, not hung",
    )
    process_cpu_share: float | None = Field(
        default=None, description="CPU seconds per second of the rank's process over the same span (1 = a core)"
    )
    samples: list[CollectiveSample] = Field(default_factory=list, description="the most recent collectives")


class TcpPath(_Model):
    """Bulk TCP sends from one local address to one remote address over the agent's window (sock_diag)."""

    local_address: str
    remote_address: str
    rtt_seconds: float = Field(
        description="lower quartile of the smoothed RTT (tcpi_rtt) of the busiest flow, over the window's samples"
    )
    min_rtt_seconds: float | None = Field(
        default=None,
        description="lowest RTT of the busiest flows over the window (tcpi_min_rtt: the kernel's minimum over "
        "net.ipv4.tcp_min_rtt_wlen, 5 min by default, delayed ACKs left out): the path's RTT when nothing waits; "
        "None: not measured",
    )
    bytes_per_second: float = Field(description="bytes sent and acknowledged (tcpi_bytes_acked)")
    delivery_bytes_per_second: float | None = Field(
        default=None,
        description="median delivery rate (tcpi_delivery_rate) of the samples in which the network, not the "
        "application, limited the flow; None: the sender always ran out of data first (not network-limited)",
    )
    delivery_bound_bytes_per_second: float | None = Field(
        default=None,
        description="highest delivery rate (tcpi_delivery_rate) of the samples, application-limited or not: the "
        "path carries at least this much; None: not measured",
    )
    samples: int = Field(description="socket dumps in the window in which the path carried bulk data")


class HostEvidence(_Model):
    """Host facts over the agent's window: TCP retransmits show a slow or lossy path that NIC counters may miss;
    the RTT of bulk sends per remote address shows a slow egress without loss (a queue instead of drops)."""

    tcp_retransmit_segments_per_second: float = 0.0
    tcp_out_segments_per_second: float = 0.0
    window_seconds: float = 0.0
    tcp_paths: list[TcpPath] = Field(default_factory=list, description="busiest first; at most 64")


class Evidence(_Model):
    """Everything one agent knows about its node right now."""

    schema_version: Literal[1] = SCHEMA_VERSION
    node: str
    collected_at: float = Field(description="Unix s, agent clock")
    agent_version: str = ""
    collectors: dict[str, bool] = Field(default_factory=dict, description="collector name -> last run succeeded")
    hard_signals: list[HardSignal] = Field(default_factory=list)
    gpus: list[GpuEvidence] = Field(default_factory=list)
    nics: list[NicEvidence] = Field(default_factory=list)
    periodicity: list[TrafficPeriodicity] = Field(default_factory=list)
    ranks: list[RankEvidence] = Field(default_factory=list)
    host: HostEvidence | None = None


class EvidencePart(_Model):
    """What one collector contributes to the document; the agent merges the parts of all collectors."""

    hard_signals: list[HardSignal] = Field(default_factory=list)
    gpus: list[GpuEvidence] = Field(default_factory=list)
    nics: list[NicEvidence] = Field(default_factory=list)
    periodicity: list[TrafficPeriodicity] = Field(default_factory=list)
    ranks: list[RankEvidence] = Field(default_factory=list)
    host: HostEvidence | None = None
