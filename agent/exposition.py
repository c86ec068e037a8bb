"""Encodes a scrape for `/metrics`: byte for byte what prometheus_client writes, several times faster.

prometheus_client escapes every metric and label name character by character on every sample, which costs more
than reading all the sysfs files of a scrape. Here a name is checked once (cached) and then written as is; only
label values and HELP texts are escaped; the agent's own families (`agent.families`) are written from their rows,
and a series whose values did not change since the last scrape is written with the lines it had then (most of a
node's ~1,400 series: limits, states, error counters at zero). Anything unusual (a library histogram, timestamps,
exemplars, a name that needs escaping, an escaping scheme or format version other than the usual) is left to
prometheus_client, imported only then: the agent's own families never need it, and the agent process does not load
the library (agent/families.py). Tests compare both outputs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence

from agent.families import Layout, MetricFamily, MetricSource, Row, RowFamily, legacy_name

_LEGACY_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ESCAPINGS = frozenset({"allow-utf-8", "underscores", "dots", "values"})  # any other is taken as underscores
_PLAIN_ESCAPINGS = ("underscores", "allow-utf-8")  # identical output for legacy names
_FAST_TYPES = frozenset({"counter", "gauge", "unknown"})
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
TEXT_1 = "text/plain; version=1.0.0; charset=utf-8"

Encoder = Callable[[MetricSource], bytes]


def negotiate(accept: str) -> tuple[Encoder, str]:
    """The encoder and content type for an Accept header: prometheus_client's choice (the first OpenMetrics or
    text/plain of version >= 1.0.0 listed, else text 0.0.4), with the same content types."""
    for accepted in accept.split(","):
        media, *parameters = (token.strip() for token in accepted.split(";"))
        if media not in ("application/openmetrics-text", "text/plain"):
            continue
        options: dict[str, str] = {}
        for key, _, value in (parameter.partition("=") for parameter in parameters if "=" in parameter):
            options.setdefault(key, value)
        version, escaping = options.get("version", ""), options.get("escaping", "underscores")
        escaping = escaping if escaping in _ESCAPINGS else "underscores"
        if media == "application/openmetrics-text" and not version:
            return encode_openmetrics, OPENMETRICS
        if not version or _version(version) < (1, 0, 0):
            continue
        if escaping not in _PLAIN_ESCAPINGS or (media == "application/openmetrics-text" and version != "1.0.0"):
            return _library_encoder(media, version, escaping)
        if media == "application/openmetrics-text":
            return encode_openmetrics, f"{OPENMETRICS}; escaping={escaping}"
        return encode_text, f"{TEXT_1}; escaping={escaping}"
    return encode_text, TEXT


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


def _library_encoder(media: str, version: str, escaping: str) -> tuple[Encoder, str]:
    """prometheus_client's encoder for an escaping or version the fast encoders do not write; where the library is
    left out (the agent process), the format the fast encoders write instead: a server answers what it has."""
    try:
        from prometheus_client import exposition  # noqa: PLC0415 - see the module docstring
    except ImportError:
        return (encode_openmetrics, OPENMETRICS) if media == "application/openmetrics-text" else (encode_text, TEXT)
    encoder, content_type = exposition.choose_encoder(f"{media};version={version};escaping={escaping}")
    return encoder, content_type  # type: ignore[return-value]  # takes any collect()-able source


def encode_text(source: MetricSource) -> bytes:
    """Prometheus text format 0.0.4."""
    output: list[str] = []
    for metric in source.collect():
        lines = _plain_lines(metric)
        if lines is None:
            output.append(_library_text(metric))
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
            output.append(_library_openmetrics(metric))
            continue
        output.append(
            f"# HELP {metric.name} {_escape(metric.documentation)}\n# TYPE {metric.name} {metric.type}\n"
        )
        if metric.unit:
            output.append(f"# UNIT {metric.name} {metric.unit}\n")
        output.extend(lines)
    output.append("# EOF\n")
    return "".join(output).encode()


def _library_text(metric: MetricFamily) -> str:
    from prometheus_client import exposition  # noqa: PLC0415 - see the module docstring

    return exposition.generate_latest(_One(metric)).decode()  # type: ignore[arg-type]


def _library_openmetrics(metric: MetricFamily) -> str:
    from prometheus_client.openmetrics import exposition  # noqa: PLC0415 - see the module docstring

    return exposition.generate_latest(_One(metric)).decode().removesuffix("# EOF\n")


def _plain_lines(metric: MetricFamily) -> list[str] | None:
    """The family's sample lines written directly, or None where that would not be exactly prometheus_client's
    output (leave it to the library)."""
    if not legacy_name(metric.name):
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
    """A RowFamily's rows as sample lines, from what was written for the family last time where the rows are the
    same (rows of floats with one text per value: `agent.families`): all of its lines if every row is, else each
    series' lines if its values are, else a new line with the series' cached `name{labels} ` prefix."""
    written = _written(family.label_names, family.layout)
    if written is None:
        return None
    last = written.last
    if last is not None and family.rows == last[0]:
        return last[1]
    series = written.series
    lines: list[str] = []
    append = lines.append
    single = len(family.layout) == 1  # gauges and counters: a line per series without a generator
    for labels, values in family.rows:
        known = series.get(labels)
        if known is not None:
            if values == known[1]:
                append(known[2])
                continue
            prefixes = known[0]
        else:
            if len(series) >= MAX_SERIES_PER_FAMILY:  # series of ended jobs: start over rather than grow
                series.clear()
            named = tuple(zip(family.label_names, labels, strict=True))
            prefixes = tuple(_prefix.__wrapped__(name, (*named, *extra)) for name, extra in family.layout)
        if single:
            text = f"{prefixes[0]}{go_float(values[0])}\n"
        else:
            text = "".join([f"{prefix}{go_float(value)}\n" for prefix, value in zip(prefixes, values, strict=True)])
        series[labels] = (prefixes, values, text)  # one assignment: a concurrent scrape sees old or new
        append(text)
    written.last = (list(family.rows), lines)  # a copy: rows appended to this family later are no match
    return lines


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


class _Written:
    """What was written for one family: per series (label values) its `name{labels} ` prefixes, values and lines,
    and the family's rows and lines of the last scrape."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, ...], tuple[tuple[str, ...], Sequence[float], str]] = {}
        self.last: tuple[list[Row], list[str]] | None = None  # replaced as a whole: concurrent scrapes see one


@functools.lru_cache(maxsize=4096)
def _written(label_names: tuple[str, ...], layout: Layout) -> _Written | None:
    """What was written for the family of these label names and samples (filled by `_row_lines`); None if a label
    name needs escaping (the library writes those)."""
    extra = [label for _, labels in layout for label, _ in labels]
    if not all(_legacy_label(label) for label in (*label_names, *extra)):
        return None
    return _Written()


@functools.lru_cache(maxsize=16384)  # the series of one scrape are a few thousand
def _prefix(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    """`name{labels} ` of a sample, "" if a label name needs escaping. Cached: the same series recur every scrape,
    and sorting and escaping their labels cost more than the rest of the line."""
    if not all(_legacy_label(k) for k, _ in labels):
        return ""
    if labels:
        return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels)) + "} "
    return name + " "


@functools.lru_cache(maxsize=1024)
def _legacy_label(name: str) -> bool:
    return _LEGACY_LABEL.match(name) is not None and not name.startswith("__")


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _One:
    """One family as a registry, for prometheus_client's encoders."""

    def __init__(self, metric: MetricFamily) -> None:
        self._metric = metric

    def collect(self) -> Iterable[MetricFamily]:
        return [self._metric]
