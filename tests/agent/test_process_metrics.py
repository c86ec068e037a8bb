"""The agent's own process_* metrics: the names, help texts and values of prometheus_client's ProcessCollector."""

from __future__ import annotations

import os

from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from agent.process_metrics import ProcessMetrics, python_info


def values(collector: object) -> dict[str, tuple[str, float]]:
    return {s.name: (m.documentation, s.value) for m in collector.collect() for s in m.samples}  # type: ignore[attr-defined]


def test_process_metrics_say_what_prometheus_clients_process_collector_says() -> None:
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]  # a count the listing would get wrong
    ours = ProcessMetrics()
    try:
        mine, theirs = values(ours), values(ProcessCollector(registry=None))
    finally:
        ours.close()
        for fd in held:
            os.close(fd)
    assert mine.keys() == theirs.keys()
    for name, (help_text, value) in mine.items():
        assert help_text == theirs[name][0], name
        if name == "process_open_fds":  # the library's listing holds one fd of its own while it counts
            assert value == theirs[name][1] - 1
        elif name in ("process_resident_memory_bytes", "process_virtual_memory_bytes"):
            assert abs(value - theirs[name][1]) <= 16 << 20, name  # read a moment apart
        elif name == "process_cpu_seconds_total":
            assert 0 <= theirs[name][1] - value <= 1.0
        else:
            assert value == theirs[name][1], name


def test_open_fds_are_counted_as_they_change() -> None:
    ours = ProcessMetrics()
    try:
        before = values(ours)["process_open_fds"][1]
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(20)]
        during = values(ours)["process_open_fds"][1]
        for fd in held:
            os.close(fd)
        assert during == before + 20
        assert values(ours)["process_open_fds"][1] == before
    finally:
        ours.close()


def test_python_info_says_what_prometheus_clients_platform_collector_says() -> None:
    theirs = {(s.name, tuple(sorted(s.labels.items())), s.value) for m in PlatformCollector(registry=None).collect() for s in m.samples}
    mine = {(s.name, tuple(sorted(s.labels.items())), s.value) for s in python_info().samples}
    assert mine == theirs
