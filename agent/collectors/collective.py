"""Collective collector: receives probe records from the training processes on this node (Unix socket),
keeps per-rank windows and serves them as `lockstep_collective_*` metrics and the `ranks` of the evidence.

Data flow: probe (agent/probe) -> probe.sock (agent/backends/probe_socket.py) -> queued datagrams -> header check
(agent/probe/wire.py decode) and trust check of its identity (agent/collectors/trust.py), once per datagram ->
RankWindow (agent/collectors/rank_window.py) -> collect() / evidence().
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from agent.backends import cgroup, process_activity
from agent.backends.probe_socket import Datagram, ProbeSocket
from agent.collectors.base import Collector
from agent.collectors.process_rates import ProcessWatch
from agent.collectors.rank_window import PERIOD_REUSE_SECONDS, WAIT_BUCKETS_SECONDS, RankWindow
from agent.collectors.ticker import TICKER
from agent.collectors.trust import Trust
from agent.evidence import EvidencePart
from agent.families import CounterFamily, GaugeFamily, HistogramFamily, MetricFamily
from agent.probe import wire
from agent.probe.identity import Identity
from agent.settings import CollectiveSettings

if TYPE_CHECKING:
    from agent.settings import AgentSettings

log = logging.getLogger(__name__)

RankKey = tuple[str, int]  # job, rank
WindowKey = tuple[str, int, str]  # job, rank, process group

# Why a record is dropped: the `reason` label of lockstep_collective_invalid_records_total.
DROP_REASONS = (
    "truncated",  # datagram shorter than its header says (or than a header), or cut by the kernel
    "bad_magic",  # not a Lockstep probe datagram
    "bad_version",  # a probe of another wire version (wire.VERSION)
    "malformed",  # fields out of range (rank >= world size, NaN times, group index past the table, bad text)
    "no_credentials",  # the kernel attached no sender credentials
    "not_a_pod",  # trust=pod and the sender is in no pod
    "rank_claimed_by_other",  # another live sender owns this (job, rank)
    "duplicate",  # a collective already recorded (replayed)
    "out_of_window",  # sequence number older than the window, or a time far from the agent's clock
    "too_many_ranks",  # max_ranks windows are in use
)


@dataclass
class Sender:
    """What the agent knows of the process speaking for a (job, rank)."""

    pid: int
    last_heard: float
    dropped_total: int = 0


# How long received datagrams may wait to be applied in one batch (s); each batch costs ~0.1 ms per sender whatever
# its size. Evidence pulls (the controller's detection) apply them first; scrapes show what was applied, so metrics
# lag the probe by up to this much and a scrape does not pay for the batch (Prometheus at 1 s: half the batches).
INGEST_SECONDS = 2.0
INGEST_BYTES = 1 << 20  # queued datagram bytes that are applied at once, whatever their age
QUEUED_DATAGRAM_BYTES = 128  # what a queued datagram costs beyond its data: a flood of tiny ones is applied early too
# The probe socket is drained this often (s), on the agent's shared background thread (agent/collectors/ticker.py;
# each wakeup costs ~150 us of CPU on a VM): 8 ranks flushing twice a second send 16 datagrams a second, 4 a drain,
# under Linux's default queue of net.unix.max_dgram_qlen = 10 datagrams even for 16 ranks; a full queue costs the
# probe nothing, its sender keeps the rest for its next flush (0.5 s later).
DRAIN_SECONDS = 0.25
BUSY_DRAIN_DATAGRAMS = 4  # a drain that found this many datagrams runs again at once: the queue is filling fast
MAX_DATAGRAMS_PER_DRAIN = 1024  # then ingest and expiry get their turn even under a flood
EXPIRE_SECONDS = 5.0  # how often ranks and jobs that went silent are looked for
# how often a background job estimates the ranks' step periods anew: sooner than scrapes and evidence pulls stop
# reusing one (PERIOD_REUSE_SECONDS), with room for its slack (it rides the drain's wakeups), so they find it ready
# (~0.2 ms per rank)
PERIOD_REFRESH_SECONDS = PERIOD_REUSE_SECONDS - 4 * DRAIN_SECONDS
WAIT_BUCKET_LABELS = (*(repr(bound) for bound in WAIT_BUCKETS_SECONDS), "+Inf")  # `le` of the wait histogram


@dataclass
class Claimed:
    """One identity's datagrams from one sender, in an ingest: its records by process group, in arrival order."""

    dropped_total: int = 0
    heartbeats: int = 0  # datagrams without records
    groups: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, decoded: wire.Decoded) -> None:
        self.dropped_total = max(self.dropped_total, decoded.dropped_total)
        if not len(decoded.records) and not decoded.malformed:
            self.heartbeats += 1
        for group, records in decoded.by_group():
            self.groups.setdefault(group, []).append(records)

    def records(self) -> int:
        return sum(len(part) for parts in self.groups.values() for part in parts)


class CollectiveState:
    """All ranks' windows; thread-safe: the drain job queues datagrams, which are applied in arrival order in
    batches (every `INGEST_SECONDS`, or before an evidence pull), and scrapes read summaries."""

    def __init__(self, settings: CollectiveSettings, trust: Trust, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.trust = trust
        self.processes = ProcessWatch(partial(process_activity.read_activity, proc_root=settings.proc_root))  # the ranks' processes
        self.clock = clock
        self.lock = threading.Lock()
        self.windows: dict[WindowKey, RankWindow] = {}
        self.senders: dict[RankKey, Sender] = {}
        self.invalid: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
        self.accepted = 0
        # Received, not applied yet, guarded by _inbox_lock: each sender's datagrams in arrival order (senders in the
        # order they first appeared), and the count of datagrams the kernel truncated.
        self._inbox: dict[int | None, list[bytes]] = {}
        self._inbox_torn = 0
        self._inbox_bytes = 0
        self._inbox_since = 0.0  # monotonic s of the oldest queued datagram
        self._inbox_lock = threading.Lock()

    def enqueue(self, datagram: Datagram) -> None:
        """Queue a datagram (the drain job: a copy, no decoding, so the socket's short queue is drained at once);
        applied when it is older than INGEST_SECONDS, the queue holds INGEST_BYTES, or evidence is pulled."""
        if self._queue(datagram):
            self.ingest()

    def _queue(self, datagram: Datagram) -> bool:
        """Add a copy of the datagram to its sender's queue; whether the queue is full."""
        with self._inbox_lock:
            if not self._inbox and not self._inbox_torn:
                self._inbox_since = time.monotonic()
            if datagram.truncated:  # longer than the socket's buffer: not one of our probe's
                self._inbox_torn += 1
                return False
            queued = self._inbox.get(datagram.pid)
            if queued is None:
                queued = self._inbox[datagram.pid] = []
            queued.append(bytes(datagram.data))
            self._inbox_bytes += len(datagram.data) + QUEUED_DATAGRAM_BYTES
            return self._inbox_bytes >= INGEST_BYTES

    def ingest_due(self) -> bool:
        """Whether queued datagrams have waited INGEST_SECONDS."""
        return bool(self._inbox or self._inbox_torn) and time.monotonic() - self._inbox_since >= INGEST_SECONDS

    def ingest(self) -> None:
        """Apply every queued datagram now."""
        with self.lock:
            self._ingest_locked()

    def _ingest_locked(self) -> None:
        with self._inbox_lock:
            by_sender, torn = self._inbox, self._inbox_torn
            self._inbox, self._inbox_torn, self._inbox_bytes = {}, 0, 0
        if by_sender or torn:
            self._apply_senders(by_sender, torn)

    def receive(self, datagram: Datagram) -> None:
        """Apply one datagram now (after any queued ones)."""
        with self.lock:
            self._queue(datagram)
            self._ingest_locked()

    def _apply_senders(self, by_sender: Mapping[int | None, Iterable[bytes]], torn: int) -> None:
        """Apply each sender's datagrams in arrival order; count each dropped record under its reason (a datagram
        dropped whole counts its records, at least one), and `torn` datagrams as truncated.

        Each datagram's header is checked once (wire.decode) and its records read with one np.frombuffer; trust is
        asked once per sender and identity, and each (job, rank, process group) window takes the records of all
        the sender's queued datagrams as one batch."""
        reasons: Counter[str] = Counter()
        reasons["truncated"] += torn
        now = self.clock()
        for pid, datagrams in by_sender.items():
            claims: dict[Identity, Claimed] = {}
            for data in datagrams:
                try:
                    decoded = wire.decode(data)
                except wire.DecodeError as exc:
                    reasons[exc.reason] += exc.records
                    continue
                reasons["malformed"] += decoded.malformed
                claimed = claims.get(decoded.identity)
                if claimed is None:
                    claimed = claims[decoded.identity] = Claimed()
                claimed.add(decoded)
            for identity, claimed in claims.items():
                reasons.update(self._apply(identity, claimed, pid, now))
        self.invalid.update(reasons)

    def _apply(self, identity: Identity, claimed: Claimed, pid: int | None, now: float) -> Counter[str]:
        """Apply one sender's records under one identity; the drop reasons of the records refused."""
        refused: Counter[str] = Counter()
        job, rank = identity.job, identity.rank
        reason, changed_hands = self.trust.admit(job, rank, pid)
        if reason is not None:
            refused[reason] += claimed.records() + claimed.heartbeats
            return refused
        assert pid is not None
        rank_key = (job, rank)
        if changed_hands:
            self._forget(rank_key)
        sender = self.senders.get(rank_key)
        if sender is not None and sender.pid != pid:  # a new process for the rank (restarted container): new state
            self._forget(rank_key)
            sender = None
        if sender is None:
            sender = self.senders[rank_key] = Sender(pid, now)
        sender.last_heard = now
        sender.dropped_total = max(sender.dropped_total, claimed.dropped_total)
        skew = self.settings.max_clock_skew_seconds
        for group, parts in claimed.groups.items():
            records = wire.join(parts)
            issued_at = records["issued_at"]
            if issued_at.min() < now - skew or issued_at.max() > now + skew:
                skewed = np.abs(issued_at - now) > skew
                refused["out_of_window"] += int(skewed.sum())
                records = records[~skewed]
                if not len(records):
                    continue
            window_key = (job, rank, group)
            window = self.windows.get(window_key)
            if window is None:
                if len(self.windows) >= self.settings.max_ranks:
                    refused["too_many_ranks"] += len(records)
                    continue
                window = self.windows[window_key] = RankWindow(*window_key, max_samples=self.settings.max_samples_per_rank)
            if window.pid != pid:
                window.identify(identity.world_size, identity.local_rank, identity.pod, identity.namespace, pid)
            dropped = window.add(records)
            refused.update(dropped)
            self.accepted += len(records) - len(dropped)
        return refused

    def _forget(self, rank_key: RankKey) -> None:
        self.senders.pop(rank_key, None)
        for key in [key for key in self.windows if key[:2] == rank_key]:
            del self.windows[key]

    def refresh_step_periods(self) -> None:
        """Estimate every rank's step period anew (a background job, every PERIOD_REFRESH_SECONDS)."""
        with self.lock:
            now = self.clock()
            for window in self.windows.values():
                window.step_period_seconds(now, self.settings.window_seconds, reuse_seconds=0.0)

    def expire(self) -> None:
        """Forget ranks silent for expire_seconds (their job ended) and release their claims."""
        with self.lock:
            self._ingest_locked()
            now = self.clock()
            for rank_key, sender in list(self.senders.items()):
                if now - sender.last_heard > self.settings.expire_seconds:
                    self._forget(rank_key)
                    self.trust.forget(*rank_key)

    def evidence(self) -> EvidencePart:
        settings = self.settings
        with self.lock:
            pids = [window.pid for window in self.windows.values()]
        processes = self.processes.observe(pids, time.monotonic())  # outside the lock: it reads /proc
        with self.lock:
            self._ingest_locked()
            now = self.clock()
            ranks = [
                window.evidence(
                    now, settings.window_seconds, settings.evidence_samples, self._dropped(key), processes.get(window.pid)
                )
                for key, window in sorted(self.windows.items())
            ]
        return EvidencePart(ranks=ranks)

    def _dropped(self, key: WindowKey) -> int:
        sender = self.senders.get(key[:2])
        return sender.dropped_total if sender else 0

    def metrics(self) -> list[MetricFamily]:
        labels = ["job", "rank", "process_group"]
        op_labels = [*labels, "op"]
        collectives = CounterFamily(
            "lockstep_collective_collectives", "Collectives completed, from probe records (probe.sock).", labels=op_labels
        )
        nbytes = CounterFamily(
            "lockstep_collective_bytes", "Bytes of this rank's input to completed collectives (probe records).",
            labels=op_labels,
        )  # fmt: skip
        wait = HistogramFamily(
            "lockstep_collective_wait_seconds",
            "Issue to completion of collectives, s (probe records; a victim of a straggler waits long).",
            labels=op_labels,
            le=WAIT_BUCKET_LABELS,
        )
        period = GaugeFamily(
            "lockstep_collective_step_period_seconds", "Period of the rank's collective pattern, s (probe records).",
            labels=labels,
        )  # fmt: skip
        last_seq = GaugeFamily(
            "lockstep_collective_last_seq", "Highest collective sequence number seen (probe records).", labels=labels
        )
        since_progress = GaugeFamily(
            "lockstep_collective_seconds_since_progress",
            "Seconds since the rank last issued or completed a collective (probe records).",
            labels=labels,
        )
        pending_age = GaugeFamily(
            "lockstep_collective_pending_age_seconds",
            "Age of the oldest collective issued and not completed, s (probe ISSUE records); absent when none.",
            labels=labels,
        )
        dropped = CounterFamily(
            "lockstep_collective_probe_dropped_records",
            "Records the probe could not deliver (its queue full or the agent away), as the probe reports.",
            labels=["job", "rank"],
        )
        invalid = CounterFamily(
            "lockstep_collective_invalid_records",
            "Probe records the agent dropped, by reason (probe.sock).",
            labels=["reason"],
        )
        with self.lock:  # no ingest first, unlike evidence: a scrape shows what was applied (at most INGEST_SECONDS old)
            now = self.clock()
            for (job, rank, group), window in sorted(self.windows.items()):
                base = [job, str(rank), group]
                for op, totals in sorted(window.totals.items()):
                    collectives.add_metric([*base, op], totals.collectives)
                    nbytes.add_metric([*base, op], totals.bytes)
                    cumulative = [*np.cumsum(totals.wait_buckets).tolist(), totals.wait_count]
                    wait.add_metric([*base, op], cumulative, totals.wait_sum_seconds)
                step = window.step_period_seconds(now, self.settings.window_seconds)
                if step is not None:
                    period.add_metric(base, step)
                last_seq.add_metric(base, window.last_seq)
                if window.last_progress_at:
                    since_progress.add_metric(base, max(0.0, now - window.last_progress_at))
                if window.pending:
                    pending_age.add_metric(base, max(0.0, now - window.pending[min(window.pending)][1]))
            for (job, rank), sender in sorted(self.senders.items()):
                dropped.add_metric([job, str(rank)], sender.dropped_total)
            for reason, count in sorted(self.invalid.items()):
                invalid.add_metric([reason], count)
            accepted = CounterFamily("lockstep_collective_records", "Probe records accepted from probe.sock.")
            accepted.add_metric([], self.accepted)
        return [collectives, nbytes, wait, period, last_seq, since_progress, pending_age, dropped, invalid, accepted]


class CollectiveCollector(Collector):
    """Listens on `<socket_dir>/probe.sock` in a background thread from start() to close()."""

    name = "collective"

    def __init__(self, settings: CollectiveSettings) -> None:
        self.settings = settings
        trust = Trust(
            settings.trust,
            pod_uid=partial(cgroup.pod_uid, proc_root=settings.proc_root),
            alive=partial(process_activity.alive, proc_root=settings.proc_root),
        )
        self.state = CollectiveState(settings, trust)
        self._socket: ProbeSocket | None = None
        self._next_expiry = 0.0  # monotonic s

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> CollectiveCollector:
        return cls(settings.collective)

    def start(self) -> None:
        self._socket = ProbeSocket(
            self.settings.socket_dir, self.settings.socket_mode, receive_buffer_bytes=self.settings.receive_buffer_bytes
        )
        self._next_expiry = time.monotonic()
        TICKER.add(self, self._drain, DRAIN_SECONDS, slack_seconds=DRAIN_SECONDS / 2)
        TICKER.add(self.state, self.state.refresh_step_periods, PERIOD_REFRESH_SECONDS, slack_seconds=DRAIN_SECONDS / 2)
        log.info("collective collector listening on %s (trust %s)", self._socket.path, self.settings.trust)

    def _drain(self) -> float | None:
        """Take the datagrams queued on the socket, apply them when due, expire the silent; 0 (run again at once)
        when the queue was busy. It may run up to half its interval early or late, to share another job's wakeup."""
        assert self._socket is not None
        received = 0
        try:
            while received < MAX_DATAGRAMS_PER_DRAIN and (datagram := self._socket.receive()) is not None:
                self.state.enqueue(datagram)
                received += 1
            if self.state.ingest_due():
                self.state.ingest()
            if time.monotonic() >= self._next_expiry:
                self._next_expiry = time.monotonic() + EXPIRE_SECONDS
                self.state.expire()
        except Exception:  # one bad datagram or a transient socket error must not end the receiving
            log.exception("collective collector: receive failed")
        return 0.0 if received >= BUSY_DRAIN_DATAGRAMS else None

    def close(self) -> None:
        TICKER.remove(self)
        TICKER.remove(self.state)
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def collect(self) -> Iterable[MetricFamily]:
        return self.state.metrics()

    def evidence(self) -> EvidencePart:
        return self.state.evidence()
