"""One thread for the agent's periodic background jobs: the drain of the probe socket (agent/collectors/collective.py,
4 Hz) and the periodicity collector's housekeeping (agent/collectors/periodicity.py, every 5 s; its NIC byte sampler
too, at 10-20 Hz, where the C sampler was not built), and what those collectors compute ahead of the scrapes: the
socket dumps of the host collector, the step periods of the ranks.

On a VM a thread's wakeup costs more CPU than these jobs' work (~40-90 us of kernel and interpreter time, and the
code after it runs cold), so the jobs share one thread's wakeups instead of each waking its own: a job with slack
runs on any wakeup within its slack before or after it is due, and wakes the thread itself only when none came.

While the agent answers a scrape or an evidence pull (`serving`), due jobs wait for it to finish (at most
MAX_DEFER_SECONDS): the same work, but not competing with the answer for the GIL and adding to its latency.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

IDLE_SLEEP_SECONDS = 0.5  # the longest sleep: how soon a job added to a running ticker starts at worst
MAX_DEFER_SECONDS = 0.25  # due jobs wait at most this long for answers in progress (a scraper that never stops)

# A job's run returns None to keep its interval, or the seconds until it wants to run again (a busy socket: 0).
Job = Callable[[], "float | None"]


@dataclass
class _Scheduled:
    run: Job
    interval_seconds: float
    slack_seconds: float  # it may run this much before or after it is due, to share another job's wakeup
    due: float  # monotonic s


class Ticker:
    """Runs each job every `interval_seconds` (its own), one after another on one thread, from `add` to `remove`.
    A job that falls behind skips the runs it missed rather than catching up in a burst; one that raises is logged
    and runs again at its next time. The thread starts with the first job and ends after the last is removed."""

    def __init__(self, name: str = "background-jobs") -> None:
        self.name = name
        self._lock = threading.Lock()  # the job table; held while a job runs: `remove` waits for the run to end
        self._jobs: dict[object, _Scheduled] = {}
        self._thread: threading.Thread | None = None
        self._answering = 0  # answers in progress (`serving`)
        self._answered = threading.Condition()

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around answering a request: jobs that fall due meanwhile run once it is answered."""
        with self._answered:
            self._answering += 1
        try:
            yield
        finally:
            with self._answered:
                self._answering -= 1
                if not self._answering:
                    self._answered.notify_all()

    def _wait_for_answers(self) -> None:
        with self._answered:
            if self._answering:
                self._answered.wait_for(lambda: not self._answering, timeout=MAX_DEFER_SECONDS)

    def add(self, key: object, run: Job, interval_seconds: float, slack_seconds: float = 0.0) -> None:
        """Run `run` every `interval_seconds` from now on (replacing any job under `key`)."""
        with self._lock:
            self._jobs[key] = _Scheduled(run, interval_seconds, slack_seconds, time.monotonic())
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def remove(self, key: object) -> None:
        """Stop running the job under `key`; returns once it is not running (its owner may close what it reads)."""
        with self._lock:
            self._jobs.pop(key, None)

    def _loop(self) -> None:
        while True:
            self._wait_for_answers()
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    return
                for job in list(self._jobs.values()):
                    if time.monotonic() >= job.due - job.slack_seconds:
                        self._run(job)
                # a job with slack waits up to its slack past due for another's wakeup before it wakes the thread
                next_due = min(job.due + job.slack_seconds for job in self._jobs.values())
            time.sleep(min(IDLE_SLEEP_SECONDS, max(0.0, next_due - time.monotonic())))

    @staticmethod
    def _run(job: _Scheduled) -> None:
        again = None
        try:
            again = job.run()
        except Exception:  # one failing job must not end the others
            log.exception("background job %s failed", getattr(job.run, "__qualname__", job.run))
        now = time.monotonic()
        if again is not None:
            job.due = now + again
            return
        job.due += job.interval_seconds  # a steady cadence, whenever within its slack the job ran
        if job.due < now:  # fell behind (a stalled host): skip the missed runs, do not burst
            job.due = now + job.interval_seconds


TICKER = Ticker()  # the agent's one instance: every collector's jobs share its thread
