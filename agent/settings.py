"""The agent's settings: one pydantic tree, from env `LOCKSTEP_*` (nested with `__`) and an optional YAML file.

Nothing else in the agent reads os.environ (the probe, which runs inside training processes, has its own). The
environment is read here (`env_values`), as pydantic-settings reads it, without importing pydantic-settings: that
alone cost the agent ~8 MB of its 60 MB RSS budget (it loads asyncio, dotenv and its cloud secret sources).
Each collector owns one section below; add fields to your section with a docstring explaining the default.
"""

from __future__ import annotations

import json
import os
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENV_PREFIX = "LOCKSTEP_"
ENV_NESTED_DELIMITER = "__"


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
    nvlink_error_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Read the NVLink CRC flit, CRC data and ECC data counters this often in the background: NVML "
        "has them only by one call per link and counter (54 per H100), too many for every scrape. They feed rates on "
        "dashboards; an NVLink going down is its state, read on every scrape.",
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
    sysfs_root: Path = Field(
        default=Path("/sys"), description="Where sysfs is mounted; in a container mount the host's /sys here."
    )
    exclude_interfaces: str = Field(
        default="^(veth|cali|lxc|cilium|flannel|cni|docker|vxlan)",
        description="Regular expression of interface names to leave out: by default the per-pod and overlay "
        "devices of container networking, which come and go with pods; empty keeps all.",
    )
    xmit_wait_bytes_per_tick: float = Field(
        default=8.0,
        gt=0,
        description=(
            "Link bytes one port_xmit_wait tick stands for (NVIDIA: 8 B per port on Quantum-class ports); "
            "xmit_wait_ratio in the evidence is ticks x this / link bytes in the window."
        ),
    )

    @field_validator("exclude_interfaces")
    @classmethod
    def _check_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return value


class HostSettings(BaseModel):
    """Host collector: the few host facts the controller and dashboards need that node_exporter lacks."""

    enabled: bool = Field(default=True, description="Export host facts.")
    procfs_root: Path = Field(
        default=Path("/proc"), description="Where procfs is mounted; in a container mount the host's /proc here."
    )
    tcp_namespace_pid: Literal["1", "self"] = Field(
        default="1",
        description="Whose network namespace the TCP retransmit counters come from: '1' = the node's (PID 1 of "
        "the host's /proc at procfs_root: right on the host, and in a pod with or without hostNetwork); 'self' = "
        "the agent's own, for an agent started inside another network namespace with the real /proc.",
    )
    send_rtt: bool = Field(
        default=True,
        description="Sample the RTT of bulk TCP sends per remote address (sock_diag socket dumps, one per scrape "
        "and evidence pull). Needs the agent in the node's network namespace (hostNetwork, or tcp_namespace_pid "
        "'self'); otherwise it stays off.",
    )


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
        default=20.0, ge=10.0, le=200.0,
        description="Counter reads per second while busy traffic repeats faster than 10 reads of min_sample_hz "
        "or has no clear period: resolves periods down to ~0.2 s.",
    )  # fmt: skip
    min_sample_hz: float = Field(
        default=10.0, ge=10.0, le=200.0,
        description="Counter reads per second while no interface is busy or all busy ones repeat slower (steps "
        "of >= 1 s at 10 Hz): each read costs the agent a thread wakeup.",
    )  # fmt: skip
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

    @model_validator(mode="after")
    def _rates_in_order(self) -> PeriodicitySettings:
        if self.min_sample_hz > self.sample_hz:
            raise ValueError(
                f"min_sample_hz ({self.min_sample_hz:g}) is above sample_hz ({self.sample_hz:g}): "
                "min_sample_hz is the rate for slow or no traffic, at most sample_hz"
            )
        return self


class AgentSettings(BaseModel):
    """Settings of `lockstep-agent`."""

    model_config = ConfigDict(extra="forbid")

    listen: str = Field(default="0.0.0.0:9445", description="HOST:PORT the HTTP server binds.")
    node_name: str = Field(default="", description="Kubernetes node name; default env NODE_NAME, then hostname.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Logging level.")
    evidence_window_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Rates in /api/v1/evidence are over at least this many s (the controller pulls every few s).",
    )
    collector_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="A collector that takes longer is left out of that scrape (success 0), so none stalls a scrape.",
    )
    scrape_ahead_seconds: float = Field(
        default=0.1,
        ge=0,
        le=0.25,
        description="Once a scraper's scrapes are steady (Prometheus), make its next /metrics answer this long before "
        "the scrape is due, so the scrape does not wait for the collectors; the values are then up to this + 0.05 s "
        "older. 0 = collect at every scrape.",
    )
    nvml: NvmlSettings = Field(default_factory=NvmlSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    host: HostSettings = Field(default_factory=HostSettings)
    collective: CollectiveSettings = Field(default_factory=CollectiveSettings)
    periodicity: PeriodicitySettings = Field(default_factory=PeriodicitySettings)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_keys_in_sections(cls, data: Any) -> Any:
        """A typo in a section (file or env) is an error, not a silently ignored key."""
        if isinstance(data, Mapping):
            for name, field in cls.model_fields.items():
                section, model = data.get(name), field.annotation
                if isinstance(section, Mapping) and isinstance(model, type) and issubclass(model, BaseModel):
                    unknown = sorted(set(section) - set(model.model_fields))
                    if unknown:
                        raise ValueError(f"unknown setting {name}.{unknown[0]}")
        return data

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @property
    def listen_address(self) -> tuple[str, int]:
        """`listen` as (host, port)."""
        return split_listen(self.listen)

    @model_validator(mode="after")
    def _default_node_name(self) -> AgentSettings:
        if not self.node_name:
            self.node_name = os.environ.get("NODE_NAME") or socket.gethostname()
        return self


def load_settings(file_values: Mapping[str, Any], cli_values: Mapping[str, Any]) -> AgentSettings:
    """Build the settings with precedence CLI > env `LOCKSTEP_*` > config file > defaults.

    Raises pydantic.ValidationError naming the offending field.
    """
    merged = _deep_merge(_deep_merge(dict(file_values), env_values(os.environ)), cli_values)
    return AgentSettings.model_validate(merged)


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the environment sets: `LOCKSTEP_<FIELD>` and `LOCKSTEP_<SECTION>__<FIELD>`, names in any case
    (as pydantic-settings reads them). Lists are JSON or comma-separated, sections JSON. Other `LOCKSTEP_*` variables (the probe's
    LOCKSTEP_PROBE, LOCKSTEP_SOCKET_DIR ...) name no setting and are left alone; an unknown key inside a section is
    kept, so validation names it."""
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED_DELIMITER)
        field = AgentSettings.model_fields.get(path[0])
        if field is None or len(path) > 2:
            continue
        if len(path) == 1:
            values[path[0]] = _env_value(raw, field.annotation)
            continue
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            inner = section.model_fields.get(path[1])
            section_values = values.setdefault(path[0], {})
            if isinstance(section_values, dict):
                section_values[path[1]] = _env_value(raw, inner.annotation if inner else None)
    return values


def _env_value(raw: str, annotation: Any) -> Any:
    """The value of a setting from text (an environment variable or a command-line option): a list as JSON or as
    comma-separated items (`eth0,eth1`), a mapping or section as JSON; anything else as the string (pydantic
    converts it)."""
    listed = typing.get_origin(annotation) in (list, set, tuple)
    if listed or typing.get_origin(annotation) is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        try:
            return json.loads(raw)
        except ValueError:
            if listed and not raw.lstrip().startswith("["):  # "[..." meant JSON: validation names what is wrong
                return [item.strip() for item in raw.split(",") if item.strip()]
    return raw


def text_value(path: tuple[str, ...], raw: str) -> Any:
    """The value of the setting at `path` (("network", "window_seconds")) from a command-line option's text."""
    field = AgentSettings.model_fields.get(path[0])
    for name in path[1:]:
        section = field.annotation if field is not None else None
        field = section.model_fields.get(name) if isinstance(section, type) and issubclass(section, BaseModel) else None
    return _env_value(raw, field.annotation if field is not None else None)


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') as (host, port); raises ValueError on anything else."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 0.0.0.0:9445), got {listen!r}")
    return host.strip("[]"), int(port)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated with `top`, recursing into nested sections."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged
