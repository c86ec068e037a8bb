"""Has the answer to a steady scraper's next scrape made before the scrape comes, so the scrape does not wait for the
collectors.

Prometheus scrapes a target every scrape_interval, at a fixed offset, over one kept-alive connection. Once a
connection's last scrapes came at a steady interval (`Cadence`), its next `/metrics` answer is collected and encoded
`lead_seconds` before the next scrape is due, on one thread for all connections (`Preparer`), and the scrape is
answered with those bytes. It is the same work as collecting at the scrape, done a little earlier: the CPU is
unchanged and the values are up to lead_seconds + LATE_SECONDS older. A prepared answer older than that when the
scrape comes (a late scrape) is dropped, and the scrape collects as before; so does a scrape on a new connection,
or after irregular scrapes, or closer than MIN_INTERVAL_SECONDS to the last.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Generic, Protocol, TypeVar

from agent.families import CounterFamily, MetricFamily

log = logging.getLogger(__name__)

STEADY_GAPS = 2  # the last this many gaps between a connection's scrapes must agree ...
GAP_TOLERANCE_SECONDS = 0.05  # ... within this much, or TOLERANCE_SHARE of the interval if that is more
TOLERANCE_SHARE = 0.05
MIN_INTERVAL_SECONDS = 0.5  # scrapes closer together than this are answered at the scrape
LATE_SECONDS = 0.05  # a scrape later than this after it was due gets an answer made at the scrape
PREPARING_WAIT_SECONDS = 30.0  # a scrape waits at most this long for its answer in preparation (collectors time out)


class Answer(Protocol):
    """What the server sends (agent.server.Response): only a 200 is kept for the next scrape."""

    @property
    def status(self) -> int: ...


A = TypeVar("A", bound=Answer)


class Cadence:
    """When a connection's next scrape is due, once its last STEADY_GAPS gaps agree."""

    def __init__(self) -> None:
        self._arrivals: deque[float] = deque(maxlen=STEADY_GAPS + 1)  # monotonic s

    def arrived(self, at: float) -> None:
        self._arrivals.append(at)

    def interval(self) -> float | None:
        """The steady interval between the last scrapes (s), or None if they were too few, uneven or too close."""
        if len(self._arrivals) <= STEADY_GAPS:
            return None
        gaps = [later - earlier for earlier, later in pairwise(self._arrivals)]
        interval = statistics.median(gaps)
        if interval < MIN_INTERVAL_SECONDS or any(abs(gap - interval) > tolerance(interval) for gap in gaps):
            return None
        return interval

    def next_due(self) -> float | None:
        """Monotonic s the next scrape is due at, or None if the last ones were not steady."""
        interval = self.interval()
        return None if interval is None else self._arrivals[-1] + interval


def tolerance(interval: float) -> float:
    """How far (s) a scrape may come from when it was due and still be on cadence."""
    return max(GAP_TOLERANCE_SECONDS, TOLERANCE_SHARE * interval)


@dataclass(frozen=True)
class _Prepared(Generic[A]):
    started: float  # monotonic s the collection began: the age of the values is counted from here
    accept: str
    answer: A


class ScrapeStats:
    """How scrapes were answered, for `/metrics` itself (a metric source of the server's registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prepared = 0  # answered with an answer made ahead
        self.collected = 0  # answered with an answer made at the scrape
        self.dropped = 0  # answers made ahead and never sent (the scrape came late, or not at all)

    def count(self, field: str) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + 1)

    def collect(self) -> Iterable[MetricFamily]:
        scrapes = CounterFamily(
            "lockstep_agent_scrapes_total",
            "/metrics answers by how they were made: 'prepared' ahead of a steady scraper's scrape, or 'collected' "
            "at the scrape.",
            labels=["answer"],
        )
        scrapes.add_metric(["prepared"], self.prepared)
        scrapes.add_metric(["collected"], self.collected)
        dropped = CounterFamily(
            "lockstep_agent_scrape_answers_dropped_total",
            "/metrics answers made ahead of a scrape that came late or not at all: collector work spent for nothing.",
        )
        dropped.add_metric([], self.dropped)
        return [scrapes, dropped]


class ConnectionScrapes(Generic[A]):
    """The `/metrics` answers of one connection: made at the scrape, or ahead of it once its scrapes are steady."""

    def __init__(
        self,
        make: Callable[[str], A],
        preparer: Preparer,
        lead_seconds: float,
        stats: ScrapeStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make  # the answer for an Accept header, collected now
        self._preparer = preparer
        self._lead = lead_seconds
        self._stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self._cadence = Cadence()
        self._accept: str | None = None  # of the last scrape: the next answer is made for it
        self._prepared: _Prepared[A] | None = None
        self._preparing: threading.Event | None = None  # set when the preparation in progress ends
        self._closed = False

    def answer(self, accept: str) -> A:
        """The answer to a scrape arriving now: the one made ahead if it is fresh enough, else one made now."""
        now = self._clock()
        with self._lock:
            self._cadence.arrived(now)
            preparing = self._preparing
        if preparing is not None:  # nearly made: it is the freshest answer there is
            preparing.wait(PREPARING_WAIT_SECONDS)
        with self._lock:
            due = self._cadence.next_due()
            prepared, self._prepared = self._prepared, None
            self._accept = accept
        if prepared is not None and prepared.accept == accept and now - prepared.started <= self.max_age_seconds:
            self._stats.count("prepared")
            answer = prepared.answer
        else:
            if prepared is not None:
                self._stats.count("dropped")
            self._stats.count("collected")
            answer = self._make(accept)
        if due is not None and self._lead > 0:
            self._preparer.at(self, due - self._lead)
        else:
            self._preparer.cancel(self)
        return answer

    @property
    def max_age_seconds(self) -> float:
        """The oldest a prepared answer may be when it is sent (s)."""
        return self._lead + LATE_SECONDS

    def prepare(self) -> None:
        """Make the answer to the next scrape now (the Preparer's thread)."""
        with self._lock:
            if self._closed or self._accept is None or self._preparing is not None:
                return
            accept = self._accept
            preparing = self._preparing = threading.Event()
            dropped, self._prepared = self._prepared is not None, None
        if dropped:
            self._stats.count("dropped")
        started = self._clock()
        prepared = None
        try:
            answer = self._make(accept)
            if answer.status == 200:
                prepared = _Prepared(started, accept, answer)
        except Exception:  # the scrape then collects and answers (or reports) it itself
            log.exception("preparing the answer to the next scrape failed; the scrape collects instead")
        finally:  # a scrape waiting for this preparation is let go whatever happened
            with self._lock:
                self._prepared = prepared
                self._preparing = None
            preparing.set()

    def close(self) -> None:
        """The connection closed: nothing more is prepared for it."""
        with self._lock:
            self._closed = True
            self._prepared = None
        self._preparer.cancel(self)


class Preparer:
    """One thread that prepares connections' answers at their times (monotonic s), the earliest first; it sleeps
    until the next one is due and not at all when none is."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._wake = threading.Condition()
        self._due: dict[ConnectionScrapes[Any], float] = {}
        self._thread: threading.Thread | None = None
        self._closed = False

    def at(self, scrapes: ConnectionScrapes[Any], when: float) -> None:
        with self._wake:
            if self._closed:
                return
            self._due[scrapes] = when
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="scrape-ahead", daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, scrapes: ConnectionScrapes[Any]) -> None:
        with self._wake:
            self._due.pop(scrapes, None)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._due.clear()
            self._wake.notify()

    def _loop(self) -> None:
        while (scrapes := self._next()) is not None:
            try:
                scrapes.prepare()
            except Exception:  # one connection's failure must not end the others' preparations
                log.exception("scrape-ahead: preparing an answer failed")

    def _next(self) -> ConnectionScrapes[Any] | None:
        """Wait for the next preparation due; None once closed."""
        with self._wake:
            while not self._closed:
                if not self._due:
                    self._wake.wait()
                    continue
                scrapes, when = min(self._due.items(), key=lambda item: item[1])
                delay = when - self._clock()
                if delay <= 0:
                    del self._due[scrapes]
                    return scrapes
                self._wake.wait(delay)
            return None
