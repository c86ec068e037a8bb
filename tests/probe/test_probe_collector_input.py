"""The collective collector takes only valid records from the sender that owns a rank; everything else is
counted by reason and dropped, and the receiver keeps going."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.backends.cgroup import pod_uid_from_cgroup
from agent.probe import wire
from agent.probe.identity import Identity

from .jobs import start_collector, wait_for


def datagram(seq: int = 0, rank: int = 0, job: str = "job-a", **fields: object) -> bytes:
    """One datagram of rank `rank` of a 4-rank job holding one completed collective, its fields replaced by `fields`."""
    now = time.time()
    record = wire.Record(
        kind=wire.Kind.COMPLETE, op=wire.Op.all_reduce, group="default", seq=seq, bytes=1024, issued_at=now - 0.01,
        completed_at=now,
    )._replace(**fields)  # fmt: skip
    return wire.encode(Identity(job=job, rank=rank, world_size=4, local_rank=rank, pod="", namespace=""), [record])


def send(socket_dir: Path, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, str(socket_dir / "probe.sock"))


@pytest.fixture
def collector(socket_dir: Path):
    collector = start_collector(socket_dir)
    yield collector
    collector.close()


def test_bad_datagrams_are_counted_by_reason_and_good_ones_after_them_still_count(collector, socket_dir) -> None:
    good = datagram(seq=0)
    bad_version = bytearray(datagram(seq=1))
    bad_version[4] = 99
    send(socket_dir, good[:100])  # shorter than a header
    send(socket_dir, b"XXXX" + good[4:])  # foreign magic
    send(socket_dir, bytes(bad_version))
    send(socket_dir, datagram(seq=2, rank=7))  # rank 7 of a 4-rank job
    send(socket_dir, good)
    send(socket_dir, good)  # the same collective again: a replay
    send(socket_dir, datagram(seq=3, issued_at=time.time() - 86400, completed_at=time.time() - 86399))
    send(socket_dir, b"")
    send(socket_dir, datagram(seq=1)[:-8])  # its record torn
    send(socket_dir, datagram(seq=1))
    wait_for(lambda: collector.state.accepted == 2 and sum(collector.state.invalid.values()) == 8, 10, "all datagrams")
    assert {k: v for k, v in collector.state.invalid.items() if v} == {
        "truncated": 3, "bad_magic": 1, "bad_version": 1, "malformed": 1, "duplicate": 1, "out_of_window": 1,
    }  # fmt: skip
    [rank] = collector.evidence().ranks
    assert [s.seq for s in rank.samples] == [0, 1]
    metrics = {m.name: m for m in collector.collect()}
    reasons = {s.labels["reason"]: s.value for s in metrics["lockstep_collective_invalid_records"].samples
               if s.name.endswith("_total")}  # fmt: skip
    assert reasons["truncated"] == 3 and reasons["duplicate"] == 1


SENDER = """
import socket, sys, time
sys.path.insert(0, {repo!r})
from agent.probe import wire
from agent.probe.identity import Identity
r = wire.Record(kind=wire.Kind.COMPLETE, op=wire.Op.all_reduce, group="default", seq={seq}, bytes=8,
    issued_at=time.time() - 0.5, completed_at=time.time())
identity = Identity(job="job-b", rank=0, world_size=2, local_rank=0, pod="", namespace="")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(wire.encode(identity, [r]), {path!r})
print("sent", flush=True)
time.sleep({linger})
"""


def sender(socket_dir: Path, seq: int, linger: float) -> subprocess.Popen[str]:
    code = SENDER.format(repo=str(Path(__file__).resolve().parents[2]), seq=seq, path=str(socket_dir / "probe.sock"),
                         linger=linger)  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
    return proc


def test_another_process_cannot_speak_for_a_rank_while_its_owner_lives(collector, socket_dir: Path) -> None:
    owner = sender(socket_dir, seq=0, linger=60)
    try:
        wait_for(lambda: collector.state.accepted == 1, 10, "the owner's record")
        forger = sender(socket_dir, seq=1, linger=0)
        forger.wait(timeout=30)
        wait_for(lambda: collector.state.invalid["rank_claimed_by_other"] == 1, 10, "the forged record to be refused")
        [rank] = collector.evidence().ranks
        assert rank.pid == owner.pid and rank.last_seq == 0
    finally:
        owner.kill()
        owner.wait()
    successor = sender(socket_dir, seq=0, linger=0)  # a restarted rank: the owner is gone, the claim passes on
    successor.wait(timeout=30)
    wait_for(lambda: collector.state.accepted == 2, 10, "the successor's record")
    [rank] = collector.evidence().ranks
    assert rank.pid == successor.pid


def test_pod_trust_refuses_processes_outside_kubernetes_pods(socket_dir: Path) -> None:
    collector = start_collector(socket_dir, trust="pod")
    try:
        send(socket_dir, datagram())
        wait_for(lambda: collector.state.invalid["not_a_pod"] == 1, 10, "the refusal")
        assert collector.evidence().ranks == []
    finally:
        collector.close()


def test_socket_directory_is_not_writable_by_others(tmp_path: Path) -> None:
    socket_dir = tmp_path / "loose"
    socket_dir.mkdir(mode=0o777)
    socket_dir.chmod(0o777)
    collector = start_collector(socket_dir)
    try:
        assert socket_dir.stat().st_mode & 0o022 == 0
        assert (socket_dir / "probe.sock").stat().st_mode & 0o777 == 0o666
    finally:
        collector.close()


@pytest.mark.parametrize(
    ("cgroup", "uid"),
    [
        ("0::/kubepods/burstable/pod0b7c6a1e-3f2d-4c5b-9a8e-1d2c3b4a5f60/4f1e2d3c\n",
         "0b7c6a1e-3f2d-4c5b-9a8e-1d2c3b4a5f60"),
        ("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b7c6a1e_3f2d_4c5b_9a8e_1d2c3b4a5f60.slice/"
         "cri-containerd-abc.scope\n", "0b7c6a1e-3f2d-4c5b-9a8e-1d2c3b4a5f60"),
        ("12:memory:/user.slice/user-0.slice/session-1.scope\n0::/user.slice\n", None),
    ],
)  # fmt: skip
def test_pod_uid_is_read_from_cgroupfs_and_systemd_cgroup_paths(cgroup: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup(cgroup) == uid


def test_a_process_group_created_anew_restarts_the_window_instead_of_looking_replayed(collector, socket_dir) -> None:
    for seq in range(3):
        send(socket_dir, datagram(seq=seq))
    wait_for(lambda: collector.state.accepted == 3, 10, "the first incarnation")
    time.sleep(0.01)
    send(socket_dir, datagram(seq=0))  # seq 0 again, issued now: a new process group
    wait_for(lambda: collector.state.accepted == 4, 10, "the new incarnation")
    [rank] = collector.evidence().ranks
    assert [s.seq for s in rank.samples] == [0] and rank.last_seq == 0
    assert collector.state.invalid["duplicate"] == 0
