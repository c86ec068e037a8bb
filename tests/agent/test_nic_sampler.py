"""The C NIC counter sampler (agent/_nicsample.c) on real files, and the periodicity collector with and without it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.backends import nic_bytes
from agent.backends.nic_bytes import NativeSampler, native_sampler
from agent.collectors import periodicity
from agent.collectors.periodicity import PeriodicityCollector
from agent.settings import PeriodicitySettings
from tests.probe.jobs import wait_for


def test_the_c_sampler_is_built_by_the_install() -> None:
    assert native_sampler(4) is not None, "agent._nicsample missing: `pip install -e .` builds it (needs gcc)"


def counter_file(path: Path, value: int | str) -> int:
    path.write_text(f"{value}\n")
    return os.open(path, os.O_RDONLY)


def taken(sampler: NativeSampler, columns: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    times, intervals, values, overwritten = sampler.take()
    t = np.frombuffer(times)
    return t, np.frombuffer(intervals), np.frombuffer(values).reshape(len(t), columns), overwritten


@pytest.fixture
def sampler() -> Iterator[NativeSampler]:
    made = native_sampler(1000)
    assert made is not None
    yield made
    made.stop()


def test_it_reads_each_descriptor_at_its_interval_nan_where_a_read_fails(
    tmp_path: Path, sampler: NativeSampler
) -> None:
    good = counter_file(tmp_path / "rx_bytes", 12345678901234)
    garbage = counter_file(tmp_path / "odd", "12ab")
    closed = counter_file(tmp_path / "closed", 7)
    os.close(closed)
    sampler.set_fds((good, garbage, closed))
    sampler.set_interval(0.02)
    start = time.monotonic()
    sampler.start()
    time.sleep(0.5)
    times, intervals, values, overwritten = taken(sampler, 3)
    assert 15 <= len(times) <= 26 and overwritten == 0
    assert start < times[0] and times[-1] <= time.monotonic()  # time.monotonic's clock
    assert np.diff(times) == pytest.approx(0.02, abs=0.015)
    assert (intervals == 0.02).all()
    assert (values[:, 0] == 12345678901234).all()
    assert np.isnan(values[:, 1:]).all()
    os.close(good)
    os.close(garbage)


def test_reads_follow_the_file_and_the_interval_in_force(tmp_path: Path, sampler: NativeSampler) -> None:
    path = tmp_path / "tx_bytes"
    fd = counter_file(path, 0)
    sampler.set_fds((fd,))
    sampler.set_interval(0.01)
    sampler.start()
    with open(path, "r+b") as file:  # written in place, as sysfs values change under an open file
        for total in range(1, 21):
            time.sleep(0.01)
            file.seek(0)
            file.write(f"{total:08d}\n".encode())
            file.flush()
    sampler.set_interval(0.05)
    time.sleep(0.2)
    _, intervals, values, _ = taken(sampler, 1)
    assert (np.diff(values[:, 0]) >= 0).all() and values[-1, 0] == 20 and len(set(values[:, 0])) > 5
    assert intervals[0] == 0.01 and intervals[-1] == 0.05
    os.close(fd)


def test_new_descriptors_drop_the_reads_not_taken_and_a_full_ring_keeps_the_newest(tmp_path: Path) -> None:
    small = native_sampler(5)
    assert small is not None
    first = counter_file(tmp_path / "a", 1)
    second = counter_file(tmp_path / "b", 2)
    try:
        small.set_fds((first,))
        small.set_interval(0.01)
        small.start()
        time.sleep(0.2)
        small.set_fds((first, second))
        time.sleep(0.03)
        times, _, values, _ = taken(small)
        assert 1 <= len(times) <= 5 and (values == [1, 2]).all()  # none of the one-column reads
        time.sleep(0.2)
        times, _, _, overwritten = taken(small)
        assert len(times) == 5 and overwritten >= 5
        assert np.diff(times).min() > 0  # oldest first
        small.stop()
        time.sleep(0.05)
        assert len(taken(small)[0]) == 0, "a stopped sampler reads nothing"
        small.start()
        time.sleep(0.1)
        assert len(taken(small)[0]) > 0, "and starts again"
    finally:
        small.stop()
        os.close(first)
        os.close(second)


def test_bad_arguments_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="capacity"):
        native_sampler(0)
    fresh = native_sampler(4)
    assert fresh is not None
    with pytest.raises(RuntimeError, match="set_fds before start"):
        fresh.start()
    with pytest.raises(ValueError, match="interval"):
        fresh.set_interval(0.0)
    with pytest.raises(TypeError):
        fresh.set_fds(("3",))  # type: ignore[arg-type]


def sending_interface(root: Path, stop: threading.Event, period: float = 0.4) -> threading.Thread:
    """eth0 of a fixture tree whose tx_bytes a thread moves like a job of `period` s steps (a burst each step)."""
    statistics = root / "eth0" / "statistics"
    statistics.mkdir(parents=True)
    (statistics / "rx_bytes").write_text("0\n")
    (statistics / "tx_bytes").write_text("0\n")

    def send() -> None:
        start = time.monotonic()
        with open(statistics / "tx_bytes", "r+b") as file:
            while not stop.wait(0.005):
                t = time.monotonic() - start
                total = int(1e6 * t + 1e9 * ((t // period) * 0.1 + min(t % period, 0.1)))
                file.seek(0)
                file.write(f"{total:020d}\n".encode())
                file.flush()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("native", [True, False], ids=["c-sampler", "python-sampler"])
def test_the_collector_finds_the_period_of_real_reads_with_either_sampler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    if not native:
        monkeypatch.setattr(periodicity, "native_sampler", lambda capacity: None)
    monkeypatch.setattr(periodicity, "RESCAN_SECONDS", 0.5)  # takes its reads and estimates sooner
    monkeypatch.setattr(periodicity, "ESTIMATE_SECONDS", 0.5)
    stop = threading.Event()
    sender = sending_interface(tmp_path, stop)
    collector = PeriodicityCollector(
        PeriodicitySettings(sysfs_net=str(tmp_path), sample_hz=20, window_seconds=4, exclude=[])
    )
    try:
        collector.start()
        assert (collector._native is not None) == native and (nic_bytes._nicsample is not None)

        def period() -> float | None:
            found = collector.patterns().get("eth0")
            return found[0].period_seconds if found and found[1] > 3 else None

        wait_for(lambda: period() is not None, 20, "a period on eth0")
        assert period() == pytest.approx(0.4, rel=0.1)
    finally:
        collector.close()
        stop.set()
        sender.join()
    assert collector._native is None


def test_scrapes_read_the_estimate_of_the_background_job_without_estimating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(periodicity, "RESCAN_SECONDS", 0.5)
    monkeypatch.setattr(periodicity, "ESTIMATE_SECONDS", 0.5)
    stop = threading.Event()
    sender = sending_interface(tmp_path, stop)
    collector = PeriodicityCollector(
        PeriodicitySettings(sysfs_net=str(tmp_path), sample_hz=20, window_seconds=4, exclude=[])
    )
    estimated_by: list[str] = []
    estimate = collector._estimate

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - passes through
        estimated_by.append(threading.current_thread().name)
        return estimate(*args, **kwargs)

    monkeypatch.setattr(collector, "_estimate", counted)
    try:
        collector.start()
        wait_for(lambda: bool(estimated_by), 10, "the background job's first estimate")
        for _ in range(20):  # scrapes and pulls at 10/s for 2 s: 4 housekeeping runs
            {family.name for family in collector.collect()}
            collector.evidence()
            time.sleep(0.1)
    finally:
        collector.close()
        stop.set()
        sender.join()
    assert set(estimated_by) == {"background-jobs"}
    assert 3 <= len(estimated_by) <= 7, "each housekeeping run estimates anew"


def test_read_counters_reads_a_group_of_counter_files_in_one_call(tmp_path: Path) -> None:
    from array import array

    from agent import _nicsample  # type: ignore[attr-defined]

    texts = ["0\n", "18446744073709551615\n", "42", "N/A\n", " 7\n", "18446744073709551616\n", "", "007\n"]
    fds = array("i", [counter_file(tmp_path / f"c{i}", "") for i in range(len(texts))])
    for i, text in enumerate(texts):
        (tmp_path / f"c{i}").write_text(text)
    closed = os.open(tmp_path / "c0", os.O_RDONLY)
    os.close(closed)
    try:
        counts = _nicsample.read_counters(array("i", [*fds, closed]))
        # a count is a count, up to 2^64 - 1; anything else is None, for the caller to read again and say why
        assert counts == [0, 2**64 - 1, 42, None, None, None, None, 7, None]
        (tmp_path / "c0").write_text("5\n")  # read now, not when the descriptor was opened
        assert _nicsample.read_counters(fds)[0] == 5
        with pytest.raises(TypeError, match="array\\('i'\\)"):
            _nicsample.read_counters(array("d", [1.0]))
    finally:
        for fd in fds:
            os.close(fd)
