"""NCCL's own collective timing for the probe: where ProcessGroupNCCL can tell when a collective ran on the GPU,
its on-completion hook completes the probe's record instead of the CPU-side future callback.

Without this, an NCCL record's completion is when the Work's future callback ran on the CPU, which is right after
the kernel was queued, not when it ran. With it (torch's `ProcessGroup._register_on_completion_hook`, which needs
`TORCH_NCCL_ENABLE_TIMING=1`), a record completed by the hook carries, in the probe's clock (Unix s):

- completed_at = `WorkInfo.time_finished`: when ProcessGroupNCCL noticed the kernel's end. Never early; late by
  up to one poll of its watchdog (100 ms in the releases read; adaptive in the newest), the hook thread's wake-up,
  and the GIL waits of the hooks run before it in the same poll (torch reads the time just before calling each
  hook; a hook waits up to Python's switch interval, 5 ms, for a training thread that holds the GIL).
- issued_at = completed_at - `WorkInfo.active_duration`, the kernel's start by CUDA events: late by the same
  amount (it is derived from completed_at), never before the CPU issue (clamped to it).
- so the record's wait, completed_at - issued_at, is the CUDA-event duration itself: exact to the events'
  resolution (~0.5 us) and pybind's microsecond timedelta. A rank whose peers are late spins in the kernel and
  waits long; the late rank waits little, which is the signal the detectors read.

Clock conversion: torch 2.13 binds `time_started`/`time_finished` as `std::chrono::steady_clock` points, which
pybind11 hands over as a `datetime.timedelta` since that clock's epoch: CLOCK_MONOTONIC on Linux, the clock
`time.monotonic()` reads. They become Unix s through an offset `time.time() - time.monotonic()` read at each hook
call (two monotonic reads around one wall read; error under a microsecond unless the thread is preempted between
them). Older torch bound system_clock points: a naive local `datetime`, taken with `.timestamp()`. A converted
time far from now (`PLAUSIBLE_SECONDS`) means the clocks disagree: that record falls back to the CPU side.

Matching: ProcessGroupNCCL numbers its collectives (`WorkInfo.seq`, from 1) itself; the probe numbers the ones it
sees (from 0) per group, and does not see all (DDP's C++ broadcasts, for one). So before each issue the probe
reads the group's NCCL number (`_get_sequence_number_for_group`) and expects the hook for the next one; if the
call issued anything other than exactly one NCCL collective (coalescing, another thread), the record is completed
the CPU way as before. Point-to-point ops have a numbering of their own; the probe records none.

What torch documents and does, and how this module lives with it:
- The hook runs on ProcessGroupNCCL's hook thread (`pt_nccl_runhook`; the watchdog thread in older releases),
  holding the GIL: it does two dict operations and a deque append, never blocks, and never raises — an exception
  out of a hook makes ProcessGroupNCCL abort all its communicators.
- One hook per process group: if the user registered one first, the probe's registration fails and the group
  keeps CPU-side times; a user registering after the probe gets torch's "already registered" error.
- Registration prints torch's one-time deprecation warning (the hook is to give way to Flight Recorder).
- Firing a Python hook needs a live interpreter: torch asks for `destroy_process_group()` before exit. After the
  probe is closed (at exit) the hook returns at once.
- `TORCH_NCCL_ENABLE_TIMING=1` records a start event per collective; torch notes it raises the chance of a
  watchdog hang (event queries). Torch's own tests of the hook leave FSDP out (pytorch#90848).
Anything absent, different or failing: the group keeps CPU-side completion, counted and logged once.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import time
from typing import Any

from agent.probe.recorder import Recorder, Token

log = logging.getLogger(__name__)

REGISTER = "_register_on_completion_hook"
SEQUENCE = "_get_sequence_number_for_group"
PLAUSIBLE_SECONDS = 60.0  # a hook runs right after the watchdog noticed the kernel's end: its times are near now

Key = tuple[int, int]  # (registration, NCCL sequence number)


def one_parameter(method: Any) -> bool:
    """Whether `method` takes exactly one argument (the hook). pybind methods have no inspectable signature; their
    docstring's first line is it: `_register_on_completion_hook(self: ProcessGroup, hook: object) -> None`."""
    try:
        return len(inspect.signature(method).parameters) == 1
    except (TypeError, ValueError):
        pass
    first = (getattr(method, "__doc__", None) or "").strip().split("\n", 1)[0]
    if "(" not in first or ")" not in first:
        return False
    params = [p.strip() for p in first[first.index("(") + 1 : first.index(")")].split(",") if p.strip()]
    return len([p for p in params if not p.startswith("self")]) == 1


def unix_seconds(point: Any) -> float:
    """A WorkInfo time point as Unix s (see the module docstring); TypeError for any other type."""
    if isinstance(point, datetime.timedelta):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        return point.total_seconds() + wall - (before + after) / 2
    if isinstance(point, datetime.datetime):
        return point.timestamp()
    raise TypeError(f"WorkInfo time of type {type(point).__name__}")


class NcclTiming:
    """The probe's side of ProcessGroupNCCL's on-completion hook, for every NCCL group the probe records on.

    Used from the training thread (`expect`, `confirm`, `cancel`) and from the hook threads (the hooks). Counters:
    `completed` records completed with NCCL's times, `unknown` hook calls for no awaited record, `failed` hook
    calls whose WorkInfo could not be read (their record completed CPU-side), `unavailable` groups left CPU-side.
    """

    def __init__(self, recorder: Recorder, capacity: int = 8192) -> None:
        self.recorder = recorder
        self.capacity = capacity
        self.default_group: Any = None  # the default process group object (records name it "default")
        self.awaiting: dict[Key, Token] = {}
        self.completed = self.unknown = self.failed = self.unavailable = 0
        self.closed = False
        self._groups: dict[str, tuple[Any, int | None]] = {}  # record's group name -> (process group, registration)
        self._registrations = 0
        self._logged = False

    def reset(self, default_group: Any) -> None:
        """A new default process group: forget groups and awaited records (hooks of old groups find nothing)."""
        self.default_group = default_group
        self._groups.clear()
        self.awaiting.clear()

    def close(self) -> None:
        """The probe stops (interpreter exit): hooks still firing do nothing."""
        self.closed = True

    def expect(self, name: str, group: Any, token: Token) -> Key | None:
        """Before `token`'s collective is issued on `group` (None = the default group): the key its hook will
        complete it under, or None when NCCL timing does not cover the group (the caller completes it as before)."""
        process_group = self.default_group if group is None else group
        entry = self._groups.get(name)
        if entry is None or entry[0] is not process_group:
            entry = self._groups[name] = (process_group, self._register(name, process_group))
        registration = entry[1]
        if registration is None or len(self.awaiting) >= self.capacity:
            return None
        try:
            key = (registration, int(getattr(process_group, SEQUENCE)()) + 1)
        except Exception:
            return None
        self.awaiting[key] = token  # before the call: the hook may run before it returns
        return key

    def confirm(self, group: Any, key: Key) -> bool:
        """After the issue returned: True when the hook completes the record (the call issued exactly the one NCCL
        collective expected), else False and the caller completes it. Never raises."""
        process_group = self.default_group if group is None else group
        try:
            issued = int(getattr(process_group, SEQUENCE)()) == key[1]
        except Exception:
            issued = False
        if issued:
            return True
        return self.awaiting.pop(key, None) is None  # None: a hook took it already, the record is complete

    def cancel(self, key: Key) -> None:
        """The issue raised: nothing to wait for."""
        self.awaiting.pop(key, None)

    def _register(self, name: str, process_group: Any) -> int | None:
        """Register the hook on an NCCL group; its registration number, or None (counted, logged once)."""
        try:
            backend = process_group._get_backend_name()
        except Exception:
            backend = None
        if backend != "nccl":
            return None  # gloo and the rest: CPU-side times are what they have
        try:
            register = getattr(process_group, REGISTER)
            if not callable(getattr(process_group, SEQUENCE, None)) or not one_parameter(register):
                raise TypeError(f"{REGISTER} or {SEQUENCE} is missing or takes other arguments")
            self._registrations += 1
            registration = self._registrations
            register(self._hook(registration))
        except Exception as exc:  # absent, changed, timing off, a hook registered already
            self.unavailable += 1
            if not self._logged:
                self._logged = True
                log.info("lockstep probe: no NCCL timing for group %s (%s): its completion times are CPU-side",
                         name, exc)  # fmt: skip
            return None
        return registration

    def _hook(self, registration: int) -> Any:
        def lockstep_nccl_timing(work_info: Any) -> None:
            try:
                if self.closed:
                    return
                token = self.awaiting.pop((registration, work_info.seq), None)
                if token is None:
                    self.unknown += 1
                    return
                try:
                    finished = unix_seconds(work_info.time_finished)
                    active = work_info.active_duration.total_seconds()
                    if not (abs(finished - time.time()) <= PLAUSIBLE_SECONDS and active >= 0.0):
                        raise ValueError(f"implausible WorkInfo times: finished {finished}, active {active}")
                except Exception:
                    self.failed += 1
                    log.debug("lockstep probe: unreadable NCCL WorkInfo", exc_info=True)
                    self.recorder.complete(token)  # noticed now, on the CPU
                    return
                self.recorder.complete_at(token, max(finished - active, token[4]), max(finished, token[4]))
                self.completed += 1
            except BaseException:  # never into torch: a raising hook makes ProcessGroupNCCL abort its communicators
                self.failed += 1

        return lockstep_nccl_timing
