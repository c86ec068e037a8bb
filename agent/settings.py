"""The agent's settings: one pydantic-settings tree, from env `LOCKSTEP_*` (nested with `__`) and an optional YAML file.

Nothing else in the agent reads os.environ (the probe, which runs inside training processes, has its own).
Each collector owns one section below; add fields to your section with a docstring explaining the default.
"""

from __future__ import annotations

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NvmlSettings(BaseModel):
    """NVML collector (GPU telemetry and hard faults through pynvml)."""

    enabled: bool = Field(default=True, description="Read GPUs through NVML; off on nodes without GPUs.")
    library_path: str = Field(
        default="",
        description="Load this libnvidia-ml.so.1 instead of the one the dynamic loader finds by soname; "
        "empty = the driver's. Tests and the demo use build/fake-nvml/libnvidia-ml.so.1.",
    )
    xid_window_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long an XID stays in the evidence, with its count and first/last seen; 5 min spans many "
        "controller pulls and the tail of an XID burst.",
    )
    init_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="After nvmlInit fails (no driver, driver not loaded) try again this often, so a driver loaded "
        "later is picked up without restarting the agent.",
    )
    pcie_throughput_interval_seconds: float = Field(
        default=15.0,
        ge=0,
        description="Sample nvmlDeviceGetPcieThroughput this often in the background: each call measures for "
        "20 ms, far too slow for a scrape of 8 GPUs. 0 turns the PCIe throughput metrics off.",
    )
    pcie_busy_utilization_ratio: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="A PCIe generation below the maximum counts as degraded only while GPU utilisation is at least "
        "this: idle GPUs lower their link speed to save power. A narrower link width counts at any load.",
    )


class NetworkSettings(BaseModel):
    """Network collector (/sys/class/net and /sys/class/infiniband)."""

    enabled: bool = Field(default=True, description="Export every interface and RDMA port.")


class HostSettings(BaseModel):
    """Host collector: the few host facts the controller and dashboards need that node_exporter lacks."""

    enabled: bool = Field(default=True, description="Export host facts.")


class CollectiveSettings(BaseModel):
    """Collective collector: receives probe records from training processes over the Unix socket."""

    enabled: bool = Field(default=True, description="Listen for probe records from training processes.")


class PeriodicitySettings(BaseModel):
    """Periodicity collector: zero-touch collective traffic pattern from NIC byte counters sampled at >=10 Hz."""

    enabled: bool = Field(default=True, description="Sample NIC counters to find periodic collective traffic.")


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
