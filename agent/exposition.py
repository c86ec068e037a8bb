"""Encodes a scrape for `/metrics`: byte for byte what prometheus_client writes, several times faster.

prometheus_client escapes every metric and label name character by character on every sample, which costs more
than reading all the sysfs files of a scrape. Here a name is checked once (cached) and then written as is; only
label values and HELP texts are escaped; the agent's own families (`agent.families`) are written from their rows,
and a series whose values did not change since the last scrape is written with the lines it had then (most of a
node's ~1,400 series: limits, states, error counters at zero). Anything unusual (library histograms, timestamps,
exemplars, a name that needs escaping, a non-default escaping scheme) goes through prometheus_client itself.
Tests compare both outputs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from math import copysign
from typing import Protocol

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

from agent.families import Layout, RowFamily

_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PLAIN_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8)  # identical output for legacy names
_FAST_TYPES = frozenset({"counter", "gauge", "unknown"})

Encoder = Callable[["MetricSource"], bytes]


class MetricSource(Protocol):
    def collect(self) -> Iterable[Metric]: ...


def negotiate(accept: str) -> tuple[Encoder, str]:
    """The encoder and content type for an Accept header (prometheus_client's negotiation)."""
    encoder, content_type = exposition.choose_encoder(accept)
    func = getattr(encoder, "func", encoder)
    keywords = getattr(encoder, "keywords", {})
    if (
        keywords.get("escaping", openmetrics.UNDERSCORES) in _PLAIN_ESCAPINGS
        and keywords.get("version", "1.0.0") == "1.0.0"
    ):
        if func is exposition.generate_latest:
            return encode_text, content_type
        if func is openmetrics.generate_latest:
            return encode_openmetrics, content_type
    return encoder, content_type


def encode_text(source: MetricSource) -> bytes:
    """Prometheus text format 0.0.4."""
    output: list[str] = []
    for metric in source.collect():
        lines = _plain_lines(metric)
        if lines is None:
            output.append(exposition.generate_latest(_One(metric)).decode())
            continue
        exposed = metric.name + "_total" if metric.type == "counter" else metric.name
        kind = "untyped" if metric.type == "unknown" else metric.type
        help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        output.append(f"# HELP {exposed} {help_text}\n# TYPE {exposed} {kind}\n")
        output.extend(lines)
    return "".join(output).encode()


def encode_openmetrics(source: MetricSource) -> bytes:
    """OpenMetrics 1.0.0."""
    output: list[str] = []
    for metric in source.collect():
        lines = _plain_lines(metric)
        if lines is None:
            output.append(openmetrics.generate_latest(_One(metric)).decode().removesuffix("# EOF\n"))
            continue
        output.append(
            f"# HELP {metric.name} {_escape(metric.documentation)}\n# TYPE {metric.name} {metric.type}\n"
        )
        if metric.unit:
            output.append(f"# UNIT {metric.name} {metric.unit}\n")
        output.extend(lines)
    output.append("# EOF\n")
    return "".join(output).encode()


def _plain_lines(metric: Metric) -> list[str] | None:
    """The family's sample lines written directly, or None where that would not be exactly prometheus_client's
    output (leave it to the library)."""
    if not _legacy_name(metric.name):
        return None
    if isinstance(metric, RowFamily):
        return _row_lines(metric)
    if metric.type not in _FAST_TYPES:
        return None
    expected = metric.name + "_total" if metric.type == "counter" else metric.name
    lines = []
    for sample in metric.samples:
        if (
            sample.name != expected  # e.g. a counter's _created sample: the library places those
            or sample.timestamp is not None
            or sample.exemplar is not None
            or sample.native_histogram is not None
        ):
            return None
        prefix = _prefix(sample.name, tuple(sample.labels.items()))
        if not prefix:
            return None
        lines.append(f"{prefix}{go_float(sample.value)}\n")
    return lines


def _row_lines(family: RowFamily) -> list[str] | None:
    """A RowFamily's rows as sample lines. Per family a cache holds each series' `name{labels} ` prefixes, and the
    lines last written with the values they were written for: a series whose values are the same again (equal,
    and zeros of the same sign: 0.0 == -0.0 but "-0.0" is written) gets those lines again."""
    table = _series_table(family.label_names, family.layout)
    if table is None:
        return None
    lines: list[str] = []
    append = lines.append
    single = len(family.layout) == 1  # gauges and counters: one value, compared without a generator
    for labels, values in family.rows:
        series = table.get(labels)
        if series is not None:
            before = series[1]
            if single:
                value, last = values[0], before[0]
                same = value == last and (value or copysign(1.0, value) == copysign(1.0, last))
            else:
                same = values == before and (0.0 not in values or _signs(values) == _signs(before))
            if same:
                append(series[2])
                continue
            prefixes = series[0]
        else:
            if len(table) >= MAX_SERIES_PER_FAMILY:  # series of ended jobs: start over rather than grow
                table.clear()
            named = tuple(zip(family.label_names, labels, strict=True))
            prefixes = tuple(_prefix.__wrapped__(name, (*named, *extra)) for name, extra in family.layout)
        if single:
            text = f"{prefixes[0]}{go_float(values[0])}\n"
        else:
            text = "".join([f"{prefix}{go_float(value)}\n" for prefix, value in zip(prefixes, values, strict=True)])
        table[labels] = (prefixes, tuple(values), text)  # one assignment: a concurrent scrape sees old or new
        append(text)
    return lines


def _signs(values: Sequence[float]) -> list[float]:
    return [copysign(1.0, value) for value in values]


def go_float(value: float) -> str:
    """prometheus_client's floatToGoString, the same text in less time: Python's shortest repr, written with an
    exponent from 1e6 up as Go writes it ("1.234567e+06"; Python switches at 1e16), and +Inf, -Inf, NaN."""
    value = float(value)
    if 1e6 <= value < 1e16:
        text = repr(value)
        dot = text.find(".")
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if value - value == 0:  # finite
        return repr(value)
    return _NOT_FINITE[repr(value)]


_NOT_FINITE = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}
MAX_SERIES_PER_FAMILY = 16384
_Series = tuple[tuple[str, ...], tuple[float, ...], str]  # prefixes of its samples, values last written, their lines


@functools.lru_cache(maxsize=4096)
def _series_table(label_names: tuple[str, ...], layout: Layout) -> dict[tuple[str, ...], _Series] | None:
    """label values -> a series' `name{labels} ` prefixes of its samples, its last values and their lines, for one
    family (filled by `_row_lines`); None if a label name needs escaping (the library writes those)."""
    extra = [label for _, labels in layout for label, _ in labels]
    if not all(_legacy_label(label) for label in (*label_names, *extra)):
        return None
    return {}


@functools.lru_cache(maxsize=16384)  # the series of one scrape are a few thousand
def _prefix(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """`name{labels} ` of a sample, "" if a label name needs escaping. Cached: the same series recur every scrape,
    and sorting and escaping their labels cost more than the rest of the line."""
    if not all(_legacy_label(k) for k, _ in labels):
        return ""
    if labels:
        return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels)) + "} "
    return name + " "


@functools.lru_cache(maxsize=4096)
def _legacy_name(name: str) -> bool:
    return _LEGACY_NAME.match(name) is not None


@functools.lru_cache(maxsize=1024)
def _legacy_label(name: str) -> bool:
    return _LEGACY_LABEL.match(name) is not None and not name.startswith("__")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _One:
    """One family as a registry, for prometheus_client's encoders."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]
