"""Straggler: the rank that arrives late at the collectives of its process group and waits little.

Physics of a blocking collective: it completes when the last rank has arrived, so the slow rank (the culprit)
arrives late and waits only for the transfer, while its peers (the victims) arrive on time and wait for it.
For every collective seen by all ranks of the group (lined up by sequence number) a rank's lateness is its
arrival minus the median arrival of the *other* ranks (so a two-rank job still has a reference); a culprit is
late by a share of the step period, on most collectives, beyond the measured jitter, AND waits less than its
peers by a good part of that lateness. The wait condition rejects a rank whose clock runs ahead. The
clock-free form uses wait times alone (and the compute gap where known): the culprit waits much less than its
peers. Input: a `RankGroup` with samples attached; output: findings per culprit node and per-rank figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.detect.config import DetectionConfig
from controller.detect.ranks import RankGroup
from controller.model import Finding, Severity

DETECTOR = "straggler"
MAD_TO_SIGMA = 1.4826  # robust standard deviation from the median absolute deviation (normal data)
MEDIAN_STANDARD_ERROR = 1.2533  # standard error of a median is ~1.25 sigma / sqrt(n)


@dataclass(frozen=True)
class _Culprit:
    node: str
    strength_seconds: float  # how late it arrives (or how much less it waits, clock-free)
    ranks: tuple[int, ...]
    detail: dict[str, object]


@dataclass
class StragglerReport:
    findings: list[Finding] = field(default_factory=list)
    lateness_seconds: dict[int, float] = field(default_factory=dict)  # rank -> median lateness
    wait_seconds: dict[int, float] = field(default_factory=dict)  # rank -> median wait


def leave_one_out_median(values: np.ndarray) -> np.ndarray:
    """For a (ranks x collectives) matrix, each element's column median over the other ranks."""
    ranks = values.shape[0]
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, axis=0)
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(ranks)[:, None].repeat(values.shape[1], axis=1), axis=0)

    def kth_of_others(k: int) -> np.ndarray:
        # The k-th smallest of the column without this element: skip over the element's own position.
        return np.where(position > k, ordered[k], ordered[min(k + 1, ranks - 1)])

    others = ranks - 1
    if others % 2 == 1:
        return kth_of_others(others // 2)
    return 0.5 * (kth_of_others(others // 2 - 1) + kth_of_others(others // 2))


def _aligned(
    group: RankGroup, config: DetectionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """Rows (ranks) x columns (collectives seen by all of them): arrivals, waits, row indices, seq range."""
    lengths = np.diff(group.offsets)
    usable = np.flatnonzero(lengths >= config.min_collectives)
    if len(usable) < 2:
        return None
    last_seq = group.seq[group.offsets[usable + 1] - 1]
    window = config.samples_per_rank
    # A rank far behind the others is a hang suspect, not a straggler: leave it to the hang detector.
    keep = usable[last_seq >= np.median(last_seq) - window]
    if len(keep) < 2:
        return None
    hi = int(group.seq[group.offsets[keep + 1] - 1].min())
    lo = hi - window + 1
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    row_index = np.full(len(lengths), -1)
    row_index[keep] = np.arange(len(keep))
    mask = (row_index[row_of] >= 0) & (group.seq >= lo) & (group.seq <= hi)
    arrival = np.full((len(keep), window), np.nan)
    wait = np.full((len(keep), window), np.nan)
    rows, cols = row_index[row_of[mask]], group.seq[mask] - lo
    arrival[rows, cols] = group.arrival[mask]
    wait[rows, cols] = group.wait[mask]
    complete = ~np.isnan(arrival).any(axis=0)
    if complete.sum() < config.min_collectives:
        return None
    return arrival[:, complete], wait[:, complete], keep, lo, hi


def _late_beyond_noise(
    deviation: np.ndarray, threshold: float, config: DetectionConfig
) -> tuple[np.ndarray, ...]:
    """Per row: median deviation, whether it is late beyond threshold and jitter, and how consistently."""
    median = np.median(deviation, axis=1)
    jitter = MAD_TO_SIGMA * float(np.median(np.median(np.abs(deviation - median[:, None]), axis=1)))
    standard_error = MEDIAN_STANDARD_ERROR * jitter / np.sqrt(deviation.shape[1])
    consistency = (deviation > threshold / 2).mean(axis=1)
    late = (
        (median >= threshold)
        & (median > config.straggler_noise_multiple * standard_error)
        & (consistency >= config.straggler_consistency_ratio)
    )
    return median, late, consistency


def find_stragglers(group: RankGroup, step_period: float | None, config: DetectionConfig) -> StragglerReport:
    """Culprit nodes of one process group, from arrivals and waits of the collectives its ranks share.

    Judged per rank (one slow GPU) and per node, pooling the node's ranks (a slow host makes all of its ranks
    late together, and pooling eight ranks cuts the jitter of the median by ~3x).
    """
    report = StragglerReport()
    if step_period is None or step_period <= 0 or len(group.entries) < 2:
        return report
    threshold = max(
        config.straggler_lateness_floor_seconds, config.straggler_lateness_step_ratio * step_period
    )
    aligned = _aligned(group, config)
    if aligned is None:
        return _from_summaries(group, threshold, config)
    arrival, wait, rows, lo, hi = aligned
    lateness = arrival - leave_one_out_median(arrival)
    waits_known = not np.isnan(wait).any()
    deficit = leave_one_out_median(wait) - wait if waits_known else None  # how much less each rank waited
    gaps_ok = _computes_longer(group, rows, config)
    verdict = _judge(lateness, deficit, gaps_ok, threshold, config)
    wait_median = np.median(wait, axis=1) if waits_known else np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        rank = group.entries[row].rank.rank
        report.lateness_seconds[rank] = float(verdict.lateness[i])
        if waits_known:
            report.wait_seconds[rank] = float(wait_median[i])
    culprits = [
        _Culprit(
            group.entries[row].node,
            verdict.strength(i),
            (group.entries[row].rank.rank,),
            {"rank": group.entries[row].rank.rank, **verdict.detail(i)},
        )
        for i, row in enumerate(rows)
        if verdict.late[i]
    ]
    node_of_row = np.array([group.entries[row].node for row in rows])
    pooled = _pool_by_node(node_of_row, lateness, deficit)
    if pooled is not None:
        nodes, pooled_lateness, pooled_deficit = pooled
        node_verdict = _judge(pooled_lateness, pooled_deficit, None, threshold, config)
        for i, node in enumerate(nodes):
            if node_verdict.late[i]:
                ranks = tuple(group.entries[row].rank.rank for row in rows[node_of_row == node])
                detail = {"ranks": list(ranks), "pooled": True, **node_verdict.detail(i)}
                culprits.append(_Culprit(str(node), node_verdict.strength(i), ranks, detail))
    report.findings = _node_findings(
        group,
        culprits,
        threshold,
        step_period,
        config,
        {
            "collectives": [lo, hi],
            "compared_collectives": int(arrival.shape[1]),
            "peer_wait_seconds": float(np.median(wait_median)) if waits_known else None,
        },
    )
    return report


@dataclass(frozen=True)
class _Judgement:
    lateness: np.ndarray  # per row, median lateness (s)
    deficit: np.ndarray  # per row, median wait deficit vs peers (s); nan without waits
    late: np.ndarray
    method: np.ndarray
    consistency: np.ndarray

    def strength(self, i: int) -> float:
        return float(self.lateness[i] if self.method[i] == "arrival" else self.deficit[i])

    def detail(self, i: int) -> dict[str, object]:
        return {
            "method": str(self.method[i]),
            "lateness_seconds": round(float(self.lateness[i]), 6),
            "wait_deficit_seconds": None if np.isnan(self.deficit[i]) else round(float(self.deficit[i]), 6),
            "consistency": round(float(self.consistency[i]), 3),
        }


def _judge(
    lateness: np.ndarray,
    deficit: np.ndarray | None,
    gaps_ok: np.ndarray | None,
    threshold: float,
    config: DetectionConfig,
) -> _Judgement:
    """Rows late by arrival (and, where waits are known, waiting less by a good part of it), or clock-free:
    waiting much less than their peers (and computing longer, where compute gaps are known)."""
    late_median, late, consistency = _late_beyond_noise(lateness, threshold, config)
    method = np.where(late, "arrival", "")
    deficit_median = np.full(len(late), np.nan)
    if deficit is not None:
        deficit_median, waits_less, _ = _late_beyond_noise(deficit, threshold, config)
        late &= deficit_median >= config.straggler_wait_share * late_median
        clock_free = waits_less & ~late
        if gaps_ok is not None:
            clock_free &= gaps_ok
        method = np.where(late, "arrival", np.where(clock_free, "clock-free", ""))
        late |= clock_free
    return _Judgement(late_median, deficit_median, late, method, consistency)


def _pool_by_node(
    node_of_row: np.ndarray, lateness: np.ndarray, deficit: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """Each node's rows side by side as one row, where every node has the same number (>1) of ranks."""
    nodes, counts = np.unique(node_of_row, return_counts=True)
    if len(nodes) < 2 or counts[0] < 2 or (counts != counts[0]).any():
        return None
    order = np.argsort(node_of_row, kind="stable")
    width = int(counts[0]) * lateness.shape[1]
    pooled_deficit = deficit[order].reshape(len(nodes), width) if deficit is not None else None
    return nodes, lateness[order].reshape(len(nodes), width), pooled_deficit


def _computes_longer(group: RankGroup, rows: np.ndarray, config: DetectionConfig) -> np.ndarray | None:
    """Where every rank reports its compute gap: does each compute longer than its peers, beyond the lateness
    floor? None where gaps are unknown (they do not veto then)."""
    gaps = [group.entries[row].rank.compute_gap_seconds_p50 for row in rows]
    if any(gap is None for gap in gaps):
        return None
    values = np.array(gaps, dtype=np.float64)
    excess = values - leave_one_out_median(values[:, None])[:, 0]
    return excess >= config.straggler_lateness_floor_seconds


def _from_summaries(group: RankGroup, threshold: float, config: DetectionConfig) -> StragglerReport:
    """Clock-free form on the agents' window summaries, for ranks that send no samples."""
    report = StragglerReport()
    waits = [entry.rank.wait_seconds_p50 for entry in group.entries]
    if any(wait is None for wait in waits) or any(
        e.rank.collectives_in_window < config.min_collectives for e in group.entries
    ):
        return report
    values = np.array(waits, dtype=np.float64)
    deficit = leave_one_out_median(values[:, None])[:, 0] - values
    rows = np.arange(len(values))
    gaps_ok = _computes_longer(group, rows, config)
    late = (deficit >= threshold) & (gaps_ok if gaps_ok is not None else True)
    for row, entry in enumerate(group.entries):
        report.wait_seconds[entry.rank.rank] = float(values[row])
    culprits = [
        _Culprit(
            group.entries[row].node,
            float(deficit[row]),
            (group.entries[row].rank.rank,),
            {
                "rank": group.entries[row].rank.rank,
                "method": "clock-free-summary",
                "wait_seconds": round(float(values[row]), 6),
                "wait_deficit_seconds": round(float(deficit[row]), 6),
            },
        )
        for row in rows
        if late[row]
    ]
    step = next((e.rank.step_period_seconds for e in group.entries if e.rank.step_period_seconds), None)
    report.findings = _node_findings(
        group, culprits, threshold, step or 0.0, config, {"peer_wait_seconds": float(np.median(values))}
    )
    return report


def _node_findings(
    group: RankGroup,
    culprits: list[_Culprit],
    threshold: float,
    step_period: float,
    config: DetectionConfig,
    window: dict[str, object],
) -> list[Finding]:
    """One finding per culprit node, unless so many nodes look late that the whole group is the problem."""
    nodes = group.nodes
    culprit_nodes = sorted({c.node for c in culprits})
    if not culprit_nodes or len(culprit_nodes) > config.max_culprit_share * len(nodes):
        return []
    namespace, job = group.job
    findings = []
    for node in culprit_nodes:
        ranks = [c.detail for c in culprits if c.node == node]
        rank_ids = sorted({r for c in culprits if c.node == node for r in c.ranks})
        pooled = any(c.detail.get("pooled") for c in culprits if c.node == node)
        strength = max(c.strength_seconds for c in culprits if c.node == node)
        confidence = min(
            0.99,
            config.confidence_floor
            + (1 - config.confidence_floor) * (1 - threshold / max(strength, threshold)),
        )
        share = strength / step_period if step_period else None
        findings.append(
            Finding(
                detector=DETECTOR,
                reason="Straggler",
                node=node,
                severity=Severity.STATISTICAL,
                summary=(
                    f"rank {', '.join(map(str, rank_ids))} of job {job} arrives "
                    f"{strength * 1000:.0f} ms late"
                    + (f" ({share:.0%} of a {step_period:.2f} s step)" if share is not None else "")
                    + " and waits less than its peers"
                ),
                confidence=round(confidence, 3),
                job=job,
                nodes=(node,),
                evidence={
                    "signal": "collective lateness and wait",
                    "namespace": namespace,
                    "process_group": group.process_group,
                    "ranks": rank_ids,
                    # What must stay late window after window for the verdict: the node's pooled ranks, or
                    # the same rank(s) (noise makes a different rank the latest in each window).
                    "subject": "node" if pooled else "ranks " + ",".join(map(str, rank_ids)),
                    "culprits": ranks,
                    "peers": [n for n in nodes if n != node],
                    "threshold_seconds": round(threshold, 6),
                    "step_period_seconds": round(step_period, 6) if step_period else None,
                    **window,
                },
            )
        )
    return findings
