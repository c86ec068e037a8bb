"""The agent's process_* metrics say what prometheus_client's ProcessCollector says, under its names and HELP."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.process_collector import ProcessCollector

from agent.process_metrics import ProcessMetrics, max_open_files


def test_process_metrics_have_the_librarys_names_types_help_and_values() -> None:
    ours = {f.name: f for f in ProcessMetrics().collect()}
    library = {f.name: f for f in ProcessCollector(registry=None).collect()}
    assert [(f.name, f.type, f.documentation) for f in ours.values()] == [
        (f.name, f.type, f.documentation) for f in library.values()
    ]
    for name in ("process_start_time_seconds", "process_max_fds", "process_virtual_memory_bytes"):
        assert ours[name].samples == library[name].samples
    assert [s.name for s in ours["process_cpu_seconds"].samples] == ["process_cpu_seconds_total"]
    listed = len(os.listdir("/proc/self/fd"))  # the listing holds a descriptor of its own
    assert ours["process_open_fds"].samples[0].value in (listed - 1, listed)


def test_the_open_file_limit_is_the_soft_one_and_unlimited_is_left_out(tmp_path: Path) -> None:
    limits = tmp_path / "limits"
    limits.write_text(
        "Max cpu time              unlimited            unlimited            seconds\n"
        "Max open files            1024                 524288               files\n"
    )
    assert max_open_files(str(limits)) == 1024
    limits.write_text("Max open files            unlimited            unlimited            files\n")
    assert max_open_files(str(limits)) is None
