"""Collective samples of an evidence document as numpy columns, decoded once per document and remembered.

The fetcher decodes each document as it arrives and keeps only the columns (`without_samples`); the detection
cycle then reads the columns instead of millions of sample objects: at 10,000 nodes that read was most of a
cycle, and the sample objects most of the controller's memory. A document that
was not decoded before (tests, the simulator) is decoded on first use. Columns live as long as the document.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from agent.evidence import Evidence


@dataclass(frozen=True, eq=False)
class DocumentColumns:
    """Every sample of one document, rank after rank (one object per document: compared by identity)."""

    seq: np.ndarray  # int64
    arrival: np.ndarray  # float64, Unix s (agent clock)
    wait: np.ndarray  # float64, s, nan where unknown


class RankColumns(NamedTuple):
    """One rank's samples in the agent's order: views into its document's arrays, and where they sit there
    (so a cycle can gather many ranks' samples from a few document arrays at once). A tuple: a cycle unpacks
    80,000 of them at C speed."""

    seq: np.ndarray  # int64
    arrival: np.ndarray  # float64, Unix s (agent clock)
    wait: np.ndarray  # float64, s, nan where unknown
    document: DocumentColumns
    start: int  # index of the rank's first sample in `document`
    stop: int  # ... and one past its last


_decoded: dict[int, tuple[weakref.ref[Evidence], tuple[RankColumns, ...]]] = {}


def sample_columns(document: Evidence) -> tuple[RankColumns, ...]:
    """Columns of each of `document.ranks`, in that order; decoded on the first call for this document."""
    key = id(document)
    known = _decoded.get(key)
    if known is not None and known[0]() is document:
        return known[1]
    return _remember(document, _decode(document))


def without_samples(document: Evidence) -> Evidence:
    """The document with its ranks' samples kept only as columns (registered for the copy): the sample
    objects are most of a document's memory, and detection reads only the columns."""
    columns = sample_columns(document)
    lean = document.model_copy(
        update={"ranks": [rank.model_copy(update={"samples": []}) for rank in document.ranks]}
    )
    _remember(lean, columns)
    return lean


def _remember(document: Evidence, columns: tuple[RankColumns, ...]) -> tuple[RankColumns, ...]:
    """Keep `columns` for as long as `document` lives."""
    key = id(document)
    _decoded[key] = (weakref.ref(document, lambda _: _decoded.pop(key, None)), columns)
    return columns


def _decode(document: Evidence) -> tuple[RankColumns, ...]:
    samples = [sample for rank in document.ranks for sample in rank.samples]
    count = len(samples)
    seq = np.fromiter(map(attrgetter("seq"), samples), np.int64, count)
    arrival = np.fromiter(map(attrgetter("arrival"), samples), np.float64, count)
    wait = np.array(list(map(attrgetter("wait_seconds"), samples)), dtype=np.float64).reshape(
        count
    )  # None -> nan
    ends = np.cumsum([len(rank.samples) for rank in document.ranks], dtype=np.int64)
    starts = ends - [len(rank.samples) for rank in document.ranks]
    whole = DocumentColumns(seq, arrival, wait)
    return tuple(
        RankColumns(seq[a:b], arrival[a:b], wait[a:b], whole, a, b)
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    )
