"""Network collector on fixture sysfs trees (ConnectX RoCE, InfiniBand HDR): values, units, rates, bad files."""

from __future__ import annotations

import errno
import os
import shutil
import time
from array import array
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric

from agent import _nicsample  # type: ignore[attr-defined]
from agent.backends import sysfs
from agent.backends.sysfs import SysfsNet
from agent.collectors.network import NetworkCollector
from agent.evidence import NicEvidence
from tests.agent.conftest import SYSFS_GPU_NODE


def values(collector: NetworkCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    families: list[Metric] = list(collector.collect())
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def port(device: str, number: str = "1", **extra: str) -> frozenset[tuple[str, str]]:
    return frozenset({"device": device, "port": number, **extra}.items())


def interface(name: str) -> frozenset[tuple[str, str]]:
    return frozenset({"interface": name}.items())


def bump(path: Path, by: int) -> None:
    path.write_text(f"{int(path.read_text()) + by}\n")


def nic(evidence_nics: list[NicEvidence], name: str) -> NicEvidence:
    return next(n for n in evidence_nics if n.name == name)


def test_rdma_data_counters_are_converted_from_4_byte_words_to_bytes() -> None:
    v = values(NetworkCollector(SysfsNet(SYSFS_GPU_NODE)))
    words = int((SYSFS_GPU_NODE / "class/infiniband/mlx5_1/ports/1/counters/port_xmit_data").read_text())
    assert v[("lockstep_rdma_port_transmit_bytes_total", port("mlx5_1"))] == words * 4
    assert v[("lockstep_rdma_port_transmit_wait_ticks_total", port("mlx5_1"))] == 7730123
    assert v[("lockstep_rdma_port_link_downed_total", port("mlx5_1"))] == 1
    assert v[("lockstep_rdma_port_events_total", port("mlx5_1", counter="VL15_dropped"))] == 0


def test_every_hw_counter_is_exported_by_name_and_the_lifespan_setting_is_not() -> None:
    v = values(NetworkCollector(SysfsNet(SYSFS_GPU_NODE)))
    hw = {dict(labels)["counter"] for name, labels in v if name == "lockstep_rdma_port_transport_events_total"}
    files = {p.name for p in (SYSFS_GPU_NODE / "class/infiniband/mlx5_0/ports/1/hw_counters").iterdir()}
    assert hw == files - {"lifespan"}
    key = ("lockstep_rdma_port_transport_events_total", port("mlx5_0", counter="out_of_sequence"))
    assert v[key] == 1532


def test_port_state_rate_and_link_layer_are_decoded() -> None:
    v = values(NetworkCollector(SysfsNet(SYSFS_GPU_NODE)))
    assert v[("lockstep_rdma_port_rate_bytes_per_second", port("mlx5_1"))] == 200e9 / 8
    assert v[("lockstep_rdma_port_state", port("mlx5_1"))] == 4
    assert v[("lockstep_rdma_port_active", port("mlx5_0"))] == 1
    assert v[("lockstep_rdma_port_physical_state", port("mlx5_0"))] == 5
    info = port("mlx5_0", kind="roce", state="ACTIVE", phys_state="LinkUp", netdev="ens1f0np0")
    assert v[("lockstep_rdma_port_info", info)] == 1
    assert ("lockstep_rdma_port_info", port("mlx5_1", kind="infiniband", state="ACTIVE", phys_state="LinkUp", netdev="ibp65s0")) in v


def test_interfaces_report_counters_speed_in_bytes_and_leave_out_unknown_speed() -> None:
    v = values(NetworkCollector(SysfsNet(SYSFS_GPU_NODE)))
    assert v[("lockstep_net_receive_bytes_total", interface("ens1f0np0"))] == 73645127893312
    assert v[("lockstep_net_receive_drops_total", interface("eno1"))] == 1532
    assert v[("lockstep_net_link_speed_bytes_per_second", interface("ens1f0np0"))] == 100e9 / 8
    assert ("lockstep_net_link_speed_bytes_per_second", interface("lo")) not in v
    assert v[("lockstep_net_mtu_bytes", interface("ens1f0np0"))] == 4200
    assert v[("lockstep_net_carrier_changes_total", interface("ens1f0np0"))] == 4


def test_excluded_interfaces_are_left_out() -> None:
    v = values(NetworkCollector(SysfsNet(SYSFS_GPU_NODE), exclude_interfaces="^(veth|lo$)"))
    names = {dict(labels).get("interface") for _, labels in v}
    assert "veth3f2a9c1" not in names and "lo" not in names and "eno1" in names


def test_garbage_missing_and_unreadable_files_are_counted_and_the_rest_is_served(sysfs_copy: Path) -> None:
    port_dir = sysfs_copy / "class/infiniband/mlx5_0/ports/1"
    (port_dir / "hw_counters/out_of_sequence").write_text("N/A\n")
    (port_dir / "rate").write_text("fast\n")
    (sysfs_copy / "class/net/eno1/statistics/rx_bytes").unlink()
    unreadable = port_dir / "counters/symbol_error"
    unreadable.unlink()
    unreadable.mkdir()  # reading a directory fails with EISDIR, like a driver refusing a read
    collector = NetworkCollector(SysfsNet(sysfs_copy))

    for _ in range(2):
        v = values(collector)
    errors = {
        dict(labels)["source"]: value for (name, labels), value in v.items() if name.startswith("lockstep_collector_read_errors")
    }
    assert errors == {
        "class/infiniband/mlx5_0/ports/1/hw_counters/out_of_sequence": 2,
        "class/infiniband/mlx5_0/ports/1/rate": 2,
        "class/infiniband/mlx5_0/ports/1/counters/symbol_error": 2,
        "class/net/eno1/statistics/rx_bytes": 2,
    }
    assert ("lockstep_rdma_port_transport_events_total", port("mlx5_0", counter="out_of_sequence")) not in v
    assert v[("lockstep_rdma_port_transport_events_total", port("mlx5_0", counter="np_cnp_sent"))] == 88213
    assert ("lockstep_rdma_port_rate_bytes_per_second", port("mlx5_0")) not in v
    assert v[("lockstep_net_transmit_bytes_total", interface("eno1"))] == 77120356734


def test_a_missing_infiniband_class_means_no_ports_not_an_error(tmp_path: Path) -> None:
    shutil.copytree(SYSFS_GPU_NODE / "class/net", tmp_path / "class/net")
    v = values(NetworkCollector(SysfsNet(tmp_path)))
    assert not [name for name, _ in v if name.startswith("lockstep_rdma_port") or "read_errors" in name]
    assert v[("lockstep_net_up", interface("eno1"))] == 1


def test_an_interface_that_vanishes_between_scrapes_is_dropped_without_errors(sysfs_copy: Path) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy), window_seconds=60)
    assert ("lockstep_net_up", interface("veth3f2a9c1")) in values(collector)
    shutil.rmtree(sysfs_copy / "class/net/veth3f2a9c1")
    shutil.rmtree(sysfs_copy / "class/infiniband/mlx5_1")
    v = values(collector)
    assert ("lockstep_net_up", interface("veth3f2a9c1")) not in v
    assert ("lockstep_rdma_port_active", port("mlx5_1")) not in v
    assert not [name for name, _ in v if "read_errors" in name]
    assert [n.name for n in collector.evidence().nics] == ["eno1", "ens1f0np0", "ibp65s0", "mlx5_0/1"]


def test_counter_files_held_open_follow_a_device_recreated_under_the_same_name(sysfs_copy: Path) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy))
    counters = sysfs_copy / "class/infiniband/mlx5_1/ports/1/counters"
    before = values(collector)[("lockstep_rdma_port_transmit_bytes_total", port("mlx5_1"))]
    bump(counters / "port_xmit_data", 10)  # rewritten in place: the open file reads the new value
    assert values(collector)[("lockstep_rdma_port_transmit_bytes_total", port("mlx5_1"))] == before + 40
    # a driver reload: the port's directory is made anew (another inode), its old files are gone
    stale = sysfs_copy / "stale-mlx5_1"
    (sysfs_copy / "class/infiniband/mlx5_1").rename(stale)
    shutil.copytree(stale, sysfs_copy / "class/infiniband/mlx5_1")
    (counters / "port_xmit_data").write_text("5\n")
    (stale / "ports/1/counters/port_xmit_data").write_text("999999\n")  # what a file held open would still say
    v = values(collector)
    assert v[("lockstep_rdma_port_transmit_bytes_total", port("mlx5_1"))] == 20
    assert not [name for name, _ in v if "read_errors" in name]


class _FailingCReader:
    """The C reader (agent._nicsample.read_counters) seeing the failures of the files in `failing`, as it sees a
    failed pread: None for the file; the Python reads that follow say why."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing

    def read_counters(self, fds: array[int]) -> list[int | None]:
        counts = _nicsample.read_counters(fds)
        failed = [os.readlink(f"/proc/self/fd/{fd}") in self.failing for fd in fds]
        return [None if fail else count for fail, count in zip(failed, counts, strict=True)]


@pytest.mark.parametrize("reader", ["c", "python"])
def test_a_counter_that_fails_to_read_is_counted_and_opened_again_next_scrape(
    sysfs_copy: Path, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy))
    counter = sysfs_copy / "class/net/eno1/statistics/rx_bytes"  # the first of the interface's statistics
    first = values(collector)  # opens the counter files
    real_pread, failing = os.pread, {str(counter)}

    def pread(fd: int, size: int, offset: int) -> bytes:  # the device answers ENODEV on its open file, once
        if os.readlink(f"/proc/self/fd/{fd}") in failing:
            failing.clear()
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(sysfs, "_nicsample", _FailingCReader(failing) if reader == "c" else None)
    v = values(collector)
    assert ("lockstep_net_receive_bytes_total", interface("eno1")) not in v
    errors = [dict(labels) for (name, labels), _ in v.items() if name == "lockstep_collector_read_errors_total"]
    assert [e["source"] for e in errors] == ["class/net/eno1/statistics/rx_bytes"]
    after_it = ("lockstep_net_transmit_bytes_total", interface("eno1"))
    assert v[after_it] == first[after_it], "the files after the failed one are still read"
    counter.unlink()
    counter.write_text("1234\n")  # a new file: read only if the failed one was closed and the path opened again
    assert values(collector)[("lockstep_net_receive_bytes_total", interface("eno1"))] == 1234


def test_evidence_reports_rates_over_the_window_for_physical_nics_and_rdma_ports(sysfs_copy: Path) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy), window_seconds=0.2, xmit_wait_bytes_per_tick=8)
    first = collector.evidence()
    assert {n.name for n in first.nics} == {"eno1", "ens1f0np0", "ibp65s0", "mlx5_0/1", "mlx5_1/1"}
    assert all(n.window_seconds == 0 for n in first.nics), "no rates before a second reading"

    counters = sysfs_copy / "class/infiniband/mlx5_1/ports/1/counters"
    bump(counters / "port_xmit_data", 250_000_000)  # 1 GB in 4-byte words
    bump(counters / "port_xmit_wait", 12_500_000)  # 100 MB worth of waiting at 8 B per tick
    bump(counters / "symbol_error", 7)
    bump(sysfs_copy / "class/infiniband/mlx5_0/ports/1/hw_counters/local_ack_timeout_err", 30)
    bump(sysfs_copy / "class/net/eno1/statistics/rx_bytes", 5_000_000)
    time.sleep(0.3)
    second = collector.evidence()

    ib = nic(second.nics, "mlx5_1/1")
    window = ib.window_seconds
    assert window >= 0.2
    assert ib.kind == "infiniband" and ib.up
    assert ib.tx_bytes_per_second == 1_000_000_000 / window
    assert ib.errors_per_second == 7 / window
    assert ib.xmit_wait_ratio == 100_000_000 / (200e9 / 8 * window)
    assert nic(second.nics, "mlx5_0/1").retransmits_per_second == 30 / window
    assert nic(second.nics, "mlx5_0/1").kind == "roce"
    assert nic(second.nics, "eno1").rx_bytes_per_second == 5_000_000 / nic(second.nics, "eno1").window_seconds
    assert "veth3f2a9c1" not in {n.name for n in second.nics}, "virtual interfaces stay out of the evidence"


def test_a_flapping_port_and_a_link_that_was_lost_are_hard_signals(sysfs_copy: Path) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy), window_seconds=60)
    assert collector.evidence().hard_signals == []
    bump(sysfs_copy / "class/infiniband/mlx5_1/ports/1/counters/link_downed", 3)
    bump(sysfs_copy / "class/net/ens1f0np0/carrier_changes", 2)
    (sysfs_copy / "class/net/eno1/operstate").write_text("down\n")  # carrier lost, still administratively up
    (sysfs_copy / "class/net/eno1/speed").write_text("-1\n")
    signals = {(s.kind, s.device): s for s in collector.evidence().hard_signals}
    assert set(signals) == {
        ("nic_link_flap", "mlx5_1/1"),
        ("nic_link_flap", "ens1f0np0"),
        ("nic_link_down", "eno1"),
    }
    assert signals[("nic_link_flap", "mlx5_1/1")].count == 3
    down_since = signals[("nic_link_down", "eno1")].first_seen

    time.sleep(0.05)
    again = {(s.kind, s.device): s for s in collector.evidence().hard_signals}
    assert again[("nic_link_down", "eno1")].first_seen == down_since, "a condition keeps the time it began"
    assert again[("nic_link_down", "eno1")].last_seen > down_since


def test_ports_switched_off_on_purpose_or_down_since_start_are_no_signal(sysfs_copy: Path) -> None:
    port = sysfs_copy / "class/infiniband/mlx5_0/ports/1"
    (port / "state").write_text("1: DOWN\n")  # an unused port, down before the agent started
    (port / "phys_state").write_text("2: Polling\n")
    collector = NetworkCollector(SysfsNet(sysfs_copy), window_seconds=60)
    collector.evidence()
    (sysfs_copy / "class/net/eno1/operstate").write_text("down\n")
    (sysfs_copy / "class/net/eno1/flags").write_text("0x1002\n")  # `ip link set eno1 down`: maintenance
    (sysfs_copy / "class/infiniband/mlx5_1/ports/1/state").write_text("1: DOWN\n")
    (sysfs_copy / "class/infiniband/mlx5_1/ports/1/phys_state").write_text("3: Disabled\n")
    evidence = collector.evidence()
    assert evidence.hard_signals == []
    assert not nic(evidence.nics, "eno1").up and not nic(evidence.nics, "mlx5_1/1").up


def test_a_port_that_renegotiated_to_a_lower_rate_is_speed_degraded(sysfs_copy: Path) -> None:
    collector = NetworkCollector(SysfsNet(sysfs_copy), window_seconds=60)
    collector.evidence()
    (sysfs_copy / "class/infiniband/mlx5_1/ports/1/rate").write_text("100 Gb/sec (2X HDR)\n")
    signals = [s for s in collector.evidence().hard_signals if s.kind == "nic_speed_degraded"]
    assert [s.device for s in signals] == ["mlx5_1/1"]
    assert "100 Gb/s" in signals[0].detail and "200 Gb/s" in signals[0].detail


def test_the_real_sysfs_of_this_machine_reads_without_errors() -> None:
    v = values(NetworkCollector(SysfsNet(Path("/sys"))))
    assert ("lockstep_net_up", interface("lo")) in v
    assert not [labels for name, labels in v if "read_errors" in name]


@pytest.mark.parametrize(
    ("rate", "bytes_per_second"),
    [("2.5 Gb/sec (1X SDR)", 2.5e9 / 8), ("400 Gb/sec (4X NDR)", 400e9 / 8), ("25 Gb/sec (1X EDR)", 25e9 / 8)],
)
def test_port_rates_of_every_generation_are_parsed(sysfs_copy: Path, rate: str, bytes_per_second: float) -> None:
    (sysfs_copy / "class/infiniband/mlx5_1/ports/1/rate").write_text(rate + "\n")
    v = values(NetworkCollector(SysfsNet(sysfs_copy)))
    assert v[("lockstep_rdma_port_rate_bytes_per_second", port("mlx5_1"))] == bytes_per_second


def test_a_port_that_went_down_reports_its_state_and_loses_its_rate(sysfs_copy: Path) -> None:
    base = sysfs_copy / "class/infiniband/mlx5_1/ports/1"
    (base / "state").write_text("1: DOWN\n")
    (base / "phys_state").write_text("3: Disabled\n")
    (base / "rate").unlink()
    (base / "rate").mkdir()  # unreadable, as some drivers answer EINVAL for the rate of a down port
    v = values(NetworkCollector(SysfsNet(sysfs_copy)))
    assert v[("lockstep_rdma_port_active", port("mlx5_1"))] == 0
    assert v[("lockstep_rdma_port_state", port("mlx5_1"))] == 1
    assert v[("lockstep_rdma_port_physical_state", port("mlx5_1"))] == 3
    assert ("lockstep_rdma_port_rate_bytes_per_second", port("mlx5_1")) not in v
