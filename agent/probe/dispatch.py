"""Where C++-issued all-reduces meet the probe: a kernel in PyTorch's dispatcher in front of `c10d::allreduce_`
for CPU tensors (gloo), so DDP's reducer keeps its default path and the probe still records every bucket.

Every `ProcessGroup.allreduce` — DDP's C++ reducer, builtin C++ comm hooks, `torch.distributed.all_reduce` —
goes through the dispatcher op `c10d::allreduce_`. No kernel is registered for it under AutogradCPU, so one
registered there runs first for CPU tensors: it records the issue, redispatches to the keys after autograd (the
original CPU kernel, unchanged, as PyTorch's own autograd fallback does), and records completion: timed by a
callback on the Work's future for the sampled collectives (agent/probe/recorder.py TIMED_EVERY), else left to the
sender's next flush, which polls the Work (unboxed there, not on every call); once a flush interval it runs that
flush while the all-reduce is in flight (Recorder.launched). The redispatch goes straight to the op's handle:
calling the op again from Python (`op(...)` under `_AutoDispatchBelowAutograd`) parses its arguments against the
schema, ~40 us more per all-reduce. Unlike a DDP communication hook this adds no pass over the gradients (with a
hook, DDP copies them into the bucket without scaling, and the hook must scale them in a separate pass). Not seen
here: CUDA tensors (NCCL: the DDP hook and the Python wrappers cover them) and tensors made under
`torch.inference_mode()` (they skip autograd dispatch).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from agent.probe.patch import nbytes
from agent.probe.recorder import Recorder
from agent.probe.wire import Op

log = logging.getLogger(__name__)

DISPATCH_KEY = "AutogradCPU"
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
    # the bindings, not torch.distributed: this runs while torch.distributed is still being imported
    import torch
    from torch._C import _distributed_c10d as c10d

    op = torch.ops.c10d.allreduce_.default
    if str(op._schema) != EXPECTED_SCHEMA:
        raise KernelNotInstalled(f"c10d::allreduce_ has another schema here: {op._schema}")
    if torch._C._dispatch_has_kernel_for_dispatch_key("c10d::allreduce_", DISPATCH_KEY):
        raise KernelNotInstalled(f"c10d::allreduce_ has a {DISPATCH_KEY} kernel already; not replacing it")
    redispatch = op._handle.redispatch_boxed
    after_autograd = torch._C._after_autograd_keyset
    unbox_group, unbox_work = c10d.ProcessGroup.unbox, c10d.Work.unbox

    def allreduce_(keyset, tensors, process_group, reduce_op, sparse_indices=None, async_op=True, timeout=-1):  # the schema: defaults may be left out
        token = None
        try:
            group = group_name(unbox_group(process_group))
            if group is not None:
                token = recorder.issue(group, Op.all_reduce, nbytes(tensors))
        except Exception:
            log.debug("lockstep probe: not recording an all-reduce", exc_info=True)
        try:
            result = redispatch(keyset & after_autograd, tensors, process_group, reduce_op, sparse_indices, async_op, timeout)
        except BaseException:
            if token is not None:
                recorder.abandon(token)
            raise
        if token is not None:
            try:
                recorder.complete_async(token, partial(unbox_work, result[1]))
            except Exception:  # no future: the issue time is all we know
                recorder.complete(token, measured=False)
            recorder.launched()
        return result

    library = torch.library.Library("c10d", "IMPL")
    library.impl("allreduce_", allreduce_, DISPATCH_KEY, with_keyset=True)
    return library
