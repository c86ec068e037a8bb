"""Lockstep's own domain types for the controller: what detection produces and what policy consumes.

Frozen, plain data, no Kubernetes or HTTP imports (import-linter enforces it), so detection and policy are
testable with plain values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, overload


class Verdict(str, enum.Enum):
    """Health of a node. No data is `unknown`, never `faulty`."""

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    FAULTY = "faulty"
    UNKNOWN = "unknown"


class Severity(str, enum.Enum):
    """How a finding may be acted on: hard evidence acts at once, statistical evidence only when it persists."""

    HARD = "hard"
    STATISTICAL = "statistical"
    FABRIC = "fabric"  # between nodes or behind a switch/rack: alert, never cordon


@dataclass(frozen=True)
class Finding:
    """One detector's conclusion about one node (or, for fabric findings, a set of nodes).

    `reason` is a short CamelCase word used in the taint value and metrics (e.g. `Straggler`, `Hang`,
    `CriticalXid`); `evidence` is JSON-serialisable and says which signal, which peers, which windows.
    """

    detector: str
    reason: str
    node: str
    severity: Severity
    summary: str
    confidence: float = 1.0
    job: str | None = None
    nodes: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)
    observed_at: float = 0.0


@dataclass(frozen=True)
class NodeVerdict:
    """The verdict on one node after hysteresis, with the findings behind it."""

    node: str
    verdict: Verdict
    confidence: float = 0.0
    reason: str = ""
    findings: tuple[Finding, ...] = ()
    since: float = 0.0


class JobState(str, enum.Enum):
    """What a training job is doing, as the detectors see it from its ranks."""

    RUNNING = "running"
    HUNG = "hung"  # progress stopped: peers wait in a collective that some rank never entered
    SLOW = "slow"  # the whole job runs slower than its own recent past, or a rank drags it
    RESTARTING = "restarting"  # new processes, sequence numbers reset, or world size changed: no comparisons
    IDLE = "idle"  # no collective issued for a while, by any rank (checkpoint, evaluation, finished)


@dataclass(frozen=True)
class RankView:
    """One rank of a job in one cycle: where it runs and how it compares with its peers (s)."""

    rank: int
    node: str
    process_group: str = "default"
    last_seq: int = -1
    pending_seq: int | None = None
    lateness_seconds: float | None = None  # median arrival minus the median arrival of its peers
    wait_seconds: float | None = None  # median issue-to-completion time of its collectives
    compute_gap_seconds: float | None = None


class RankTable(Sequence[RankView]):
    """The ranks of a job in one cycle, kept as one column per `RankView` field (same order in each): at
    80,000 ranks a cycle cannot afford an object per rank, and the views are read only by the status API.
    A `RankView` is built each time one is read."""

    __slots__ = ("_columns",)
    FIELDS = tuple(f.name for f in fields(RankView))

    def __init__(self, *columns: Sequence[Any]) -> None:
        """One sequence per name in `FIELDS`, all of the same length (none: an empty table)."""
        if columns and (len(columns) != len(self.FIELDS) or len({len(c) for c in columns}) != 1):
            raise ValueError(f"a RankTable needs {len(self.FIELDS)} columns of one length")
        self._columns = tuple(map(tuple, columns)) if columns else ((),) * len(self.FIELDS)

    def __len__(self) -> int:
        return len(self._columns[0])

    @overload
    def __getitem__(self, index: int) -> RankView: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[RankView, ...]: ...
    def __getitem__(self, index: int | slice) -> RankView | tuple[RankView, ...]:
        if isinstance(index, slice):
            return tuple(map(RankView, *(column[index] for column in self._columns)))
        return RankView(*(column[index] for column in self._columns))

    def __iter__(self) -> Iterator[RankView]:
        return map(RankView, *self._columns)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RankTable):
            return self._columns == other._columns
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._columns)

    def __repr__(self) -> str:
        return f"RankTable({list(self)!r})"


@dataclass(frozen=True)
class JobView:
    """A training job as the controller sees it across nodes in one cycle."""

    name: str
    world_size: int
    state: JobState
    rank_nodes: dict[int, str] = field(default_factory=dict)  # rank -> node, default process group
    nodes: tuple[str, ...] = ()
    namespace: str = ""
    step_period_seconds: float | None = None
    baseline_step_period_seconds: float | None = None  # the job's own recent normal, for "whole job slower"
    suspects: tuple[str, ...] = ()  # nodes blamed this cycle (before hysteresis)
    ranks: Sequence[RankView] = RankTable()
