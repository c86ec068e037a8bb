"""The dispatcher kernel is installed only on the torch it was written for; elsewhere the probe keeps its hook.
Where it is, it records every all-reduce of CPU tensors by its group's name and the bytes of its tensors."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from agent.probe import dispatch
from agent.probe.patch import GroupNames
from agent.probe.recorder import Recorder, Token


def test_kernel_is_not_installed_for_an_allreduce_schema_it_was_not_written_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch
    import torch.distributed  # noqa: F401  (registers the c10d ops)

    assert str(torch.ops.c10d.allreduce_.default._schema) == dispatch.EXPECTED_SCHEMA  # the torch CI installs
    monkeypatch.setattr(dispatch, "EXPECTED_SCHEMA", dispatch.EXPECTED_SCHEMA.replace("int timeout", "int ttl"))
    with pytest.raises(dispatch.KernelNotInstalled, match="another schema"):
        dispatch.install_allreduce_kernel(Recorder(), lambda group: "default")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", dispatch.DISPATCH_KEY)


@pytest.fixture
def one_rank_kernel() -> Iterator[tuple[Recorder, GroupNames]]:
    """A one-rank gloo default group in this process with the kernel registered (both gone afterwards)."""
    import torch.distributed as dist

    groups, recorder = GroupNames(), Recorder()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        groups.default_name = dist.group.WORLD.group_name
        library = dispatch.install_allreduce_kernel(recorder, groups.name)
        try:
            yield recorder, groups
        finally:
            library._destroy()
    finally:
        dist.destroy_process_group()


def completed(recorder: Recorder, count: int) -> list[Token]:
    """The first `count` tokens completed (the timed ones complete on gloo's thread, the others at a poll)."""
    deadline = time.monotonic() + 5.0
    while len(recorder.completed) < count and time.monotonic() < deadline:
        recorder.poll()
        time.sleep(0.01)
    return [token for token, _ in recorder.completed]


def test_kernel_numbers_each_group_apart_and_a_group_made_after_one_was_destroyed_by_its_own_name(
    one_rank_kernel: tuple[Recorder, GroupNames],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, _ = one_rank_kernel
    tensor = torch.ones(4)
    dist.group.WORLD.allreduce([tensor]).wait()
    first = dist.new_group([0])
    first.allreduce([tensor]).wait()
    first_name = first.group_name
    dist.destroy_process_group(first)
    del first
    gc.collect()
    second = dist.new_group([0])
    for _ in range(2):
        second.allreduce([tensor]).wait()
    records = sorted((token[0], token[1], token[3]) for token in completed(recorder, 4))
    assert first_name != second.group_name
    expected = [("default", 0, 16), (first_name, 0, 16), (second.group_name, 0, 16), (second.group_name, 1, 16)]
    assert records == sorted(expected)


def test_kernel_records_a_sparse_all_reduce_by_its_dense_bytes_as_the_wrappers_do(
    one_rank_kernel: tuple[Recorder, GroupNames],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, _ = one_rank_kernel
    dense = torch.ones(8)
    sparse = dense.to_sparse()
    dist.group.WORLD.allreduce([sparse]).wait()
    dist.group.WORLD.allreduce([dense, dense]).wait()
    assert sorted((token[1], token[3]) for token in completed(recorder, 2)) == [(0, 32), (1, 64)]


def test_an_all_reduce_that_raises_takes_its_number_so_the_ranks_numbers_stay_aligned(
    one_rank_kernel: tuple[Recorder, GroupNames],
) -> None:
    import torch
    import torch.distributed as dist

    recorder, _ = one_rank_kernel
    with pytest.raises(RuntimeError):
        dist.group.WORLD.allreduce([torch.ones(2), torch.ones(3)])  # gloo refuses tensors of different sizes
    dist.group.WORLD.allreduce([torch.ones(4)]).wait()
    assert [(token[1], token[3]) for token in completed(recorder, 1)] == [(1, 16)]
    assert recorder.issued() == 2 and not recorder.pending


def test_kernel_leaves_an_untimed_all_reduce_to_the_poll_and_holds_no_group(
    one_rank_kernel: tuple[Recorder, GroupNames],
) -> None:
    import weakref

    import torch
    import torch.distributed as dist

    from agent.probe.recorder import is_timed

    recorder, _ = one_rank_kernel
    tensor = torch.ones(4)
    dist.group.WORLD.allreduce([tensor]).wait()  # seq 0: timed
    group = dist.new_group([0])
    group.allreduce([tensor]).wait()
    group.allreduce([tensor]).wait()
    assert is_timed(0) and not is_timed(1)
    assert [(g, seq) for g, seq, *_ in recorder.launches] == [(group.group_name, 1)]
    done = {(token[0], token[1]) for token in completed(recorder, 3)}
    assert done == {("default", 0), (group.group_name, 0), (group.group_name, 1)} and not recorder.launches
    alive = weakref.ref(group)
    dist.destroy_process_group(group)
    del group
    gc.collect()
    assert alive() is None  # the kernel's names of groups do not keep a destroyed group alive
