"""Host collector: TCP retransmits and segments from /proc/<pid>/net/snmp, the boot id; bad procfs is counted."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from agent.backends.procfs import Procfs
from agent.collectors.host import HostCollector
from tests.agent.conftest import PROCFS_GPU_NODE


@pytest.fixture
def procfs_copy(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    shutil.copytree(PROCFS_GPU_NODE, root)
    return root


def set_tcp(root: Path, out_segments: int, retransmitted: int) -> None:
    snmp = root / "1/net/snmp"
    lines = snmp.read_text().splitlines()
    header = next(line.split() for line in lines if line.startswith("Tcp:"))
    index_out, index_retrans = header.index("OutSegs"), header.index("RetransSegs")
    for i, line in enumerate(lines):
        if re.match(r"Tcp: \d", line):
            fields = line.split()
            fields[index_out], fields[index_retrans] = str(out_segments), str(retransmitted)
            lines[i] = " ".join(fields)
    snmp.write_text("\n".join(lines) + "\n")


def test_tcp_counters_and_boot_id_are_exported() -> None:
    samples = {s.name: s for f in HostCollector(Procfs(PROCFS_GPU_NODE)).collect() for s in f.samples}
    assert samples["lockstep_host_tcp_out_segments_total"].value == 91234567890
    assert samples["lockstep_host_tcp_retransmitted_segments_total"].value == 1234567
    assert samples["lockstep_host_boot_info"].labels == {"boot_id": "5f1c7e0a-3b9d-4c1e-9a57-2d6b8f0e4c11"}


def test_evidence_gives_retransmit_and_segment_rates_over_the_window(procfs_copy: Path) -> None:
    collector = HostCollector(Procfs(procfs_copy), window_seconds=0.1)
    set_tcp(procfs_copy, 1_000_000, 100)
    first = collector.evidence().host
    assert first is not None and first.window_seconds == 0
    time.sleep(0.2)
    set_tcp(procfs_copy, 1_050_000, 600)
    host = collector.evidence().host
    assert host is not None and host.window_seconds >= 0.1
    assert host.tcp_retransmit_segments_per_second == pytest.approx(500 / host.window_seconds)
    assert host.tcp_out_segments_per_second == pytest.approx(50_000 / host.window_seconds)


def test_a_malformed_snmp_file_fails_the_run_and_is_counted(procfs_copy: Path) -> None:
    (procfs_copy / "1/net/snmp").write_text("Tcp: RtoAlgorithm OutSegs\nTcp: 1\n")
    collector = HostCollector(Procfs(procfs_copy))
    with pytest.raises(Exception, match="1/net/snmp"):
        list(collector.collect())
    assert collector.read_errors.counts == {"1/net/snmp": 1}


def test_the_real_procfs_of_this_machine_is_read() -> None:
    samples = {s.name: s.value for f in HostCollector(Procfs(Path("/proc"))).collect() for s in f.samples}
    assert samples["lockstep_host_tcp_out_segments_total"] > 0


def test_the_agents_own_namespace_can_be_read_instead_of_the_nodes(procfs_copy: Path) -> None:
    (procfs_copy / "self").mkdir()
    shutil.copytree(procfs_copy / "1/net", procfs_copy / "self/net")
    set_tcp(procfs_copy, 5, 3)  # only the node's (1/net/snmp) changes
    node = HostCollector(Procfs(procfs_copy))
    own = HostCollector(Procfs(procfs_copy, network_namespace_pid="self"))

    def retransmitted(collector: HostCollector) -> float:
        return next(s.value for f in collector.collect() for s in f.samples if "retransmitted" in s.name)

    assert retransmitted(node) == 3
    assert retransmitted(own) == 1234567


def test_scrapes_and_pulls_in_quick_succession_share_one_socket_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.backends.sockdiag import TcpFlow
    from agent.collectors import host
    from agent.collectors.send_rtt import SendRtt

    dumps: list[float] = []

    def dump() -> list[TcpFlow]:
        dumps.append(time.monotonic())
        return []

    collector = HostCollector(Procfs(PROCFS_GPU_NODE), send_rtt=SendRtt(dump, window_seconds=10.0))
    for _ in range(3):  # Prometheus at 1 s and the controller's pull, all within one interval
        list(collector.collect())
        collector.evidence()
    assert len(dumps) == 1
    monkeypatch.setattr(host, "SOCKET_DUMP_INTERVAL_SECONDS", 0.0)
    list(collector.collect())
    assert len(dumps) == 2  # once the interval passed, the next read dumps again


def test_once_started_the_sockets_are_dumped_in_the_background_not_by_scrapes(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.backends.sockdiag import TcpFlow
    from agent.collectors import host
    from agent.collectors.send_rtt import SendRtt

    monkeypatch.setattr(host, "SOCKET_DUMP_INTERVAL_SECONDS", 0.2)
    dumps: list[str] = []

    def dump() -> list[TcpFlow]:
        dumps.append(threading.current_thread().name)
        return []

    collector = HostCollector(Procfs(PROCFS_GPU_NODE), send_rtt=SendRtt(dump, window_seconds=10.0))
    collector.start()
    time.sleep(0.1)  # the job's first run, at once
    try:
        for _ in range(10):  # scrapes and pulls for 1 s: 5 intervals
            list(collector.collect())
            collector.evidence()
            time.sleep(0.1)
    finally:
        collector.close()
    assert 5 <= len(dumps) <= 8
    assert set(dumps) == {"background-jobs"}, "the scrapes and pulls only read the window"
