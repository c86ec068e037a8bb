"""The one interface every agent collector implements; the server runs them on each scrape and evidence pull."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

from agent.evidence import EvidencePart
from agent.families import MetricFamily

if TYPE_CHECKING:
    from agent.settings import AgentSettings


class SourceUnavailable(RuntimeError):
    """The collector's source is absent or down (no NVML library, driver not loaded): an expected state, not a bug.

    The collector logs it once when it changes; the runner reports success 0 for the call without a traceback.
    """


class Collector(abc.ABC):
    """Reads one source (NVML, sysfs, the probe socket) and reports it.

    `collect()` builds fresh metric families on every call (no long-lived Gauges). It may raise: the
    framework catches it, sets `lockstep_collector_success{collector=name}` to 0 and the scrape goes on.
    Collectors that need a background thread (XID events, probe socket, 10 Hz sampling) start it in `start()`
    and stop it in `close()`.
    """

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: AgentSettings) -> Collector:
        """Build the collector from the agent's settings (its own section is `settings.<name>`)."""

    @abc.abstractmethod
    def collect(self) -> Iterable[MetricFamily]:
        """Return this collector's metric families, built now."""

    def evidence(self) -> EvidencePart | None:
        """Return this collector's part of `/api/v1/evidence`, or None if it has none."""
        return None

    def start(self) -> None:  # noqa: B027 - optional hook, most collectors have no background work
        """Start background work (threads, sockets). Default: none."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and release resources. Default: none."""
