"""Per-rank windows of the collective collector: what one (job, rank, process group) did recently.

Fed with decoded probe records (agent/probe/wire.py) by agent/collectors/collective.py; pure bookkeeping and
statistics, no sockets, no clocks of its own (callers pass `now`, Unix s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from agent.collectors.process_rates import ProcessRates
from agent.collectors.step_period import step_period_seconds
from agent.evidence import RankEvidence
from agent.probe.wire import OP_CLASS, RECORD_DTYPE, Kind, Op

log = logging.getLogger(__name__)

# Upper bounds (s) of the wait histogram: 100 us .. 60 s, covering gloo on loopback to a stuck peer.
WAIT_BUCKETS_SECONDS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
_WAIT_BOUNDS = np.array(WAIT_BUCKETS_SECONDS)
# The evidence's samples reach back past the window for at least this many of the newest collectives: the
# controller lines up to 32 per rank up (and at least 6), which a job of 5 s steps issues in 160 s, not in a window.
MIN_EVIDENCE_SAMPLES = 32
# One completed collective in a window's ring buffer (completed_at 0 = completion not measured).
SAMPLE_DTYPE = np.dtype([("seq", "<i8"), ("op", "u1"), ("bytes", "<i8"), ("issued_at", "<f8"), ("completed_at", "<f8")])
# The same fields read in place from decoded wire records (assigning from this view copies only them).
_RECORD_FIELDS: Mapping[str, Any] = RECORD_DTYPE.fields or {}
_SAMPLE_VIEW = np.dtype({
    "names": list(SAMPLE_DTYPE.names or ()),
    "formats": [_RECORD_FIELDS[name][0] for name in SAMPLE_DTYPE.names or ()],
    "offsets": [_RECORD_FIELDS[name][1] for name in SAMPLE_DTYPE.names or ()],
    "itemsize": RECORD_DTYPE.itemsize,
})  # fmt: skip
_COMPLETE, _ISSUE = int(Kind.COMPLETE), int(Kind.ISSUE)
_OP_CLASS_OF: dict[int, str] = {int(op): name for op, name in OP_CLASS.items()}
_OP_NAME: dict[int, str] = {int(op): op.name for op in Op}
PERIOD_SAMPLES = 512  # newest collectives the step period is estimated from
PERIOD_REUSE_SECONDS = 5.0  # a step period found is reused this long (s): it changes with the job, not with each
# new collective, and estimating it was a third of a scrape's collective work under load (8 ranks x 500/s)


@dataclass
class OpTotals:
    """Cumulative counters of one op class, for Prometheus counters and the wait histogram."""

    collectives: int = 0
    bytes: int = 0
    wait_count: int = 0
    wait_sum_seconds: float = 0.0
    wait_buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(WAIT_BUCKETS_SECONDS), dtype=np.int64))

    def add(self, nbytes: np.ndarray, waits_seconds: np.ndarray) -> None:
        """Count a batch: bytes of each collective, and the waits of those whose completion was measured."""
        self.collectives += len(nbytes)
        self.bytes += int(nbytes.sum())
        if len(waits_seconds):
            self.wait_count += len(waits_seconds)
            self.wait_sum_seconds += float(waits_seconds.sum())
            buckets = len(self.wait_buckets)  # waits above the last bound count only in wait_count (+Inf)
            indexes = np.searchsorted(_WAIT_BOUNDS, waits_seconds, side="left")
            self.wait_buckets += np.bincount(indexes, minlength=buckets + 1)[:buckets]


class Completed(NamedTuple):
    seq: int
    op: Op
    bytes: int
    issued_at: float
    completed_at: float | None
    wait_seconds: float | None  # completed_at - issued_at


def signature(ops: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """One number per collective, equal where (op, bytes) are equal: what repeat_length compares. (Sizes above
    2^60 bytes wrap; they cannot occur.)"""
    return (nbytes.astype(np.uint64) << np.uint64(4)) | ops.astype(np.uint64)  # op < 16


def repeat_length(signature: np.ndarray, max_length: int = 256) -> int | None:
    """Smallest K such that the signature (see `signature`) repeats every K collectives (90% of positions agree):
    the collectives per training step. None when there is no repeating pattern in the data."""
    n = len(signature)
    for k in range(1, min(max_length, n // 2) + 1):
        if np.count_nonzero(signature[:-k] != signature[k:]) <= (n - k) // 10:
            return k
    return None


def _quantile(values: np.ndarray, q: float) -> float | None:
    if not len(values):
        return None
    return float(np.sort(values)[min(len(values) - 1, int(q * len(values)))])


class RankWindow:
    """Recent collectives of one (job, rank, process group), bounded by count and by age.

    Completed collectives live in preallocated ring buffers (numpy columns); the records one sender sent for the
    group since the last ingest are applied as one batch, and summaries (period, percentiles, gaps) are computed
    only when evidence or metrics ask.
    """

    def __init__(self, job: str, rank: int, group: str, max_samples: int, max_pending: int = 64) -> None:
        self.job = job
        self.rank = rank
        self.group = group
        self.world_size = 1
        self.local_rank: int | None = None
        self.pod = ""
        self.namespace = ""
        self.pid = 0
        self.max_samples = max_samples
        self.max_pending = max_pending
        self._ring = np.zeros(max_samples, dtype=SAMPLE_DTYPE)
        self._next = 0  # ring index the next sample goes to
        self._stored = 0  # samples ever written to the ring
        self._ordered_from = 0  # the ring holds its samples in sequence order once _stored reaches this
        self.count = 0  # samples held, <= max_samples
        self._unfolded = 0  # newest samples not yet counted in totals and progress (folded when read or overwritten)
        self.pending: dict[int, tuple[Op, float]] = {}
        self._totals: dict[str, OpTotals] = {}
        self.last_seq = -1
        self.last_completed_seq = -1
        self._last_issued_at = 0.0
        self._last_progress_at = 0.0
        self._period_cache: tuple[tuple[int, int, int], float, float | None] = ((-1, -1, -1), -math.inf, None)

    def knows(self, seq: int) -> bool:
        """Whether `seq` already completed in this window (a duplicate or replayed record)."""
        return bool((self._ring["seq"][: self.count] == seq).any())

    def oldest_seq(self) -> int:
        return int(self._ring["seq"][self._next]) if self.count == self.max_samples else -1

    @property
    def totals(self) -> dict[str, OpTotals]:
        """Cumulative counters per op class (Prometheus counters)."""
        self._fold()
        return self._totals

    @property
    def last_issued_at(self) -> float:
        self._fold()
        return self._last_issued_at

    @property
    def last_progress_at(self) -> float:
        """Latest issue or completion time seen, Unix s: a rank whose progress stops is hung or stalled."""
        self._fold()
        return self._last_progress_at

    def _fold(self) -> None:
        """Count the newest samples into totals and progress: once per read, not per batch."""
        if not self._unfolded:
            return
        start = self._next - self._unfolded
        ring = self._ring
        samples = ring[start : self._next] if start >= 0 else np.concatenate((ring[start:], ring[: self._next]))
        self._unfolded = 0
        issued_at, completed_at = samples["issued_at"], samples["completed_at"]
        self._progress(self.last_seq, float(issued_at.max()), float(np.maximum(issued_at, completed_at).max()))
        ops, measured, waits = samples["op"], completed_at > 0, completed_at - issued_at
        if (ops == ops[0]).all():  # the usual batch: one op class
            self._totals_of(int(ops[0])).add(samples["bytes"], waits[measured])
            return
        for op in np.unique(ops).tolist():
            same = ops == op
            self._totals_of(op).add(samples["bytes"][same], waits[same & measured])

    def identify(self, world_size: int, local_rank: int | None, pod: str, namespace: str, pid: int) -> None:
        """Who the rank is: taken from the first records of each sender process."""
        self.world_size, self.local_rank, self.pod, self.namespace, self.pid = world_size, local_rank, pod, namespace, pid

    def add(self, records: np.ndarray) -> list[str]:
        """Apply a batch of decoded records (wire.RECORD_DTYPE, one process and process group, arrival order); the
        drop reasons of the records refused as replayed or older than the window."""
        if (records["kind"] == _COMPLETE).all():
            return self._add_completed(records)
        dropped: list[str] = []
        for index in range(len(records)):  # ISSUE records are rare (a collective pending for long): one by one
            record = records[index : index + 1]
            if record["kind"][0] == _COMPLETE:
                dropped += self._add_completed(record)
            elif record["kind"][0] == _ISSUE:
                self._add_issue(int(record["seq"][0]), Op(int(record["op"][0])), float(record["issued_at"][0]))
        return dropped

    def _add_issue(self, seq: int, op: Op, issued_at: float) -> None:
        self._progress(seq, issued_at, issued_at)
        if len(self.pending) >= self.max_pending:
            self.pending.pop(min(self.pending))
        self.pending[seq] = (op, issued_at)

    def _progress(self, seq: int, issued_at: float, progress_at: float) -> None:
        self.last_seq = max(self.last_seq, seq)
        self._last_issued_at = max(self._last_issued_at, issued_at)
        self._last_progress_at = max(self._last_progress_at, progress_at)

    def _add_completed(self, records: np.ndarray) -> list[str]:
        seqs = records["seq"]
        fresh = int(seqs[0]) > self.last_completed_seq and bool((seqs[1:] > seqs[:-1]).all())
        if not fresh:  # a seq at or below one seen: decide replay / old / new process group record by record
            dropped: list[str] = []
            for index in range(len(records)):
                dropped += self._add_one_seen(records[index : index + 1])
            return dropped
        self.last_completed_seq = int(seqs[-1])
        self._store(int(seqs[-1]), records)
        return []

    def _store(self, seq: int, records: np.ndarray) -> None:
        """Keep completed collectives, the highest of them `seq`."""
        self.last_seq = max(self.last_seq, seq)
        if self.pending:  # one process group runs its collectives in issue order: completing s completes all before
            for pending_seq in [pending_seq for pending_seq in self.pending if pending_seq <= seq]:
                del self.pending[pending_seq]
        self._append(records)

    def _add_one_seen(self, record: np.ndarray) -> list[str]:
        seq = int(record["seq"][0])
        if seq > self.last_completed_seq:
            return self._add_completed(record)
        known, too_old = self.knows(seq), seq < self.oldest_seq()
        if (known or too_old) and float(record["issued_at"][0]) <= self.last_issued_at:  # a replay: old issue time
            return ["duplicate" if known else "out_of_window"]
        if known or too_old:  # an old sequence number issued now: the process group was created anew
            log.info("job %s rank %d group %s restarted its sequence numbers", self.job, self.rank, self.group)
            self._restart()
            return self._add_completed(record)
        self._store(seq, record)  # a gap filled late: kept, ordered at evidence time
        self._ordered_from = self._stored + self.max_samples  # out of sequence order until it is overwritten
        return []

    def _restart(self) -> None:
        identity = (self.world_size, self.local_rank, self.pod, self.namespace, self.pid)
        self.__init__(self.job, self.rank, self.group, self.max_samples, self.max_pending)  # type: ignore[misc]
        self.identify(*identity)

    def _totals_of(self, op: int) -> OpTotals:
        op_class = _OP_CLASS_OF.get(op, "other")
        totals = self._totals.get(op_class)
        if totals is None:
            totals = self._totals[op_class] = OpTotals()
        return totals

    def _append(self, records: np.ndarray) -> None:
        """Write samples into the ring, overwriting the oldest (counted into totals first)."""
        size = self.max_samples
        for chunk_start in range(0, len(records), size):
            chunk = records.view(_SAMPLE_VIEW)[chunk_start : chunk_start + size]
            if self._unfolded + len(chunk) > size:
                self._fold()
            start, end = self._next, self._next + len(chunk)
            self._ring[start : min(end, size)] = chunk[: size - start]
            if end > size:
                self._ring[: end - size] = chunk[size - start :]
            self._next = end % size
            self._stored += len(chunk)
            self.count = min(size, self.count + len(chunk))
            self._unfolded += len(chunk)

    @property
    def samples(self) -> list[Completed]:
        """All samples held, oldest first (tests, tools)."""
        return self._completed(np.roll(np.arange(self.count), -self._next if self.count == self.max_samples else 0))

    def _completed(self, slots: np.ndarray) -> list[Completed]:
        rows = self._ring[slots].tolist()
        return [
            Completed(seq, Op(op), nbytes, issued, done or None, (done - issued) if done else None)
            for seq, op, nbytes, issued, done in rows
        ]

    def _window_slots(self, now: float, window_seconds: float, newest: int | None = None) -> np.ndarray:
        """Ring slots of the samples issued within the last `window_seconds`, in sequence order; at most the `newest`.

        Records arrive in sequence order (a late one is rare), and then arrival order is sequence order: no sort."""
        if self._stored >= self._ordered_from:
            held = self.count if newest is None else min(self.count, newest)
            slots = (self._next - held + np.arange(held)) % self.max_samples
            return slots[self._ring["issued_at"][slots] >= now - window_seconds]
        slots = np.flatnonzero(self._ring["issued_at"][: self.count] >= now - window_seconds)
        slots = slots[np.argsort(self._ring["seq"][slots], kind="stable")]
        return slots if newest is None else slots[-newest:]

    def step_period_seconds(
        self, now: float, window_seconds: float, reuse_seconds: float = PERIOD_REUSE_SECONDS
    ) -> float | None:
        """The rank's step period (s) over the last `window_seconds`; see _period_of."""
        if self._period_reusable(now, reuse_seconds):
            return self._period_cache[2]
        return self._period_of(now, self._window_slots(now, window_seconds, newest=PERIOD_SAMPLES), reuse_seconds)

    def _period_reusable(self, now: float, reuse_seconds: float) -> bool:
        _, found_at, period = self._period_cache
        return period is not None and 0.0 <= now - found_at < reuse_seconds

    def _period_of(self, now: float, slots: np.ndarray, reuse_seconds: float = PERIOD_REUSE_SECONDS) -> float | None:
        """Step period (s) of the samples at `slots` (sequence order): the (op, bytes) pattern's repeat, refined by
        the gaps between collectives (see step_period.py). Read straight from the ring; a period found is reused for
        `reuse_seconds` (Unix s `now`), and none found is looked for again once new collectives arrived."""
        if self._period_reusable(now, reuse_seconds):
            return self._period_cache[2]
        samples = self._ring[slots[-PERIOD_SAMPLES:]]
        seqs = samples["seq"]
        key = (len(samples), int(seqs[0]), int(seqs[-1])) if len(samples) else (0, 0, 0)
        if self._period_cache[0] != key:
            k = repeat_length(signature(samples["op"], samples["bytes"]))
            self._period_cache = (key, now, None if k is None else step_period_seconds(samples["issued_at"], k))
        return self._period_cache[2]

    def evidence(
        self,
        now: float,
        window_seconds: float,
        max_samples: int,
        dropped_records: int,
        process: ProcessRates | None = None,
    ) -> RankEvidence:
        slots = self._window_slots(now, window_seconds)
        window = self._ring[slots]  # summaries straight from the ring columns; Completed rows only for `samples`
        issued_at, completed_at = window["issued_at"], window["completed_at"]
        measured = completed_at != 0
        waits = (completed_at - issued_at)[measured]
        done = np.maximum.accumulate(np.where(measured, completed_at, issued_at))[:-1]  # all before the next issue
        gaps = issued_at[1:] - np.maximum(done, 0.0)
        if measured[:-1].any():  # a gap is compute only after a timed completion (the probe times a sample of them)
            gaps = gaps[measured[:-1]]
        gaps = gaps[gaps > 0]
        span = min(window_seconds, max(now - float(issued_at[0]), 1e-9)) if len(window) else window_seconds
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
            step_period_seconds=self._period_of(now, slots),
            last_seq=self.last_seq,
            last_progress_at=self.last_progress_at,
            pending_seq=pending_seq,
            pending_op=pending[0].name if pending else None,
            pending_since=pending[1] if pending else None,
            wait_seconds_p50=_quantile(waits, 0.5),
            wait_seconds_p90=_quantile(waits, 0.9),
            compute_gap_seconds_p50=_quantile(gaps, 0.5),
            bytes_per_second=int(window["bytes"].sum()) / span,
            dropped_records=dropped_records,
            process_state=process.state if process else None,
            process_write_bytes_per_second=process.write_bytes_per_second if process else None,
            process_cpu_share=process.cpu_share if process else None,
            samples=self._samples(self._evidence_rows(now, window, max_samples)),
        )

    def _evidence_rows(self, now: float, window: np.ndarray, max_samples: int) -> np.ndarray:
        """The newest `max_samples` rows of the window, or of the ring where the window holds fewer than
        MIN_EVIDENCE_SAMPLES (a job of long steps)."""
        wanted = min(max_samples, MIN_EVIDENCE_SAMPLES)
        if len(window) >= wanted:
            return window[max(0, len(window) - max_samples) :]
        return self._ring[self._window_slots(now, math.inf, newest=wanted)]

    @staticmethod
    def _samples(rows: np.ndarray) -> list[Any]:
        """Evidence samples of ring rows as plain dicts: pydantic validates them as CollectiveSample with the rank's
        document in one call (a model per sample costs three times as much)."""
        issued_at, completed_at = rows["issued_at"], rows["completed_at"]
        waits = np.where(completed_at != 0, completed_at - issued_at, np.nan).tolist()
        columns = (rows["seq"].tolist(), rows["op"].tolist(), rows["bytes"].tolist(), issued_at.tolist(), waits)
        return [
            {"seq": seq, "op": _OP_NAME[op], "bytes": nbytes, "arrival": arrival, "wait_seconds": wait if wait == wait else None}
            for seq, op, nbytes, arrival, wait in zip(*columns, strict=True)
        ]
