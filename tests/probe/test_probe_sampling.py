"""Sampled completion timing: the probe times one async collective in TIMED_EVERY per group (a callback on its
future), chosen by seq; the others are polled by the sender and still complete, or show as pending when not."""

from __future__ import annotations

import pytest

from agent.probe import wire
from agent.probe.patch import GroupNames, wrap_collective
from agent.probe.recorder import TIMED_EVERY, Recorder, is_timed

from .conftest import LinkedSender, receive_all


class FakeWork:
    """A Work whose completion the test decides (what Recorder.poll asks: `is_completed`)."""

    def __init__(self) -> None:
        self.done = False

    def is_completed(self) -> bool:
        return self.done


@pytest.mark.parametrize("collectives_per_step", [1, 2, 3, 4, 6, 8, 16, 50])
def test_timed_collectives_are_one_in_timed_every_at_every_position_of_a_step(collectives_per_step: int) -> None:
    steps = 400
    timed = [seq for seq in range(steps * collectives_per_step) if is_timed(seq)]
    per_position = [sum(1 for seq in timed if seq % collectives_per_step == p) / steps for p in range(collectives_per_step)]
    assert abs(len(timed) / (steps * collectives_per_step) - 1 / TIMED_EVERY) < 0.01
    assert all(abs(share - 1 / TIMED_EVERY) < 0.03 for share in per_position)  # no bucket always or never timed


def test_untimed_collectives_are_polled_by_the_sender_and_sent_complete_without_a_completion_time(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(pending_report_seconds=60.0)
    works = {}
    for _ in range(3 * TIMED_EVERY):
        token = recorder.issue("default", wire.Op.all_reduce, 64)
        if is_timed(token[1]):
            recorder.complete(token)  # what its future's callback does
        else:
            work = works[token[1]] = FakeWork()
            recorder.complete_when(token, lambda work=work: work)
    first_untimed = min(works)
    works[first_untimed].done = True
    sender.flush()
    first = receive_all(receiver)
    for work in works.values():
        work.done = True
    sender.flush()
    second = receive_all(receiver)
    timed_seqs = [seq for seq in range(3 * TIMED_EVERY) if is_timed(seq)]
    assert [(r.seq, r.completed_at is not None) for r in first] == [(seq, True) for seq in timed_seqs] + [(first_untimed, False)]
    assert sorted(r.seq for r in second) == sorted(set(works) - {first_untimed})
    assert all(r.kind == wire.Kind.COMPLETE and r.completed_at is None for r in second)
    assert not recorder.pending and not recorder.polled


def test_an_untimed_collective_that_never_finishes_is_reported_pending_like_a_timed_one(
    linked_sender: LinkedSender,
) -> None:
    receiver, recorder, sender = linked_sender(pending_report_seconds=0.0)
    recorder.complete(recorder.issue("default", wire.Op.all_reduce, 64))  # seq 0: timed
    stuck = recorder.issue("default", wire.Op.all_reduce, 64)  # seq 1: polled, its peer never arrives
    assert is_timed(0) and not is_timed(stuck[1])
    work = FakeWork()
    recorder.complete_when(stuck, lambda: work)
    sender.flush()
    sender.flush()
    hung = receive_all(receiver)
    work.done = True  # the peer came back
    sender.flush()
    resumed = receive_all(receiver)
    assert [(r.kind, r.seq) for r in hung] == [(wire.Kind.COMPLETE, 0), (wire.Kind.ISSUE, stuck[1])]
    assert [(r.kind, r.seq) for r in resumed] == [(wire.Kind.COMPLETE, stuck[1])]


def test_a_poll_after_a_reset_completes_nothing_of_the_old_process_group() -> None:
    recorder = Recorder()
    recorder.complete(recorder.issue("default", wire.Op.all_reduce, 64))
    work = FakeWork()
    recorder.complete_when(recorder.issue("default", wire.Op.all_reduce, 64), lambda: work)
    recorder.reset()
    work.done = True
    recorder.poll()
    assert len(recorder.completed) == 1 and not recorder.pending and not recorder.polled


def test_a_work_that_cannot_tell_is_completed_untimed_rather_than_reported_hung_forever() -> None:
    recorder = Recorder()
    recorder.issue("default", wire.Op.all_reduce, 64)

    class BrokenWork:
        def is_completed(self) -> bool:
            raise RuntimeError("process group destroyed")

    recorder.complete_when(recorder.issue("default", wire.Op.all_reduce, 64), BrokenWork)
    recorder.poll()
    assert [(token[1], completed_at) for token, completed_at in recorder.completed] == [(1, 0.0)]
    assert list(recorder.pending) == [("default", 0)]


def test_a_full_recorder_completes_an_untimed_collective_at_once_instead_of_holding_its_work() -> None:
    recorder = Recorder(capacity=2)
    for _ in range(2):
        recorder.issue("default", wire.Op.all_reduce, 64)
    beyond = recorder.issue("default", wire.Op.all_reduce, 64)
    recorder.complete_when(beyond, FakeWork)  # a Work's getter
    assert not recorder.polled and [token[1] for token, _ in recorder.completed] == [beyond[1]]



class FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list = []

    def add_done_callback(self, callback) -> None:  # type: ignore[no-untyped-def]
        self.callbacks.append(callback)


class FakeAsyncWork(FakeWork):
    def __init__(self) -> None:
        super().__init__()
        self.future = FakeFuture()

    def get_future(self) -> FakeFuture:
        return self.future


def test_async_wrapper_puts_a_callback_only_on_the_sampled_collectives_and_polls_the_others() -> None:
    recorder = Recorder()
    works: list[FakeAsyncWork] = []

    def broadcast(tensor: object, src: int = 0, group: object = None, async_op: bool = False) -> FakeAsyncWork:
        works.append(FakeAsyncWork())
        return works[-1]

    wrapped = wrap_collective(broadcast, wire.Op.broadcast, "tensor", recorder, GroupNames())
    for _ in range(3 * TIMED_EVERY):
        wrapped(None, async_op=True)
    assert [len(w.future.callbacks) for w in works] == [int(is_timed(seq)) for seq in range(len(works))]
    assert sorted(seq for _, seq in recorder.polled) == [seq for seq in range(len(works)) if not is_timed(seq)]
    for work in works:
        work.done = True
        for callback in work.future.callbacks:
            callback(work.future)
    recorder.poll()
    assert not recorder.pending and sorted(token[1] for token, _ in recorder.completed) == list(range(len(works)))


def test_a_forked_child_forgets_the_parents_polled_collectives() -> None:
    from agent.probe import Probe

    probe = Probe("/nonexistent")
    probe.recorder.issue("default", wire.Op.all_reduce, 64)
    work = FakeWork()
    probe.recorder.complete_when(probe.recorder.issue("default", wire.Op.all_reduce, 64), lambda: work)
    probe.forget_after_fork()  # a DataLoader worker: the parent's Works are not its own (nor held for it)
    assert not probe.recorder.polled and not probe.recorder.pending
    work.done = True
    probe.recorder.poll()
    assert not probe.recorder.completed


def launch(recorder: Recorder, works: dict[int, FakeAsyncWork], data: object = None) -> None:
    """What the dispatcher kernel does after launching an all-reduce of `data` (here, its Work is `works[seq]`)."""
    seq = recorder.issued()
    works[seq] = FakeAsyncWork()
    recorder.launch("default", wire.Op.all_reduce, 1000.0 + seq, data, works.__getitem__, seq)


def test_a_launched_collective_gets_its_number_and_if_sampled_its_callback_at_once_the_rest_at_the_next_poll() -> None:
    import torch

    recorder, works = Recorder(), {}
    for _ in range(3 * TIMED_EVERY):
        launch(recorder, works, [torch.ones(4), torch.ones(2, dtype=torch.float64)])
    timed = [seq for seq in works if is_timed(seq)]
    assert [seq for seq, work in works.items() if work.future.callbacks] == timed
    assert sorted(seq for _, seq in recorder.pending) == timed  # the others wait, bytes not counted yet
    assert len(recorder.launches) == len(works) - len(timed) and not recorder.polled
    recorder.poll()
    assert not recorder.launches and sorted(seq for _, seq in recorder.polled) == [s for s in works if s not in timed]
    assert {token[3] for token in recorder.pending.values()} == {32} and not recorder.completed
    for work in works.values():
        work.done = True
        for callback in work.future.callbacks:
            callback(work.future)
    recorder.poll()
    done = {token[1]: (token[4], completed_at) for token, completed_at in recorder.completed}
    assert sorted(done) == sorted(works) and not recorder.pending and not recorder.polled
    assert all(done[seq][0] == 1000.0 + seq for seq in works)  # the issue time the kernel read
    assert all((done[seq][1] > 0.0) == (seq in timed) for seq in works)


def test_a_launched_collective_that_never_finishes_is_reported_pending(linked_sender: LinkedSender) -> None:
    receiver, recorder, sender = linked_sender(pending_report_seconds=0.0)
    works: dict[int, FakeAsyncWork] = {}
    while len(works) < 2 or is_timed(len(works) - 1):
        launch(recorder, works)
    stuck = len(works) - 1  # untimed: it waits for the flush's poll
    for seq, work in works.items():
        if seq != stuck:
            work.done = True
            for callback in work.future.callbacks:
                callback(work.future)
    sender.flush()
    records = receive_all(receiver)
    assert (wire.Kind.ISSUE, stuck) in [(r.kind, r.seq) for r in records]
    assert sorted(r.seq for r in records if r.kind == wire.Kind.COMPLETE) == [s for s in works if s != stuck]


def test_launches_beyond_capacity_complete_at_once_untimed_and_a_reset_forgets_the_waiting_ones() -> None:
    recorder, works = Recorder(capacity=2), {}
    untimed = [seq for seq in range(20) if not is_timed(seq)]
    while recorder.issued() <= untimed[2]:
        launch(recorder, works)
    assert len(recorder.launches) == 2
    assert [(token[1], completed_at) for token, completed_at in recorder.completed] == [(untimed[2], 0.0)]
    recorder.reset()
    recorder.poll()
    assert not recorder.launches and not recorder.pending and not recorder.polled


def test_a_sampled_launch_whose_work_has_no_future_completes_untimed_at_once() -> None:
    recorder = Recorder()

    class NoFuture:
        def get_future(self) -> None:
            raise RuntimeError("no future for this backend")

    recorder.launch("default", wire.Op.all_reduce, 1000.0, None, lambda handle: NoFuture(), None)
    assert is_timed(0) and [(token[1], at) for token, at in recorder.completed] == [(0, 0.0)] and not recorder.pending


def test_a_forked_child_forgets_the_parents_launches() -> None:
    from agent.probe import Probe

    probe, works = Probe("/nonexistent"), {}
    while not probe.recorder.launches:
        launch(probe.recorder, works)
    probe.forget_after_fork()
    probe.recorder.poll()
    assert not probe.recorder.launches and not probe.recorder.polled and not probe.recorder.pending
