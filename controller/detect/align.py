"""Line up the collectives of many rank groups at once: sample arrays in, (groups x ranks x collectives) out.

For each group, the window is the last `samples_per_rank` sequence numbers that its ranks have all completed
(the lowest last sequence number among its ranks, leaving out ranks far behind the median — those are hang
suspects), restricted to collectives every kept rank has a sample for and, in a job issuing few collectives a
second, to those issued within `within_seconds` of the newest (at least `min_collectives` of them). Groups with the same number of kept
ranks are stacked into one 3-D array so that the straggler statistics run as a few numpy calls per cycle, not
per job: at 10,000 nodes that is the difference between seconds and a fraction of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter

import numpy as np

from controller.detect.ranks import RankGroup


@dataclass(frozen=True)
class Stack:
    """Groups with the same number of kept ranks and compared collectives, stacked."""

    groups: list[int]  # indices into the input sequence
    rows: np.ndarray  # (G, R) index of each kept rank in its group's `entries`
    arrival: np.ndarray  # (G, R, C) Unix s (agent clocks)
    wait: np.ndarray  # (G, R, C) s, nan where unknown
    first_seq: np.ndarray  # (G,) lowest sequence number of the window
    last_seq: np.ndarray  # (G,) highest
    seq: np.ndarray  # (G, C) sequence number of each compared collective
    clock: np.ndarray  # (G, C) its arrival at the group's first kept rank (Unix s, that agent's clock)
    ranks: np.ndarray  # (G, R) rank numbers
    node_codes: np.ndarray  # (G, R) index into `node_names`
    compute_gaps: np.ndarray  # (G, R) agents' compute gap p50 (s), nan where unknown
    node_names: list[str]


@dataclass(frozen=True)
class _Flat:
    seq: np.ndarray  # every sample of every rank, concatenated
    arrival: np.ndarray
    wait: np.ndarray
    lengths: np.ndarray  # samples per rank
    ranks: np.ndarray  # per rank (row): rank number, node code, compute gap
    node_codes: np.ndarray
    compute_gaps: np.ndarray
    node_names: list[str]


def _flatten(groups: Sequence[RankGroup], samples_per_rank: int) -> _Flat:
    """All ranks' recent samples, gathered from the columns decoded when their documents arrived: at 80,000
    ranks any per-rank or per-sample Python statement is the cost of the whole cycle, so the documents' arrays
    are joined once (a few per node) and every rank's last samples picked out of them by one index."""
    fields = [group.fields for group in groups]
    columns = list(chain.from_iterable(f.columns for f in fields))
    nodes = list(chain.from_iterable(f.nodes for f in fields))
    node_names = list(dict.fromkeys(nodes))
    code = {name: i for i, name in enumerate(node_names)}
    _, _, _, documents, first, last = zip(*columns, strict=True) if columns else ((),) * 6
    unique = list(dict.fromkeys(documents))
    number = {document: i for i, document in enumerate(unique)}
    sizes = np.fromiter((len(document.seq) for document in unique), np.int64, len(unique))
    offsets = np.cumsum(sizes) - sizes  # of each document in the joined arrays
    starts = np.fromiter(first, np.int64, len(columns))
    counts = np.fromiter(last, np.int64, len(columns)) - starts
    starts += offsets[np.fromiter(map(number.__getitem__, documents), np.int64, len(documents))]
    lengths = np.minimum(counts, samples_per_rank)
    total = int(lengths.sum())
    # Index of each kept sample in the joined arrays: a rank's last `lengths` samples, rank after rank.
    index = np.repeat(starts + counts - lengths - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
    return _Flat(
        seq=_concatenate([d.seq for d in unique], np.int64)[index],
        arrival=_concatenate([d.arrival for d in unique], np.float64)[index],
        wait=_concatenate([d.wait for d in unique], np.float64)[index],
        lengths=lengths,
        ranks=np.fromiter(chain.from_iterable(f.numbers for f in fields), np.int64, len(columns)),
        node_codes=np.fromiter(map(code.__getitem__, nodes), np.int64, len(nodes)),
        compute_gaps=np.array(list(chain.from_iterable(f.compute_gaps for f in fields)), dtype=np.float64),
        node_names=node_names,
    )


def _concatenate(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)


def align(
    groups: Sequence[RankGroup], samples_per_rank: int, min_collectives: int, within_seconds: float
) -> list[Stack]:
    """Stacks of aligned groups; groups with fewer than two comparable ranks or too few collectives are left
    out. `within_seconds`: compare only collectives issued this long before each group's newest one (s)."""
    if not groups:
        return []
    window = samples_per_rank
    flat = _flatten(groups, window)
    seq, arrival, wait, lengths = flat.seq, flat.arrival, flat.wait, flat.lengths
    ranks_per_group = np.fromiter(map(len, map(attrgetter("entries"), groups)), np.int64, len(groups))
    group_of_row = np.repeat(np.arange(len(groups)), ranks_per_group)
    group_start = np.concatenate(([0], np.cumsum(ranks_per_group)[:-1]))
    ends = np.cumsum(lengths)
    usable = lengths >= min_collectives
    last = np.where(usable, seq[np.maximum(ends - 1, 0)] if len(seq) else 0, -1)

    # Median last sequence number of each group's usable ranks (sort by group, then by last seq).
    order = np.lexsort((last, group_of_row))
    usable_count = np.add.reduceat(usable.astype(np.int64), group_start)
    unusable_count = ranks_per_group - usable_count
    median_pos = group_start + unusable_count + np.maximum(usable_count - 1, 0) // 2
    # A group without a usable rank: any of its rows (none of them is kept).
    median_pos = np.minimum(median_pos, group_start + ranks_per_group - 1)
    median_last = last[order[median_pos]]
    keep = usable & (last >= median_last[group_of_row] - window)
    kept_count = np.add.reduceat(keep.astype(np.int64), group_start)
    hi = np.minimum.reduceat(np.where(keep, last, np.iinfo(np.int64).max), group_start)
    lo = hi - window + 1

    row_of_sample = np.repeat(np.arange(len(lengths)), lengths)
    col = seq - lo[group_of_row[row_of_sample]]
    valid = keep[row_of_sample] & (col >= 0) & (col < window) & np.isfinite(arrival)  # junk is missing data
    shape = (len(lengths), window)
    if (lengths == window).all() and (col.reshape(shape) == np.arange(window)).all():
        # The usual cycle: every rank's samples are the window's collectives in order, already a matrix.
        arrival_matrix = np.where(valid, arrival, np.nan).reshape(shape)
        wait_matrix = np.where(valid & np.isfinite(wait), wait, np.nan).reshape(shape)
    else:
        arrival_matrix = np.full(shape, np.nan)
        wait_matrix = np.full(shape, np.nan)
        arrival_matrix[row_of_sample[valid], col[valid]] = arrival[valid]
        wait_matrix[row_of_sample[valid], col[valid]] = np.where(
            np.isfinite(wait[valid]), wait[valid], np.nan
        )
    present = ~np.isnan(arrival_matrix) | ~keep[:, None]
    complete = np.logical_and.reduceat(present, group_start, axis=0)  # (groups, window)

    kept_rows = np.flatnonzero(keep)
    if not len(kept_rows):
        return []
    kept_start = np.concatenate(([0], np.cumsum(kept_count)[:-1]))
    # Each group's clock of its collectives: the arrivals of its first kept rank (finite where complete).
    times = arrival_matrix[kept_rows[np.minimum(kept_start, len(kept_rows) - 1)]]  # (groups, window)
    newest = np.max(np.where(complete, times, -np.inf), axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        recent = times >= newest - within_seconds
    from_newest = np.cumsum(complete[:, ::-1], axis=1)[:, ::-1]  # complete columns at or after each one
    old = complete & ~(recent | (from_newest <= min_collectives))
    complete &= ~old
    # The window's first sequence number: `lo`, or the first one left after dropping the old collectives.
    lo = np.where(old.any(axis=1), lo + np.argmax(complete, axis=1), lo)
    by_shape: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for g in np.flatnonzero(kept_count >= 2):
        columns = np.flatnonzero(complete[g])
        if len(columns) >= min_collectives:
            by_shape.setdefault((int(kept_count[g]), len(columns)), []).append((int(g), columns))
    stacks = []
    for (ranks, _), members in by_shape.items():
        index = np.array([g for g, _ in members])
        rows = kept_rows[kept_start[index][:, None] + np.arange(ranks)[None, :]]  # (G, R) global rows
        columns = np.stack([c for _, c in members])[:, None, :]  # (G, 1, C)
        stacks.append(
            Stack(
                groups=[int(g) for g in index],
                rows=rows - group_start[index][:, None],
                arrival=np.take_along_axis(arrival_matrix[rows], columns, axis=2),
                wait=np.take_along_axis(wait_matrix[rows], columns, axis=2),
                first_seq=lo[index],
                last_seq=hi[index],
                seq=hi[index][:, None] - window + 1 + columns[:, 0, :],
                clock=np.take_along_axis(times[index], columns[:, 0, :], axis=1),
                ranks=flat.ranks[rows],
                node_codes=flat.node_codes[rows],
                compute_gaps=flat.compute_gaps[rows],
                node_names=flat.node_names,
            )
        )
    return stacks
