"""Policy: verdicts + cluster state + safety budget -> actions. Pure (no Kubernetes, no HTTP).

The loop feeds it the detection verdicts, what the cluster says about each node (parsed by `kube.py`), the
circuit-breaker state kept in the cluster and the policy's own memory from the previous cycle; it returns the
actions to take, why faulty nodes were left alone, and the memory for the next cycle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.model import NodeVerdict, Severity, Verdict
from controller.settings import SafetySettings


@dataclass(frozen=True)
class NodeState:
    """What the cluster says about one node that Lockstep may manage (selected by the node selector)."""

    name: str
    managed: bool = True  # False when labelled lockstep.dev/managed=false: never touched
    unschedulable: bool = False
    tainted: bool = False  # carries the lockstep.dev/unhealthy taint
    owned_reason: str = ""  # lockstep.dev/reason: Lockstep acted on the node for this reason
    cordoned_by_lockstep: bool = False  # Lockstep set spec.unschedulable (so only then may it unset it)
    owned_since: float | None = None  # Unix s Lockstep acted (lockstep.dev/since)
    released_reason: str = ""  # a person released the node while Lockstep held it for this reason
    condition_healthy: str = ""  # status of the LockstepHealthy condition ("True", "False", "" = absent)

    @property
    def owned(self) -> bool:
        return bool(self.owned_reason)

    @property
    def released_by_person(self) -> bool:
        """Lockstep's mark is on the node, but a person took its taint off or uncordoned it."""
        return self.owned and (not self.tainted or (self.cordoned_by_lockstep and not self.unschedulable))

    @property
    def held(self) -> bool:
        """Lockstep holds the node now: its mark and taint are on, and no person took them off."""
        return self.owned and not self.released_by_person


@dataclass(frozen=True)
class BreakerState:
    """The circuit breaker, as stored in the cluster. Only a person closes it (`lockstep release --breaker`)."""

    open: bool = False
    opened_at: float | None = None
    reason: str = ""
    nodes: tuple[str, ...] = ()
    reset_at: float | None = None  # Unix s of the last reset; nodes that turned bad before it do not count


@dataclass(frozen=True)
class Memory:
    """What policy remembers between cycles (in memory only; the cluster holds what must survive restarts)."""

    cordon_times: tuple[tuple[str, float], ...] = ()  # (node, Unix s) of cordons, for the rate cap
    bad_turns: tuple[tuple[str, float], ...] = ()  # (node, Unix s) nodes turned faulty, for the breaker
    faulty: frozenset[str] = frozenset()  # cordonable faulty nodes last cycle
    fabric: frozenset[str] = frozenset()  # faulty on fabric findings only last cycle
    suspect: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Cordon:
    """Cordon + taint + annotate the node (one conditional write), set the condition, emit LockstepCordoned."""

    node: str
    reason: str
    verdict: NodeVerdict


@dataclass(frozen=True)
class Release:
    """Undo what Lockstep did. cause 'probation': healthy long enough; 'person': a person already released it."""

    node: str
    cause: str
    reason: str


@dataclass(frozen=True)
class ForgetRelease:
    """The node a person released has been healthy long enough: the same reason may cordon it again."""

    node: str


@dataclass(frozen=True)
class Notify:
    """An Event only (suspect nodes, fabric problems, faulty nodes the limits keep Lockstep from cordoning)."""

    node: str
    event_reason: str
    message: str


@dataclass(frozen=True)
class OpenBreaker:
    """Open the circuit breaker in the cluster: no more cordons until a person resets it."""

    reason: str
    nodes: tuple[str, ...]


Action = Cordon | Release | ForgetRelease | Notify | OpenBreaker


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    blocked: dict[str, str]  # faulty node -> why it was not cordoned
    breaker: BreakerState
    memory: Memory = field(default_factory=Memory)


def cordonable(verdict: NodeVerdict) -> bool:
    """Faulty on node evidence: at least one finding that is not a fabric finding (fabric alerts, never cordons)."""
    return verdict.verdict is Verdict.FAULTY and (
        not verdict.findings or any(f.severity is not Severity.FABRIC for f in verdict.findings)
    )


def node_cap(limits: SafetySettings, managed_nodes: int) -> int:
    """Most nodes Lockstep may hold at once: the count cap and the share cap (at least one if the count allows)."""
    if limits.max_cordoned_nodes == 0:
        return 0
    return min(limits.max_cordoned_nodes, max(1, math.floor(limits.max_cordoned_ratio * managed_nodes)))


def decide(
    verdicts: Mapping[str, NodeVerdict],
    nodes: Mapping[str, NodeState],
    breaker: BreakerState,
    memory: Memory,
    limits: SafetySettings,
    now: float,
) -> Decision:
    """One policy step. `nodes` holds only the selected nodes; anything else is never acted on."""
    managed = {name: state for name, state in nodes.items() if state.managed}
    actions: list[Action] = []
    blocked: dict[str, str] = {}

    def verdict_of(name: str) -> Verdict:
        return verdicts[name].verdict if name in verdicts else Verdict.UNKNOWN

    def healthy_for(name: str) -> float:
        verdict = verdicts.get(name)
        return now - verdict.since if verdict is not None and verdict.verdict is Verdict.HEALTHY else -1.0

    # People first: a node released by a person is cleaned up and remembered, whatever the breaker says.
    person_released = {name for name, state in managed.items() if state.released_by_person}
    actions += [Release(name, "person", managed[name].owned_reason) for name in sorted(person_released)]
    held = {name for name, state in managed.items() if state.held}

    faulty_now = {name for name in managed if name in verdicts and cordonable(verdicts[name])}
    turned = sorted(faulty_now - memory.faulty - held)
    floor = max(now - limits.breaker_window_seconds, breaker.reset_at or -math.inf)
    bad_turns = tuple((n, t) for n, t in (*memory.bad_turns, *((n, now) for n in turned)) if t >= floor)
    if not breaker.open:
        bad_nodes = tuple(sorted({n for n, _ in bad_turns}))
        if len(bad_nodes) >= limits.breaker_nodes:
            reason = (
                f"{len(bad_nodes)} nodes turned faulty within {limits.breaker_window_seconds:g} s "
                f"(limit {limits.breaker_nodes}): more likely a shared cause than {len(bad_nodes)} broken nodes"
            )
            breaker = BreakerState(True, now, reason, bad_nodes, breaker.reset_at)
            actions.append(OpenBreaker(reason, bad_nodes))

    rate_floor = now - limits.rate_window_seconds
    cordon_times = tuple((n, t) for n, t in memory.cordon_times if t >= rate_floor)
    recent = {n for n, _ in cordon_times} | {
        n for n in held if (managed[n].owned_since or -math.inf) >= rate_floor
    }
    cap = node_cap(limits, len(managed))
    candidates = sorted(
        (name for name in faulty_now if name not in held and name not in person_released),
        key=lambda n: (not _hard(verdicts[n]), -verdicts[n].confidence, n),
    )
    holding = len(held)
    for name in candidates:
        verdict = verdicts[name]
        if managed[name].released_reason == verdict.reason:
            blocked[name] = f"a person released it for {verdict.reason}; waiting for it to be healthy first"
        elif breaker.open:
            blocked[name] = f"circuit breaker open: {breaker.reason}"
        elif holding >= cap:
            blocked[name] = f"node cap: Lockstep holds {holding} of at most {cap} nodes"
        elif len(recent) >= limits.max_cordons_per_window:
            blocked[name] = (
                f"rate cap: {len(recent)} cordons within {limits.rate_window_seconds:g} s "
                f"(limit {limits.max_cordons_per_window})"
            )
        else:
            actions.append(Cordon(name, verdict.reason or "Unhealthy", verdict))
            holding += 1
            recent.add(name)
            cordon_times += ((name, now),)
            continue
        if name in turned:
            actions.append(
                Notify(
                    name, "LockstepSuspect", f"faulty ({verdict.reason}) but not cordoned: {blocked[name]}"
                )
            )

    if limits.auto_release_after_seconds is not None and not breaker.open:
        for name in sorted(held):
            if healthy_for(name) >= limits.auto_release_after_seconds:
                actions.append(Release(name, "probation", managed[name].owned_reason))
    for name, state in sorted(managed.items()):
        if state.released_reason and not state.owned and healthy_for(name) >= limits.release_memory_seconds:
            actions.append(ForgetRelease(name))

    suspect_now = {n for n in managed if verdict_of(n) is Verdict.SUSPECT}
    fabric_now = {n for n in managed if verdict_of(n) is Verdict.FAULTY and n not in faulty_now}
    if limits.suspect_events:
        for name in sorted((suspect_now - memory.suspect) | (fabric_now - memory.fabric)):
            verdict = verdicts[name]
            what = "fabric problem (alert only, never cordoned)" if name in fabric_now else "suspect"
            actions.append(Notify(name, "LockstepSuspect", f"{what}: {summary(verdict)}"))

    new_memory = Memory(
        cordon_times, bad_turns, frozenset(faulty_now), frozenset(fabric_now), frozenset(suspect_now)
    )
    return Decision(tuple(actions), blocked, breaker, new_memory)


def _hard(verdict: NodeVerdict) -> bool:
    return any(f.severity is Severity.HARD for f in verdict.findings)


def summary(verdict: NodeVerdict) -> str:
    """One line on why: the reason and the summaries of the findings behind it."""
    parts = [f.summary for f in verdict.findings if f.summary]
    head = f"{verdict.reason or verdict.verdict.value} (confidence {verdict.confidence:.2f})"
    return head + (": " + "; ".join(parts) if parts else "")


def evidence_annotation(verdict: NodeVerdict, max_bytes: int) -> str:
    """The lockstep.dev/evidence annotation: JSON of the findings, cut down to `max_bytes` bytes."""
    document: dict[str, Any] = {
        "verdict": verdict.verdict.value,
        "reason": verdict.reason,
        "confidence": round(verdict.confidence, 3),
        "since": verdict.since,
        "findings": [
            {
                "detector": f.detector,
                "reason": f.reason,
                "severity": f.severity.value,
                "summary": f.summary,
                "confidence": round(f.confidence, 3),
                "job": f.job,
                "nodes": list(f.nodes),
                "evidence": f.evidence,
                "observed_at": f.observed_at,
            }
            for f in verdict.findings
        ],
    }
    text = json.dumps(document, sort_keys=True, default=str)
    if len(text.encode()) <= max_bytes:
        return text
    # Too big: drop the detail first, then findings from the end, and say so.
    document["truncated"] = True
    for finding in document["findings"]:
        finding["evidence"] = {}
    while True:
        text = json.dumps(document, sort_keys=True, default=str)
        if len(text.encode()) <= max_bytes or not document["findings"]:
            break
        document["findings"].pop()
    if len(text.encode()) > max_bytes:
        text = json.dumps({"reason": verdict.reason[:64], "truncated": True})
    return text
