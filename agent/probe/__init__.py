"""The in-process probe: records every collective of a training process and sends it to the node's agent.

Switched on without code changes by `LOCKSTEP_PROBE=1` (the `lockstep-probe.pth` bootstrap installed with the
package calls `install()` at interpreter start), or explicitly with `agent.probe.install()`. Import-light: it
imports nothing from the agent daemon and patches torch only when torch.distributed gets imported.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.probe.bootstrap import OFF, ON
from agent.probe.dispatch import install_allreduce_kernel
from agent.probe.identity import identify
from agent.probe.nccl_timing import NcclTiming
from agent.probe.patch import (
    C10D,
    DDP_MODULE,
    GroupNames,
    PostImportHook,
    patch_collectives,
    patch_ddp,
    patch_init,
)
from agent.probe.recorder import Recorder
from agent.probe.transport import Sender

__all__ = ["Probe", "install", "installed"]

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR = "/run/lockstep"


def switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """Environment variable `name` as on (1, true, yes, on) or off (0, false, no, off); `default` otherwise."""
    value = environ.get(name, "").strip().lower()
    if value in ON:
        return True
    return False if value in OFF else default


def nccl_timing_wanted(environ: Mapping[str, str]) -> bool:
    """LOCKSTEP_PROBE_NCCL_TIMING, else whether torch times NCCL collectives (TORCH_NCCL_ENABLE_TIMING or its older
    name NCCL_ENABLE_TIMING): torch refuses the on-completion hook without it."""
    torch_timing = switch(environ, "TORCH_NCCL_ENABLE_TIMING", switch(environ, "NCCL_ENABLE_TIMING", False))
    return switch(environ, "LOCKSTEP_PROBE_NCCL_TIMING", torch_timing)


class Probe:
    """One per process: the recorder the wrappers feed and the sender that starts with the process group."""

    def __init__(self, socket_dir: str, ddp_hook: bool = True, nccl_timing: bool = False,
                 compiled_kernel_dir: Path | None = None) -> None:  # fmt: skip
        self.socket_dir = socket_dir
        self.compiled_kernel_dir = compiled_kernel_dir  # builds of the compiled kernel; None: the Python kernel only
        self.ddp_hook = ddp_hook
        self.recorder = Recorder()
        self.nccl_timing = NcclTiming(self.recorder) if nccl_timing else None
        self.groups = GroupNames()
        self.sender: Sender | None = None
        self.kernel: object | None = None  # holds the dispatcher registration (agent/probe/compiled.py or dispatch.py)
        self._lock = threading.Lock()

    def patch(self) -> None:
        """Patch torch.distributed now if it is imported, else as soon as it is."""
        callbacks: dict[str, Callable[[types.ModuleType], None]] = {C10D: self._patch_c10d}
        if self.ddp_hook:
            callbacks[DDP_MODULE] = self._patch_ddp
        later: dict[str, Callable[[types.ModuleType], None]] = {}
        for name, callback in callbacks.items():
            module = sys.modules.get(name)
            if module is not None:
                callback(module)
            else:
                later[name] = callback
        if later:
            sys.meta_path.insert(0, PostImportHook(later))

    def _patch_c10d(self, c10d: types.ModuleType) -> None:
        patch_collectives(c10d, self.recorder, self.groups, self.cpu_seen_below, self.nccl_timing)
        patch_init(c10d, self.activate)
        if c10d.is_initialized():
            self.activate("")

    def _patch_ddp(self, ddp_module: types.ModuleType) -> None:
        patch_ddp(ddp_module, self.recorder, self.groups, self.cpu_seen_below, self.nccl_timing)

    def cpu_seen_below(self) -> bool:
        """Whether the dispatcher kernel records CPU all-reduces (then the wrapper and the DDP hook leave them)."""
        return self.kernel is not None

    def activate(self, init_method: str) -> None:
        """The default process group is up: learn who we are and (re)start sending."""
        import torch.distributed as dist

        identity = identify(os.environ, dist.get_rank(), dist.get_world_size(), init_method)
        with self._lock:
            if self.kernel is None:  # here, not when c10d loads: that can be in the middle of `import torch`
                self.kernel = self._install_kernel()
            self.groups.default_name = str(getattr(dist.group.WORLD, "group_name", "0"))
            self.recorder.reset()
            if self.recorder.compiled is not None:
                self.recorder.compiled.reset(self.groups.default_name)
            if self.nccl_timing is not None:
                self.nccl_timing.reset(dist.group.WORLD)
            if self.sender is not None:
                self.sender.stop()
            self.sender = Sender(self.recorder, identity, self.socket_dir)
            self.sender.start()
        log.debug("lockstep probe active: job %s rank %d/%d", identity.job, identity.rank, identity.world_size)

    def _install_kernel(self) -> object | None:
        """The compiled all-reduce kernel if one is built for this torch, else the Python one, else None (a torch
        without the op: the DDP hook and the wrappers see CPU all-reduces)."""
        if self.compiled_kernel_dir is not None:
            try:
                from agent.probe.compiled import install_compiled_kernel  # here: `python -m` runs that module

                kernel = install_compiled_kernel(self.compiled_kernel_dir)
            except Exception:
                log.debug("lockstep probe: no compiled all-reduce kernel", exc_info=True)
            else:
                self.recorder.compiled = kernel
                log.debug("lockstep probe: the compiled all-reduce kernel records (%s)", self.compiled_kernel_dir)
                return kernel
        try:
            library = install_allreduce_kernel(self.recorder, self.groups.name)
        except Exception:
            log.debug("lockstep probe: no dispatcher kernel for all-reduce", exc_info=True)
            return None
        log.debug("lockstep probe: the Python all-reduce kernel records")
        return library

    def stop(self) -> None:
        if self.nccl_timing is not None:
            self.nccl_timing.close()
        with self._lock:
            if self.sender is not None:
                self.sender.stop()

    def forget_after_fork(self) -> None:
        """A forked child (a DataLoader worker) is not the rank: it sends nothing unless it inits a group."""
        self.sender = None
        self._lock = threading.Lock()
        self.recorder.after_fork()
        if self.nccl_timing is not None:
            self.nccl_timing.reset(None)


_probe: Probe | None = None


def installed() -> Probe | None:
    """The probe of this process, if installed."""
    return _probe


def install(socket_dir: str | None = None, ddp_hook: bool | None = None, nccl_timing: bool | None = None,
            compiled_kernel: bool | None = None) -> Probe:  # fmt: skip
    """Install the probe in this process (idempotent). `socket_dir` defaults to $LOCKSTEP_SOCKET_DIR, then
    /run/lockstep. `ddp_hook` (default: on unless LOCKSTEP_PROBE_DDP=0) registers the timing communication hook
    on DDP models whose user registered none: it makes DDP's all-reduces visible at the cost of a Python call
    per gradient bucket. `nccl_timing` (default: `nccl_timing_wanted`) times NCCL collectives by
    ProcessGroupNCCL's on-completion hook (agent/probe/nccl_timing.py). `compiled_kernel` (default: on unless
    LOCKSTEP_PROBE_COMPILED=0) records CPU all-reduces with the compiled kernel where one is built for this torch
    under $LOCKSTEP_PROBE_KERNEL_DIR (agent/probe/compiled.py), else with the Python kernel. Never raises for a
    missing agent: records are dropped and counted until it appears."""
    global _probe
    if _probe is None:
        if ddp_hook is None:
            ddp_hook = switch(os.environ, "LOCKSTEP_PROBE_DDP", True)
        if nccl_timing is None:
            nccl_timing = nccl_timing_wanted(os.environ)
        if compiled_kernel is None:
            compiled_kernel = switch(os.environ, "LOCKSTEP_PROBE_COMPILED", True)
        from agent.probe.compiled import kernel_dir
        socket_dir = socket_dir or os.environ.get("LOCKSTEP_SOCKET_DIR") or DEFAULT_SOCKET_DIR
        _probe = Probe(socket_dir, ddp_hook, nccl_timing, kernel_dir(os.environ) if compiled_kernel else None)
        _probe.patch()
        atexit.register(_probe.stop)
        os.register_at_fork(after_in_child=_probe.forget_after_fork)
    return _probe
