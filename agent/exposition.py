"""Encodes a scrape for `/metrics`: byte for byte what prometheus_client writes, several times faster.

prometheus_client escapes every metric and label name character by character on every sample, which costs more
than reading all the sysfs files of a scrape. Here a name is checked once (cached) and then written as is; only
label values and HELP texts are escaped. Anything unusual (histograms with _created, timestamps, exemplars, a name that needs
escaping, a non-default escaping scheme) goes through prometheus_client itself. Tests compare both outputs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.utils import floatToGoString

from agent.families import Family, HistogramFamily

_LEGACY_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_PLAIN_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8)  # identical output for legacy names
_FAST_TYPES = frozenset({"counter", "gauge", "unknown", "histogram"})
_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
}  # others: the name alone

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
    if metric.type not in _FAST_TYPES or not _legacy_name(metric.name):
        return None
    if isinstance(metric, Family):
        return _family_lines(metric)
    if isinstance(metric, HistogramFamily):
        return _histogram_lines(metric)
    expected = _sample_names(metric.name, metric.type)
    lines = []
    for sample in metric.samples:
        if (
            sample.name not in expected  # e.g. a counter's _created sample: the library places those
            or sample.timestamp is not None
            or sample.exemplar is not None
            or sample.native_histogram is not None
        ):
            return None
        prefix = _prefix(sample.name, tuple(sample.labels.items()))
        if not prefix:
            return None
        lines.append(f"{prefix}{floatToGoString(sample.value)}\n")
    return lines


def _family_lines(family: Family) -> list[str] | None:
    """A Family's rows as sample lines; the prefixes come from a cache per family name and label names."""
    prefixes = _family_prefixes(family.sample_name, family.label_names)
    if prefixes is None:
        return None
    lines = []
    for labels, value in family.rows:
        prefix = prefixes.get(labels)
        if prefix is None:
            if len(prefixes) >= MAX_PREFIXES_PER_FAMILY:  # series of ended jobs: start over rather than grow
                prefixes.clear()
            prefix = prefixes[labels] = _prefix.__wrapped__(
                family.sample_name, tuple(zip(family.label_names, labels, strict=True))
            )
        lines.append(f"{prefix}{floatToGoString(value)}\n")
    return lines


def _histogram_lines(family: HistogramFamily) -> list[str] | None:
    """A HistogramFamily's rows as sample lines: each series' buckets, then _count and _sum."""
    if float(family.le[0]) < 0:
        return None  # the library leaves out _count and _sum then: let it write the family
    table = _histogram_table(family.name, family.label_names, family.le)
    if table is None:
        return None
    lines: list[str] = []
    for labels, counts, sum_value in family.rows:
        series = table.get(labels)
        if series is None:
            if len(table) >= MAX_PREFIXES_PER_FAMILY:
                table.clear()
            series = table[labels] = _histogram_prefixes(family, labels)
        *buckets, count, total = series
        lines.extend(
            f"{prefix}{floatToGoString(value)}\n" for prefix, value in zip(buckets, counts, strict=True)
        )
        lines.append(f"{count}{floatToGoString(counts[-1])}\n")
        lines.append(f"{total}{floatToGoString(sum_value)}\n")
    return lines


def _histogram_prefixes(family: HistogramFamily, labels: tuple[str, ...]) -> tuple[str, ...]:
    """The prefixes of one histogram series: each bucket's, then _count's and _sum's."""
    named = tuple(zip(family.label_names, labels, strict=True))
    prefix = _prefix.__wrapped__
    buckets = [prefix(family.name + "_bucket", (*named, ("le", le))) for le in family.le]
    return (*buckets, prefix(family.name + "_count", named), prefix(family.name + "_sum", named))


@functools.lru_cache(maxsize=1024)
def _histogram_table(
    name: str, label_names: tuple[str, ...], le: tuple[str, ...]
) -> dict[tuple[str, ...], tuple[str, ...]] | None:
    """label values -> the series' prefixes (filled by `_histogram_lines`); None if a label name needs escaping."""
    if not all(_legacy_label(label) for label in (*label_names, "le")):
        return None
    return {}


MAX_PREFIXES_PER_FAMILY = 16384


@functools.lru_cache(maxsize=4096)
def _family_prefixes(sample_name: str, label_names: tuple[str, ...]) -> dict[tuple[str, ...], str] | None:
    """label values -> `name{labels} ` for one family (filled by `_family_lines`); None if a label name needs
    escaping (the library writes those)."""
    if not all(_legacy_label(name) for name in label_names):
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
def _sample_names(name: str, kind: str) -> frozenset[str]:
    """The sample names a family of this type writes without the library's help (no _created, no _gsum)."""
    return frozenset(name + suffix for suffix in _SAMPLE_SUFFIXES.get(kind, ("",)))


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
