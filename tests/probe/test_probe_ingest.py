"""The agent applies queued probe datagrams in batches: one decode per sender, every record checked as before."""

from __future__ import annotations

import time

from agent.backends.probe_socket import Datagram
from agent.collectors.collective import CollectiveState
from agent.collectors.trust import Trust
from agent.probe import wire
from agent.settings import CollectiveSettings

NOW = time.time()
GROUP_OFFSET = (wire.RECORD_DTYPE.fields or {})["group"][1]


def record(kind: wire.Kind, group: str, seq: int, rank: int = 0) -> bytes:
    return wire.encode(wire.Record(kind, wire.Op.all_reduce, rank, 2, rank, seq, 1024, NOW + seq * 0.01,
                                   NOW + seq * 0.01 + 0.001 if kind == wire.Kind.COMPLETE else None, 0,
                                   "job", group, "pod", "ns"))  # fmt: skip


def state() -> CollectiveState:
    return CollectiveState(CollectiveSettings(trust="process"), Trust("process", lambda pid: None, lambda pid: True))


def test_a_datagram_with_two_process_groups_and_a_heartbeat_is_checked_at_once_and_fully_applied() -> None:
    data = b"".join([
        *(record(wire.Kind.COMPLETE, "a", seq) for seq in range(3)),
        record(wire.Kind.HEARTBEAT, "", 0),
        *(record(wire.Kind.COMPLETE, "b", seq) for seq in range(2)),
    ])  # fmt: skip
    assert wire.decode_records(data).uniform, "one probe's identity: the numpy path, not record by record"
    collective = state()
    collective.receive(Datagram(data, 100, 0, False))
    assert collective.accepted == 6 and sum(collective.invalid.values()) == 0
    assert {key: window.last_seq for key, window in collective.windows.items()} == {("job", 0, "a"): 2, ("job", 0, "b"): 1}


def test_a_record_whose_process_group_is_not_utf8_is_malformed_and_the_others_still_count() -> None:
    bad = bytearray(record(wire.Kind.COMPLETE, "b", 0))
    bad[GROUP_OFFSET : GROUP_OFFSET + 2] = b"\xff\xfe"
    collective = state()
    collective.receive(Datagram(record(wire.Kind.COMPLETE, "a", 0) + bytes(bad), 100, 0, False))
    assert collective.accepted == 1 and collective.invalid["malformed"] == 1


def test_queued_datagrams_of_two_senders_leave_the_rank_with_the_first_to_claim_it() -> None:
    collective = state()
    collective.enqueue(Datagram(record(wire.Kind.COMPLETE, "a", 0), 100, 0, False))
    collective.enqueue(Datagram(record(wire.Kind.COMPLETE, "a", 1), 200, 0, False))  # another live process
    collective.enqueue(Datagram(record(wire.Kind.COMPLETE, "a", 1), 100, 0, False))
    assert collective.accepted == 0, "queued, not applied yet"
    collective.ingest()
    assert collective.accepted == 2 and collective.invalid["rank_claimed_by_other"] == 1
    assert collective.senders[("job", 0)].pid == 100
