"""Gauge and counter families for the collectors, kept as rows of (label values, value) until they are written.

They are prometheus_client `Metric`s (same names, types, help, samples; `add_metric(labels, value)` as in
GaugeMetricFamily and CounterMetricFamily), so the library and the tests read them as usual. What they save is
the per-sample work a scrape of ~1,400 series repeats every second: prometheus_client builds a `Sample` with a
label dict for every series, and the encoder takes it apart again. Here `add_metric` appends one tuple, and
`agent.exposition` writes the rows directly, with each series' `name{labels} ` prefix cached across scrapes.
`samples` is built on demand for everyone else.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

Row = tuple[tuple[str, ...], float]


class Family(Metric):
    """A family of one sample per series: gauge (`sample_suffix` "") or counter ("_total")."""

    kind = "gauge"
    sample_suffix = ""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), unit: str = "") -> None:
        super().__init__(name, documentation, self.kind, unit)
        self.label_names = tuple(labels)
        self.sample_name = self.name + self.sample_suffix
        self.rows: list[Row] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        """One series: its label values, in the order of the family's label names, and its value."""
        self.rows.append((tuple(labels), value))

    @property  # a view of `rows` where Metric has a plain list
    def samples(self) -> list[Sample]:
        names = self.label_names
        return [
            Sample(self.sample_name, dict(zip(names, labels, strict=True)), value)
            for labels, value in self.rows
        ]

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        if samples:  # Metric.__init__ assigns [] once; anything else would be lost silently
            raise TypeError(f"{type(self).__name__} keeps rows: add samples with add_metric")


class GaugeFamily(Family):
    kind = "gauge"


class CounterFamily(Family):
    """A counter; like CounterMetricFamily, a name given with `_total` loses it, and samples are `<name>_total`."""

    kind = "counter"
    sample_suffix = "_total"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = (), unit: str = "") -> None:
        super().__init__(name.removesuffix("_total"), documentation, labels, unit)


class HistogramFamily(Metric):
    """A histogram family: per series the cumulative counts of fixed buckets (upper bounds `le`, as written,
    "+Inf" last) and the sum of the observations, kept as rows like `Family`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str], le: Sequence[str]) -> None:
        super().__init__(name, documentation, "histogram")
        if not le or le[-1] != "+Inf":
            raise ValueError(f"histogram {name}: the last bucket must be +Inf, got {list(le)}")
        self.label_names = tuple(labels)
        self.le = tuple(le)
        self.rows: list[tuple[tuple[str, ...], Sequence[float], float]] = []

    def add_metric(self, labels: Sequence[str], cumulative_counts: Sequence[float], sum_value: float) -> None:
        """One series: label values, the count at or below each bound (the +Inf one is the total), the sum."""
        if len(cumulative_counts) != len(self.le):
            raise ValueError(
                f"histogram {self.name}: {len(cumulative_counts)} counts for {len(self.le)} buckets"
            )
        self.rows.append((tuple(labels), cumulative_counts, sum_value))

    @property  # the samples prometheus_client's HistogramMetricFamily would hold
    def samples(self) -> list[Sample]:
        samples: list[Sample] = []
        with_sum = float(self.le[0]) >= 0  # the library leaves out _count and _sum after a negative bucket
        for labels, counts, sum_value in self.rows:
            named = dict(zip(self.label_names, labels, strict=True))
            samples.extend(
                Sample(self.name + "_bucket", {**named, "le": le}, count)
                for le, count in zip(self.le, counts, strict=True)
            )
            if with_sum:
                samples.append(Sample(self.name + "_count", named, counts[-1]))
                samples.append(Sample(self.name + "_sum", named, sum_value))
        return samples

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        if samples:
            raise TypeError(f"{type(self).__name__} keeps rows: add samples with add_metric")
