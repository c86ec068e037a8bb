"""Collector table: every collector the agent knows, by name, with what it reads.

Entries name the module and class so a collector whose dependencies are missing never breaks the others'
import. Each class is built with `cls.from_settings(settings)`; `settings.<name>.enabled` switches it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CollectorSpec:
    name: str
    module: str
    cls: str
    reads: str


COLLECTORS: tuple[CollectorSpec, ...] = (
    CollectorSpec("nvml", "agent.collectors.nvml", "NvmlCollector", "GPUs through NVML (pynvml)"),
    CollectorSpec("network", "agent.collectors.network", "NetworkCollector", "/sys/class/net, /sys/class/infiniband"),
    CollectorSpec("host", "agent.collectors.host", "HostCollector", "/proc: the few host facts node_exporter lacks"),
    CollectorSpec("collective", "agent.collectors.collective", "CollectiveCollector", "probe records on the Unix socket"),
    CollectorSpec("periodicity", "agent.collectors.periodicity", "PeriodicityCollector", "NIC byte counters at >= 10 Hz"),
)
