"""Per-rank windows of the collective collector: what one (job, rank, process group) did recently.

Fed with decoded probe records (agent/probe/wire.py) by agent/collectors/collective.py; pure bookkeeping and
statistics, no sockets, no clocks of its own (callers pass `now`, Unix s).
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from agent.evidence import CollectiveSample, RankEvidence
from agent.probe.wire import OP_CLASS, Kind, Op, Record

# Upper bounds (s) of the wait histogram: 100 us .. 60 s, covering gloo on loopback to a stuck peer.
WAIT_BUCKETS_SECONDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class OpTotals:
    """Cumulative counters of one op class, for Prometheus counters and the wait histogram."""

    collectives: int = 0
    bytes: int = 0
    wait_count: int = 0
    wait_sum_seconds: float = 0.0
    wait_buckets: list[int] = field(default_factory=lambda: [0] * len(WAIT_BUCKETS_SECONDS))

    def add(self, nbytes: int, wait_seconds: float | None) -> None:
        self.collectives += 1
        self.bytes += nbytes
        if wait_seconds is not None:
            self.wait_count += 1
            self.wait_sum_seconds += wait_seconds
            index = bisect.bisect_left(WAIT_BUCKETS_SECONDS, wait_seconds)
            if index < len(self.wait_buckets):
                self.wait_buckets[index] += 1


class Completed(NamedTuple):
    seq: int
    op: Op
    bytes: int
    issued_at: float
    completed_at: float | None
    wait_seconds: float | None  # completed_at - issued_at


def repeat_length(signature: list[tuple[Op, int]], max_length: int = 256) -> int | None:
    """Smallest K such that the (op, bytes) sequence repeats every K collectives (90% of positions agree):
    the collectives per training step. None when there is no repeating pattern in the data."""
    n = len(signature)
    for k in range(1, min(max_length, n // 2) + 1):
        allowed = (n - k) // 10
        mismatches = 0
        for i in range(n - k):
            if signature[i] != signature[i + k]:
                mismatches += 1
                if mismatches > allowed:
                    break
        else:
            return k
    return None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class RankWindow:
    """Recent collectives of one (job, rank, process group), bounded by count and by age."""

    def __init__(self, job: str, rank: int, group: str, max_samples: int, max_pending: int = 64) -> None:
        self.job = job
        self.rank = rank
        self.group = group
        self.world_size = 1
        self.local_rank: int | None = None
        self.pod = ""
        self.namespace = ""
        self.pid = 0
        self.samples: deque[Completed] = deque(maxlen=max_samples)
        self.completed_seqs: set[int] = set()
        self.pending: dict[int, tuple[Op, float]] = {}
        self.max_pending = max_pending
        self.totals: dict[str, OpTotals] = {}
        self.last_seq = -1
        self.last_issued_at = 0.0
        self.last_progress_at = 0.0
        self._period_cache: tuple[tuple[int, int, int], float | None] = ((-1, -1, -1), None)

    def knows(self, seq: int) -> bool:
        """Whether `seq` already completed in this window (a duplicate or replayed record)."""
        return seq in self.completed_seqs

    def oldest_seq(self) -> int:
        return self.samples[0].seq if len(self.samples) == self.samples.maxlen else -1

    def add(self, record: Record, pid: int) -> None:
        if pid != self.pid:
            self.world_size, self.local_rank = record.world_size, record.local_rank
            self.pod, self.namespace, self.pid = record.pod, record.namespace, pid
        if record.seq > self.last_seq:
            self.last_seq = record.seq
        if record.issued_at > self.last_issued_at:
            self.last_issued_at = record.issued_at
        completed_at = record.completed_at
        progress = record.issued_at if completed_at is None else completed_at
        if progress > self.last_progress_at:
            self.last_progress_at = progress
        if record.kind is Kind.ISSUE:
            if len(self.pending) >= self.max_pending:
                self.pending.pop(min(self.pending))
            self.pending[record.seq] = (record.op, record.issued_at)
            return
        # one process group runs its collectives in issue order: completing seq s completes all before it
        if self.pending:
            for seq in [seq for seq in self.pending if seq <= record.seq]:
                del self.pending[seq]
        if len(self.samples) == self.samples.maxlen:
            self.completed_seqs.discard(self.samples[0].seq)
        wait = None if completed_at is None else completed_at - record.issued_at
        self.samples.append(Completed(record.seq, record.op, record.bytes, record.issued_at, completed_at, wait))
        self.completed_seqs.add(record.seq)
        op_class = OP_CLASS[record.op]
        totals = self.totals.get(op_class)
        if totals is None:
            totals = self.totals[op_class] = OpTotals()
        totals.add(record.bytes, wait)

    def in_window(self, now: float, window_seconds: float) -> list[Completed]:
        """Samples issued within the last `window_seconds`, in sequence order."""
        since = now - window_seconds
        return sorted((s for s in self.samples if s.issued_at >= since), key=lambda s: s.seq)

    def step_period_seconds(self, window: list[Completed]) -> float | None:
        """Period of the rank's collective pattern: median time between a collective and the same one a
        pattern repeat later (one training step for DDP). Cached until the window changes."""
        window = window[-512:]
        key = (len(window), window[0].seq, window[-1].seq) if window else (0, 0, 0)
        if self._period_cache[0] != key:
            self._period_cache = (key, self._step_period(window))
        return self._period_cache[1]

    @staticmethod
    def _step_period(window: list[Completed]) -> float | None:
        k = repeat_length([(s.op, s.bytes) for s in window])
        if k is None:
            return None
        periods = [window[i + k].issued_at - window[i].issued_at for i in range(len(window) - k)]
        period = statistics.median(periods) if periods else None
        return period if period and period > 0 else None

    def evidence(self, now: float, window_seconds: float, max_samples: int, dropped_records: int) -> RankEvidence:
        window = self.in_window(now, window_seconds)
        waits = [w for w in (s.wait_seconds for s in window) if w is not None]
        gaps: list[float] = []
        done = 0.0
        for prev, nxt in zip(window, window[1:], strict=False):
            done = max(done, prev.completed_at or prev.issued_at)
            if nxt.issued_at > done:
                gaps.append(nxt.issued_at - done)
        span = min(window_seconds, max(now - window[0].issued_at, 1e-9)) if window else window_seconds
        pending_seq = min(self.pending) if self.pending else None
        pending = self.pending.get(pending_seq) if pending_seq is not None else None
        return RankEvidence(
            job=self.job,
            rank=self.rank,
            world_size=self.world_size,
            process_group=self.group,
            local_rank=self.local_rank,
            pod=self.pod,
            namespace=self.namespace,
            pid=self.pid,
            window_seconds=span,
            collectives_in_window=len(window),
            collectives_per_second=len(window) / span,
            step_period_seconds=self.step_period_seconds(window),
            last_seq=self.last_seq,
            last_progress_at=self.last_progress_at,
            pending_seq=pending_seq,
            pending_op=pending[0].name if pending else None,
            pending_since=pending[1] if pending else None,
            wait_seconds_p50=_quantile(waits, 0.5),
            wait_seconds_p90=_quantile(waits, 0.9),
            compute_gap_seconds_p50=_quantile(gaps, 0.5),
            bytes_per_second=sum(s.bytes for s in window) / span,
            dropped_records=dropped_records,
            samples=[
                CollectiveSample(seq=s.seq, op=s.op.name, bytes=s.bytes, arrival=s.issued_at, wait_seconds=s.wait_seconds)
                for s in window[-max_samples:]
            ],
        )
