"""Verdict hysteresis: this cycle's findings per node -> healthy / suspect / faulty, with memory across cycles.

Hard findings act at once (a warning sign — confidence below `FAULTY_CONFIDENCE` — makes 'suspect') and are
held for `hard_hold_seconds` after their signal leaves the agent's window. Statistical findings must persist,
counted only on fresh evidence; a streak follows one subject (reason, job, and the finding's
`evidence["subject"]`, e.g. the same late rank), so noise that picks a different rank each window never adds
up. `miss_tolerance` windows without the finding are allowed inside a streak, forgiven only after
`faulty_windows` windows with it in a row: a transient caught by every other window never adds up.

A finding that names its collectives (`evidence["collectives"]` = [first, last] sequence numbers, with
`seconds_per_collective`) persists in the job's own evidence: after the first window that showed it, each
later window with new collectives adds those no earlier window covered (at most half of its own: one judgement
never counts as two) and the job's time since the previous window's end (only its own span after a miss or
missing evidence). The node is 'suspect' after `suspect_windows` such windows and `suspect_min_seconds`,
'faulty' after `faulty_windows` and `faulty_min_seconds`, each with as many new collectives as the finding's
`collectives_needed` (lateness near the jitter needs more; at least `min_collectives`, never more than those
windows of half-new collectives) — whatever the job's collective rate or the cycle's phase against it; the same
collectives judged again add nothing. Other findings count fresh windows: `suspect_windows`, then
`faulty_windows` spanning `faulty_min_seconds` of controller time. A hang is its own persistence (peers waited
long already): it acts at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.detect.config import DetectionConfig
from controller.model import Finding, NodeVerdict, Severity, Verdict

FAULTY_CONFIDENCE = 0.9
IMMEDIATE_REASONS = frozenset({"Hang"})
"""Statistical reasons whose detector already waited out their persistence before reporting."""


@dataclass
class _Streak:
    first_seen: float  # controller time (s)
    windows: int = 1  # fresh windows with the finding (naming collectives: windows with new ones)
    misses: int = 0  # fresh windows without it, forgiven after `faulty_windows` windows with it in a row
    hits_in_row: int = 1
    present: bool = True  # in the last fresh window (False also after the node's evidence went missing)
    finding: Finding | None = None
    last_collective: int | None = None  # end of the last counted window of collectives
    collectives: int = 0  # distinct collectives covered after the first window
    seconds: float = 0.0  # the job's time they span (s)


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
        for streak in memory.streaks.values():
            streak.present = False  # the time without evidence never counts as persistence
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
                span = _collectives(f)
                streak = memory.streaks.get(key)
                if streak is None:
                    memory.streaks[key] = _Streak(now, finding=f, last_collective=span[1] if span else None)
                    continue
                streak.finding, continued, streak.present = f, streak.present, True
                streak.hits_in_row += 1
                if streak.hits_in_row >= config.faulty_windows:
                    streak.misses = 0
                if span is None or streak.last_collective is None:
                    streak.windows += 1
                    streak.last_collective = span[1] if span else None
                elif span[1] > streak.last_collective:
                    streak.windows += 1
                    # Windows judged in successive cycles overlap: count what this one covers that no earlier
                    # one did, up to half of it (one judgement is one test: it never counts as two windows).
                    # Time counts from the previous window's end if that one showed the finding too, else
                    # (after a miss, or missing evidence) only what this window covers.
                    covered = max(streak.last_collective, span[0] - 1)
                    streak.collectives += min(span[1] - covered, (span[1] - span[0] + 1) // 2)
                    since = streak.last_collective if continued else covered
                    streak.seconds += (span[1] - since) * _seconds_per_collective(f)
                    streak.last_collective = span[1]
            for key in set(memory.streaks) - set(present):
                streak = memory.streaks[key]
                streak.misses, streak.hits_in_row, streak.present = streak.misses + 1, 0, False
                if streak.misses > config.miss_tolerance:
                    del memory.streaks[key]

        graded = [(_hard_level(f), f.confidence, f) for _, f in memory.held_hard.values()]
        for streak in memory.streaks.values():
            if streak.finding is not None and streak.present:
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
        if streak.last_collective is not None:
            persisted = min(1.0, streak.seconds / config.faulty_min_seconds)
            faulty = (
                streak.windows >= config.faulty_windows
                and streak.seconds >= config.faulty_min_seconds
                and streak.collectives >= self._needed(finding, config.faulty_windows)
            )
            suspect = (
                streak.windows >= config.suspect_windows
                and streak.seconds >= config.suspect_min_seconds
                and streak.collectives >= self._needed(finding, config.suspect_windows)
            )
        else:
            persisted = min(1.0, streak.windows / config.faulty_windows)
            faulty = (
                streak.windows >= config.faulty_windows
                and now - streak.first_seen >= config.faulty_min_seconds
            )
            suspect = streak.windows >= config.suspect_windows
        if faulty:
            return Verdict.FAULTY, finding.confidence * persisted, finding
        if suspect:
            return Verdict.SUSPECT, finding.confidence * persisted, finding
        return Verdict.HEALTHY, 0.0, finding

    def _needed(self, finding: Finding, windows: int) -> int:
        """New collectives a streak of `finding` needs: what its strength over the jitter asks for
        (`collectives_needed`), never more than `windows` windows counting half a window of new collectives
        each (the first one whole), never fewer than `min_collectives`."""
        first, last = _collectives(finding) or (0, -1)
        cap = (windows - 1) * (last - first + 1) // 2
        return max(self.config.min_collectives, min(_int(finding.evidence.get("collectives_needed")), cap))


def _collectives(finding: Finding) -> tuple[int, int] | None:
    """The [first, last] sequence numbers of the window the finding was judged on, where it names them."""
    span = finding.evidence.get("collectives")
    if isinstance(span, list) and len(span) == 2:
        return int(span[0]), int(span[1])
    return None


def _seconds_per_collective(finding: Finding) -> float:
    value = finding.evidence.get("seconds_per_collective")
    return max(0.0, float(value)) if isinstance(value, (int, float)) else 0.0


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) else 0


_ORDER = {Verdict.UNKNOWN: -1, Verdict.HEALTHY: 0, Verdict.SUSPECT: 1, Verdict.FAULTY: 2}


def _hard_level(finding: Finding) -> Verdict:
    return Verdict.FAULTY if finding.confidence >= FAULTY_CONFIDENCE else Verdict.SUSPECT
