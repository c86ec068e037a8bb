"""The controller's settings: one pydantic-settings tree, from flags, env `LOCKSTEP_*` (nested with `__`) and YAML.

Precedence: command-line flags > environment > `--config FILE` > defaults. Nothing else in the controller reads
os.environ (the `kubernetes` client reads its own in-cluster variables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)


class FetchSettings(BaseModel):
    """How evidence is pulled from the agents' `/api/v1/evidence`."""

    timeout_seconds: float = Field(
        default=2.0, gt=0, description="Per request; an agent slower than this is unreachable this cycle."
    )
    concurrency: int = Field(
        default=64, ge=1, description="Requests in flight at once; bounds sockets and memory on big clusters."
    )
    backoff_initial_seconds: float = Field(
        default=5.0, ge=0, description="After a failure, skip the agent this long (doubles per failure)."
    )
    backoff_max_seconds: float = Field(
        default=60.0, ge=0, description="Upper bound of the per-agent backoff."
    )
    max_evidence_age_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Evidence older than this (agent clock vs ours) is treated as missing: unknown.",
    )


class KubeSettings(BaseModel):
    """The Kubernetes side: where to find agents, which nodes to manage, how to call the API."""

    kubeconfig: str = Field(
        default="", description="Kubeconfig file; empty = in-cluster service account, then ~/.kube/config."
    )
    namespace: str = Field(
        default="lockstep",
        description="Namespace of the controller's Lease, breaker ConfigMap and Events about itself.",
    )
    node_selector: str = Field(
        default="", description="Label selector of the nodes Lockstep may act on; empty = all nodes."
    )
    agent_namespace: str = Field(
        default="lockstep", description="Namespace of the agent DaemonSet's pods; empty = all namespaces."
    )
    agent_label_selector: str = Field(
        default="app.kubernetes.io/name=lockstep-agent",
        description="Label selector of the agent DaemonSet's pods.",
    )
    agent_port: int = Field(
        default=9445, description="Agent HTTP port when the pod declares no container port named 'http'."
    )
    topology_label: str = Field(
        default="topology.kubernetes.io/zone",
        description="Node label naming the switch/rack/zone; many suspects behind one value is a fabric problem.",
    )
    check_rank_pods: bool = Field(
        default=True,
        description="Drop ranks an agent reports for a pod (POD_NAMESPACE/POD_NAME) that runs on another node; "
        "reads every running pod (list + watch).",
    )
    watch: bool = Field(
        default=True,
        description="Keep nodes and pods by list + watch; off = list them every cycle (small clusters).",
    )
    watch_seconds: float = Field(
        default=300.0, gt=0, description="Length of one watch request before it is renewed."
    )
    api_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Per API request; a hung apiserver costs at most this."
    )
    api_attempts: int = Field(
        default=4, ge=1, description="Attempts per API call on 5xx, 429 and timeouts (backoff between)."
    )
    api_backoff_seconds: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per attempt."
    )
    conflict_attempts: int = Field(
        default=8, ge=1, description="Read-modify-write rounds on 409 Conflict before giving up this cycle."
    )
    breaker_configmap: str = Field(
        default="lockstep-breaker",
        description="ConfigMap in `namespace` holding the circuit breaker (survives restarts).",
    )
    event_namespace: str = Field(
        default="default", description="Namespace of node Events (kubectl describe node shows them there)."
    )


class LeaderSettings(BaseModel):
    """Leader election on a coordination.k8s.io Lease: only the holder acts."""

    enabled: bool = Field(default=True, description="Off only for a single replica you are sure of.")
    lease_name: str = Field(default="lockstep-controller", description="Lease in kube.namespace.")
    identity: str = Field(default="", description="This replica's holder identity; empty = hostname + pid.")
    lease_duration_seconds: float = Field(
        default=15.0, gt=0, description="Others may take the lease this long after our last renewal."
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Stop acting if the lease was not renewed for this long (< lease duration).",
    )
    retry_period_seconds: float = Field(
        default=2.0, gt=0, description="How often to renew or try to acquire."
    )


class SafetySettings(BaseModel):
    """Limits on what Lockstep may do to a cluster (see DESIGN.md 'Safety of actions')."""

    max_cordoned_nodes: int = Field(
        default=3, ge=0, description="At most this many nodes cordoned by Lockstep at once."
    )
    max_cordoned_ratio: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="...and at most this share of managed nodes (at least one node if max_cordoned_nodes > 0).",
    )
    max_cordons_per_window: int = Field(default=3, ge=0, description="Rate cap: new cordons per rate window.")
    rate_window_seconds: float = Field(default=3600.0, gt=0, description="Window of the rate cap.")
    breaker_nodes: int = Field(
        default=5,
        ge=1,
        description="Circuit breaker opens when this many nodes turn faulty within the breaker window.",
    )
    breaker_window_seconds: float = Field(default=600.0, gt=0, description="Window of the circuit breaker.")
    suspect_events: bool = Field(
        default=True, description="Emit a LockstepSuspect Event when a node turns suspect."
    )
    auto_release_after_seconds: float | None = Field(
        default=None,
        description="Release a node Lockstep cordoned after it was healthy this long; None = only people release.",
    )
    release_memory_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="A node a person released is not re-cordoned for the same reason until it was healthy this long.",
    )
    evidence_annotation_max_bytes: int = Field(
        default=4096, ge=256, description="Bound of the lockstep.dev/evidence annotation."
    )


class ControllerSettings(BaseSettings):
    """Settings of `lockstep-controller`."""

    model_config = SettingsConfigDict(env_prefix="LOCKSTEP_", env_nested_delimiter="__", extra="forbid")

    listen: str = Field(
        default="0.0.0.0:9446", description="HOST:PORT of the read-only HTTP API and /metrics."
    )
    agent_urls: list[str] = Field(
        default_factory=list,
        description="Agent base URLs; when set, no Kubernetes: discovery from this list, no actions.",
    )
    dry_run: bool = Field(default=False, description="Decide and report, write nothing to Kubernetes.")
    interval_seconds: float = Field(
        default=5.0, gt=0, description="One fetch -> detect -> decide -> act cycle this often."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    leader: LeaderSettings = Field(default_factory=LeaderSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    detection: dict[str, Any] = Field(
        default_factory=dict,
        description="Detection thresholds: fields of DetectionConfig (controller/detect/config.py), each documented "
        "there; unset ones keep their defaults.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"listen must be HOST:PORT, got {value!r}")
        return value


def load(config_file: str | None = None, **flags: Any) -> ControllerSettings:
    """Build the settings: flags (non-None) over env over the YAML file over defaults. Raises ValueError."""
    if config_file:
        try:
            content = yaml.safe_load(Path(config_file).read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read config file {config_file}: {error}") from error
        if content is not None and not isinstance(content, dict):
            raise ValueError(f"config file {config_file} must hold a mapping")

    class FromFile(ControllerSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
            if config_file:
                sources += (YamlConfigSettingsSource(settings_cls, yaml_file=config_file),)
            return sources

    return FromFile(**{k: v for k, v in flags.items() if v is not None})
