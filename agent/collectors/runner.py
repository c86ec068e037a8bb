"""Runs the agent's collectors for every scrape and evidence pull: the node_exporter `execute()` of Lockstep.

Built from the collector table (`agent.collectors.COLLECTORS`) or from collector instances (tests). The
collectors run one after another in a worker thread, each with the same deadline, so one that raises or hangs costs
only its own samples and sets `lockstep_collector_success{collector}` to 0: the ones after a collector that runs
longer than the stagger move on to another worker. One of the sources of the server's registry (agent/server.py).
"""

from __future__ import annotations

import functools
import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from agent import __version__
from agent.collectors import COLLECTORS, CollectorSpec
from agent.collectors.base import Collector, SourceUnavailable
from agent.evidence import Evidence, EvidencePart
from agent.families import GaugeFamily, MetricFamily, SampleFamily
from agent.settings import AgentSettings

log = logging.getLogger(__name__)

# A collector starts when the one before it finished, or after this long (s) at most: one after another they do
# not take the GIL from each other on every NVML call and file read, and a slow or hung collector delays the
# others' start by this little.
STAGGER_SECONDS = 0.05


@dataclass(frozen=True)
class Outcome:
    """What one collector call produced: its result if it succeeded in time, how long it took (s), or why not."""

    succeeded: bool
    duration_seconds: float
    result: object = None
    error: BaseException | None = None


class _Call:
    """One collector call: its outcome once `done` is set (by the worker that ran it)."""

    __slots__ = ("fn", "outcome", "done")

    def __init__(self, fn: Callable[[], object]) -> None:
        self.fn = fn
        self.outcome: Outcome | None = None
        self.done = threading.Event()


class _Job:
    """Collector calls for one worker to run in order. The runner takes the calls not started yet away (`rest`)
    when the one running takes longer than the stagger, for another worker to run."""

    def __init__(self, calls: list[_Call]) -> None:
        self._lock = threading.Lock()
        self._calls = calls
        self._next = 0  # the next call to start
        self.started_at = time.monotonic()  # when the running call started (or the job was made)

    def take(self) -> _Call | None:
        """The next call to run (the worker's side), or None when there is none left."""
        with self._lock:
            if self._next >= len(self._calls):
                return None
            self._next += 1
            self.started_at = time.monotonic()
            return self._calls[self._next - 1]

    def waiting(self) -> _Call | None:
        """The job's last call if some calls have not started yet (it is done when the job is), else None."""
        with self._lock:
            return self._calls[-1] if self._next < len(self._calls) else None

    def rest(self) -> list[_Call]:
        """Take away the calls not started yet (the runner's side)."""
        with self._lock:
            rest = self._calls[self._next :]
            del self._calls[self._next :]
            return rest


class _Workers:
    """Daemon threads that run jobs; a job goes to an idle one, or to a new one if every worker is busy (one stays
    busy as long as a collector hangs in a driver call). Daemon threads let the agent exit even then.

    One job runs all collectors of a scrape, so a scrape costs two thread wakeups (the worker's and the scraper's
    when the last call is done) instead of two per collector (~60-120 us of CPU each here)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for a job and not promised one yet
        self._threads = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()

    def run(self, job: _Job) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
            self._threads += 1
            name = f"collectors-{self._threads}"
        # handed over in a list the worker empties: the Thread object keeps its args as long as the thread runs
        threading.Thread(target=self._serve, args=([job],), name=name, daemon=True).start()

    def _serve(self, first: list[_Job]) -> None:
        job: _Job | None = first.pop()
        while job is not None:
            _run(job)
            job = None  # while idle, hold nothing of the last job: its results (the last evidence: ~1 MB) go
            with self._lock:
                self._idle += 1
            job = self._jobs.get()

    def close(self) -> None:
        """Let every worker end once its job (if any) is done."""
        with self._lock:
            for _ in range(self._threads):
                self._jobs.put(None)
            self._threads = self._idle = 0


def _run(job: _Job) -> None:
    while (call := job.take()) is not None:
        call.outcome = _timed(call.fn)
        call.done.set()


def _timed(fn: Callable[[], object]) -> Outcome:
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as error:
        return Outcome(succeeded=False, duration_seconds=time.perf_counter() - start, error=error)
    return Outcome(succeeded=True, duration_seconds=time.perf_counter() - start, result=result)


class CollectorRunner:
    """All collectors of one agent, behind a `collect()` of metric families and an `evidence()` call.

    `broken` names collectors that are switched on but could not be built (missing module, failing
    constructor): they are reported with success 0 and never run.
    """

    def __init__(
        self,
        collectors: Iterable[Collector],
        *,
        node_name: str,
        timeout_seconds: float,
        broken: Iterable[str] = (),
    ) -> None:
        self.collectors: dict[str, Collector] = {c.name: c for c in collectors}
        self.broken = sorted(set(broken))
        self.node_name = node_name
        self.timeout_seconds = timeout_seconds
        self._failing: set[str] = set()  # collectors whose last run failed: logged once until they recover
        self._failing_lock = threading.Lock()
        self._workers = _Workers()
        # per method, the call of each collector last started: a caller joins it while it runs, so at most one call
        # per collector and method is ever in flight, and a hung collector does not pile up threads
        self._in_flight_lock = threading.Lock()
        self._collect_calls: dict[str, _Call] = {}
        self._evidence_calls: dict[str, _Call] = {}

    @classmethod
    def from_settings(cls, settings: AgentSettings, table: Iterable[CollectorSpec] = COLLECTORS) -> CollectorRunner:
        """Build every enabled collector of the table; one that cannot be built is logged and marked broken."""
        collectors: list[Collector] = []
        broken: list[str] = []
        for spec in table:
            section = getattr(settings, spec.name, None)
            if section is not None and not section.enabled:
                log.info("collector %s is switched off", spec.name)
                continue
            collector = _build(spec, settings)
            if collector is None:
                broken.append(spec.name)
            else:
                collectors.append(collector)
        return cls(
            collectors,
            node_name=settings.node_name,
            timeout_seconds=settings.collector_timeout_seconds,
            broken=broken,
        )

    def start(self) -> None:
        """Start the collectors' background work; one whose start fails is closed and marked broken."""
        for name, collector in list(self.collectors.items()):
            try:
                collector.start()
            except Exception:
                log.exception("collector %s failed to start; it is reported with success 0", name)
                self._drop(name)

    def close(self) -> None:
        self._workers.close()
        for name, collector in self.collectors.items():
            try:
                collector.close()
            except Exception:
                log.exception("collector %s failed to close", name)

    def collect(self) -> Iterator[MetricFamily]:
        """Every collector's families plus success and duration (a metric source of the server's registry)."""
        outcomes = self._run_all(self._collect_calls, lambda c: list(c.collect()))
        success = GaugeFamily(
            "lockstep_collector_success",
            "1 if the collector's last run succeeded within its timeout, else 0.",
            labels=["collector"],
        )
        duration = GaugeFamily(
            "lockstep_collector_duration_seconds",
            "How long the collector's run took (the timeout if it did not finish), s.",
            labels=["collector"],
        )
        families: dict[str, MetricFamily] = {}
        for name, outcome in outcomes.items():
            success.add_metric([name], 1.0 if outcome.succeeded else 0.0)
            duration.add_metric([name], outcome.duration_seconds)
            if outcome.succeeded and isinstance(outcome.result, list):
                for family in outcome.result:
                    _merge_into(families, family)
        yield from families.values()
        for name in self.broken:
            success.add_metric([name], 0.0)
        info = GaugeFamily(
            "lockstep_agent_info", "The agent's version and node; always 1.", labels=["version", "node"]
        )
        info.add_metric([__version__, self.node_name], 1.0)
        yield from (success, duration, info)

    def evidence(self) -> Evidence:
        """Merge every collector's `EvidencePart` into the node's evidence document."""
        outcomes = self._run_all(self._evidence_calls, lambda c: c.evidence())
        parts = [o.result for o in outcomes.values() if o.succeeded and isinstance(o.result, EvidencePart)]
        succeeded = {name: o.succeeded for name, o in outcomes.items()} | {name: False for name in self.broken}
        return Evidence(
            node=self.node_name,
            collected_at=time.time(),
            agent_version=__version__,
            collectors=dict(sorted(succeeded.items())),
            hard_signals=[s for p in parts for s in p.hard_signals],
            gpus=[g for p in parts for g in p.gpus],
            nics=[n for p in parts for n in p.nics],
            periodicity=[t for p in parts for t in p.periodicity],
            ranks=[r for p in parts for r in p.ranks],
            host=next((p.host for p in parts if p.host is not None), None),
        )

    def _run_all(self, calls: dict[str, _Call], method: Callable[[Collector], object]) -> dict[str, Outcome]:
        """Run `method` on every collector, one after another (see STAGGER_SECONDS); each gets the same deadline,
        counted from now. A collector whose call from before still runs is not called again: its call is joined."""
        deadline = time.monotonic() + self.timeout_seconds
        stagger = min(STAGGER_SECONDS, self.timeout_seconds / (2 * max(1, len(self.collectors))))
        mine: dict[str, _Call] = {}
        new: list[_Call] = []
        with self._in_flight_lock:
            for name, collector in self.collectors.items():
                call = calls.get(name)
                if call is None or call.done.is_set():
                    call = calls[name] = _Call(functools.partial(method, collector))
                    new.append(call)
                mine[name] = call
        if new:
            job = _Job(new)
            self._workers.run(job)
            self._wait_for_job(job, deadline, stagger)
        outcomes: dict[str, Outcome] = {}
        for name, call in mine.items():
            outcome = call.outcome if call.done.wait(max(0.0, deadline - time.monotonic())) else None
            if outcome is None:
                error = TimeoutError(f"did not finish within {self.timeout_seconds:g} s; left out")
                outcome = Outcome(succeeded=False, duration_seconds=self.timeout_seconds, error=error)
            outcomes[name] = outcome
            self._log_change(name, outcome)
        # forget finished calls: only one still running is joined next time, and a finished one's result (the last
        # evidence: ~1 MB with 8 ranks) would stay alive until the next call
        with self._in_flight_lock:
            for name, call in mine.items():
                if call.done.is_set() and calls.get(name) is call:
                    del calls[name]
        return outcomes

    def _wait_for_job(self, job: _Job, deadline: float, stagger: float) -> None:
        """Until the job's calls have all started or the deadline: when one has run for the stagger and others wait
        behind it, they move on to another worker. One wakeup when the job finishes within the stagger."""
        while (now := time.monotonic()) < deadline and (last := job.waiting()) is not None:
            until = min(deadline, job.started_at + stagger)
            if now >= until:
                job = _Job(job.rest())
                self._workers.run(job)
            else:
                last.done.wait(until - now)

    def _log_change(self, name: str, outcome: Outcome) -> None:
        """Log a collector's failure once (with its traceback) and its recovery, not every scrape."""
        with self._failing_lock:
            first = not outcome.succeeded and name not in self._failing
            recovered = outcome.succeeded and name in self._failing
            (self._failing.add if not outcome.succeeded else self._failing.discard)(name)
        error = outcome.error
        if first and isinstance(error, SourceUnavailable):  # expected; the collector logged it once
            log.debug("collector %s: %s", name, error)
        elif first and error is not None:
            traceback = error if error.__traceback__ is not None else None
            log.warning("collector %s failed: %s (success 0 until it recovers)", name, error, exc_info=traceback)
        elif not outcome.succeeded:
            log.debug("collector %s still failing: %s", name, error)
        elif recovered:
            log.info("collector %s recovered", name)

    def _drop(self, name: str) -> None:
        self.collectors.pop(name)
        self.broken = sorted({*self.broken, name})


def _merge_into(families: dict[str, MetricFamily], family: MetricFamily) -> None:
    """Add `family` to `families`; one of the same name (e.g. read errors of two collectors) gets its samples.

    The merged family is a copy: a collector's result may be shared by two concurrent scrapes.
    """
    existing = families.get(family.name)
    if existing is None:
        families[family.name] = family
        return
    merged = SampleFamily(existing.name, existing.documentation, existing.type, existing.unit)
    merged.samples = [*existing.samples, *family.samples]
    families[family.name] = merged


def _build(spec: CollectorSpec, settings: AgentSettings) -> Collector | None:
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as error:
        if error.name != spec.module:
            log.exception("collector %s cannot be imported; it is reported with success 0", spec.name)
        else:
            log.info("collector %s is not built into this agent (%s missing)", spec.name, spec.module)
        return None
    except Exception:
        log.exception("collector %s cannot be imported; it is reported with success 0", spec.name)
        return None
    try:
        collector: Collector = getattr(module, spec.cls).from_settings(settings)
    except Exception:
        log.exception("collector %s could not be built; it is reported with success 0", spec.name)
        return None
    return collector
