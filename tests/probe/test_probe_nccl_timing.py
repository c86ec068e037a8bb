"""NCCL's own timing completes the probe's records (agent/probe/nccl_timing.py), on fakes of ProcessGroupNCCL and
its WorkInfo built to torch 2.13's documented fields; and anything else keeps the CPU-side completion."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._C import _distributed_c10d as c10d

from agent.probe import nccl_timing_wanted
from agent.probe.nccl_timing import REGISTER, SEQUENCE, NcclTiming, one_parameter
from agent.probe.patch import GroupNames, timed_allreduce_hook, wrap_collective
from agent.probe.recorder import Recorder, is_timed
from agent.probe.wire import Op

from .jobs import run_ranks

DOCUMENTED_FIELDS = ("op_type", "seq", "time_started", "time_finished", "active_duration")


class FakeWorkInfo:
    """torch._C._distributed_c10d.WorkInfo as torch 2.13 hands it to a hook: steady_clock points as timedeltas
    since the clock's epoch (time.monotonic's), the CUDA-event duration as a timedelta. By default the kernel
    starts now, after the test issued the collective, and ends `active_seconds` later."""

    def __init__(self, seq: int, active_seconds: float, finished_monotonic: float | None = None,
                 op_type: Any = c10d.OpType.ALLREDUCE) -> None:  # fmt: skip
        finished = time.monotonic() + active_seconds if finished_monotonic is None else finished_monotonic
        self.op_type = op_type
        self.seq = seq
        self.time_started = timedelta(seconds=finished - active_seconds - 0.001)
        self.time_finished = timedelta(seconds=finished)
        self.active_duration = timedelta(seconds=active_seconds)


class FakeNcclGroup:
    """What the probe uses of a ProcessGroup whose default backend is ProcessGroupNCCL: it numbers its collectives
    from 1, takes one hook, and refuses it without TORCH_NCCL_ENABLE_TIMING."""

    def __init__(self, name: str = "0", backend: str = "nccl", timing_enabled: bool = True) -> None:
        self.group_name = name
        self.backend = backend
        self.timing_enabled = timing_enabled
        self.hooks: list[Any] = []
        self.seq = 0

    def _get_backend_name(self) -> str:
        return self.backend

    def _get_sequence_number_for_group(self) -> int:
        return self.seq

    def _register_on_completion_hook(self, hook: Any) -> None:
        if self.hooks:
            raise RuntimeError("ProcessGroupNCCL OnCompletion hook already registered")
        if not self.timing_enabled:
            raise ValueError("ProcessGroupNCCL OnCompletion hook requires ... TORCH_NCCL_ENABLE_TIMING")
        self.hooks.append(hook)

    def issue(self) -> int:
        self.seq += 1
        return self.seq

    def finish(self, work_info: Any) -> None:
        """The hook thread, for one completed collective (never lets the hook's exception go, as torch would)."""
        for hook in self.hooks:
            hook(work_info)


def timed(group: FakeNcclGroup | None = None) -> tuple[Recorder, NcclTiming, FakeNcclGroup]:
    recorder = Recorder()
    timing = NcclTiming(recorder)
    group = group or FakeNcclGroup()
    timing.reset(group)
    return recorder, timing, group


def issue(recorder: Recorder, timing: NcclTiming, group: FakeNcclGroup, nbytes: int = 4) -> Any:
    """One collective on the default group as the wrappers issue it; the token if the hook is to complete it."""
    token = recorder.issue("default", Op.all_reduce, nbytes)
    key = timing.expect("default", None, token)
    group.issue()
    assert key is not None and timing.confirm(None, key)
    return token


# --- the fakes are the real API -------------------------------------------------------------------------------


def test_fakes_follow_the_hook_api_of_the_installed_torch() -> None:
    assert set(DOCUMENTED_FIELDS) <= set(dir(c10d.WorkInfo))
    assert callable(getattr(c10d.ProcessGroup, REGISTER)) and callable(getattr(c10d.ProcessGroup, SEQUENCE))
    assert one_parameter(getattr(c10d.ProcessGroup, REGISTER))  # from pybind's docstring: (self, hook: object)


# --- matching and times ---------------------------------------------------------------------------------------


def test_hook_completes_the_matching_record_with_the_kernels_start_and_end_in_the_probes_clock() -> None:
    recorder, timing, group = timed()
    token = issue(recorder, timing, group, nbytes=1024)
    assert not recorder.completed and recorder.pending  # the CPU side no longer completes it
    finished = time.monotonic() + 0.25
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.25, finished_monotonic=finished))
    [(record, completed_at)] = recorder.completed
    assert record[:4] == token[:4] and not recorder.pending and not timing.awaiting
    expected_finish = time.time() - (time.monotonic() - finished)
    assert completed_at == pytest.approx(expected_finish, abs=0.005)
    assert completed_at - record[4] == pytest.approx(0.25, abs=2e-6)  # the wait is the CUDA-event duration
    assert timing.completed == 1


def test_out_of_order_completions_each_complete_their_own_record() -> None:
    recorder, timing, group = timed()
    tokens = [issue(recorder, timing, group, nbytes=n) for n in (10, 20, 30)]
    for seq, active in ((3, 0.03), (1, 0.01), (2, 0.02)):
        group.finish(FakeWorkInfo(seq=seq, active_seconds=active))
    waits = {record[3]: done - record[4] for record, done in recorder.completed}
    assert waits == pytest.approx({10: 0.01, 20: 0.02, 30: 0.03}, abs=2e-6)
    assert [record[1] for record, _ in recorder.completed] == [tokens[2][1], tokens[0][1], tokens[1][1]]


def test_nccl_numbers_collectives_the_probe_does_not_see_and_records_still_match() -> None:
    recorder, timing, group = timed()
    group.issue(), group.issue()  # DDP's C++ broadcasts at construction: NCCL counts them, the probe does not
    token = issue(recorder, timing, group)
    assert token[1] == 0 and group.seq == 3
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.5))
    group.finish(FakeWorkInfo(seq=2, active_seconds=0.5))
    assert not recorder.completed and timing.unknown == 2
    group.finish(FakeWorkInfo(seq=3, active_seconds=0.004))
    [(record, done)] = recorder.completed
    assert record[1] == 0 and done - record[4] == pytest.approx(0.004, abs=2e-6)


def test_unknown_sequence_number_is_counted_and_the_awaited_record_still_completes() -> None:
    recorder, timing, group = timed()
    issue(recorder, timing, group)
    group.finish(FakeWorkInfo(seq=99, active_seconds=0.1))
    assert timing.unknown == 1 and not recorder.completed and len(recorder.pending) == 1
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.1))
    assert len(recorder.completed) == 1 and not recorder.pending


def test_hook_that_runs_before_the_issuing_call_returns_completes_the_record_once() -> None:
    recorder, timing, group = timed()
    token = recorder.issue("default", Op.all_reduce, 4)
    key = timing.expect("default", None, token)
    assert key is not None
    group.issue()
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.001))  # the hook thread took the GIL first
    assert timing.confirm(None, key)
    assert len(recorder.completed) == 1


def test_call_that_issued_no_nccl_collective_is_completed_by_the_caller_and_its_number_stays_free() -> None:
    recorder, timing, group = timed()
    token = recorder.issue("default", Op.barrier, 0)
    key = timing.expect("default", None, token)
    assert key is not None and not timing.confirm(None, key)  # nothing issued: the caller completes as before
    assert not timing.awaiting
    recorder.complete(token)
    token = issue(recorder, timing, group)  # the next collective takes NCCL's number 1
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.002))
    assert [record[1] for record, _ in recorder.completed] == [0, 1]


def test_hook_after_the_probe_closed_does_nothing_and_does_not_raise() -> None:
    recorder, timing, group = timed()
    issue(recorder, timing, group)
    timing.close()
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.1))
    assert not recorder.completed and timing.unknown == 0 and timing.failed == 0


def test_hook_of_a_group_from_before_a_new_default_group_finds_nothing() -> None:
    recorder, timing, old = timed()
    issue(recorder, timing, old)
    new = FakeNcclGroup()
    recorder.reset()
    timing.reset(new)  # init_process_group again: the probe's numbers and NCCL's restart
    issue(recorder, timing, new)
    old.finish(FakeWorkInfo(seq=1, active_seconds=0.3))  # the old group's hook thread, late
    assert not recorder.completed and timing.unknown == 1
    new.finish(FakeWorkInfo(seq=1, active_seconds=0.003))
    [(record, done)] = recorder.completed
    assert done - record[4] == pytest.approx(0.003, abs=2e-6)


# --- failing safe ---------------------------------------------------------------------------------------------


class NoHookGroup(FakeNcclGroup):
    """An NCCL group of a torch without the hook API."""

    _register_on_completion_hook = None  # type: ignore[assignment]


class TwoArgumentHookGroup(FakeNcclGroup):
    def _register_on_completion_hook(self, hook: Any, priority: int) -> None:  # type: ignore[override]
        raise AssertionError("a hook API of another shape must not be called")


@pytest.mark.parametrize("group", [
    NoHookGroup(), TwoArgumentHookGroup(), FakeNcclGroup(timing_enabled=False), FakeNcclGroup(backend="gloo"),
], ids=["api_absent", "api_differs", "timing_off", "gloo"])  # fmt: skip
def test_group_without_usable_nccl_timing_completes_as_before(group: FakeNcclGroup) -> None:
    recorder, timing, _ = timed(group)
    token = recorder.issue("default", Op.all_reduce, 4)
    assert timing.expect("default", None, token) is None
    assert not timing.awaiting and not group.hooks
    assert timing.unavailable == (0 if group.backend == "gloo" else 1)  # gloo has CPU-side times by nature


def test_user_hook_registered_first_leaves_the_group_cpu_side_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group, other = FakeNcclGroup("0"), FakeNcclGroup("7")
    group.hooks.append(lambda work_info: None)
    other.hooks.append(lambda work_info: None)
    recorder, timing, _ = timed(group)
    with caplog.at_level(logging.INFO, logger="agent.probe.nccl_timing"):
        for _ in range(3):
            assert timing.expect("default", None, recorder.issue("default", Op.all_reduce, 4)) is None
        assert timing.expect("7", other, recorder.issue("7", Op.all_reduce, 4)) is None
    assert timing.unavailable == 2  # one registration attempt per group, not per collective
    assert len([r for r in caplog.records if "no NCCL timing" in r.message]) == 1


@pytest.mark.parametrize("broken", ["no_fields", "time_as_text", "far_from_now", "negative_duration", "nan"])
def test_unreadable_work_info_completes_the_record_on_the_cpu_and_never_raises_into_torch(broken: str) -> None:
    recorder, timing, group = timed()
    token = issue(recorder, timing, group)
    info: Any = FakeWorkInfo(seq=1, active_seconds=0.1)
    if broken == "no_fields":
        del info.time_finished, info.active_duration
    elif broken == "time_as_text":
        info.time_finished = "2026-01-01T00:00:00"
    elif broken == "far_from_now":
        info.time_finished = timedelta(seconds=time.monotonic() + 3600)  # another clock than time.monotonic's
    elif broken == "negative_duration":
        info.active_duration = timedelta(seconds=-1)
    else:
        info.active_duration = _NanDuration()  # timedelta cannot hold one; a float duration could
    before = time.time()
    group.finish(info)
    [(record, done)] = recorder.completed
    assert record == token and before <= done <= time.time()  # CPU-side: issue time kept, completion noticed now
    assert timing.failed == 1


class _NanDuration:
    def total_seconds(self) -> float:
        return float("nan")


def test_hook_survives_an_exception_from_the_recorder(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, timing, group = timed()
    issue(recorder, timing, group)

    def broken(*args: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(recorder, "complete_at", broken)
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.1))  # does not raise
    assert timing.failed == 1


def test_older_torch_system_clock_datetimes_convert_too() -> None:
    recorder, timing, group = timed()
    issue(recorder, timing, group)
    info = FakeWorkInfo(seq=1, active_seconds=0.05)
    finished = time.time() + 0.05
    info.time_finished = datetime.fromtimestamp(finished)  # type: ignore[assignment]  # pybind: naive local time
    group.finish(info)
    [(record, done)] = recorder.completed
    assert done == pytest.approx(finished, abs=1e-5) and done - record[4] == pytest.approx(0.05, abs=2e-5)


def test_kernel_start_is_never_placed_before_the_cpu_issued_the_collective() -> None:
    recorder, timing, group = timed()
    token = issue(recorder, timing, group)
    group.finish(FakeWorkInfo(seq=1, active_seconds=5.0, finished_monotonic=time.monotonic()))  # clocks off by 5 s
    [(record, done)] = recorder.completed
    assert record[4] == token[4] and done >= record[4]  # a record the agent accepts: completion not before issue


def test_one_parameter_reads_python_signatures_and_pybind_docstrings() -> None:
    def hook_api(hook: Any) -> None: ...

    class Builtin:
        __doc__ = "_register_on_completion_hook(self: ProcessGroup, hook: object, when: int) -> None\n\nMore."

    assert one_parameter(hook_api) and one_parameter(FakeNcclGroup()._register_on_completion_hook)
    assert not one_parameter(Builtin()) and not one_parameter(TwoArgumentHookGroup()._register_on_completion_hook)


# --- the probe's wrappers and DDP hook ------------------------------------------------------------------------


def test_wrapped_collective_on_an_nccl_group_is_completed_by_the_hook_not_on_return() -> None:
    recorder, timing, group = timed()

    def all_reduce(tensor: Any, op: Any = None, group: Any = None, async_op: bool = False) -> Any:
        (group or default).issue()
        return None

    default = group
    wrapper = wrap_collective(all_reduce, Op.all_reduce, "tensor", recorder, GroupNames(), timing=timing)
    wrapper(torch.ones(4))
    assert not recorder.completed and len(recorder.pending) == 1
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.02))
    [(record, done)] = recorder.completed
    assert record[3] == 16 and done - record[4] == pytest.approx(0.02, abs=2e-6)


def test_wrapped_collective_that_raises_leaves_nothing_awaited() -> None:
    recorder, timing, group = timed()

    def all_reduce(tensor: Any, op: Any = None, group: Any = None, async_op: bool = False) -> Any:
        raise RuntimeError("NCCL error")

    wrapper = wrap_collective(all_reduce, Op.all_reduce, "tensor", recorder, GroupNames(), timing=timing)
    with pytest.raises(RuntimeError, match="NCCL error"):
        wrapper(torch.ones(4))
    assert not timing.awaiting and not recorder.pending and not recorder.completed


def test_ddp_hook_on_an_nccl_group_leaves_completion_to_nccls_hook() -> None:
    class DdpNcclGroup(FakeNcclGroup):
        def size(self) -> int:
            return 2

        def allreduce(self, tensors: list[torch.Tensor]) -> Any:
            self.issue()
            future: torch.futures.Future[list[torch.Tensor]] = torch.futures.Future()
            future.set_result(tensors)
            return type("Work", (), {"get_future": lambda _self: future})()

    group = DdpNcclGroup()
    recorder, timing, _ = timed(group)
    bucket = type("Bucket", (), {"buffer": lambda _self: torch.ones(8)})()
    result = timed_allreduce_hook(recorder, "default", timing)(group, bucket).wait()
    assert torch.equal(result, torch.full((8,), 0.5)) and not recorder.completed
    group.finish(FakeWorkInfo(seq=1, active_seconds=0.01))
    assert len(recorder.completed) == 1 and not recorder.pending


# --- a real gloo job under the probe with NCCL timing on ------------------------------------------------------

PROBED_GLOO_WITH_NCCL_TIMING = """
import json, sys
import agent.probe
probe = agent.probe.install(sys.argv[3])  # TORCH_NCCL_ENABLE_TIMING=1 in the environment turns NCCL timing on
import torch, torch.distributed as dist, torch.multiprocessing as mp

def rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    probe = agent.probe.installed()
    probe.sender.stop()  # keep the completed records here to look at
    sub = dist.new_group([0, 1])
    for _ in range(3):
        dist.broadcast(torch.ones(4), src=0)
        dist.all_reduce(torch.ones(4), group=sub, async_op=True).wait()
        dist.barrier()
    probe.recorder.poll()  # what the stopped sender would do: complete the untimed async collectives
    timing = probe.nccl_timing
    completed = [(token[0], token[1], token[4], done) for token, done in probe.recorder.completed]
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"timing_on": timing is not None, "unavailable": timing.unavailable,
                   "awaiting": len(timing.awaiting), "hooks": dist.group.WORLD._has_hooks() or sub._has_hooks(),
                   "completed": completed, "pending": len(probe.recorder.pending),
                   "compiled_kernel": probe.recorder.compiled is not None}, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank_main, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


@pytest.mark.slow
def test_gloo_job_with_nccl_timing_on_keeps_cpu_side_completion_of_every_collective(
    subprocess_env: dict[str, str], probe_kernel: dict[str, str], tmp_path: Path
) -> None:
    env = {**subprocess_env, **probe_kernel, "TORCH_NCCL_ENABLE_TIMING": "1"}
    compiled = probe_kernel["LOCKSTEP_PROBE_COMPILED"] == "1"
    for result in run_ranks(PROBED_GLOO_WITH_NCCL_TIMING, 2, env, tmp_path):
        assert result["compiled_kernel"] is compiled
        assert result["timing_on"] and not result["hooks"]  # gloo: no hook registered, nothing counted as missing
        assert result["unavailable"] == 0 and result["awaiting"] == 0 and result["pending"] == 0
        by_group: dict[str, list[int]] = {}
        for group, seq, issued, done in result["completed"]:
            by_group.setdefault(group, []).append(seq)
            # an async all-reduce outside the timed sample (the compiled kernel times every one)
            untimed = group != "default" and not is_timed(seq) and not compiled
            assert issued > 0 and (done == 0.0 if untimed else done >= issued)
        assert sorted(by_group.pop("default")) == list(range(6))  # broadcasts and barriers
        assert [sorted(seqs) for seqs in by_group.values()] == [[0, 1, 2]]  # the subgroup's all-reduces


@pytest.mark.parametrize(("environ", "wanted"), [
    ({}, False),
    ({"TORCH_NCCL_ENABLE_TIMING": "1"}, True),
    ({"NCCL_ENABLE_TIMING": "true"}, True),
    ({"TORCH_NCCL_ENABLE_TIMING": "0", "NCCL_ENABLE_TIMING": "1"}, False),
    ({"TORCH_NCCL_ENABLE_TIMING": "1", "LOCKSTEP_PROBE_NCCL_TIMING": "0"}, False),
    ({"LOCKSTEP_PROBE_NCCL_TIMING": "on"}, True),
    ({"TORCH_NCCL_ENABLE_TIMING": "1", "LOCKSTEP_PROBE_NCCL_TIMING": "maybe"}, True),
])  # fmt: skip
def test_nccl_timing_is_on_where_torch_times_nccl_unless_the_probe_is_told_otherwise(
    environ: dict[str, str], wanted: bool
) -> None:
    assert nccl_timing_wanted(environ) is wanted
