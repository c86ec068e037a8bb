"""The probe's hot path: numbers each collective per process group and queues it for the sender.

Called from the wrapped torch.distributed functions, the dispatcher kernel and the DDP communication hook
(agent/probe/patch.py, dispatch.py) on the training thread, from backend threads when a timed async collective
completes (its future, or ProcessGroupNCCL's on-completion hook: agent/probe/nccl_timing.py), and from the sender's
flush (agent/probe/transport.py), which polls the untimed ones. Per call it does a clock read, a dict update and a
deque append: no locks (each step is one atomic dict or deque operation under the GIL; a polled collective is
completed by whoever pops it; only taking the compiled kernel's queue, at a flush or a wrapper's issue, is locked),
no I/O, never raises, bounded memory (drops and counts when full).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from agent.probe.wire import Op

Token = tuple[str, int, Op, int, float]  # group, seq, op, bytes, issued_at (Unix s)
Completed = tuple[Token, float]  # token, completed_at (Unix s; 0.0 = completion not measured or not measurable)
# An untimed collective the dispatcher kernel launched, as the call left it (Recorder.launch): group, seq, op,
# issued_at (Unix s), its data (bytes counted at the next poll), and `work_of(handle)`, its Work.
Launch = tuple[str, int, Op, float, Any, Callable[[Any], Any], Any]


class CompiledQueue(Protocol):
    """The compiled kernel's queue of all-reduces (agent/probe/allreduce_kernel.cpp `Kernel`), taken by the recorder."""

    def number(self, next_seq: dict[str, int]) -> int:
        """Number the queued all-reduces in issue order from `next_seq` ({group: next seq}, updated); returns how
        many were numbered past the queue's capacity (never recorded)."""

    def collect(self) -> tuple[list[Token], list[Completed]]:
        """The numbered all-reduces not reported running yet, and those completed since the last call."""

    def reset(self, default_name: str) -> None:
        """Forget every queued all-reduce: a new default group, whose c10d name is `default_name`."""

    def after_fork(self) -> None:
        """Forget every queued all-reduce in a forked child."""


# An async collective's completion is timed by a callback on its future for one in TIMED_EVERY collectives of each
# group (`is_timed`: by seq, so the same collectives on every rank and the controller lines their waits up). The
# callback is the probe's largest cost on gloo (~30 us of an all-reduce's ~60 us); the others are polled by the
# sender's flush (Recorder.poll) and reported without a completion time. 3, not more: the clock-free straggler test
# (controller/detect/straggler.py) needs waits, and with one in 4 the simulator's straggler-clock-offset scenario
# is no longer found within its 120 s (one in 3: at 44 s, all waits: 34 s).
TIMED_EVERY = 3
_GOLDEN_32 = 0x9E3779B9  # 2**32 / golden ratio
_TIMED_BELOW = 0x100000000 // TIMED_EVERY


def is_timed(seq: int) -> bool:
    """Whether the completion of collective `seq` is timed: the fractional part of seq / golden ratio is below
    1 / TIMED_EVERY (a Weyl sequence). One in TIMED_EVERY in every stretch of collectives, spread over all positions
    of a training step: `seq % TIMED_EVERY == 0` would time the same gradient bucket of every step whenever the
    collectives per step are a multiple of TIMED_EVERY, and waits differ by bucket."""
    return (seq * _GOLDEN_32) & 0xFFFFFFFF < _TIMED_BELOW


def nbytes(data: Any) -> int:
    """Bytes of a tensor or a list of tensors; 0 for anything else. Dense tensors by `Tensor.nbytes` in one loop
    (~20 us less than the checks below when the call runs cold inside a training step); the checks for the rest: a
    sparse COO tensor (no nbytes: its dense size), nested lists, non-tensors."""
    try:
        if isinstance(data, (list, tuple)):
            size = 0
            for tensor in data:
                size += tensor.nbytes
            return int(size)
        return int(data.nbytes)
    except (AttributeError, TypeError, RuntimeError):
        return _checked_nbytes(data)


def _checked_nbytes(data: Any) -> int:
    if isinstance(data, (list, tuple)):
        return sum(_checked_nbytes(item) for item in data)
    try:
        return int(data.numel() * data.element_size())
    except (AttributeError, TypeError, RuntimeError):
        return 0


class Recorder:
    """Issue/complete bookkeeping of one process.

    Sequence numbers count the collectives of each process group from 0 in issue order. Every rank issues a
    group's collectives in the same order (a requirement of collectives), so (group, seq) names the same
    collective on every rank: the key the controller lines ranks up by. `pending` holds the issued collectives
    not completed yet, and the untimed ones until a poll sees them finished (at most `capacity`; the sender
    reports those pending too long: the hang signal), `polled` how to get the Work of each untimed one (its
    `is_completed` tells whether it has finished), `completed` what the sender sends next, `launches` the untimed
    collectives of the dispatcher kernel that the next poll has yet to put into `pending` and `polled`.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self.completed: deque[Completed] = deque()
        self.pending: dict[tuple[str, int], Token] = {}
        self.polled: dict[tuple[str, int], Callable[[], Any]] = {}
        self.launches: deque[Launch] = deque()
        self.dropped = 0
        self.flusher: Callable[[], object] | None = None  # the sender's flush, run by `launched` when due
        self.flush_due = math.inf  # time.monotonic() s from which `launched` runs `flusher`
        self.compiled: CompiledQueue | None = None
        self._taking = threading.Lock()  # `_take_compiled` runs on the training and the sender's threads
        self._next_seq: dict[str, int] = {}

    def issue(self, group: str, op: Op, nbytes: int) -> Token:
        if self.compiled is not None:  # the all-reduces the compiled kernel issued before this come first
            self._take_compiled(self.compiled)
        seq = self._next_seq.get(group, 0)
        self._next_seq[group] = seq + 1
        token = (group, seq, op, nbytes, time.time())
        if len(self.pending) < self.capacity:
            self.pending[(group, seq)] = token
        return token

    def issued(self) -> int:
        """Collectives numbered since the last reset, all groups together."""
        if self.compiled is not None:
            self.dropped += self.compiled.number(self._next_seq)
        return sum(self._next_seq.values())

    def complete(self, token: Token, measured: bool = True) -> None:
        self._done(token, token, time.time() if measured else 0.0)

    def complete_async(self, token: Token, work: Callable[[], Any]) -> None:
        """Complete `token` when its async Work (what `work()` returns) finishes: timed by a callback on its future
        if `is_timed`, else untimed at the sender's first poll that finds it completed (`work()` runs there, so a
        Work that must be unboxed is unboxed in the flush, not on every call). Raises what the Work raises (no
        future)."""
        if is_timed(token[1]):
            work().get_future().add_done_callback(partial(self._finished, token))
        else:
            self.complete_when(token, work)

    def _finished(self, token: Token, _future: object) -> None:
        """A timed collective's future completed (on the backend's thread)."""
        self._done(token, token, time.time())

    def launch(self, group: str, op: Op, issued_at: float, data: Any, work_of: Callable[[Any], Any],
               handle: Any) -> None:  # fmt: skip
        """Record an async collective the dispatcher kernel has launched (agent/probe/dispatch.py), issued at
        `issued_at` (Unix s), whose Work is `work_of(handle)`; then run the flush if due (`launched`). Only what
        cannot wait is done here, on the training thread: its number, and for a timed one (`is_timed`) the callback
        on its future, which must be on it before it finishes. An untimed one waits in `launches`, as the call left
        it, for the next poll (the flush) to count its bytes and start polling its Work: with the kernel's inline
        name lookup, ~20-25 us less per all-reduce run cold (benchmarks/probe_cold_call.py). A timed one whose Work has no future completes now, untimed."""
        seq = self._next_seq.get(group, 0)
        self._next_seq[group] = seq + 1
        if (seq * _GOLDEN_32) & 0xFFFFFFFF < _TIMED_BELOW:  # is_timed(seq), without a call
            token = (group, seq, op, nbytes(data), issued_at)
            if len(self.pending) < self.capacity:
                self.pending[(group, seq)] = token
            try:
                work_of(handle).get_future().add_done_callback(partial(self._finished, token))
            except Exception:  # no future: the issue time is all we know
                self._done(token, token, 0.0)
        elif len(self.launches) < self.capacity:
            self.launches.append((group, seq, op, issued_at, data, work_of, handle))
        else:  # nothing would poll it
            token = (group, seq, op, nbytes(data), issued_at)
            self._done(token, token, 0.0)
        if time.monotonic() >= self.flush_due:
            self.launched()

    def launched(self) -> None:
        """A collective is on its way (called by the dispatcher kernel, the wrappers and the DDP hook after launching
        it): when a flush is due the training thread runs it here, in the collective's shadow, instead of the
        sender's thread waking up and taking the GIL from the training thread in the middle of its compute."""
        if time.monotonic() >= self.flush_due:
            flusher = self.flusher
            if flusher is not None:
                flusher()  # sets the next flush_due; if the sender's thread flushes right now, the next launch retries

    def complete_when(self, token: Token, work: Callable[[], Any]) -> None:
        """Complete `token` untimed (completed_at 0.0) at the first `poll` that finds `work().is_completed()` true
        (the sender's flush; `work` is a C callable where it can be, e.g. a partial: no Python frame per poll).
        Holds the Work (and so its tensors) until then: at most `capacity` of them, for about one flush interval."""
        key = (token[0], token[1])
        if key in self.pending:
            self.polled[key] = work
        else:  # pending is full: nothing would poll it
            self._done(token, token, 0.0)

    def poll(self) -> None:
        """Take in the kernel's `launches` and the compiled kernel's queue, then complete the polled collectives that
        have finished (the sender's flush, before it drains `completed`)."""
        if self.compiled is not None:
            self._take_compiled(self.compiled)
        launches = self.launches
        while launches:  # issued as `issue` does, at the kernel's time; polled as `complete_when` does
            group, seq, op, issued_at, data, work_of, handle = launches.popleft()
            admitted = (group, seq, op, nbytes(data), issued_at)
            if len(self.pending) < self.capacity:
                self.pending[(group, seq)] = admitted
            self.complete_when(admitted, partial(work_of, handle))
        for key, work in self.polled.copy().items():
            try:
                done = work().is_completed()
            except Exception:  # the Work cannot tell (its group was destroyed): over, as its future would be
                done = True
            if done and self.polled.pop(key, None) is not None:  # popped here: completed once
                token = self.pending.get(key)
                if token is not None:
                    self._done(token, token, 0.0)

    def _take_compiled(self, compiled: CompiledQueue) -> None:
        """Number the compiled kernel's queued all-reduces, hold the running ones pending (the hang signal) and
        complete the completed ones, with the times taken on the backend's thread. Also before a wrapper numbers its
        collective (`issue`): completed first, the all-reduces before it are sent before it, in seq order (the agent
        refuses a completion that arrives after more than a window's worth of later ones). Under a lock: the sender's
        thread and the training thread both take, and a token held pending must not complete in between."""
        with self._taking:
            self.dropped += compiled.number(self._next_seq)
            running, completed = compiled.collect()
            for launched in running:
                if len(self.pending) < self.capacity:
                    self.pending[(launched[0], launched[1])] = launched
            for finished, completed_at in completed:
                self._done(finished, finished, completed_at)

    def complete_at(self, token: Token, started_at: float, completed_at: float) -> None:
        """Complete `token` with the backend's times (Unix s; agent/probe/nccl_timing.py): the kernel's start
        replaces the CPU issue time, so the record's wait is how long the collective ran."""
        self._done(token, (token[0], token[1], token[2], token[3], started_at), completed_at)

    def _done(self, token: Token, record: Token, completed_at: float) -> None:
        self.pending.pop((token[0], token[1]), None)
        if len(self.completed) < self.capacity:
            self.completed.append((record, completed_at))
        else:
            self.dropped += 1

    def abandon(self, token: Token) -> None:
        """The collective raised: forget it (the exception goes to the caller unchanged)."""
        self.pending.pop((token[0], token[1]), None)

    def after_fork(self) -> None:
        """In a forked child (not the rank): nothing of the parent's is ours to send, poll or flush, and the parent's
        thread that held the lock is gone."""
        self.flusher = None
        self.completed.clear()
        self.launches.clear()
        self.pending.clear()
        self.polled.clear()
        self._taking = threading.Lock()
        if self.compiled is not None:
            self.compiled.after_fork()

    def reset(self) -> None:
        """A new default process group: sequence numbers start again on every rank."""
        self._next_seq.clear()
        self.launches.clear()
        self.pending.clear()
        self.polled.clear()
