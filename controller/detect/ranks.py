"""Ranks of every job, gathered from all nodes' evidence and lined up as arrays for the detectors.

A rank group is one process group of one job: the unit inside which collectives are numbered and where every
rank must take part in every collective. (align.py lines their samples up for the straggler statistics.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({entry.node for entry in self.entries}))


def group_ranks(evidence: Mapping[str, Evidence]) -> dict[JobKey, dict[str, RankGroup]]:
    """Job -> process group -> group of ranks in rank order. A rank reported twice (a pod moved) keeps the
    newest report."""
    ranks: dict[JobKey, dict[str, dict[int, RankEntry]]] = {}
    for node, document in evidence.items():
        for rank in document.ranks:
            group = ranks.setdefault((rank.namespace, rank.job), {}).setdefault(rank.process_group, {})
            known = group.get(rank.rank)
            if known is None or document.collected_at > known.collected_at:
                group[rank.rank] = RankEntry(node, rank, document.collected_at)
    return {
        job: {
            name: RankGroup(job, name, [entries[r] for r in sorted(entries)])
            for name, entries in sorted(groups.items())
        }
        for job, groups in ranks.items()
    }


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
