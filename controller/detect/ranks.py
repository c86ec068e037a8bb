"""Ranks of every job, gathered from all nodes' evidence and lined up as arrays for the detectors.

A rank group is one process group of one job: the unit inside which collectives are numbered and where every
rank must take part in every collective. (align.py lines their samples up for the straggler statistics.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import repeat
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from agent.evidence import Evidence, RankEvidence
from controller.detect.columns import RankColumns, sample_columns

JobKey = tuple[str, str]
"""(namespace, job name): two namespaces may run jobs of the same name."""


class RankEntry(NamedTuple):
    """One rank as reported by the agent of the node it runs on (a tuple: 80,000 are made every cycle)."""

    node: str
    rank: RankEvidence
    collected_at: float  # the reporting document's time, agent clock (s)
    columns: RankColumns  # the rank's samples as arrays


_GROUP_KEY = attrgetter("namespace", "job", "process_group")
_NUMBER = attrgetter("rank")
_new_entry = partial(tuple.__new__, RankEntry)  # RankEntry from a 4-tuple, without a Python-level call


class RankFields(NamedTuple):
    """A group's ranks as one tuple per field, in the order of its entries: the fields the cycle reads of
    every rank, read once (at 80,000 ranks each pass over the rank objects costs ~10 ms)."""

    nodes: tuple[str, ...]
    columns: tuple[RankColumns, ...]
    numbers: tuple[int, ...]
    pids: tuple[int, ...]
    world_sizes: tuple[int, ...]
    last_seqs: tuple[int, ...]
    pending_seqs: tuple[int | None, ...]
    step_periods: tuple[float | None, ...]  # s
    wait_p50s: tuple[float | None, ...]  # s
    compute_gaps: tuple[float | None, ...]  # s


_FIELDS = attrgetter(
    "rank",
    "pid",
    "world_size",
    "last_seq",
    "pending_seq",
    "step_period_seconds",
    "wait_seconds_p50",
    "compute_gap_seconds_p50",
)  # of a RankEvidence, in the order of RankFields after `columns`


@dataclass
class RankGroup:
    """The ranks of one process group of one job that reported this cycle, ordered by rank."""

    job: JobKey
    process_group: str
    entries: list[RankEntry]

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({entry.node for entry in self.entries}))

    @cached_property
    def fields(self) -> RankFields:
        """The entries' fields as columns (read on first use: the entries must not change after it)."""
        if not self.entries:
            return RankFields(*((),) * len(RankFields._fields))
        nodes, ranks, _, columns = zip(*self.entries, strict=True)
        return RankFields(nodes, columns, *zip(*map(_FIELDS, ranks), strict=True))


def group_ranks(evidence: Mapping[str, Evidence]) -> dict[JobKey, dict[str, RankGroup]]:
    """Job -> process group -> group of ranks in rank order. A rank reported twice (a pod moved) keeps the
    newest report."""
    ranks: dict[tuple[str, str, str], dict[int, RankEntry]] = {}  # (namespace, job, process group) -> ranks
    for node, document in evidence.items():
        collected_at = document.collected_at
        keys = list(map(_GROUP_KEY, document.ranks))
        if not keys:
            continue
        numbers = list(map(_NUMBER, document.ranks))
        entries = list(
            map(_new_entry, zip(repeat(node), document.ranks, repeat(collected_at), sample_columns(document)))
        )
        group = ranks.setdefault(keys[0], {})
        if keys.count(keys[0]) == len(keys) == len(set(numbers)) and group.keys().isdisjoint(numbers):
            group.update(zip(numbers, entries, strict=True))  # the usual document: one group, each rank once
            continue
        for key, number, entry in zip(keys, numbers, entries, strict=True):
            group = ranks.setdefault(key, {})
            known = group.get(number)
            if known is None or collected_at > known.collected_at:
                group[number] = entry
    jobs: dict[JobKey, dict[str, RankGroup]] = {}
    for (namespace, job, name), entries_by_rank in ranks.items():
        jobs.setdefault((namespace, job), {})[name] = RankGroup(
            (namespace, job), name, list(map(entries_by_rank.__getitem__, sorted(entries_by_rank)))
        )
    return {job: dict(sorted(groups.items())) for job, groups in jobs.items()}


def estimate_step_period(group: RankGroup) -> float | None:
    """The group's step period (s): the agents' own estimate, but never below the mean time between two
    collectives of a rank (a step holds at least one collective). The agent finds the step as the repeat of
    the (op, bytes) pattern, which collapses to one bucket when every bucket has the same size; the floor
    catches that (it is then a lower bound: thresholds relative to the step get stricter, never looser in
    time for hangs, which are clamped to at least `hang_min_seconds`)."""
    floors = [gap for entry in group.entries[:3] if (gap := _mean_gap(entry.columns.arrival)) is not None]
    reported = [step for step in group.fields.step_periods if step]
    floor = median(floors) if floors else None
    step = median(reported) if reported else None
    if step is None or (floor is not None and floor > step):
        return floor
    return step


def _mean_gap(arrival: np.ndarray, min_samples: int = 4) -> float | None:
    """Mean time between successive collectives of one rank (s), from its samples' arrival times."""
    if len(arrival) < min_samples:
        return None
    span = float(arrival[-1]) - float(arrival[0])
    return span / (len(arrival) - 1) if span > 0 else None


def median(values: list[float]) -> float:
    """`np.median` of a short list of floats (the same value, nan if any is nan), without numpy's per-call
    cost: two of these per job and cycle."""
    if any(value != value for value in values):
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    return float(ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2)
