"""Periodicity collector: zero-touch view of collective traffic for jobs without the probe.

A background job (agent/collectors/ticker.py) samples every interface's byte counters (agent/backends/nic_bytes.py);
every ESTIMATE_SECONDS of reads the rate history of the last `window_seconds` goes through the pure estimator
(agent/collectors/period_estimate.py): period, burst throughput, mean, regularity per interface, which scrapes and
evidence pulls read as the background job left them.

The sampling rate follows the traffic: `sample_hz` while a busy interface repeats over fewer than
SAMPLES_PER_PERIOD reads at `min_sample_hz` (steps under 1 s at 10 Hz) or shows no clear period (it may repeat too
fast to be seen slower), `min_sample_hz` while every busy interface repeats slower or none is busy (a node without
a job, a job with long steps). Each read is a thread wakeup, the agent's largest fixed cost on an idle vCPU. A
window holding both rates is resampled onto the faster one's grid (counters are cumulative: interpolating them is
exact for the mean rate between reads).

The reads happen on the C sampler's thread (agent/_nicsample.c: ~50 us of CPU per read of 10 interfaces on a VM,
without the interpreter) where it was built; the background job then only takes its reads, rescans and estimates,
every RESCAN_SECONDS. Without it a background job reads at the sampling rate: one pread per counter file, the bytes
queued as they are (~190 us of CPU per tick when its code runs cold after its sleep, 23 us hot), parsed together
with the ring's numpy work once per estimate for all the ticks since the last one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from agent.backends.nic_bytes import ByteCounters, NativeSampler, counts, interfaces, native_sampler, read_all
from agent.collectors.base import Collector
from agent.collectors.order_stats import median
from agent.collectors.period_estimate import TrafficPattern, estimate
from agent.collectors.ticker import TICKER
from agent.evidence import EvidencePart, TrafficPeriodicity
from agent.families import GaugeFamily, MetricFamily
from agent.settings import PeriodicitySettings

if TYPE_CHECKING:
    from agent.settings import AgentSettings

log = logging.getLogger(__name__)

RESCAN_SECONDS = 5.0  # how often new or vanished interfaces are noticed
SAMPLES_PER_PERIOD = 10  # reads per period the slower rate must give to be used
ESTIMATE_SECONDS = 5.0  # patterns are estimated again once the reads span this much more (s)
SLOWER_MARGIN = 1.2  # the faster rate is left only for periods this much longer (no flapping at the boundary)
IDLE = TrafficPattern(
    period_seconds=None, regularity=0.0, burst_bytes_per_second=0.0, mean_bytes_per_second=0.0
)


class _Ring:
    """The last `capacity` sampling ticks: monotonic s, the sampling interval they were taken at (s), and rx+tx
    bytes of each interface in `names` (NaN where a read failed or the interface was not there yet), the oldest
    overwritten. One row per tick."""

    def __init__(self, capacity: int, names: tuple[str, ...]) -> None:
        self.names = names
        self.times = np.zeros(capacity)
        self.intervals = np.zeros(capacity)
        self.counts = np.full((capacity, len(names)), np.nan)  # float: exact up to 2**53 bytes
        self.size = 0
        self._next = 0

    def extend(self, times: np.ndarray, intervals: np.ndarray, counts: np.ndarray) -> None:
        """Many ticks at once: `counts` has a row per tick (the oldest ones are dropped if they do not fit)."""
        capacity = len(self.times)
        if len(times) > capacity:
            times, intervals, counts = times[-capacity:], intervals[-capacity:], counts[-capacity:]
        slots = (self._next + np.arange(len(times))) % capacity
        self.times[slots], self.intervals[slots], self.counts[slots] = times, intervals, counts
        self._next = (self._next + len(times)) % capacity
        self.size = min(capacity, self.size + len(times))

    def append(self, at: float, interval: float, counts: list[float]) -> None:
        self.times[self._next] = at
        self.intervals[self._next] = interval
        self.counts[self._next] = counts
        self._next = (self._next + 1) % len(self.times)
        if self.size < len(self.times):
            self.size += 1

    def newest(self) -> float:
        """Monotonic s of the last tick; -inf before the first."""
        return float(self.times[self._next - 1]) if self.size else -math.inf

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (times, intervals, counts), oldest first."""
        if self.size < len(self.times):
            size = self.size
            return self.times[:size].copy(), self.intervals[:size].copy(), self.counts[:size].copy()
        return (
            np.roll(self.times, -self._next),
            np.roll(self.intervals, -self._next),
            np.roll(self.counts, -self._next, axis=0),
        )

    def with_names(self, names: tuple[str, ...]) -> _Ring:
        """The same ticks for another set of interfaces: columns of those still there are kept, new ones are NaN
        (this ring itself when the interfaces are the same)."""
        if names == self.names:
            return self
        ring = _Ring(len(self.times), names)
        ring.times[:], ring.intervals[:] = self.times, self.intervals
        ring.size, ring._next = self.size, self._next
        for column, name in enumerate(names):
            if name in self.names:
                ring.counts[:, column] = self.counts[:, self.names.index(name)]
        return ring


class PeriodicityCollector(Collector):
    """Samples rx+tx byte counters of the selected interfaces from start() to close() (on the shared ticker)."""

    name = "periodicity"

    def __init__(self, settings: PeriodicitySettings) -> None:
        self.settings = settings
        self.fast_interval_seconds = 1.0 / settings.sample_hz
        self.slow_interval_seconds = 1.0 / settings.min_sample_hz
        self.interval_seconds = self.fast_interval_seconds  # now; until the traffic is known to allow the slower
        self._capacity = int(settings.window_seconds * settings.sample_hz) + 1
        self._counters: dict[str, ByteCounters] = {}
        self._names: tuple[str, ...] = ()  # of _counters, in order; their (rx, tx) descriptors in _fds
        self._fds: tuple[int, ...] = ()
        # ticks read and not yet in the ring: (monotonic s, interval s, interface names, raw counter reads); bounded
        self._ticks: deque[tuple[float, float, tuple[str, ...], list[bytes]]] = deque(maxlen=self._capacity)
        self._ring = _Ring(self._capacity, ())
        self._lock = threading.Lock()  # the ring: scrapes and evidence pulls may read at the same time
        self._native: NativeSampler | None = None  # the C sampler, from start() to close() where it was built
        self._next_rescan = 0.0  # monotonic s
        # the last estimate: for the interfaces, up to the tick (monotonic s), the patterns
        self._estimated: tuple[tuple[str, ...], float, dict[str, tuple[TrafficPattern, float]]] | None = None

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> PeriodicityCollector:
        return cls(settings.periodicity)

    def start(self) -> None:
        self._next_rescan = 0.0
        # reads held between takes: the background job takes them every RESCAN_SECONDS, scrapes more often
        self._native = native_sampler(int(4 * RESCAN_SECONDS * self.settings.sample_hz) + 1)
        if self._native is None:
            log.info("periodicity: the C sampler is not built; reading NIC counters from Python (more CPU)")
            TICKER.add(self, self._tick, self.interval_seconds)
            return
        self.rescan()
        self._native.set_interval(self.interval_seconds)
        self._native.start()
        TICKER.add(self, self._housekeeping, RESCAN_SECONDS)

    def close(self) -> None:
        TICKER.remove(self)
        with self._lock:
            native, self._native = self._native, None
        if native is not None:
            native.stop()  # before the descriptors it reads are closed
        self._names, self._fds = (), ()
        for counters in self._counters.values():
            counters.close()
        self._counters.clear()

    def rescan(self) -> None:
        """Open the counters of interfaces that appeared (or whose files stopped reading: re-created under the same
        name), close those of vanished ones (the sampler does this every RESCAN_SECONDS); the history of the others
        is kept."""
        wanted = set(interfaces(self.settings.sysfs_net, self.settings.interfaces, self.settings.exclude))
        closing = []
        for name, counters in list(self._counters.items()):
            if name not in wanted or not _readable(counters):
                closing.append(self._counters.pop(name))
        for name in wanted - set(self._counters):
            try:
                self._counters[name] = ByteCounters(self.settings.sysfs_net, name)
            except (OSError, ValueError):
                log.debug("cannot open the byte counters of %s", name)
        names = tuple(self._counters)
        fds = tuple(fd for counters in self._counters.values() for fd in counters.fds)
        if self._native is not None and fds != self._fds:
            with self._lock:
                self._take_ticks()  # the reads of the old descriptors, under the old names
                self._native.set_fds(fds)
        self._names, self._fds = names, fds
        for counters in closing:
            counters.close()  # after the sampler stopped reading them

    def _tick(self) -> float:
        now = time.monotonic()
        if now >= self._next_rescan:
            self.rescan()
            self._next_rescan = now + RESCAN_SECONDS
        self.sample(now)
        estimated = self._estimated
        if estimated is None or now - estimated[1] >= ESTIMATE_SECONDS:
            self.patterns()  # here rather than in the next scrape, which then only reads it
        return self.interval_seconds  # the ticker runs this again after the interval now in force

    def _housekeeping(self) -> None:
        """With the C sampler: notice new and vanished interfaces, take its reads and estimate (every
        RESCAN_SECONDS: the reads of one housekeeping to the next are always enough for a new estimate)."""
        self.rescan()
        self.patterns(after_seconds=RESCAN_SECONDS / 2)

    def sample(self, now: float) -> None:
        """Read every interface's counters once (one sampling tick at monotonic `now`, at the interval now in
        force); a failed read is NaN later (an interface going away: the next rescan drops it)."""
        self._ticks.append((now, self.interval_seconds, self._names, read_all(self._fds)))

    def _take_ticks(self) -> None:
        """Move the ticks read since the last call into the ring (the caller holds the lock)."""
        if self._native is not None:
            self._take_native(self._native)
        ticks = self._ticks
        while ticks:
            at, interval, names, raw = ticks.popleft()
            self._ring = self._ring.with_names(names)
            self._ring.append(at, interval, counts(raw))
        self._ring = self._ring.with_names(self._names)  # a rescan since the last tick

    def _take_native(self, native: NativeSampler) -> None:
        """The C sampler's reads, all of the interfaces now in `_names` (rescan takes them before new ones)."""
        raw_times, raw_intervals, raw_values, overwritten = native.take()
        if overwritten:
            log.debug("periodicity: %d NIC counter reads overwritten before they were taken", overwritten)
        self._ring = self._ring.with_names(self._names)
        times = np.frombuffer(raw_times)
        if len(times):  # (rx, tx) per interface: their sum, NaN where either read failed
            values = np.frombuffer(raw_values).reshape(len(times), len(self._names), 2)
            self._ring.extend(times, np.frombuffer(raw_intervals), values.sum(axis=2))

    def patterns(self, after_seconds: float = ESTIMATE_SECONDS) -> dict[str, tuple[TrafficPattern, float]]:
        """Interface -> (pattern, window s) from the rate history of the last `window_seconds` held now, estimated
        again once `after_seconds` of new reads arrived (a scrape a second would otherwise redo the same FFTs over
        a window that changed by a thirtieth); sets the sampling interval these patterns call for. The background
        job calls it; scrapes and evidence pulls read its estimate (`_held_patterns`)."""
        with self._lock:
            self._take_ticks()
            names, newest = self._ring.names, self._ring.newest()
            estimated = self._estimated
            if estimated is not None and estimated[0] == names and newest - estimated[1] < after_seconds:
                return estimated[2]
            all_times, all_intervals, all_counts = self._ring.ordered()
        result = self._estimate(names, all_times, all_intervals, all_counts)
        self._estimated = (names, newest, result)
        return result

    def _held_patterns(self) -> dict[str, tuple[TrafficPattern, float]]:
        """What scrapes and evidence pulls read: the background job's last estimate, without taking reads or
        estimating on the request's time (an estimate costs ~2 ms of CPU). Estimated here only when the background
        gave none for 2 * ESTIMATE_SECONDS (not started, or behind)."""
        estimated = self._estimated
        if estimated is not None and time.monotonic() - estimated[1] < 2 * ESTIMATE_SECONDS:
            return estimated[2]
        return self.patterns()

    def _estimate(
        self, names: tuple[str, ...], all_times: np.ndarray, all_intervals: np.ndarray, all_counts: np.ndarray
    ) -> dict[str, tuple[TrafficPattern, float]]:
        if len(all_times):
            # the slower rate holds a longer span than the window
            recent = all_times >= all_times[-1] - self.settings.window_seconds
            all_times, all_intervals, all_counts = all_times[recent], all_intervals[recent], all_counts[recent]
        mixed = len(all_intervals) > 0 and all_intervals.min() < all_intervals.max()
        result = {}
        if len(all_times) >= 3:  # an interface read on every tick without a byte moved: nothing to look for
            still = (all_counts == all_counts[0]).all(axis=0)
            for column in np.flatnonzero(still).tolist():
                result[names[column]] = (IDLE, float(all_times[-1] - all_times[0]))
        for column, name in enumerate(names):
            read = ~np.isnan(all_counts[:, column])
            if name in result or read.sum() < 3:
                continue
            times, counts = all_times[read], all_counts[read, column]
            if mixed:
                rates, interval = _resampled(times, counts, float(all_intervals.min()))
            else:
                rates, interval = _rates(times, counts)
            try:
                pattern = estimate(rates, interval, self.settings.min_bytes_per_second)
            except (ValueError, FloatingPointError, IndexError):  # one odd series must not hide the others
                log.exception("periodicity estimate failed for %s", name)
                continue
            result[name] = (pattern, float(times[-1] - times[0]))
        if len(result) == len(names):  # every interface read often enough to judge (or none to read)
            self.interval_seconds = self._interval_for(pattern for pattern, _ in result.values())
            native = self._native
            if native is not None:  # (stopped or not: a late estimate only sets the interval)
                native.set_interval(self.interval_seconds)
        return result

    def _interval_for(self, patterns: Iterable[TrafficPattern]) -> float:
        """The sampling interval (s) for traffic of these patterns (see the module's docstring)."""
        slowest_resolved = SAMPLES_PER_PERIOD * self.slow_interval_seconds
        if self.interval_seconds < self.slow_interval_seconds:
            slowest_resolved *= SLOWER_MARGIN
        for pattern in patterns:
            busy = pattern.mean_bytes_per_second >= self.settings.min_bytes_per_second
            if busy and (pattern.period_seconds is None or pattern.period_seconds < slowest_resolved):
                return self.fast_interval_seconds
        return self.slow_interval_seconds

    def evidence(self) -> EvidencePart:
        return EvidencePart(
            periodicity=[
                TrafficPeriodicity(
                    interface=name,
                    period_seconds=pattern.period_seconds,
                    burst_bytes_per_second=pattern.burst_bytes_per_second,
                    mean_bytes_per_second=pattern.mean_bytes_per_second,
                    regularity=pattern.regularity,
                    window_seconds=window,
                )
                for name, (pattern, window) in sorted(self._held_patterns().items())
                if pattern.mean_bytes_per_second >= self.settings.min_bytes_per_second
            ]
        )

    def collect(self) -> Iterable[MetricFamily]:
        source = "from rx_bytes+tx_bytes in /sys/class/net/<interface>/statistics sampled at >= 10 Hz"
        period = GaugeFamily(
            "lockstep_traffic_period_seconds", f"Dominant period of the traffic bursts, s, {source}; absent when aperiodic.",
            labels=["interface"],
        )  # fmt: skip
        burst = GaugeFamily(
            "lockstep_traffic_burst_bytes_per_second", f"Throughput inside bursts (90th percentile of busy samples), {source}.",
            labels=["interface"],
        )  # fmt: skip
        mean = GaugeFamily(
            "lockstep_traffic_mean_bytes_per_second",
            f"Mean throughput over the window, {source}.",
            labels=["interface"],
        )
        regularity = GaugeFamily(
            "lockstep_traffic_regularity_ratio", f"Autocorrelation at the period, 0..1 (1 = perfectly periodic), {source}.",
            labels=["interface"],
        )  # fmt: skip
        for name, (pattern, _) in sorted(self._held_patterns().items()):
            if pattern.period_seconds is not None:
                period.add_metric([name], pattern.period_seconds)
            burst.add_metric([name], pattern.burst_bytes_per_second)
            mean.add_metric([name], pattern.mean_bytes_per_second)
            regularity.add_metric([name], pattern.regularity)
        rate = GaugeFamily(
            "lockstep_traffic_sample_rate_hertz",
            "NIC byte counter reads per second now: sample_hz while busy traffic repeats fast or has no clear "
            "period, min_sample_hz while it repeats slowly or no interface is busy.",
        )
        rate.add_metric([], 1.0 / self.interval_seconds)
        return [period, burst, mean, regularity, rate]


def _rates(times: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Byte rates (bytes/s) between successive reads, and their typical interval (s)."""
    steps = np.diff(times)
    deltas = np.diff(counts)
    valid = (steps > 0) & (deltas >= 0)  # a counter reset (interface re-created) is no traffic
    rates = np.where(valid, deltas / np.where(steps > 0, steps, 1.0), 0.0)
    return rates, median(steps)


def _resampled(times: np.ndarray, counts: np.ndarray, interval: float) -> tuple[np.ndarray, float]:
    """Byte rates (bytes/s) on an even grid of `interval` s over reads taken at different intervals: the counter
    interpolated at each grid time (cumulative bytes, so the mean rate between reads is kept)."""
    grid = times[0] + np.arange(int((times[-1] - times[0]) / interval) + 1) * interval  # within the reads
    rates = np.diff(np.interp(grid, times, counts)) / interval
    return np.maximum(rates, 0.0), interval  # a counter reset (interface re-created) is no traffic


def _readable(counters: ByteCounters) -> bool:
    try:
        counters.read()
    except (OSError, ValueError):
        return False
    return True
