"""The agent reads a probe datagram's header once: the identity is checked against the sender that the kernel names,
the records are read in one piece; a datagram it cannot trust is dropped whole and counted, never misread."""

from __future__ import annotations

import struct
import time

from agent.backends.probe_socket import Datagram
from agent.collectors.collective import CollectiveState
from agent.collectors.trust import Trust
from agent.probe import wire
from agent.probe.identity import Identity
from agent.settings import CollectiveSettings

IDENTITY = Identity(job="job", rank=0, world_size=2, local_rank=0, pod="pod", namespace="ns")


def record(group: str, seq: int, kind: wire.Kind = wire.Kind.COMPLETE) -> wire.Record:
    issued_at = time.time() + seq * 0.01  # now, not at import: the collector drops records older than its window
    return wire.Record(kind, wire.Op.all_reduce, group, seq, 1024, issued_at,
                       issued_at + 0.001 if kind == wire.Kind.COMPLETE else None)  # fmt: skip


def completed(group: str, count: int, first: int = 0) -> list[wire.Record]:
    return [record(group, seq) for seq in range(first, first + count)]


def state(trust: Trust | None = None) -> CollectiveState:
    return CollectiveState(CollectiveSettings(trust="process"), trust or Trust("process", lambda pid: None, lambda pid: True))


def receive(collective: CollectiveState, data: bytes, pid: int = 100) -> None:
    collective.receive(Datagram(data, pid, 0, False))


def dropped(collective: CollectiveState) -> dict[str, int]:
    return {reason: count for reason, count in collective.invalid.items() if count}


def record_offset(data: bytes, index: int) -> int:
    """Byte offset of record `index` of a datagram: after the header and its table of process-group names."""
    _, _, groups, _, *_ = wire.HEADER.unpack_from(data)
    return wire.HEADER_BYTES + groups * wire.GROUP_BYTES + index * wire.RECORD_BYTES


def test_a_datagram_with_two_process_groups_is_decoded_at_once_and_fully_applied() -> None:
    data = wire.encode(IDENTITY, [*completed("a", 3), *completed("b", 2)])
    decoded = wire.decode(data)
    assert decoded.identity == IDENTITY and decoded.groups == ("a", "b") and len(decoded.records) == 5
    collective = state()
    receive(collective, data)
    assert collective.accepted == 5 and dropped(collective) == {}
    assert {key: window.last_seq for key, window in collective.windows.items()} == {("job", 0, "a"): 2, ("job", 0, "b"): 1}
    [window] = [window for key, window in collective.windows.items() if key[2] == "a"]
    assert (window.pod, window.namespace, window.world_size, window.local_rank) == ("pod", "ns", 2, 0)


def test_queued_datagrams_of_one_sender_are_applied_in_arrival_order_across_datagrams() -> None:
    collective = state()
    for first in range(0, 30, 10):
        collective.enqueue(Datagram(wire.encode(IDENTITY, completed("a", 10, first)), 100, 0, False))
    assert collective.accepted == 0, "queued, not applied yet"
    collective.ingest()
    [window] = collective.windows.values()
    assert [sample.seq for sample in window.samples] == list(range(30)) and dropped(collective) == {}


def test_a_datagram_without_records_is_a_heartbeat_that_reports_the_senders_lost_records() -> None:
    collective = state()
    receive(collective, wire.encode(IDENTITY, [], dropped_total=7))
    assert collective.senders[("job", 0)].dropped_total == 7 and collective.windows == {}
    assert collective.accepted == 0 and dropped(collective) == {}


def test_a_record_whose_group_index_is_past_the_table_is_malformed_and_the_others_still_count() -> None:
    data = bytearray(wire.encode(IDENTITY, completed("a", 3)))
    struct.pack_into("<H", data, record_offset(data, 1) + 2, 1)  # group 1 of a one-group table
    collective = state()
    receive(collective, bytes(data))
    assert collective.accepted == 2 and dropped(collective) == {"malformed": 1}


def test_records_with_an_unknown_kind_or_op_or_impossible_times_are_malformed_and_the_others_still_count() -> None:
    data = bytearray(wire.encode(IDENTITY, completed("a", 6)))
    data[record_offset(data, 0)] = 9  # kind
    data[record_offset(data, 1) + 1] = 200  # op
    struct.pack_into("<d", data, record_offset(data, 2) + 24, float("nan"))  # issued_at
    struct.pack_into("<d", data, record_offset(data, 3) + 32, time.time() - 60)  # completed_at, a minute before its issue
    collective = state()
    receive(collective, bytes(data))
    assert collective.accepted == 2 and dropped(collective) == {"malformed": 4}
    [window] = collective.windows.values()
    assert [sample.seq for sample in window.samples] == [4, 5]


def test_records_of_a_process_group_whose_name_is_not_utf8_are_malformed_and_the_others_still_count() -> None:
    data = bytearray(wire.encode(IDENTITY, [*completed("a", 2), *completed("b", 3)]))
    second_name = wire.HEADER_BYTES + wire.GROUP_BYTES
    data[second_name : second_name + 2] = b"\xff\xfe"
    collective = state()
    receive(collective, bytes(data))
    assert collective.accepted == 2 and dropped(collective) == {"malformed": 3}


def test_a_header_whose_record_count_disagrees_with_the_length_drops_the_datagram_whole() -> None:
    data = wire.encode(IDENTITY, completed("a", 4))
    collective = state()
    for announced in (5, 3):  # more records than the datagram holds (torn), fewer (something else follows)
        wrong = bytearray(data)
        struct.pack_into("<H", wrong, 8, announced)
        receive(collective, bytes(wrong))
    assert collective.accepted == 0 and collective.windows == {}
    assert dropped(collective) == {"truncated": 5, "malformed": 3}


def test_a_datagram_of_the_previous_wire_version_is_counted_as_bad_version_and_never_misread() -> None:
    version_1 = struct.pack("<4sBBBx iii QQ dd II 64s32s64s64s", b"LKSP", 1, int(wire.Kind.COMPLETE), 1, 0, 2, 0, 5,
                            1024, time.time(), time.time() + 0.001, 0, 0, b"job", b"default", b"pod", b"ns")  # fmt: skip
    collective = state()
    receive(collective, version_1 * 3)
    receive(collective, b"LKSP\x02")  # this version, shorter than its header
    receive(collective, b"GET / HTTP/1.1\r\n" * 20)  # not a probe
    assert collective.accepted == 0 and collective.windows == {} and collective.senders == {}
    assert dropped(collective) == {"bad_version": 1, "truncated": 1, "bad_magic": 1}


def test_an_identity_out_of_range_drops_the_datagram_with_all_its_records() -> None:
    collective = state()
    receive(collective, wire.encode(Identity("job", 2, 2, None, "", ""), completed("a", 3)))  # rank 2 of 2
    receive(collective, wire.encode(Identity("", 0, 2, None, "", ""), []))  # no job: a heartbeat of no one
    assert collective.accepted == 0 and collective.senders == {}
    assert dropped(collective) == {"malformed": 4}


def test_a_datagram_the_kernel_cut_short_is_truncated() -> None:
    collective = state()
    collective.receive(Datagram(wire.encode(IDENTITY, completed("a", 2)), 100, 0, True))
    assert collective.accepted == 0 and dropped(collective) == {"truncated": 1}


def test_an_identity_whose_rank_another_live_pod_owns_is_refused_with_all_its_records() -> None:
    pods = {100: "pod-uid-a", 200: "pod-uid-b"}
    collective = state(Trust("pod", pod_uid=pods.get, alive=lambda pid: True))
    receive(collective, wire.encode(IDENTITY, completed("a", 2)), pid=100)
    receive(collective, wire.encode(IDENTITY, completed("a", 3, first=2)), pid=200)  # the same rank, another pod
    receive(collective, wire.encode(IDENTITY, []), pid=200)  # even its heartbeat
    receive(collective, wire.encode(IDENTITY, completed("a", 2, first=5)), pid=300)  # in no pod
    assert collective.accepted == 2 and collective.senders[("job", 0)].pid == 100
    assert dropped(collective) == {"rank_claimed_by_other": 4, "not_a_pod": 2}
    [window] = collective.windows.values()
    assert window.last_seq == 1 and window.pid == 100


def test_queued_datagrams_of_two_senders_leave_the_rank_with_the_first_to_claim_it() -> None:
    collective = state()
    collective.enqueue(Datagram(wire.encode(IDENTITY, completed("a", 1)), 100, 0, False))
    collective.enqueue(Datagram(wire.encode(IDENTITY, completed("a", 1, first=1)), 200, 0, False))  # another process
    collective.enqueue(Datagram(wire.encode(IDENTITY, completed("a", 1, first=1)), 100, 0, False))
    assert collective.accepted == 0, "queued, not applied yet"
    collective.ingest()
    assert collective.accepted == 2 and collective.invalid["rank_claimed_by_other"] == 1
    assert collective.senders[("job", 0)].pid == 100
