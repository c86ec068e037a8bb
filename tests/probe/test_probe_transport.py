"""The probe's sender: packs what the recorder holds, reports long-pending collectives, counts what it loses."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from agent.probe import wire
from agent.probe.recorder import Recorder
from agent.probe.transport import Sender

from .conftest import IDENTITY, BindAgent, LinkedSender, receive_all, receive_datagrams


def test_sender_delivers_completed_and_long_pending_collectives_with_the_rank_identity(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(pending_report_seconds=0.05)
    for _ in range(100):
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 4096))
    stuck = recorder.issue("default", wire.Op.broadcast, 64)
    sender.flush()
    datagrams = receive_datagrams(receiver)
    first = [record for datagram in datagrams for record in datagram.as_records()]
    time.sleep(0.06)
    sender.flush()
    sender.flush()  # a pending collective is reported once, not on every flush
    second = receive_all(receiver)
    completes = [r for r in first if r.kind == wire.Kind.COMPLETE]
    assert [r.seq for r in completes] == list(range(100))
    assert len(datagrams) == 1 and datagrams[0].identity == IDENTITY, "the identity once, in the header"
    assert all(r.completed_at is not None and r.completed_at >= r.issued_at for r in completes)
    issues = [r for r in second if r.kind == wire.Kind.ISSUE]
    assert [(r.seq, r.op) for r in issues] == [(stuck[1], wire.Op.broadcast)]
    assert sender.dropped == 0


def test_sender_without_an_agent_drops_and_counts_and_never_raises(tmp_path: Path) -> None:
    recorder = Recorder(capacity=50)
    sender = Sender(recorder, IDENTITY, str(tmp_path / "missing"))
    for _ in range(80):  # 30 more than the recorder holds
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 8))
    sender.flush()
    assert recorder.dropped == 30
    assert sender.dropped >= 80  # 30 never queued, 50 + a heartbeat not delivered
    assert len(recorder.completed) == 0  # memory is released even when nothing can be sent


def test_a_hang_is_reported_again_to_an_agent_that_was_away(tmp_path: Path, bind_agent: BindAgent) -> None:
    recorder = Recorder()
    sender = Sender(recorder, IDENTITY, str(tmp_path), pending_report_seconds=0.0)
    stuck = recorder.issue("default", wire.Op.all_reduce, 64)
    sender.flush()  # no agent yet: the report is lost
    receiver = bind_agent()
    sender.flush()
    assert [(r.kind, r.seq) for r in receive_all(receiver) if r.kind == wire.Kind.ISSUE] == [(wire.Kind.ISSUE, stuck[1])]


def flush_small_datagrams(recorder: Recorder, sender: Sender, flushes: int = 20) -> None:
    """Send 10 collectives per flush, `flushes` times, to an agent that reads none: more datagrams than its queue
    takes (Linux's default net.unix.max_dgram_qlen is 10)."""
    for _ in range(flushes):
        for _ in range(10):
            recorder.complete(recorder.issue("default", wire.Op.all_reduce, 8))
        sender.flush()


def test_a_full_agent_queue_is_a_backlog_sent_next_flush_in_order_not_a_drop(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender()
    flush_small_datagrams(recorder, sender)
    assert sender.send_errors > 0 and sender.backlogged, "the queue never filled: the test does not test the backlog"
    received = receive_all(receiver)
    while sender.backlogged:
        sender.flush()
        received += receive_all(receiver)
    assert [r.seq for r in received if r.kind == wire.Kind.COMPLETE] == list(range(200))
    assert sender.dropped == 0


def test_the_exit_flush_waits_briefly_for_a_slow_agent_so_the_last_collectives_arrive(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(flush_interval_seconds=60.0)
    sender.start()
    flush_small_datagrams(recorder, sender)  # the thread waits 60 s for its first flush: these are ours alone
    for _ in range(50):
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 8))
    assert sender.backlogged, "the queue never filled: the test does not test the exit flush's retries"
    stopping = threading.Thread(target=sender.stop)
    stopping.start()  # the interpreter exits while the agent's queue is full ...
    received: list[wire.Record] = []
    deadline = time.monotonic() + 5.0
    while stopping.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)  # ... and the agent drains it a little later
        received += receive_all(receiver)
    stopping.join()
    received += receive_all(receiver)
    assert [r.seq for r in received if r.kind == wire.Kind.COMPLETE] == list(range(250))
    assert sender.dropped == 0


def test_an_idle_sender_sends_a_heartbeat_datagram_that_carries_its_count_of_lost_records(
    tmp_path: Path, bind_agent: BindAgent,
) -> None:
    receiver = bind_agent()
    recorder = Recorder(capacity=5)
    sender = Sender(recorder, IDENTITY, str(tmp_path), heartbeat_seconds=0.05)
    for _ in range(8):  # 3 more than the recorder holds
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 8))
    sender.flush()
    sender.flush()  # nothing new, and a datagram just went out: nothing to say
    [collectives] = receive_datagrams(receiver)
    time.sleep(0.06)
    sender.flush()
    [heartbeat] = receive_datagrams(receiver)
    assert len(collectives.records) == 5 and collectives.dropped_total == 3
    assert len(heartbeat.records) == 0 and heartbeat.dropped_total == 3 and heartbeat.identity == IDENTITY


def test_a_flush_touching_many_process_groups_splits_them_over_datagrams_each_with_its_own_table(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender()
    groups = [f"pair-{index}" for index in range(wire.MAX_GROUPS_PER_DATAGRAM + 4)]
    for _ in range(2):
        for group in groups:
            recorder.complete(recorder.issue(group, wire.Op.send, 8))
    sender.flush()
    datagrams = receive_datagrams(receiver)
    assert len(datagrams) >= 2 and all(len(d.groups) <= wire.MAX_GROUPS_PER_DATAGRAM for d in datagrams)
    received = sorted((r.group, r.seq) for d in datagrams for r in d.as_records())
    assert received == sorted((group, seq) for group in groups for seq in range(2))



def test_a_collective_launch_runs_the_due_flush_on_the_training_thread_and_schedules_the_next(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(flush_interval_seconds=60.0)  # its thread sleeps for 120 s
    sender.start()
    try:
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 64))
        recorder.launched()  # the next flush is due in 60 s: the launch sends nothing
        assert receive_all(receiver) == []
        recorder.flush_due = time.monotonic()  # ... and now it is due
        recorder.launched()
        assert [(r.kind, r.seq) for r in receive_all(receiver)] == [(wire.Kind.COMPLETE, 0)]
        assert recorder.flush_due > time.monotonic() + 30.0, "the flush schedules the next one an interval later"
    finally:
        sender.stop()


def test_a_hang_is_reported_by_the_senders_thread_when_the_training_thread_launches_nothing(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(flush_interval_seconds=0.05, pending_report_seconds=0.0)
    sender.start()
    try:
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 64))
        recorder.launched()
        stuck = recorder.issue("default", wire.Op.all_reduce, 64)  # never completes: the training thread hangs in it
        received: list[wire.Record] = []
        deadline = time.monotonic() + 10.0
        while not any(r.kind == wire.Kind.ISSUE for r in received) and time.monotonic() < deadline:
            time.sleep(0.02)
            received += receive_all(receiver)
        assert [(r.kind, r.seq) for r in received] == [(wire.Kind.COMPLETE, 0), (wire.Kind.ISSUE, stuck[1])]
    finally:
        sender.stop()


def test_while_collectives_launch_the_training_thread_flushes_and_the_senders_thread_stays_asleep(
    linked_sender: LinkedSender, monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, recorder, sender = linked_sender(flush_interval_seconds=0.25)  # the thread flushes after 0.5 s silence
    flushed_by: list[str] = []
    flush = sender.flush

    def noting_flush() -> None:
        flushed_by.append(threading.current_thread().name)
        flush()

    monkeypatch.setattr(sender, "flush", noting_flush)
    sender.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 2.0:  # a training loop: a collective every 5 ms
            recorder.complete(recorder.issue("default", wire.Op.all_reduce, 64))
            recorder.launched()
            time.sleep(0.005)
    finally:
        sender.stop()
    by_training = flushed_by.count(threading.current_thread().name)
    assert by_training >= 4 and by_training >= 4 * (len(flushed_by) - 1 - by_training), flushed_by  # -1: the exit flush
    assert sorted(r.seq for r in receive_all(receiver) if r.kind == wire.Kind.COMPLETE) == list(range(recorder.issued()))


def test_a_failing_flush_on_the_training_thread_never_raises_into_training(tmp_path: Path) -> None:
    recorder = Recorder()
    sender = Sender(recorder, IDENTITY, str(tmp_path / "missing"), flush_interval_seconds=60.0)
    sender.start()
    try:
        recorder.complete(recorder.issue("default", wire.Op.all_reduce, 8))
        recorder.flush_due = time.monotonic()
        recorder.launched()  # no agent: the records are dropped and counted, the launch returns
        assert sender.dropped >= 1 and not recorder.completed
    finally:
        sender.stop()
    assert recorder.flusher is None, "a stopped sender is no longer run by launches"
