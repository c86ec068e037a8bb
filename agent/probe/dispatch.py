"""Where C++-issued all-reduces meet the probe: a kernel in PyTorch's dispatcher in front of `c10d::allreduce_`
for CPU tensors (gloo), so DDP's reducer keeps its default path and the probe still records every bucket.

Every `ProcessGroup.allreduce` — DDP's C++ reducer, builtin C++ comm hooks, `torch.distributed.all_reduce` —
goes through the dispatcher op `c10d::allreduce_`. No kernel is registered for it under AutogradCPU, so one
registered there runs first for CPU tensors: it reads the clock, redispatches to the keys after autograd (the
original CPU kernel, unchanged, as PyTorch's own autograd fallback does) and hands the launch to the recorder
(Recorder.launch), which numbers it and puts a timing callback on the Work's future for the sampled collectives
(agent/probe/recorder.py TIMED_EVERY); the rest waits for the sender's next flush, which counts the bytes and polls
the Work (unboxed there, not on every call). Once a flush interval the kernel runs that flush while the all-reduce
is in flight (Recorder.launched). The redispatch goes straight to the op's handle:
calling the op again from Python (`op(...)` under `_AutoDispatchBelowAutograd`) parses its arguments against the
schema, ~40 us more per all-reduce. Unlike a DDP communication hook this adds no pass over the gradients (with a
hook, DDP copies them into the bucket without scaling, and the hook must scale them in a separate pass). Not seen
here: CUDA tensors (NCCL: the DDP hook and the Python wrappers cover them) and tensors made under
`torch.inference_mode()` (they skip autograd dispatch). Where a build exists, the compiled kernel
(agent/probe/compiled.py) records instead, in C++ without the GIL; this one is the fallback.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from agent.probe.recorder import Recorder
from agent.probe.wire import Op

log = logging.getLogger(__name__)

DISPATCH_KEY = "AutogradCPU"
NAMES_KEPT = 64  # process groups whose names the kernel remembers (all are forgotten when more are seen)
# the schema the kernel below is written for (torch 2.13); another one means another argument list: no kernel
EXPECTED_SCHEMA = (
    "c10d::allreduce_(Tensor[] tensors, __torch__.torch.classes.c10d.ProcessGroup process_group, "
    "__torch__.torch.classes.c10d.ReduceOp reduce_op, Tensor? sparse_indices, bool async_op=True, "
    "int timeout=-1) -> (Tensor[], __torch__.torch.classes.c10d.Work)"
)


class KernelNotInstalled(RuntimeError):
    """This torch is not the one the kernel was written for; the DDP hook and the wrappers record instead."""


def install_allreduce_kernel(recorder: Recorder, group_name: Any) -> Any:
    """Register the recording kernel; returns the torch.library.Library that holds it (the registration lasts
    as long as that object lives). `group_name(process_group)` names a group as the records do."""
    return register(allreduce_kernel(recorder, group_name))


def register(kernel: Callable[..., Any]) -> Any:
    """Register `kernel` (from `allreduce_kernel`) for c10d::allreduce_; returns the torch.library.Library that holds
    the registration."""
    import torch

    if torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", DISPATCH_KEY):
        raise KernelNotInstalled(f"c10d::allreduce_ has a {DISPATCH_KEY} kernel already; not replacing it")
    library = torch.library.Library("c10d", "IMPL")
    library.impl("allreduce_", kernel, DISPATCH_KEY, with_keyset=True)
    return library


def allreduce_kernel(recorder: Recorder, group_name: Any) -> Callable[..., Any]:
    """The recording kernel, not registered yet (`register`)."""
    # the bindings, not torch.distributed: this runs while torch.distributed is still being imported
    import torch
    from torch._C import _distributed_c10d as c10d

    op = torch.ops.c10d.allreduce_.default
    if str(op._schema) != EXPECTED_SCHEMA:
        raise KernelNotInstalled(f"c10d::allreduce_ has another schema here: {op._schema}")
    redispatch = op._handle.redispatch_boxed
    after_autograd = torch._C._after_autograd_keyset
    unbox_group, unbox_work = c10d.ProcessGroup.unbox, c10d.Work.unbox
    clock = time.time
    names: dict[int, tuple[Callable[[], Any], str | None]] = {}  # id(group) -> (weak reference to it, its name)

    def remember(group: Any) -> tuple[Callable[[], Any], str | None]:
        """Remember `group_name(group)` while the group lives: looked up inline, 10-15 us less per cold all-reduce
        than asking torch each time. The weak reference tells the group from a later one at the same address and
        keeps no destroyed group alive."""
        if len(names) >= NAMES_KEPT:
            names.clear()
        known = names[id(group)] = (weakref.ref(group), group_name(group))
        return known

    def allreduce_(keyset, tensors, process_group, reduce_op, sparse_indices=None, async_op=True, timeout=-1):  # the schema: defaults may be left out
        issued_at = clock()
        try:
            result = redispatch(keyset & after_autograd, tensors, process_group, reduce_op, sparse_indices, async_op, timeout)
        except BaseException:
            try:  # it takes its number all the same, as with the wrappers: the ranks' numbers stay aligned
                name = group_name(unbox_group(process_group))
                if name is not None:
                    recorder.abandon(recorder.issue(name, Op.all_reduce, 0))
            except Exception:
                log.debug("lockstep probe: not numbering a failed all-reduce", exc_info=True)
            raise
        try:
            group = unbox_group(process_group)  # the same Python object for as long as the group lives
            known = names.get(id(group))
            if known is None or known[0]() is not group:
                known = remember(group)
            if known[1] is not None:
                recorder.launch(known[1], Op.all_reduce, issued_at, tensors, unbox_work, result[1])
        except Exception:
            log.debug("lockstep probe: not recording an all-reduce", exc_info=True)
        return result

    return allreduce_
