"""The agent's fast /metrics encoder writes exactly what prometheus_client writes, for both formats."""

from __future__ import annotations

import random
import struct
import sys

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, exposition
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from agent.backends.procfs import Procfs
from agent.backends.sysfs import SysfsNet
from agent.collectors.host import HostCollector
from agent.collectors.network import NetworkCollector
from agent.exposition import OPENMETRICS, TEXT, encode_openmetrics, encode_text, go_float, negotiate
from agent.families import CounterFamily, GaugeFamily, HistogramFamily
from tests.agent.conftest import PROCFS_GPU_NODE, SYSFS_GPU_NODE


class Frozen:
    """A registry-like source that returns the same families on every collect()."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def awkward_families() -> list[Metric]:
    gauge = GaugeMetricFamily("lockstep_test_gauge", 'help with "quotes", a \\ and\na newline', labels=["a", "b"])
    gauge.add_metric(['va"lue', "back\\slash"], 1.5)
    gauge.add_metric(["new\nline", "ünïcode"], float("inf"))
    gauge.add_metric(["x", "y"], -0.0)
    gauge.add_metric(["big", "small"], 1e-300)
    counter = CounterMetricFamily("lockstep_test_events", "plain help", labels=["z", "a"])
    counter.add_metric(["1", "2"], 12345678901234.0)
    with_created = CounterMetricFamily("lockstep_test_created", "has created", created=1700000000.5)
    with_created.add_metric([], 3)
    timestamped = GaugeMetricFamily("lockstep_test_stamped", "timestamped")
    timestamped.add_metric([], 1.0, timestamp=1700000000.25)
    unit = GaugeMetricFamily("lockstep_test_temperature_celsius", "with unit", unit="celsius")
    unit.add_metric([], 41.0)
    histogram = HistogramMetricFamily("lockstep_test_wait_seconds", "a family-built histogram", labels=["job"])
    histogram.add_metric(['j"1'], [("0.0001", 0), ("2.5", 3.0), ("1e+20", 4), ("+Inf", 5)], 7.25)
    histogram.add_metric(["j2"], [("+Inf", 0)], 0.0)
    return [gauge, counter, with_created, timestamped, unit, histogram]


def lean_families() -> list[Metric]:
    """The agent's own row-keeping families, with the awkward values above; their `samples` are what the library
    encodes, their rows what the fast path writes."""
    gauge = GaugeFamily("lockstep_test_lean_gauge", 'help with "quotes" and\na newline', labels=["z", "a"])
    gauge.add_metric(['va"lue', "back\\slash"], 1.5)
    gauge.add_metric(["new\nline", "ünïcode"], float("-inf"))
    gauge.add_metric(["x", "y"], -0.0)
    gauge.add_metric(["big", "number"], 12345678901234.0)
    gauge.add_metric(["nan", "value"], float("nan"))
    counter = CounterFamily("lockstep_test_lean_events_total", "a counter named with _total", labels=["rank"])
    counter.add_metric(["0"], 3)
    unlabelled = CounterFamily("lockstep_test_lean_records", "no labels")
    unlabelled.add_metric([], 7)
    unit = GaugeFamily("lockstep_test_lean_temperature", "with unit", unit="celsius")
    unit.add_metric([], 41.0)
    odd_label = GaugeFamily("lockstep_test_lean_odd", "a label name the fast path leaves to the library", ["__x"])
    odd_label.add_metric(["1"], 1.0)
    histogram = HistogramFamily("lockstep_test_lean_wait_seconds", "a histogram", ["job", "op"], ["0.001", "2.5", "+Inf"])
    histogram.add_metric(['j"1', "all_reduce"], [0, 3, 5], 7.25)
    histogram.add_metric(["j2", "barrier"], [0, 0, 0], 0.0)
    negative = HistogramFamily("lockstep_test_lean_offset", "a negative bucket: no _count, _sum", [], ["-1.0", "+Inf"])
    negative.add_metric([], [1, 2], -3.0)
    return [gauge, counter, unlabelled, unit, odd_label, histogram, negative]


def test_lean_families_hold_rows_not_samples() -> None:
    family = GaugeFamily("lockstep_test_rows", "rows", labels=["a"])
    with pytest.raises(TypeError, match="add_metric"):
        family.samples = [*family.samples, *GaugeFamily("other", "x").samples, None]  # type: ignore[list-item]
    with pytest.raises(ValueError, match="\\+Inf"):
        HistogramFamily("lockstep_test_h", "no +Inf", [], ["1.0"])
    with pytest.raises(ValueError, match="2 counts for 3 buckets"):
        HistogramFamily("lockstep_test_h", "h", [], ["1.0", "2.0", "+Inf"]).add_metric([], [1, 2], 0.0)


def library_families() -> list[Metric]:
    """Families built by prometheus_client's own metric classes: histograms, info, counters with _created."""
    registry = CollectorRegistry()
    Histogram("lockstep_test_latency_seconds", "histogram", registry=registry).observe(0.3)
    Info("lockstep_test_build", "info", registry=registry).info({"version": "1"})
    Counter("lockstep_test_requests", "counter", ["code"], registry=registry).labels("200").inc()
    ProcessCollector(registry=registry)
    return list(registry.collect())


def fixture_node_families() -> list[Metric]:
    network = NetworkCollector(SysfsNet(SYSFS_GPU_NODE))
    host = HostCollector(Procfs(PROCFS_GPU_NODE))
    return [*network.collect(), *host.collect()]


@pytest.mark.parametrize("families", [fixture_node_families, awkward_families, lean_families, library_families])
def test_fast_text_encoding_is_identical_to_prometheus_client(families) -> None:
    source = Frozen(families())
    assert encode_text(source) == exposition.generate_latest(source)  # type: ignore[arg-type]


@pytest.mark.parametrize("families", [fixture_node_families, awkward_families, lean_families, library_families])
def test_fast_openmetrics_encoding_is_identical_to_prometheus_client(families) -> None:
    source = Frozen(families())
    assert encode_openmetrics(source) == openmetrics.generate_latest(source)  # type: ignore[arg-type]


def test_a_series_is_written_anew_whenever_its_values_change_and_a_family_whenever_a_row_does() -> None:
    """The encoder reuses a family's lines while its rows stay the same, and a series' while its values do; every
    scrape must still be exact."""
    nan, inf = float("nan"), float("inf")
    for value in [1.5, 1.5, 2.0, 0.0, -0.0, -0.0, 0.0, 0, nan, nan, 1e6, 1e6, inf, -inf, 3, 3]:
        for other in (7.0, value):
            gauge = GaugeFamily("lockstep_test_changing", "changes between scrapes", labels=["a"])
            gauge.add_metric(["x"], value)
            gauge.add_metric(["y"], other)
            histogram = HistogramFamily("lockstep_test_changing_seconds", "changes too", ["a"], ["0.5", "+Inf"])
            histogram.add_metric(["x"], [0, 2], value)
            source = Frozen([gauge, histogram])
            assert encode_openmetrics(source) == openmetrics.generate_latest(source)  # type: ignore[arg-type]
            assert encode_text(source) == exposition.generate_latest(source)  # type: ignore[arg-type]


def test_a_zero_is_written_as_0_whatever_its_sign() -> None:
    gauge = GaugeFamily("lockstep_test_zero", "a zero that came out of float arithmetic", labels=["a"])
    gauge.add_metric(["x"], -1.0 * 0.0)
    histogram = HistogramFamily("lockstep_test_zero_seconds", "no observation", [], ["0.5", "+Inf"])
    histogram.add_metric([], [-0.0, -0.0], -0.0)
    text = encode_text(Frozen([gauge, histogram])).decode()
    assert "-0.0" not in text and 'lockstep_test_zero{a="x"} 0.0' in text and "lockstep_test_zero_seconds_sum 0.0" in text


def test_values_are_written_as_prometheus_client_writes_them() -> None:
    edges = [0.0, -0.0, 1.0, -1.0, 0.1, 5e-324, 999999.9999999999, 1e6, 1e6 + 0.5, 1234567.0, -1234567.0, 1e15]
    edges += [9999999999999998.0, 1e16, 1.5e16, 1e300, float("inf"), float("-inf"), float("nan"), 0, 7, True]
    bits = random.Random(2).getrandbits
    values = edges + [struct.unpack("<d", struct.pack("<Q", bits(64)))[0] for _ in range(20000)]
    values += [float(bits(64) >> (bits(6))) for _ in range(20000)]
    assert [go_float(v) for v in values] == [floatToGoString(v) for v in values]


def test_prometheus_servers_accept_header_gets_the_fast_openmetrics_encoder() -> None:
    prometheus_accept = (
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
        "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    encoder, content_type = negotiate(prometheus_accept)
    assert encoder is encode_openmetrics and content_type.startswith("application/openmetrics-text")
    assert negotiate("")[0] is encode_text
    dots, _ = negotiate("application/openmetrics-text;version=1.0.0;escaping=dots")
    assert dots not in (encode_text, encode_openmetrics), "other escapings go through prometheus_client"


ACCEPT_HEADERS = [
    "", "*/*", "text/plain", "text/plain;version=0.0.4", "text/plain;version=1.0.0",
    "text/plain; version=1.0.0; escaping=allow-utf-8", "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text", "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4",
    "application/openmetrics-text;version=1.0.0;escaping=dots", "application/openmetrics-text;version=2.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=bogus", "application/openmetrics-text; version=1.1",
]  # fmt: skip


@pytest.mark.parametrize("accept", ACCEPT_HEADERS)
def test_negotiation_picks_what_prometheus_client_picks(accept: str) -> None:
    encoder, content_type = negotiate(accept)
    library_encoder, library_content_type = exposition.choose_encoder(accept)
    assert content_type == library_content_type
    source = Frozen(awkward_families())
    assert encoder(source) == library_encoder(source)  # type: ignore[arg-type]


def test_without_prometheus_client_an_unusual_accept_gets_the_format_the_agent_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as in the agent process (agent/__main__.py)
    assert negotiate("application/openmetrics-text;version=2.0.0") == (encode_openmetrics, OPENMETRICS)
    assert negotiate("text/plain;version=1.0.0;escaping=dots") == (encode_text, TEXT)
