"""Gauge, counter and histogram families for the collectors, kept as rows until they are written.

They look like prometheus_client's `Metric` (name, documentation, type, unit, samples; `add_metric` as in
GaugeMetricFamily, CounterMetricFamily and HistogramMetricFamily), so tests read them as usual, but the agent does
not import prometheus_client at all: the library's package loads its push-gateway and TLS-server modules, and with
them OpenSSL (~4.8 MB of the agent's RSS; see agent/__main__.py). What they save is the per-sample work a scrape of
~1,400 series repeats every second: prometheus_client builds a `Sample` with a label dict for every sample, and the
encoder takes it apart again. Here `add_metric` appends one row (label values, and the values of the series' samples
in the order of `layout`), and `agent.exposition` writes the rows directly, with each series' `name{labels} `
prefixes cached across scrapes. `samples` is built on demand for everyone else.

Values are kept as floats, a zero always as 0.0 (`value + 0.0` turns -0.0 into 0.0; Prometheus reads both as the
same zero): equal rows then always have the same text, so the encoder can reuse a family's lines.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

Layout = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # per sample of a series: its name, its extra labels
Row = tuple[tuple[str, ...], Sequence[float]]  # label values, the values of the series' samples

METRIC_TYPES = frozenset({"counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"})
_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")  # a name written as is, in every format and escaping


class Sample(NamedTuple):
    """One sample, as prometheus_client's `Sample` (equal to it field for field)."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: Any = None
    exemplar: Any = None
    native_histogram: Any = None


class MetricFamily(Protocol):
    """What the agent's collectors return and its encoder writes: a family of samples (prometheus_client's
    `Metric` has this shape too, so tests may hand in the library's families)."""

    @property
    def name(self) -> str: ...
    @property
    def documentation(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def samples(self) -> Sequence[Any]: ...


class MetricSource(Protocol):
    """A collector, or a registry of them."""

    def collect(self) -> Iterable[MetricFamily]: ...


@functools.lru_cache(maxsize=4096)
def legacy_name(name: str) -> bool:
    """True if `name` is a metric name of the classic character set (no escaping needed anywhere)."""
    return _LEGACY_NAME.match(name) is not None


@functools.lru_cache(maxsize=4096)
def _checked_name(name: str, kind: str, unit: str) -> tuple[str, str]:
    """The family's name (with its unit appended, as prometheus_client does) and type, checked once per family."""
    if unit and not name.endswith("_" + unit):
        name += "_" + unit
    if not legacy_name(name):
        raise ValueError(f"invalid metric name {name!r}")
    kind = "unknown" if kind == "untyped" else kind
    if kind not in METRIC_TYPES:
        raise ValueError(f"invalid metric type {kind!r}")
    return name, kind


class SampleFamily:
    """A family that holds its samples as a list (e.g. two collectors' families of one name, merged)."""

    def __init__(self, name: str, documentation: str, kind: str, unit: str = "") -> None:
        self.name, self.type = _checked_name(name, kind, unit)
        self.documentation = documentation
        self.unit = unit
        self.samples: list[Any] = []


class RowFamily:
    """A family whose series all have the samples of `layout`; `rows` holds one row per series."""

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str], unit: str = "") -> None:
        self.name, self.type = _checked_name(name, kind, unit)
        self.documentation = documentation
        self.unit = unit
        self.label_names = tuple(labels)
        self.layout: Layout = ()
        self.rows: list[Row] = []

    @property  # a view of `rows` where prometheus_client's Metric has a plain list
    def samples(self) -> list[Sample]:
        samples: list[Sample] = []
        for labels, values in self.rows:
            named = dict(zip(self.label_names, labels, strict=True))
            samples.extend(
                Sample(name, {**named, **dict(extra)} if extra else named, value)
                for (name, extra), value in zip(self.layout, values, strict=True)
            )
        return samples

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        raise TypeError(f"{type(self).__name__} keeps rows: add samples with add_metric")


class Family(RowFamily):
    """A family of one sample per series: gauge, or counter (`sample_suffix` "_total")."""

    kind = "gauge"
    sample_suffix = ""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), unit: str = "") -> None:
        super().__init__(name, documentation, self.kind, labels, unit)
        self.layout = ((self.name + self.sample_suffix, ()),)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """One series: its label values, in the order of the family's label names, and its value."""
        self.rows.append((tuple(labels), (value + 0.0,)))

    def add_metrics_by_key(self, labels: tuple[str, ...], values: dict[str, int]) -> None:
        """One series per item of `values`: label values `labels` and the item's key last, and the item's value
        (a port's hundreds of counters, without a call per counter)."""
        self.rows.extend([((*labels, key), (value + 0.0,)) for key, value in values.items()])


class GaugeFamily(Family):
    """A gauge."""


class CounterFamily(Family):
    """A counter; like CounterMetricFamily, a name given with `_total` loses it, and samples are `<name>_total`."""

    kind = "counter"
    sample_suffix = "_total"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), unit: str = "") -> None:
        super().__init__(name.removesuffix("_total"), documentation, labels, unit)


class HistogramFamily(RowFamily):
    """A histogram: per series the cumulative counts of fixed buckets (upper bounds `le`, as written, "+Inf"
    last) and the sum of the observations. Like HistogramMetricFamily, no _count and _sum after a negative bound."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], le: Sequence[str]) -> None:
        super().__init__(name, documentation, "histogram", labels)
        if not le or le[-1] != "+Inf":
            raise ValueError(f"histogram {name}: the last bucket must be +Inf, got {list(le)}")
        self.le = tuple(le)
        self._with_sum = float(le[0]) >= 0
        buckets = tuple((self.name + "_bucket", (("le", bound),)) for bound in self.le)
        self.layout = (*buckets, (self.name + "_count", ()), (self.name + "_sum", ())) if self._with_sum else buckets

    def add_metric(self, labels: Sequence[str], cumulative_counts: Sequence[float], sum_value: float) -> None:
        """One series: label values, the count at or below each bound (the +Inf one is the total), the sum."""
        if len(cumulative_counts) != len(self.le):
            raise ValueError(f"histogram {self.name}: {len(cumulative_counts)} counts for {len(self.le)} buckets")
        counts = [count + 0.0 for count in cumulative_counts]
        values = (*counts, counts[-1], sum_value + 0.0) if self._with_sum else tuple(counts)
        self.rows.append((tuple(labels), values))
