"""Answers made ahead of a steady scraper's scrapes: served only while fresh, never instead of a fresh collection."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from agent.collectors.base import Collector
from agent.collectors.runner import CollectorRunner
from agent.scrape_ahead import LATE_SECONDS, Cadence, ConnectionScrapes, Preparer, ScrapeStats
from agent.server import build_app, serve
from agent.settings import AgentSettings
from tests.agent.test_server import samples

LEAD = 0.1


@dataclass(frozen=True)
class FakeAnswer:
    status: int
    made_at: float
    accept: str


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Schedule:
    """Stands in for the Preparer: remembers when each connection asked to be prepared."""

    def __init__(self) -> None:
        self.when: float | None = None

    def at(self, scrapes: object, when: float) -> None:
        self.when = when

    def cancel(self, scrapes: object) -> None:
        self.when = None


def connection(status: int = 200) -> tuple[ConnectionScrapes[FakeAnswer], Clock, Schedule, list[str], ScrapeStats]:
    clock, schedule, made, stats = Clock(), Schedule(), [], ScrapeStats()

    def make(accept: str) -> FakeAnswer:
        made.append(accept)
        return FakeAnswer(status, clock.now, accept)

    scrapes = ConnectionScrapes(make, schedule, LEAD, stats, clock=clock)  # type: ignore[arg-type]
    return scrapes, clock, schedule, made, stats


def scrape_at(scrapes: ConnectionScrapes[FakeAnswer], clock: Clock, at: float, accept: str = "om") -> FakeAnswer:
    clock.now = at
    return scrapes.answer(accept)


def test_a_cadence_is_steady_once_the_last_gaps_agree_and_not_before() -> None:
    cadence = Cadence()
    for at in (0.0, 15.0):
        cadence.arrived(at)
    assert cadence.next_due() is None, "one gap is no cadence"
    cadence.arrived(30.01)
    assert cadence.next_due() == 30.01 + 15.005
    cadence.arrived(50.0)
    assert cadence.next_due() is None, "a gap of 20 s after ones of 15 s: not steady"


def test_scrapes_closer_than_half_a_second_are_never_predicted() -> None:
    cadence = Cadence()
    for i in range(6):
        cadence.arrived(i * 0.2)
    assert cadence.next_due() is None


def test_a_steady_scraper_gets_the_answer_made_lead_seconds_before_its_scrape() -> None:
    scrapes, clock, schedule, made, stats = connection()
    for at in (0.0, 1.0, 2.0):
        assert scrape_at(scrapes, clock, at).made_at == at, "no cadence yet: collected at the scrape"
    assert schedule.when == 3.0 - LEAD
    clock.now = schedule.when
    scrapes.prepare()
    assert len(made) == 4
    answer = scrape_at(scrapes, clock, 3.0)
    assert answer.made_at == 3.0 - LEAD and len(made) == 4, "served what was prepared, nothing collected again"
    assert (stats.prepared, stats.collected, stats.dropped) == (1, 3, 0)
    assert schedule.when == 4.0 - LEAD


def test_a_late_scrape_gets_a_fresh_answer_and_the_prepared_one_is_counted_as_dropped() -> None:
    scrapes, clock, schedule, made, stats = connection()
    for at in (0.0, 1.0, 2.0):
        scrape_at(scrapes, clock, at)
    clock.now = 2.9
    scrapes.prepare()
    late = 2.9 + LEAD + LATE_SECONDS + 0.01
    answer = scrape_at(scrapes, clock, late)
    assert answer.made_at == late, "older than the lead and the allowed lateness: not served"
    assert stats.dropped == 1
    scrape_at(scrapes, clock, 10.0)
    assert schedule.when is None, "a scrape off the cadence: nothing is prepared until it is steady again"


def test_a_prepared_answer_is_served_only_in_the_format_the_scraper_asked_for() -> None:
    scrapes, clock, schedule, made, _ = connection()
    for at in (0.0, 1.0, 2.0):
        scrape_at(scrapes, clock, at, accept="openmetrics")
    clock.now = 2.9
    scrapes.prepare()
    answer = scrape_at(scrapes, clock, 3.0, accept="text")
    assert answer.accept == "text" and answer.made_at == 3.0


def test_a_failed_answer_is_not_kept_for_the_next_scrape() -> None:
    scrapes, clock, schedule, made, stats = connection(status=500)
    for at in (0.0, 1.0, 2.0):
        scrape_at(scrapes, clock, at)
    clock.now = 2.9
    scrapes.prepare()
    assert scrape_at(scrapes, clock, 3.0).made_at == 3.0
    assert stats.prepared == 0


def test_a_preparation_that_raises_leaves_the_scrape_to_collect(caplog) -> None:
    clock, schedule, stats = Clock(), Schedule(), ScrapeStats()
    calls = []

    def make(accept: str) -> FakeAnswer:
        calls.append(clock.now)
        if len(calls) == 4:
            raise OSError("encoder failed")
        return FakeAnswer(200, clock.now, accept)

    scrapes = ConnectionScrapes(make, schedule, LEAD, stats, clock=clock)  # type: ignore[arg-type]
    for at in (0.0, 1.0, 2.0):
        scrape_at(scrapes, clock, at)
    clock.now = 2.9
    scrapes.prepare()
    assert "preparing the answer to the next scrape failed" in caplog.text
    assert scrape_at(scrapes, clock, 3.0).made_at == 3.0


def test_nothing_is_prepared_for_a_closed_connection() -> None:
    scrapes, clock, schedule, made, _ = connection()
    for at in (0.0, 1.0, 2.0):
        scrape_at(scrapes, clock, at)
    scrapes.close()
    assert schedule.when is None
    scrapes.prepare()
    assert len(made) == 3


def test_the_preparer_runs_the_earliest_due_first_and_not_a_cancelled_one() -> None:
    order: list[str] = []
    done = threading.Event()

    class Recording:
        def __init__(self, name: str) -> None:
            self.name = name

        def prepare(self) -> None:
            order.append(self.name)
            if len(order) == 2:
                done.set()

    preparer = Preparer()
    try:
        now = time.monotonic()
        late, early, cancelled = Recording("late"), Recording("early"), Recording("cancelled")
        preparer.at(late, now + 0.3)  # type: ignore[arg-type]
        preparer.at(cancelled, now + 0.1)  # type: ignore[arg-type]
        preparer.at(early, now + 0.2)  # type: ignore[arg-type]
        preparer.cancel(cancelled)  # type: ignore[arg-type]
        assert done.wait(10)
        assert order == ["early", "late"]
    finally:
        preparer.close()


class CollectedAt(Collector):
    """Reports the monotonic s its collection started at."""

    name = "clock"

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> Collector:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("lockstep_test_collected_at_seconds", "monotonic s of the collection")
        family.add_metric([], time.monotonic())
        return [family]


def test_a_steady_scraper_over_http_is_answered_ahead_and_never_with_values_older_than_allowed() -> None:
    runner = CollectorRunner([CollectedAt()], node_name="n", timeout_seconds=5.0)
    server = serve(build_app(runner, scrape_ahead_seconds=LEAD), "127.0.0.1", 0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        ages, values, interval = [], {}, 0.6
        next_at = time.monotonic()
        for _ in range(10):
            time.sleep(max(0.0, next_at - time.monotonic()))
            sent = time.monotonic()
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            values = samples(response.read().decode())
            ages.append(sent - values[("lockstep_test_collected_at_seconds", ())])
            next_at += interval
        assert max(ages) <= LEAD + LATE_SECONDS, f"values older than the lead and the lateness allowed: {ages}"
        prepared = values[("lockstep_agent_scrapes_total", (("answer", "prepared"),))]
        assert prepared >= 3, f"a steady scraper is answered ahead (ages {ages})"
        assert all(age < 0 for age in ages[:3]), "the first scrapes of a connection are collected at the scrape"
    finally:
        conn.close()
        server.stop()
