"""The agent's settings: one pydantic-settings tree, from env `LOCKSTEP_*` (nested with `__`) and an optional YAML file.

Nothing else in the agent reads os.environ (the probe, which runs inside training processes, has its own).
Each collector owns one section below; add fields to your section with a docstring explaining the default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NvmlSettings(BaseModel):
    """NVML collector (GPU telemetry and hard faults through pynvml)."""

    enabled: bool = Field(default=True, description="Read GPUs through NVML; off on nodes without GPUs.")


class NetworkSettings(BaseModel):
    """Network collector (/sys/class/net and /sys/class/infiniband)."""

    enabled: bool = Field(default=True, description="Export every interface and RDMA port.")


class HostSettings(BaseModel):
    """Host collector: the few host facts the controller and dashboards need that node_exporter lacks."""

    enabled: bool = Field(default=True, description="Export host facts.")


class CollectiveSettings(BaseModel):
    """Collective collector: receives probe records from training processes over the Unix socket."""

    enabled: bool = Field(default=True, description="Listen for probe records from training processes.")
    socket_dir: str = Field(
        default="/run/lockstep",
        description="Directory of probe.sock; the probe's LOCKSTEP_SOCKET_DIR. Mount it (hostPath) into training pods.",
    )
    socket_mode: int = Field(
        default=0o666,
        description="Permission bits of probe.sock: training pods run as any uid, so everyone may send; "
        "the directory stays root-owned and not writable by others so nobody can replace the socket.",
    )
    trust: Literal["auto", "pod", "process"] = Field(
        default="auto",
        description="Who may speak for a (job, rank): 'pod' = only processes in a Kubernetes pod (needs hostPID "
        "to read /proc/<pid>/cgroup), rank bound to its pod; 'process' = any local process, rank bound to its "
        "pid; 'auto' = pod when the sender is in one, else process (fits clusters and local runs alike).",
    )
    proc_root: str = Field(default="/proc", description="Where to read /proc/<pid>/cgroup and /proc/<pid>/stat.")
    window_seconds: float = Field(
        default=30.0, gt=0, description="Window of the rank summaries: a few dozen steps of a typical job."
    )
    max_samples_per_rank: int = Field(
        default=2048, ge=16, description="Collectives kept per (job, rank, process group): bounds memory."
    )
    evidence_samples: int = Field(
        default=128, ge=0, description="Most recent collectives per rank in /api/v1/evidence for lateness."
    )
    max_ranks: int = Field(
        default=1024, ge=1, description="(job, rank, process group) windows kept at most; more are dropped."
    )
    expire_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Forget a rank silent this long (job ended); long enough to keep reporting a hung rank.",
    )
    max_clock_skew_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Records stamped further than this from the agent's clock are stale or replayed: dropped.",
    )
    receive_buffer_bytes: int = Field(
        default=4 << 20, ge=65536, description="SO_RCVBUF of the socket: absorbs bursts while the agent is busy."
    )


class PeriodicitySettings(BaseModel):
    """Periodicity collector: zero-touch collective traffic pattern from NIC byte counters sampled at >=10 Hz."""

    enabled: bool = Field(default=True, description="Sample NIC counters to find periodic collective traffic.")
    sysfs_net: str = Field(default="/sys/class/net", description="Where the interfaces' statistics/ live.")
    sample_hz: float = Field(
        default=20.0, ge=10.0, le=200.0, description="Counter reads per second: resolves periods down to ~0.2 s."
    )
    window_seconds: float = Field(default=30.0, gt=1, description="Rate history the period is estimated over.")
    interfaces: list[str] = Field(
        default_factory=list,
        description="Interfaces to sample; empty = all but loopback and virtual bridges/veths named in 'exclude'.",
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["lo", "docker*", "veth*", "cni*", "flannel*", "cali*", "virbr*"],
        description="fnmatch patterns of interfaces that carry no training traffic of their own.",
    )
    min_bytes_per_second: float = Field(
        default=100_000.0,
        ge=0,
        description="Mean rate below which an interface is idle and gets no period (100 kB/s).",
    )


class AgentSettings(BaseSettings):
    """Settings of `lockstep-agent`."""

    model_config = SettingsConfigDict(env_prefix="LOCKSTEP_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field(default="0.0.0.0:9445", description="HOST:PORT the HTTP server binds.")
    node_name: str = Field(default="", description="Kubernetes node name; default env NODE_NAME, then hostname.")
    nvml: NvmlSettings = Field(default_factory=NvmlSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    host: HostSettings = Field(default_factory=HostSettings)
    collective: CollectiveSettings = Field(default_factory=CollectiveSettings)
    periodicity: PeriodicitySettings = Field(default_factory=PeriodicitySettings)
