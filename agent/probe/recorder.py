"""The probe's hot path: numbers each collective per process group and queues it for the sender thread.

Called from the wrapped torch.distributed functions and the DDP communication hook (agent/probe/patch.py) on
the training thread, and from backend threads when an async collective completes (its future, or ProcessGroupNCCL's
on-completion hook: agent/probe/nccl_timing.py). Per call it does a clock read,
a dict update and a deque append: no locks, no I/O, never raises, bounded memory (drops and counts when full).
"""

from __future__ import annotations

import time
from collections import deque

from agent.probe.wire import Op

Token = tuple[str, int, Op, int, float]  # group, seq, op, bytes, issued_at (Unix s)
Completed = tuple[Token, float]  # token, completed_at (Unix s; 0.0 = completion not measurable)


class Recorder:
    """Issue/complete bookkeeping of one process.

    Sequence numbers count the collectives of each process group from 0 in issue order. Every rank issues a
    group's collectives in the same order (a requirement of collectives), so (group, seq) names the same
    collective on every rank: the key the controller lines ranks up by.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self.completed: deque[Completed] = deque()
        self.pending: dict[tuple[str, int], Token] = {}
        self.dropped = 0
        self._next_seq: dict[str, int] = {}

    def issue(self, group: str, op: Op, nbytes: int) -> Token:
        seq = self._next_seq.get(group, 0)
        self._next_seq[group] = seq + 1
        token = (group, seq, op, nbytes, time.time())
        if len(self.pending) < self.capacity:
            self.pending[(group, seq)] = token
        return token

    def issued(self) -> int:
        """Collectives numbered since the last reset, all groups together."""
        return sum(self._next_seq.values())

    def complete(self, token: Token, measured: bool = True) -> None:
        self._done(token, token, time.time() if measured else 0.0)

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

    def reset(self) -> None:
        """A new default process group: sequence numbers start again on every rank."""
        self._next_seq.clear()
        self.pending.clear()
