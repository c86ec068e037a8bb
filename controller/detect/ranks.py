"""Ranks of every job, gathered from all nodes' evidence and lined up as arrays for the detectors.

A rank group is one process group of one job: the unit inside which collectives are numbered and where every
rank must take part in every collective. Sample arrays are pulled out of the evidence for all groups in one
pass (numpy `fromiter` over attribute getters), because at 80,000 ranks a per-rank loop is the cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter

import numpy as np

from agent.evidence import Evidence, RankEvidence

JobKey = tuple[str, str]
"""(namespace, job name): two namespaces may run jobs of the same name."""


@dataclass(frozen=True)
class RankEntry:
    """One rank as reported by the agent of the node it runs on."""

    node: str
    rank: RankEvidence
    collected_at: float  # the reporting document's time, agent clock (s)


@dataclass
class RankGroup:
    """The ranks of one process group of one job that reported this cycle, ordered by rank."""

    job: JobKey
    process_group: str
    entries: list[RankEntry]
    # Filled by `attach_samples`: the most recent samples of every entry, flattened, with `offsets` into them.
    seq: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    arrival: np.ndarray = field(default_factory=lambda: np.empty(0))
    wait: np.ndarray = field(default_factory=lambda: np.empty(0))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({entry.node for entry in self.entries}))


def group_ranks(evidence: Mapping[str, Evidence]) -> dict[JobKey, dict[str, RankGroup]]:
    """Job -> process group -> group of ranks. A rank reported twice (a pod moved) keeps the newest report."""
    latest: dict[tuple[JobKey, str, int], RankEntry] = {}
    for node, document in evidence.items():
        for rank in document.ranks:
            key = ((rank.namespace, rank.job), rank.process_group, rank.rank)
            known = latest.get(key)
            if known is None or document.collected_at > known.collected_at:
                latest[key] = RankEntry(node, rank, document.collected_at)
    jobs: dict[JobKey, dict[str, RankGroup]] = {}
    for (job, group_name, _), entry in sorted(latest.items(), key=lambda item: item[0]):
        groups = jobs.setdefault(job, {})
        group = groups.get(group_name)
        if group is None:
            groups[group_name] = RankGroup(job, group_name, [entry])
        else:
            group.entries.append(entry)
    return jobs


def attach_samples(groups: Iterable[RankGroup], samples_per_rank: int) -> None:
    """Fill every group's sample arrays with each rank's last `samples_per_rank` collectives (one numpy pass)."""
    groups = list(groups)
    tails = [entry.rank.samples[-samples_per_rank:] for group in groups for entry in group.entries]
    flat = list(chain.from_iterable(tails))
    count = len(flat)
    seq = np.fromiter(map(attrgetter("seq"), flat), np.int64, count)
    arrival = np.fromiter(map(attrgetter("arrival"), flat), np.float64, count)
    wait = np.array(list(map(attrgetter("wait_seconds"), flat)), dtype=np.float64)  # None -> nan
    lengths = np.fromiter(map(len, tails), np.int64, len(tails))
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    position = 0
    for group in groups:
        ranks = len(group.entries)
        group_bounds = bounds[position : position + ranks + 1]
        start, stop = int(group_bounds[0]), int(group_bounds[-1])
        group.seq, group.arrival, group.wait = seq[start:stop], arrival[start:stop], wait[start:stop]
        group.offsets = group_bounds - start
        position += ranks


def estimate_step_period(group: RankGroup) -> float | None:
    """The group's step period (s): the ranks' own estimate where the agent gives one, else from samples.

    From samples: the median time between successive collectives of the same (op, bytes) signature is one
    step when each signature occurs once per step (DDP buckets); the longest such period is the step.
    """
    reported = [e.rank.step_period_seconds for e in group.entries if e.rank.step_period_seconds]
    if reported:
        return float(np.median(reported))
    best: float | None = None
    for entry in group.entries[:3]:
        by_signature: dict[tuple[str, int], list[float]] = {}
        for sample in entry.rank.samples:
            by_signature.setdefault((sample.op, sample.bytes), []).append(sample.arrival)
        for arrivals in by_signature.values():
            if len(arrivals) >= 3:
                period = float(np.median(np.diff(np.sort(arrivals))))
                if period > 0 and (best is None or period > best):
                    best = period
    return best
