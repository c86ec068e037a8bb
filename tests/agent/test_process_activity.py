"""What the agent sees of a rank's process: stopped or running, and how fast it writes (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backends.process_activity import ProcessActivity, alive, read_activity
from agent.collectors.process_rates import ProcessWatch

WRITER = """
import sys, time
with open(sys.argv[1], "wb") as out:  # ~20 MB/s, like a checkpoint written to slow storage
    while True:
        out.write(bytes(1 << 20)); out.flush(); out.seek(0); time.sleep(0.05)
"""


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "checkpoint.bin")])
    yield process
    os.kill(process.pid, signal.SIGCONT)
    process.kill()
    process.wait()


def test_a_writing_process_shows_its_write_rate_and_a_stopped_one_writes_nothing(
    writer: subprocess.Popen[bytes],
) -> None:
    watch = ProcessWatch(read_activity, min_span_seconds=1.0)
    time.sleep(0.5)
    first = watch.observe([writer.pid], time.monotonic())[writer.pid]
    assert first.write_bytes_per_second is None, "no rate from a single look"
    time.sleep(1.5)
    running = watch.observe([writer.pid], time.monotonic())[writer.pid]
    assert running.state in ("R", "S", "D")
    assert running.write_bytes_per_second is not None and running.write_bytes_per_second > 5e6
    os.kill(writer.pid, signal.SIGSTOP)
    time.sleep(0.2)
    watch.observe([writer.pid], time.monotonic())  # the look the next rate spans from
    time.sleep(1.5)
    stopped = watch.observe([writer.pid], time.monotonic())[writer.pid]
    assert stopped.state == "T"
    assert alive(writer.pid), "a stopped process is alive: it holds its rank"
    assert stopped.write_bytes_per_second == 0 and stopped.cpu_share == 0


def test_a_gone_process_is_forgotten_and_an_unreadable_io_file_leaves_the_rate_unknown(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert read_activity(process.pid) is None and not alive(process.pid)
    looks = iter([ProcessActivity("S", 1.0, None), ProcessActivity("S", 1.5, None)])

    def read(pid: int) -> ProcessActivity | None:  # pid 7 has no readable io file; the others are gone
        return next(looks) if pid == 7 else read_activity(pid)

    watch = ProcessWatch(read, min_span_seconds=1.0)
    watch.observe([7], 10.0)
    rates = watch.observe([7, process.pid, 0], 12.0)
    assert list(rates) == [7]
    assert rates[7].write_bytes_per_second is None and rates[7].cpu_share == 0.25
