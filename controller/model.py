"""Lockstep's own domain types for the controller: what detection produces and what policy consumes.

Frozen, plain data, no Kubernetes or HTTP imports (import-linter enforces it), so detection and policy are
testable with plain values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


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
