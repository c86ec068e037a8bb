"""The compiled all-reduce kernel (agent/probe/compiled.py) records what the Python kernel records: every all-reduce of
CPU tensors numbered in issue order among the group's other collectives, failed ones numbered too, running ones
pending (the hang signal), completed ones with the completion time gloo's thread saw, bounded, reset with the group."""

from __future__ import annotations

import datetime
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.probe import Probe, compiled, wire
from agent.probe.dispatch import EXPECTED_SCHEMA, KernelNotInstalled
from agent.probe.patch import GroupNames, wrap_collective
from agent.probe.recorder import Recorder

from .conftest import LinkedSender, receive_all
from .jobs import wait_for


def built_module() -> Any:
    """The kernel module built for this torch; fails (never skips) without one: CI builds it in `make install`."""
    module = compiled.load_built(compiled.kernel_dir(os.environ))
    if module is None:
        pytest.fail("no compiled kernel for this torch: run `python -m agent.probe.compiled --build` (make install does)")
    return module


def registered(recorder: Recorder, default_name: str, capacity: int = compiled.CAPACITY) -> Any:
    """A compiled kernel registered for c10d::allreduce_, its queue taken by `recorder`."""
    kernel = built_module().Kernel(capacity, wire.Op.all_reduce)
    kernel.register(EXPECTED_SCHEMA)
    kernel.reset(default_name)
    recorder.compiled = kernel
    return kernel


@pytest.fixture
def one_rank() -> Iterator[tuple[Recorder, GroupNames, Any]]:
    """A one-rank gloo default group in this process and the compiled kernel registered (both gone afterwards)."""
    import torch.distributed as dist

    groups, recorder = GroupNames(), Recorder()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        groups.default_name = dist.group.WORLD.group_name
        kernel = registered(recorder, groups.default_name)
        try:
            yield recorder, groups, kernel
        finally:
            kernel.unregister()
    finally:
        dist.destroy_process_group()


def records(recorder: Recorder, count: int) -> list[tuple[str, int, wire.Op, int, float, float]]:
    """The first `count` completed collectives as (group, seq, op, bytes, issued_at, completed_at), by seq."""
    wait_for(lambda: recorder.poll() or len(recorder.completed) >= count, 5, f"{count} completed collectives", 0.01)
    return sorted((*token, completed_at) for token, completed_at in recorder.completed)


def test_all_reduces_are_numbered_before_a_later_wrapper_collective_of_their_group_and_each_group_apart(
    one_rank: tuple[Recorder, GroupNames, Any],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, groups, _ = one_rank
    broadcast = wrap_collective(dist.broadcast, wire.Op.broadcast, "tensor", recorder, groups)
    tensor = torch.ones(4)
    other = dist.new_group([0])
    dist.group.WORLD.allreduce([tensor]).wait()
    other.allreduce([tensor, tensor]).wait()
    dist.group.WORLD.allreduce([tensor]).wait()
    broadcast(tensor, 0)  # numbered at call time, after the kernel's two all-reduces not yet taken by any poll
    dist.group.WORLD.allreduce([tensor]).wait()
    seen = [(group, seq, op, nbytes) for group, seq, op, nbytes, *_ in records(recorder, 5)]
    assert seen == sorted([
        ("default", 0, wire.Op.all_reduce, 16), ("default", 1, wire.Op.all_reduce, 16),
        ("default", 2, wire.Op.broadcast, 16), ("default", 3, wire.Op.all_reduce, 16),
        (other.group_name, 0, wire.Op.all_reduce, 32),
    ])  # fmt: skip


def test_every_all_reduce_carries_its_completion_time_from_gloos_thread(
    one_rank: tuple[Recorder, GroupNames, Any],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, _, _ = one_rank
    before = time.time()
    for _ in range(6):  # not one in TIMED_EVERY: all
        dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    done = records(recorder, 6)
    assert [seq for _, seq, *_ in done] == list(range(6))
    assert all(before <= issued_at <= completed_at <= time.time() for *_, issued_at, completed_at in done)


def test_a_sparse_all_reduce_counts_its_dense_bytes_as_the_wrappers_do(one_rank: tuple[Recorder, GroupNames, Any]) -> None:
    import torch
    import torch.distributed as dist

    recorder, _, _ = one_rank
    dense = torch.ones(8)
    dist.group.WORLD.allreduce([dense.to_sparse()]).wait()
    dist.group.WORLD.allreduce([dense, dense]).wait()
    assert [(seq, nbytes) for _, seq, _, nbytes, *_ in records(recorder, 2)] == [(0, 32), (1, 64)]


def test_an_all_reduce_that_raises_takes_its_number_and_is_not_recorded(
    one_rank: tuple[Recorder, GroupNames, Any],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, _, kernel = one_rank
    with pytest.raises(RuntimeError):
        dist.group.WORLD.allreduce([torch.ones(2), torch.ones(3)])  # gloo refuses tensors of different sizes
    dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    assert [(seq, nbytes) for _, seq, _, nbytes, *_ in records(recorder, 1)] == [(1, 16)]
    assert recorder.issued() == 2 and not recorder.pending and kernel.queued() == 0


def test_all_reduces_beyond_the_queues_capacity_are_numbered_and_counted_dropped() -> None:
    import torch
    import torch.distributed as dist

    recorder = Recorder()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    kernel = registered(recorder, dist.group.WORLD.group_name, capacity=2)
    try:
        for _ in range(5):
            dist.group.WORLD.allreduce([torch.ones(4)]).wait()
        assert kernel.queued() == 2
        recorder.issue("default", wire.Op.barrier, 0)  # after the five all-reduces
        assert recorder.dropped == 3 and recorder.pending[("default", 5)][2] == wire.Op.barrier
        wait_for(lambda: recorder.poll() or kernel.queued() == 0, 5, "the completed ones to leave the queue", 0.01)
        dist.group.WORLD.allreduce([torch.ones(4)]).wait()  # room again: queued
        assert [seq for _, seq, *_ in records(recorder, 3)] == [0, 1, 6]
    finally:
        kernel.unregister()
        dist.destroy_process_group()


def test_a_reset_forgets_the_queued_all_reduces_and_numbers_start_again(
    one_rank: tuple[Recorder, GroupNames, Any],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, groups, kernel = one_rank
    for _ in range(3):
        dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    recorder.reset()
    kernel.reset(groups.default_name)  # what Probe.activate does for a new default group
    recorder.poll()
    assert not recorder.completed and not recorder.pending and recorder.issued() == 0
    dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    assert [seq for _, seq, *_ in records(recorder, 1)] == [0]


def test_a_forked_child_forgets_the_parents_queued_all_reduces(one_rank: tuple[Recorder, GroupNames, Any]) -> None:
    import torch
    import torch.distributed as dist

    recorder, _, kernel = one_rank
    probe = Probe("/nonexistent")
    probe.recorder = recorder
    dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    assert kernel.queued() == 1
    probe.forget_after_fork()  # a DataLoader worker: the parent's all-reduces are not its own
    recorder.poll()
    assert kernel.queued() == 0 and not recorder.completed and recorder.issued() == 0


@pytest.fixture
def pair() -> Iterator[tuple[Any, Any]]:
    """Two ranks of one gloo process group named "pair", both in this process (made on two threads: each waits for
    the other to connect)."""
    import torch
    import torch.distributed as dist

    store, ranks = dist.HashStore(), {}

    def make(rank: int) -> None:
        group = dist.ProcessGroup(store, rank, 2)
        backend = dist.ProcessGroupGloo(store, rank, 2, datetime.timedelta(seconds=60))
        group._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, backend)
        group._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
        group._set_group_name("pair")
        ranks[rank] = group

    threads = [threading.Thread(target=make, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    yield ranks[0], ranks[1]


def test_an_all_reduce_its_peer_never_joins_is_sent_pending_with_its_issue_time_and_complete_once_it_does(
    pair: tuple[Any, Any], linked_sender: LinkedSender
) -> None:
    import torch

    receiver, recorder, sender = linked_sender(pending_report_seconds=0.0)
    kernel = registered(recorder, "0")
    try:
        first, second = pair
        issued_before = time.time()
        waiting = first.allreduce([torch.ones(8)])  # rank 1 has not joined: it hangs
        returned_at = time.time()
        time.sleep(0.1)  # older than the kernel's young ones, which wait for a later flush
        sender.flush()  # what the sender's thread does while the training thread hangs
        [hung] = receive_all(receiver)
        assert (hung.kind, hung.group, hung.seq, hung.op, hung.bytes) == (wire.Kind.ISSUE, "pair", 0, wire.Op.all_reduce, 32)
        assert issued_before <= hung.issued_at <= returned_at and not waiting.is_completed()
        second.allreduce([torch.ones(8)]).wait()  # the peer joins (numbered 1 here: both ranks share this recorder)
        waiting.wait()
        sender.flush()
        done = {r.seq: r for r in receive_all(receiver) if r.kind == wire.Kind.COMPLETE}
        assert sorted(done) == [0, 1] and done[0].issued_at == hung.issued_at
        assert done[0].completed_at is not None and done[0].completed_at >= hung.issued_at + 0.1
    finally:
        kernel.unregister()


def test_kernel_refuses_an_allreduce_schema_it_was_not_written_for_and_a_second_registration() -> None:
    import torch
    import torch.distributed  # noqa: F401  (registers the c10d ops)

    kernel = built_module().Kernel(4, wire.Op.all_reduce)
    with pytest.raises(RuntimeError, match="another schema"):
        kernel.register(EXPECTED_SCHEMA.replace("int timeout", "int ttl"))
    assert not kernel.registered
    kernel.register(EXPECTED_SCHEMA)
    try:
        with pytest.raises(RuntimeError, match="kernel already"):
            built_module().Kernel(4, wire.Op.all_reduce).register(EXPECTED_SCHEMA)
    finally:
        kernel.unregister()
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", "AutogradCPU")


def test_probe_uses_the_compiled_kernel_where_built_and_the_python_kernel_where_not(tmp_path: Path) -> None:
    import torch
    import torch.distributed  # noqa: F401

    built_module()
    for kernel_dir, expected in ((compiled.kernel_dir(os.environ), "Kernel"), (tmp_path, "Library")):
        probe = Probe("/nonexistent", compiled_kernel_dir=kernel_dir)
        kernel: Any = probe._install_kernel()
        try:
            assert type(kernel).__name__ == expected
            assert (probe.recorder.compiled is not None) == (expected == "Kernel")
        finally:
            kernel.unregister() if expected == "Kernel" else kernel._destroy()
    with pytest.raises(KernelNotInstalled, match="no compiled kernel"):
        compiled.install_compiled_kernel(tmp_path)
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", "AutogradCPU")


def test_builds_are_kept_apart_by_torch_version_and_source_and_where_says_whether_one_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    import torch

    directory = compiled.build_dir(tmp_path)
    assert directory.parent == tmp_path and torch.__version__ in directory.name
    assert hashlib.sha256(compiled.SOURCE.read_bytes()).hexdigest()[:16] in directory.name
    assert compiled.main(["--where", "--dir", str(tmp_path)]) == 1
    assert "not built" in capsys.readouterr().out
    assert compiled.kernel_dir({"LOCKSTEP_PROBE_KERNEL_DIR": "/opt/k"}) == Path("/opt/k")
    assert compiled.kernel_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/lockstep/probe-kernel")
