"""Hang: progress stops. Peers wait in collective N; the suspects lag behind them (never entered it, or did not
issue the collectives their peers issued next).

Works on each agent's own clock only (`collected_at - pending_since`, `collected_at - last_progress_at`), so
clock offsets between nodes and documents of different ages do not matter. Reports after a few step periods
(clamped between `hang_min_seconds` and `hang_max_seconds`), long before NCCL/PyTorch's 10-minute timeouts; and
once a rank behind its waiting peers has made no progress for `hang_max_seconds` (at least two steps): the peers
block only when they reach the collective, up to a step after that rank stopped, so their wait alone would put a
long step's hang a step past `hang_max_seconds`.
Input: a `RankGroup`, the ranks that vanished from nodes that still report; output: findings and whether
the group is hung.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.detect.config import DetectionConfig
from controller.detect.ranks import RankEntry, RankGroup
from controller.model import Finding, Severity

DETECTOR = "hang"


@dataclass
class HangReport:
    hung: bool = False
    stuck_seq: int | None = None
    waited_seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)


def _issued(entry: RankEntry) -> int:
    """Highest sequence number the rank issued (whether `last_seq` counts a pending one or not)."""
    pending = entry.rank.pending_seq
    return max(entry.rank.last_seq, pending if pending is not None else -1)


def _busy(entry: RankEntry, config: DetectionConfig) -> bool:
    """Whether a rank that lags its waiting peers is busy writing (a checkpoint saved by this rank alone), not
    hung: its process runs and writes at checkpoint speed, and it has not been at it for `hang_busy_max_seconds`.
    Without the agent's process figures (an older agent, no access to /proc) nobody is busy."""
    rank = entry.rank
    written = rank.process_write_bytes_per_second
    return (
        rank.process_state is not None
        and rank.process_state not in ("T", "t", "Z", "X")  # stopped, traced, gone
        and written is not None
        and written >= config.hang_busy_write_bytes_per_second
        and entry.collected_at - rank.last_progress_at < config.hang_busy_max_seconds
    )


def hang_threshold_seconds(step_period: float | None, config: DetectionConfig) -> float:
    """How long peers must wait in one collective before progress counts as stopped (s). With the step period not
    known yet (a job's first few collectives), the longest, `hang_max_seconds`: the first steps are the most
    uneven (one rank compiling, autotuning or loading data holds the others for many seconds), and a long-step
    job is still in them after a minute."""
    by_step = config.hang_step_multiple * step_period if step_period else config.hang_max_seconds
    return min(config.hang_max_seconds, max(config.hang_min_seconds, by_step))


def find_hang(
    group: RankGroup,
    step_period: float | None,
    config: DetectionConfig,
    vanished: Mapping[int, str] | None = None,
) -> HangReport:
    """Is the group stuck in a collective, and which ranks (nodes) hold it up?

    `vanished` maps ranks that reported before but are gone from their (still reporting) node to that node:
    a process that died holds its peers up just as one that stopped.
    """
    if group.fields.pending_seqs.count(None) == len(group.entries):
        return HangReport()  # nobody waits in a collective (the usual cycle: no per-rank look)
    vanished = vanished or {}
    threshold = hang_threshold_seconds(step_period, config)
    # Healthy ranks run ahead until they block, so after a while they all stand at the same frontier (the
    # highest sequence number issued). A rank behind it that made no progress either is holding them up —
    # whether it never entered collective N (stopped in compute) or entered it but not the ones its peers
    # issued next (DDP issues several buckets before waiting for any).
    front = max(_issued(e) for e in group.entries)
    stall = max(config.hang_max_seconds, 2 * (step_period or 0.0))
    if any(_issued(e) < front and e.collected_at - e.rank.last_progress_at >= stall for e in group.entries):
        threshold = config.hang_min_seconds  # stalled that long: its peers' wait need only pass a pause's
    waiting = [
        e
        for e in group.entries
        if e.rank.pending_seq is not None
        and e.rank.pending_since is not None
        and e.collected_at - e.rank.pending_since >= threshold
    ]
    if not waiting:
        return HangReport()
    stuck = min(e.rank.pending_seq for e in waiting if e.rank.pending_seq is not None)
    waited = max(e.collected_at - (e.rank.pending_since or e.collected_at) for e in waiting)
    report = HangReport(hung=True, stuck_seq=stuck, waited_seconds=waited)
    laggards = [
        e
        for e in group.entries
        if _issued(e) < front and e.collected_at - e.rank.last_progress_at >= threshold / 2 and not _busy(e, config)
    ]
    suspects: dict[str, list[dict[str, object]]] = {}
    for e in laggards:
        suspects.setdefault(e.node, []).append(
            {
                "rank": e.rank.rank,
                "last_seq": e.rank.last_seq,
                "pending_seq": e.rank.pending_seq,
                "idle_seconds": round(e.collected_at - e.rank.last_progress_at, 3),
            }
        )
    for rank, node in vanished.items():
        suspects.setdefault(node, []).append({"rank": rank, "vanished": True})
    nodes = sorted({e.node for e in group.entries} | set(vanished.values()))
    namespace, job = group.job
    window = {
        "signal": "collective progress",
        "namespace": namespace,
        "process_group": group.process_group,
        "stuck_seq": stuck,
        "front_seq": front,
        "waited_seconds": round(waited, 3),
        "threshold_seconds": round(threshold, 3),
        "waiting_ranks": sorted(e.rank.rank for e in waiting),
    }
    suspect_ranks = sum(len(ranks) for ranks in suspects.values())
    few = (
        len(suspects) <= config.max_culprit_share * len(nodes)
        if len(nodes) > 1
        else suspect_ranks <= config.max_culprit_share * len(group.entries)  # one node: compare its ranks
    )
    if suspects and few:
        for node, ranks in sorted(suspects.items()):
            report.findings.append(
                Finding(
                    detector=DETECTOR,
                    reason="Hang",
                    node=node,
                    severity=Severity.STATISTICAL,
                    summary=(
                        f"job {job} stuck {waited:.0f} s in collective {stuck}: rank "
                        f"{', '.join(str(r['rank']) for r in ranks)} on {node} stopped behind its peers "
                        f"(they issued up to {front})"
                    ),
                    confidence=0.9,
                    job=job,
                    nodes=(node,),
                    evidence={**window, "ranks": ranks, "peers": [n for n in nodes if n != node]},
                )
            )
    elif not suspects and len(waiting) == len(group.entries) == group.entries[0].rank.world_size:
        # Everyone entered and nobody completes: the collective itself is stuck (network, or a GPU that does
        # not answer). No rank to blame; an alert for people.
        report.findings.append(
            Finding(
                detector=DETECTOR,
                reason="CollectiveHang",
                node="",
                severity=Severity.FABRIC,
                summary=f"job {job}: every rank waits {waited:.0f} s in collective {stuck}; none lags",
                confidence=0.7,
                job=job,
                nodes=tuple(nodes),
                evidence={**window, "peers": nodes},
            )
        )
    return report
