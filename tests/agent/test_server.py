"""The agent's HTTP endpoints and the collector framework: one bad collector never costs the others."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref
from collections.abc import Iterable, Iterator

import pytest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors.base import Collector
from agent.collectors.runner import CollectorRunner
from agent.evidence import Evidence, EvidencePart, HardSignal, NicEvidence
from agent.settings import AgentSettings
from tests.agent.conftest import fetch


class Static(Collector):
    """Reports one gauge and one NIC; counts its calls."""

    def __init__(self, name: str, value: float = 1.0) -> None:
        self.name = name  # type: ignore[misc]
        self.value = value
        self.calls = 0

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> Collector:
        raise NotImplementedError

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        family = GaugeMetricFamily(f"lockstep_test_{self.name}", "test gauge")
        family.add_metric([], self.value)
        return [family]

    def evidence(self) -> EvidencePart:
        return EvidencePart(nics=[NicEvidence(name=f"{self.name}0")])


class Raising(Static):
    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("sensor on fire")

    def evidence(self) -> EvidencePart:
        raise RuntimeError("sensor on fire")


class Hanging(Static):
    """Blocks until released (at test teardown), like a collector stuck in a driver call."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.started = 0

    def collect(self) -> Iterable[Metric]:
        self.started += 1
        self.release.wait(60)
        return super().collect()

    def evidence(self) -> EvidencePart:
        self.release.wait(60)
        return super().evidence()


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    collector = Hanging("hanging")
    yield collector
    collector.release.set()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_serve_every_collector_with_success_duration_and_agent_info(serve_collectors) -> None:
    url = await serve_collectors([Static("alpha", 3.0), Static("beta", 4.0)])
    status, content_type, body = await fetch(url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    values = samples(body)
    assert values[("lockstep_test_alpha", ())] == 3.0
    assert values[("lockstep_test_beta", ())] == 4.0
    assert values[("lockstep_collector_success", (("collector", "alpha"),))] == 1.0
    assert ("lockstep_collector_duration_seconds", (("collector", "beta"),)) in values
    assert values[("lockstep_agent_info", (("node", "test-node"), ("version", "0.1.0")))] == 1.0
    assert ("process_resident_memory_bytes", ()) in values


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(serve_collectors) -> None:
    url = await serve_collectors([Static("alpha")])
    status, content_type, body = await fetch(url + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    _, plain_type, plain = await fetch(url + "/metrics", accept="text/plain;version=0.0.4")
    assert plain_type.startswith("text/plain") and "# EOF" not in plain


async def test_a_raising_collector_reports_failure_and_the_others_are_still_served(serve_collectors) -> None:
    url = await serve_collectors([Raising("broken"), Static("alpha")])
    _, _, body = await fetch(url + "/metrics")
    values = samples(body)
    assert values[("lockstep_collector_success", (("collector", "broken"),))] == 0.0
    assert values[("lockstep_collector_success", (("collector", "alpha"),))] == 1.0
    assert values[("lockstep_test_alpha", ())] == 1.0

    _, _, evidence_body = await fetch(url + "/api/v1/evidence")
    evidence = Evidence.model_validate_json(evidence_body)
    assert evidence.collectors == {"alpha": True, "broken": False}
    assert [nic.name for nic in evidence.nics] == ["alpha0"]


async def test_a_hanging_collector_times_out_without_stalling_the_scrape_or_piling_up_threads(
    serve_collectors, hanging: Hanging
) -> None:
    url = await serve_collectors([hanging, Static("alpha")], timeout_seconds=2.0)
    for _ in range(3):
        status, _, body = await asyncio.wait_for(fetch(url + "/metrics"), timeout=20)
        assert status == 200
        values = samples(body)
        assert values[("lockstep_collector_success", (("collector", "hanging"),))] == 0.0
        assert values[("lockstep_collector_success", (("collector", "alpha"),))] == 1.0
        assert ("lockstep_test_hanging", ()) not in values
    assert hanging.started == 1, "later scrapes join the call still in flight instead of starting new ones"

    _, _, evidence_body = await asyncio.wait_for(fetch(url + "/api/v1/evidence"), timeout=20)
    assert Evidence.model_validate_json(evidence_body).collectors == {"alpha": True, "hanging": False}

    hanging.release.set()
    for _ in range(100):
        values = samples((await fetch(url + "/metrics"))[2])
        if values[("lockstep_collector_success", (("collector", "hanging"),))] == 1.0:
            break
        await asyncio.sleep(0.1)
    assert values[("lockstep_test_hanging", ())] == 1.0, "a collector that recovers is served again"


async def test_collectors_that_could_not_be_built_are_reported_as_failed(serve_collectors) -> None:
    url = await serve_collectors([Static("alpha")], broken=("nvml",))
    values = samples((await fetch(url + "/metrics"))[2])
    assert values[("lockstep_collector_success", (("collector", "nvml"),))] == 0.0
    evidence = Evidence.model_validate_json((await fetch(url + "/api/v1/evidence"))[2])
    assert evidence.collectors["nvml"] is False


async def test_evidence_merges_every_collectors_part_with_node_version_and_time(serve_collectors) -> None:
    class WithSignal(Static):
        def evidence(self) -> EvidencePart:
            return EvidencePart(
                hard_signals=[HardSignal(kind="nic_link_flap", device="eth9", first_seen=1.0, last_seen=2.0)]
            )

    url = await serve_collectors([Static("alpha"), WithSignal("beta")])
    status, content_type, body = await fetch(url + "/api/v1/evidence")
    assert status == 200 and content_type.startswith("application/json")
    evidence = Evidence.model_validate(json.loads(body))
    assert evidence.node == "test-node"
    assert evidence.agent_version == "0.1.0"
    assert evidence.collected_at > 1.7e9
    assert [nic.name for nic in evidence.nics] == ["alpha0"]
    assert [s.device for s in evidence.hard_signals] == ["eth9"]


async def test_health_is_ok_and_ready_follows_the_first_collection(serve_collectors) -> None:
    collector = Static("alpha")
    url = await serve_collectors([collector])
    assert (await fetch(url + "/healthz"))[0] == 200
    for _ in range(100):
        if (await fetch(url + "/readyz"))[0] == 200:
            break
        await asyncio.sleep(0.05)
    assert (await fetch(url + "/readyz"))[0] == 200
    assert collector.calls >= 1, "ready only after a first collection ran"


def test_runner_builds_enabled_collectors_from_the_table_and_marks_missing_ones_broken() -> None:
    from agent.collectors import CollectorSpec

    table = (
        CollectorSpec("network", "agent.collectors.network", "NetworkCollector", ""),
        CollectorSpec("host", "agent.collectors.host", "HostCollector", ""),
        CollectorSpec("nvml", "agent.collectors.does_not_exist", "Nope", ""),
        CollectorSpec("collective", "agent.collectors.collective", "CollectiveCollector", ""),
    )
    settings = AgentSettings(node_name="n", host={"enabled": False}, collective={"enabled": False})
    runner = CollectorRunner.from_settings(settings, table)
    try:
        assert sorted(runner.collectors) == ["network"]
        assert runner.broken == ["nvml"]
    finally:
        runner.close()


def test_a_collector_whose_constructor_fails_is_marked_broken_not_fatal() -> None:
    from agent.collectors import CollectorSpec

    table = (
        CollectorSpec("host", "agent.collectors.host", "HostCollector", ""),
        # Static.from_settings raises, like a collector whose hardware library fails to initialise
        CollectorSpec("periodicity", "tests.agent.test_server", "Static", ""),
    )
    runner = CollectorRunner.from_settings(AgentSettings(node_name="n"), table)
    try:
        assert sorted(runner.collectors) == ["host"]
        assert runner.broken == ["periodicity"]
    finally:
        runner.close()


def test_a_failing_collector_is_logged_once_and_its_recovery_once(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(Static):
        failing = True

        def collect(self) -> Iterable[Metric]:
            if self.failing:
                raise RuntimeError("sensor on fire")
            return super().collect()

    flaky = Flaky("flaky")
    runner = CollectorRunner([flaky], node_name="n", timeout_seconds=5)
    with caplog.at_level("INFO", logger="agent.collectors.runner"):
        for _ in range(3):
            list(runner.collect())
        flaky.failing = False
        list(runner.collect())
        list(runner.collect())
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "collector flaky failed: sensor on fire (success 0 until it recovers)",
        "collector flaky recovered",
    ]
    assert caplog.records[0].exc_info is not None, "the first failure carries its traceback"


def test_collectors_run_one_after_another_so_they_never_contend_for_the_interpreter() -> None:
    spans: list[tuple[str, str]] = []

    class Recording(Static):
        def collect(self) -> Iterable[Metric]:
            spans.append(("start", self.name))
            threading.Event().wait(0.01)  # a read that releases the GIL, as NVML calls and file reads do
            spans.append(("end", self.name))
            return super().collect()

    runner = CollectorRunner([Recording("a"), Recording("b"), Recording("c")], node_name="n", timeout_seconds=5)
    list(runner.collect())
    assert spans == [(edge, name) for name in "abc" for edge in ("start", "end")]


class Where(Static):
    """Records the thread each call runs on."""

    def __init__(self, name: str, threads: list[str]) -> None:
        super().__init__(name)
        self.threads = threads

    def collect(self) -> Iterable[Metric]:
        self.threads.append(threading.current_thread().name)
        return super().collect()


def test_every_collector_of_a_scrape_runs_on_one_reused_worker_thread() -> None:
    threads: list[str] = []
    runner = CollectorRunner([Where(name, threads) for name in "abc"], node_name="n", timeout_seconds=5)
    try:
        for _ in range(3):
            list(runner.collect())
    finally:
        runner.close()
    assert len(threads) == 9 and len(set(threads)) == 1 and threads[0] != threading.current_thread().name


class Remembered(Static):
    """Keeps a weak reference to each evidence part it returns."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.parts: list[weakref.ref[EvidencePart]] = []

    def evidence(self) -> EvidencePart:
        part = super().evidence()
        self.parts.append(weakref.ref(part))
        return part


def test_the_runner_holds_nothing_of_an_evidence_pull_once_it_is_served() -> None:
    collector = Remembered("a")
    runner = CollectorRunner([collector], node_name="n", timeout_seconds=5)
    try:
        evidence = runner.evidence()
        assert [n.name for n in evidence.nics] == ["a0"]
        del evidence
        for _ in range(200):  # the worker lets go of the call just after it handed over the result
            gc.collect()
            if collector.parts[0]() is None:
                break
            time.sleep(0.01)
        assert collector.parts[0]() is None, "the last pull's parts (~1 MB with 8 ranks) kept until the next"
    finally:
        runner.close()


def test_collectors_after_a_hanging_one_move_to_another_worker_and_workers_do_not_pile_up(hanging: Hanging) -> None:
    threads: list[str] = []
    before = set(threading.enumerate())
    runner = CollectorRunner([hanging, Where("b", threads), Where("c", threads)], node_name="n", timeout_seconds=1)
    try:
        for _ in range(3):
            families = {f.name: f for f in runner.collect()}
            success = {s.labels["collector"]: s.value for s in families["lockstep_collector_success"].samples}
            assert success == {"hanging": 0.0, "b": 1.0, "c": 1.0}
        workers = [t for t in threading.enumerate() if t not in before and t.name.startswith("collectors-")]
        assert hanging.started == 1 and len(threads) == 6
        assert len(workers) == 2, "one stuck in the hanging collector, one serving the others"
    finally:
        hanging.release.set()
        runner.close()
