"""Verdict hysteresis: this cycle's findings per node -> healthy / suspect / faulty, with memory across cycles.

Hard findings act at once (a warning sign — confidence below `FAULTY_CONFIDENCE` — makes 'suspect') and are
held for `hard_hold_seconds` after their signal leaves the agent's window. Statistical findings must persist:
counted only on fresh evidence windows (the same document seen twice is one window; findings that name
their collectives count by their collectives new since the last counted one: half a window of them or more is one
window, fewer are their share of one, whatever the cycle's phase against the job's collectives), 'suspect' after
`suspect_windows`, 'faulty' after `faulty_windows` spanning `faulty_min_seconds`, with `miss_tolerance`
windows allowed inside a streak; a streak follows one subject (reason, job, and the finding's
`evidence["subject"]`, e.g. the same late rank), so noise that picks a different rank each window never adds
up. A hang is its own persistence (peers waited long already): it acts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from controller.detect.config import DetectionConfig
from controller.model import Finding, NodeVerdict, Severity, Verdict

FAULTY_CONFIDENCE = 0.9
IMMEDIATE_REASONS = frozenset({"Hang"})
"""Statistical reasons whose detector already waited out their persistence before reporting."""


@dataclass
class _Streak:
    windows: Fraction  # exact: shares of windows add up to whole ones
    first_seen: float
    misses: int = 0
    finding: Finding | None = None
    last_collective: int | None = None  # end of the last counted window of collectives


@dataclass
class _NodeMemory:
    streaks: dict[tuple[str, str | None, str], _Streak] = field(default_factory=dict)
    held_hard: dict[tuple[str, str], tuple[float, Finding]] = field(
        default_factory=dict
    )  # key -> (seen, finding)
    verdict: Verdict = Verdict.HEALTHY
    since: float = 0.0
    healthy: NodeVerdict = field(default_factory=lambda: NodeVerdict(node="", verdict=Verdict.HEALTHY))

    @classmethod
    def fresh(cls, node: str, now: float) -> _NodeMemory:
        return cls(since=now, healthy=NodeVerdict(node=node, verdict=Verdict.HEALTHY, since=now))


class VerdictKeeper:
    """Remembers each node's findings across cycles and turns them into verdicts."""

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self._nodes: dict[str, _NodeMemory] = {}

    def forget(self, keep: set[str]) -> None:
        """Drop memory of nodes no longer in the cluster."""
        for node in set(self._nodes) - keep:
            del self._nodes[node]

    def unknown(self, node: str, now: float) -> NodeVerdict:
        """No fresh evidence: unknown (statistical streaks pause; hard memory is kept)."""
        memory = self._nodes.get(node) or self._nodes.setdefault(node, _NodeMemory.fresh(node, now))
        if memory.verdict is not Verdict.UNKNOWN:
            memory.verdict, memory.since = Verdict.UNKNOWN, now
        return NodeVerdict(node=node, verdict=Verdict.UNKNOWN, since=memory.since)

    def update(self, node: str, findings: list[Finding], fresh_window: bool, now: float) -> NodeVerdict:
        """Fold this cycle's findings for `node` in; `fresh_window` says whether its evidence is new."""
        config = self.config
        memory = self._nodes.get(node)
        if memory is None:
            memory = self._nodes[node] = _NodeMemory.fresh(node, now)
        elif (
            not findings and not memory.streaks and not memory.held_hard and memory.verdict is Verdict.HEALTHY
        ):
            return memory.healthy  # the common case at 10,000 nodes: nothing to fold in, nothing changes
        for f in findings:
            if f.severity is Severity.HARD:
                memory.held_hard[(f.reason, str(f.evidence.get("device", "")))] = (now, f)
        for hard_key, (seen, _) in list(memory.held_hard.items()):
            if now - seen > config.hard_hold_seconds:
                del memory.held_hard[hard_key]
        if fresh_window:
            present = {
                (f.reason, f.job, str(f.evidence.get("subject", ""))): f
                for f in findings
                if f.severity is Severity.STATISTICAL
            }
            for key, f in present.items():
                span = f.evidence.get("collectives")
                first, last = (
                    (int(span[0]), int(span[1])) if isinstance(span, list) and len(span) == 2 else (0, None)
                )
                streak = memory.streaks.get(key)
                if streak is None:
                    memory.streaks[key] = _Streak(Fraction(1), now, finding=f, last_collective=last)
                    continue
                streak.misses, streak.finding = 0, f
                # Windows judged in successive cycles overlap: a window counts by its new collectives, half a
                # window of them (or more: one judgement never counts twice) for one window, fewer for their
                # share. The same collectives are never counted twice; no new collective is left uncounted.
                if last is None or streak.last_collective is None:
                    streak.windows += 1
                    streak.last_collective = last
                elif last > streak.last_collective:
                    half = Fraction(last - first + 1, 2)
                    streak.windows += min(Fraction(1), (last - streak.last_collective) / half)
                    streak.last_collective = last
            for key in set(memory.streaks) - set(present):
                streak = memory.streaks[key]
                streak.misses += 1
                if streak.misses > config.miss_tolerance:
                    del memory.streaks[key]

        graded = [(_hard_level(f), f.confidence, f) for _, f in memory.held_hard.values()]
        for streak in memory.streaks.values():
            if streak.finding is not None and not streak.misses:
                graded.append(self._statistical_grade(streak, streak.finding, now))
        graded = sorted(
            (g for g in graded if g[0] is not Verdict.HEALTHY),
            key=lambda g: (_ORDER[g[0]], g[1]),
            reverse=True,
        )
        verdict, confidence = (graded[0][0], graded[0][1]) if graded else (Verdict.HEALTHY, 0.0)
        if verdict is not memory.verdict:
            memory.verdict, memory.since = verdict, now
            memory.healthy = NodeVerdict(node=node, verdict=Verdict.HEALTHY, since=now)
        return NodeVerdict(
            node=node,
            verdict=verdict,
            confidence=round(confidence, 3),
            reason=graded[0][2].reason if graded else "",
            findings=tuple(g[2] for g in graded),
            since=memory.since,
        )

    def _statistical_grade(
        self, streak: _Streak, finding: Finding, now: float
    ) -> tuple[Verdict, float, Finding]:
        config = self.config
        if finding.reason in IMMEDIATE_REASONS:
            return Verdict.FAULTY, finding.confidence, finding
        persisted = min(1.0, float(streak.windows) / config.faulty_windows)
        if streak.windows >= config.faulty_windows and now - streak.first_seen >= config.faulty_min_seconds:
            return Verdict.FAULTY, finding.confidence * persisted, finding
        if streak.windows >= config.suspect_windows:
            return Verdict.SUSPECT, finding.confidence * persisted, finding
        return Verdict.HEALTHY, 0.0, finding


_ORDER = {Verdict.UNKNOWN: -1, Verdict.HEALTHY: 0, Verdict.SUSPECT: 1, Verdict.FAULTY: 2}


def _hard_level(finding: Finding) -> Verdict:
    return Verdict.FAULTY if finding.confidence >= FAULTY_CONFIDENCE else Verdict.SUSPECT
