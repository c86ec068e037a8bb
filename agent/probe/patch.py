"""Where the probe meets PyTorch: wrappers around the torch.distributed collectives, a timing DDP
communication hook for DDP's bucket all-reduces, and the import hook that applies both when torch loads.

Every wrapper does the smallest possible work on the training thread (Recorder.issue/complete; an async Work's
completion is timed for a sample of collectives, polled for the others) and lets the wrapped call behave exactly
as before: same arguments, same return value, same exceptions.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import logging
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

from agent.probe.nccl_timing import NcclTiming
from agent.probe.recorder import Recorder, Token, nbytes
from agent.probe.wire import Op

log = logging.getLogger(__name__)

C10D = "torch.distributed.distributed_c10d"
DDP_MODULE = "torch.nn.parallel.distributed"
_PATCHED = "__lockstep_wrapped__"

# function -> (op, the parameter holding this rank's input data: its size is the record's bytes)
COLLECTIVES: dict[str, tuple[Op, str | None]] = {
    "all_reduce": (Op.all_reduce, "tensor"),
    "broadcast": (Op.broadcast, "tensor"),
    "all_gather": (Op.all_gather, "tensor"),
    "all_gather_single": (Op.all_gather, "input_tensor"),  # FSDP2's all-gather (torch >= 2.12)
    "all_gather_into_tensor": (Op.all_gather, "input_tensor"),
    "reduce_scatter": (Op.reduce_scatter, "input_list"),
    "reduce_scatter_single": (Op.reduce_scatter, "input"),  # FSDP2's gradient reduce-scatter (torch >= 2.12)
    "reduce_scatter_tensor": (Op.reduce_scatter, "input"),
    "reduce": (Op.reduce, "tensor"),
    "barrier": (Op.barrier, None),
    "all_to_all": (Op.all_to_all, "input_tensor_list"),
    "all_to_all_single": (Op.all_to_all, "input"),
    "gather": (Op.gather, "tensor"),
    "scatter": (Op.scatter, "tensor"),
}

# Older names that call their successor through the module (torch >= 2.12): wrapped only where the successor is
# absent, so one collective is recorded once.
DELEGATES_TO = {"all_gather_into_tensor": "all_gather_single", "reduce_scatter_tensor": "reduce_scatter_single"}


class GroupNames:
    """Process group -> the name records carry: "default" for the default group, else its c10d group name,
    which torch assigns identically on every rank."""

    def __init__(self) -> None:
        self.default_name = "0"

    def name(self, group: Any) -> str | None:
        """The group's name, or None when this rank is not a member (the call is a no-op: nothing to record)."""
        if group is None:
            return "default"
        name = getattr(group, "group_name", None)
        if not isinstance(name, str) or not name:
            return None  # GroupMember.NON_GROUP_MEMBER and other non-groups
        return "default" if name == self.default_name else name


def _never() -> bool:
    return False


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if 0 <= index < len(args) else default


def _complete_on(result: Any, recorder: Recorder, token: Token) -> None:
    """Complete `token` when the async Work `result` finishes: timed by its future if the token is sampled
    (agent/probe/recorder.py TIMED_EVERY), else polled by the sender; or now without timing."""
    try:
        recorder.complete_async(token, lambda: result)
    except Exception:  # no future for this backend/op: the issue time is all we know
        recorder.complete(token, measured=False)


def wrap_collective(fn: Callable[..., Any], op: Op, data_param: str | None, recorder: Recorder,
                    groups: GroupNames, cpu_seen_below: Callable[[], bool] = _never,
                    timing: NcclTiming | None = None) -> Callable[..., Any]:  # fmt: skip
    """`fn` with issue/complete records around it; sync calls complete on return, async ones via the Work, and
    those NCCL's timing covers (`timing`, agent/probe/nccl_timing.py) from its on-completion hook.
    `cpu_seen_below()`: the dispatcher kernel (agent/probe/dispatch.py) records this op for CPU tensors, so the
    wrapper leaves those alone (one record per collective)."""
    params = list(inspect.signature(fn).parameters)
    data_index = params.index(data_param) if data_param in params else -1
    group_index = params.index("group") if "group" in params else -1
    async_index = params.index("async_op") if "async_op" in params else -1

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = key = None
        below = False  # the dispatcher kernel records this call
        try:
            process_group = _arg(args, kwargs, group_index, "group", None)
            group = groups.name(process_group)
            data = _arg(args, kwargs, data_index, data_param or "", None)
            below = getattr(data, "is_cpu", False) and cpu_seen_below()
            if group is not None and not below:
                is_async = bool(_arg(args, kwargs, async_index, "async_op", False))
                token = recorder.issue(group, op, nbytes(data) if data is not None else 0)
                if timing is not None:
                    key = timing.expect(group, process_group, token)
        except Exception:
            log.debug("lockstep probe: not recording %s", fn.__name__, exc_info=True)
        if token is None:  # recorded below, not a member of the group, or the arguments puzzled us: just the call
            result = fn(*args, **kwargs)
            if below:  # the compiled kernel runs no Python: the flush, when due, runs here
                recorder.launched()
            return result
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            recorder.abandon(token)
            if timing is not None and key is not None:
                timing.cancel(key)
            raise
        if timing is not None and key is not None and timing.confirm(process_group, key):
            pass  # the hook completes it with NCCL's times
        elif is_async and result is not None:
            _complete_on(result, recorder, token)
        else:
            recorder.complete(token)
        recorder.launched()
        return result

    setattr(wrapper, _PATCHED, True)
    return wrapper


def patch_collectives(c10d: types.ModuleType, recorder: Recorder, groups: GroupNames,
                      cpu_all_reduce_seen_below: Callable[[], bool] = _never,
                      timing: NcclTiming | None = None) -> list[str]:  # fmt: skip
    """Wrap the collectives in torch.distributed.distributed_c10d (and the torch.distributed re-exports);
    `cpu_all_reduce_seen_below()` tells whether the dispatcher kernel records `all_reduce` of CPU tensors."""
    package = sys.modules.get("torch.distributed")
    wrapped = []
    for name, (op, data_param) in COLLECTIVES.items():
        fn = getattr(c10d, name, None)
        if fn is None or getattr(fn, _PATCHED, False) or hasattr(c10d, DELEGATES_TO.get(name, "")):
            continue
        seen_below = cpu_all_reduce_seen_below if name == "all_reduce" else _never
        wrapper = wrap_collective(fn, op, data_param, recorder, groups, seen_below, timing)
        setattr(c10d, name, wrapper)
        if package is not None and getattr(package, name, None) is fn:
            setattr(package, name, wrapper)
        wrapped.append(name)
    return wrapped


def timed_allreduce_hook(recorder: Recorder, group: str,
                         timing: NcclTiming | None = None) -> Callable[[Any, Any], Any]:  # fmt: skip
    """DDP communication hook doing what DDP's C++ default does and no more — scale the bucket by 1 / world size,
    all-reduce it by sum on the process group — and recording it.

    The scaling multiplies by the reciprocal, as the reducer's default path does while it copies gradients into
    the bucket: averaged gradients are bit-identical to DDP without a hook, and a multiply pass costs less than
    `div_`. That pass is the hook's main cost (with any hook the reducer copies without scaling): one read and
    write of the gradients per step. The all-reduce goes to the process group directly, as the C++ default does,
    not through `torch.distributed.all_reduce`'s argument checks. Completion is recorded in the `then` callback that
    hands the result to DDP, which a Python hook needs anyway (DDP rejects a future whose value is not a Python
    object), so the probe adds no callback or thread hand-off of its own. On NCCL groups `timing` covers, its
    on-completion hook completes the record instead (agent/probe/nccl_timing.py)."""

    def lockstep_allreduce_hook(process_group, bucket):  # no annotations: DDP validates them against its types
        tensor = bucket.buffer()
        token = recorder.issue(group, Op.all_reduce, tensor.numel() * tensor.element_size())
        tensor.mul_(1.0 / process_group.size())
        key = timing.expect(group, process_group, token) if timing is not None else None
        try:
            fut = process_group.allreduce([tensor]).get_future()
        except BaseException:
            recorder.abandon(token)
            if timing is not None and key is not None:
                timing.cancel(key)
            raise
        timed = timing is not None and key is not None and timing.confirm(process_group, key)
        recorder.launched()

        def done(fut: Any) -> Any:
            if not timed:
                recorder.complete(token)
            return fut.value()[0]

        return fut.then(done)

    return lockstep_allreduce_hook


def patch_ddp(ddp_module: types.ModuleType, recorder: Recorder, groups: GroupNames,
              cpu_seen_below: Callable[[], bool] = _never, timing: NcclTiming | None = None) -> None:  # fmt: skip
    """Make DDP's bucket all-reduces visible to the probe.

    Without a communication hook DDP's C++ reducer calls the process group directly and nothing in Python
    sees it, except the dispatcher kernel for CPU tensors (`cpu_seen_below()`, agent/probe/dispatch.py): CPU
    models keep DDP's default path. For the others, at the first forward, unless the user registered a hook,
    the probe registers `timed_allreduce_hook` (DDP takes one hook per model; users register theirs right after
    construction). A user's Python hook is left alone: the torch.distributed collectives it calls are recorded
    by the wrappers. Unseen off CPU: builtin C++ hooks (`_register_builtin_comm_hook`) and hooks that call
    process-group methods directly.
    """
    ddp_cls = ddp_module.DistributedDataParallel
    if getattr(ddp_cls.__init__, _PATCHED, False):
        return
    original_init = ddp_cls.__init__
    original_register = ddp_cls.register_comm_hook
    original_builtin = ddp_cls._register_builtin_comm_hook

    @functools.wraps(original_register)
    def register_comm_hook(self: Any, state: object, hook: Callable[..., Any]) -> None:
        self.__dict__["_lockstep_hooked"] = True
        original_register(self, state, hook)

    @functools.wraps(original_builtin)
    def register_builtin_comm_hook(self: Any, comm_hook_type: Any) -> None:
        self.__dict__["_lockstep_hooked"] = True
        original_builtin(self, comm_hook_type)

    def install_default_hook(module: Any, _inputs: Any) -> None:
        handle = module.__dict__.pop("_lockstep_pre_forward", None)
        if handle is not None:
            handle.remove()
        if module.__dict__.get("_lockstep_hooked") or (module.device_type == "cpu" and cpu_seen_below()):
            return
        try:
            hook = timed_allreduce_hook(recorder, groups.name(module.process_group) or "default", timing)
            module.register_comm_hook(module.process_group, hook)
        except Exception:
            log.debug("lockstep probe: cannot install the DDP comm hook", exc_info=True)

    @functools.wraps(original_init)
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        try:
            self.__dict__["_lockstep_pre_forward"] = self.register_forward_pre_hook(install_default_hook)
        except Exception:
            log.debug("lockstep probe: cannot watch DDP forward", exc_info=True)

    for fn in (init, register_comm_hook, register_builtin_comm_hook):
        setattr(fn, _PATCHED, True)
    ddp_cls.__init__ = init
    ddp_cls.register_comm_hook = register_comm_hook
    ddp_cls._register_builtin_comm_hook = register_builtin_comm_hook


def patch_init(c10d: types.ModuleType, on_init: Callable[[str], None]) -> None:
    """Call `on_init(init_method)` each time the default process group comes up (identity, sender start)."""
    original = c10d.init_process_group
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        try:
            init_method = kwargs.get("init_method") or (args[1] if len(args) > 1 else None)
            on_init(init_method if isinstance(init_method, str) else "")
        except Exception:
            log.debug("lockstep probe: activation failed", exc_info=True)
        return result

    setattr(init_process_group, _PATCHED, True)
    c10d.init_process_group = init_process_group  # type: ignore[attr-defined]
    package = sys.modules.get("torch.distributed")
    if package is not None and getattr(package, "init_process_group", None) is original:
        package.init_process_group = init_process_group  # type: ignore[attr-defined]


class PostImportHook(importlib.abc.MetaPathFinder):
    """Runs `callbacks[name](module)` right after module `name` executes, for modules imported later.

    For torch.distributed.distributed_c10d this is before torch.distributed's `from .distributed_c10d
    import *`, so the package re-exports the wrapped functions. Each callback runs once.
    """

    def __init__(self, callbacks: dict[str, Callable[[types.ModuleType], None]]) -> None:
        self.callbacks = dict(callbacks)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module
        hook = self

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
                return loader.create_module(spec)  # type: ignore[union-attr]

            def exec_module(self, module: types.ModuleType) -> None:
                exec_module(module)
                hook.run(fullname, module)

        spec.loader = _Loader()
        return spec

    def run(self, name: str, module: types.ModuleType) -> None:
        callback = self.callbacks.pop(name, None)
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        if callback is not None:
            try:
                callback(module)
            except Exception:
                log.debug("lockstep probe: patching %s failed", name, exc_info=True)
