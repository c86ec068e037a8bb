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
