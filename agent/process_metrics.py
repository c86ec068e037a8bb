"""The agent's own process_* metrics on /metrics: the names and HELP of prometheus_client's ProcessCollector.

The library counts open file descriptors by listing /proc/self/fd: ~700 entries in the agent (the network collector
holds its sysfs files open), 0.2-0.4 ms of every scrape. Linux 6.2 and later give the count as the size of that
directory; older kernels report 0 there and get the listing.
"""

from __future__ import annotations

import os

from prometheus_client.metrics_core import Metric

from agent.families import CounterFamily, GaugeFamily


class ProcessMetrics:
    """A prometheus_client collector of this process' CPU time, memory, start time and file descriptors, from
    /proc; what cannot be read is left out, as the library does."""

    def __init__(self) -> None:
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._page_bytes = os.sysconf("SC_PAGESIZE")
        self._boot_time = _boot_time()

    def collect(self) -> list[Metric]:
        if self._boot_time is None:
            return []
        families: list[Metric] = []
        try:
            with open("/proc/self/stat", "rb") as stat:  # the fields after the name, which may hold spaces
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            pass
        else:
            ticks = self._ticks_per_second
            families += [
                _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", float(fields[20])),
                _gauge(
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    float(fields[21]) * self._page_bytes,
                ),
                _gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    float(fields[19]) / ticks + self._boot_time,
                ),
            ]
            cpu = CounterFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.")
            cpu.add_metric([], (float(fields[11]) + float(fields[12])) / ticks)
            families.append(cpu)
        try:
            open_fds = os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd"))
            max_fds = max_open_files("/proc/self/limits")
        except OSError:
            return families
        families.append(_gauge("process_open_fds", "Number of open file descriptors.", float(open_fds)))
        if max_fds is not None:
            families.append(_gauge("process_max_fds", "Maximum number of open file descriptors.", max_fds))
        return families


def _gauge(name: str, help_text: str, value: float) -> GaugeFamily:
    family = GaugeFamily(name, help_text)
    family.add_metric([], value)
    return family


def _boot_time() -> float | None:
    """Unix s the machine booted (btime in /proc/stat); None if /proc cannot be read."""
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def max_open_files(limits_path: str) -> float | None:
    """The soft limit on open files in a /proc/PID/limits file (None if unlimited or absent); raises OSError."""
    with open(limits_path, "rb") as limits:
        for line in limits:
            if line.startswith(b"Max open file"):
                soft = line.split()[3]
                return None if soft == b"unlimited" else float(soft)
    return None
