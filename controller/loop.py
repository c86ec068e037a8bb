"""The controller loop: fetch -> detect -> decide -> act, every interval, with each phase timed.

Discovery comes from `--agent-url` (no Kubernetes) or the agent DaemonSet's pods; ranks whose pod runs on another
node than the reporting agent's are dropped (`attribution`); detection is the pure engine;
policy is pure; only the act phase writes, and only on the leader, never in dry-run. The latest cycle is kept in
`Snapshot` for the status API and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.evidence import Evidence
from controller import attribution, policy
from controller.detect.engine import DetectionEngine, DetectionResult
from controller.fetch import EvidenceFetcher, Target
from controller.kube import ClusterView, Kube, KubeError, NotLeader
from controller.leader import LeaderElector
from controller.model import NodeVerdict, Verdict
from controller.settings import ControllerSettings

log = logging.getLogger(__name__)

PHASES = ("discover", "fetch", "detect", "decide", "act")


@dataclass
class Snapshot:
    """What the last cycle saw and did; read by the HTTP API and the metrics collector."""

    completed_at: float = 0.0  # Unix s; 0 = no cycle completed yet
    verdicts: dict[str, NodeVerdict] = field(default_factory=dict)
    result: DetectionResult | None = None
    cluster: ClusterView = field(default_factory=lambda: ClusterView({}, {}))
    breaker: policy.BreakerState = field(default_factory=policy.BreakerState)
    blocked: dict[str, str] = field(default_factory=dict)
    planned: dict[str, str] = field(
        default_factory=dict
    )  # node -> action planned this cycle (done unless dry-run)
    agent_urls: dict[str, str] = field(default_factory=dict)  # node -> agent URL
    phase_seconds: dict[str, float] = field(default_factory=dict)
    misattributed: list[attribution.MisattributedRank] = field(
        default_factory=list
    )  # ranks dropped this cycle
    error: str = ""


@dataclass
class Counters:
    cordons: Counter[str] = field(default_factory=Counter)  # by reason
    releases: Counter[str] = field(default_factory=Counter)  # by cause
    events: Counter[str] = field(default_factory=Counter)  # by event reason
    action_failures: Counter[str] = field(default_factory=Counter)  # by action
    cycles: int = 0
    cycle_failures: int = 0
    discovery_failures: int = 0  # cycles that could not read the cluster (ran on the last known state)


class ControllerLoop:
    def __init__(
        self,
        settings: ControllerSettings,
        engine: DetectionEngine,
        fetcher: EvidenceFetcher,
        kube: Kube | None = None,
        leader: LeaderElector | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.fetcher = fetcher
        self.kube = kube
        self.leader = leader
        self.clock = clock
        self.snapshot = Snapshot()
        self.counters = Counters()
        self.memory = policy.Memory()
        self._local_breaker = policy.BreakerState()  # dry-run / no Kubernetes: the breaker lives here only
        self._reported: set[str] = set()  # dry-run actions already logged
        self._misattributed: set[attribution.MisattributedRank] = set()  # already logged, still reported
        self._discovered: tuple[list[Target], ClusterView, policy.BreakerState] = (
            [],
            ClusterView({}, {}),
            policy.BreakerState(),
        )

    def may_write(self) -> bool:
        """The write guard checked right before every write."""
        if self.settings.dry_run or self.kube is None:
            return False
        return self.leader is None or self.leader.is_leader()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.cycle()
            except Exception as error:  # one broken cycle must not end the daemon
                self.counters.cycle_failures += 1
                self.snapshot.error = f"{type(error).__name__}: {error}"
                log.exception("controller cycle failed")
            remaining = self.settings.interval_seconds - (time.monotonic() - started)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.05, remaining))

    async def cycle(self) -> Snapshot:
        # The cycle's time is when it starts: cycles start a steady `interval_seconds` apart, so persistence
        # measured between cycles (N windows spanning faulty_min_seconds) does not depend on how long each
        # discovery and fetch took (a faster fetch once put the 4th 5-s window 14.98 s after the first).
        now = self.clock()
        phases: dict[str, float] = {}
        mark = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal mark
            now_mono = time.monotonic()
            phases[phase] = now_mono - mark
            mark = now_mono

        discovery_error = ""
        try:
            targets, cluster, breaker = await asyncio.to_thread(self._discover)
            self._discovered = (targets, cluster, breaker)
        except KubeError as error:
            # The API is down: keep pulling evidence from the agents we knew and keep verdicts current; act on
            # nothing until the cluster can be read again.
            log.error(
                "cannot read the cluster (%s); using the last known agents and nodes, not acting", error
            )
            self.counters.discovery_failures += 1
            targets, cluster, breaker = self._discovered
            discovery_error = f"cannot read the cluster: {error}"
        if self._local_breaker.open and not breaker.open and (self.settings.dry_run or self.kube is None):
            breaker = self._local_breaker
        lap("discover")

        evidence: dict[str, Evidence | None] = dict.fromkeys(cluster.nodes)
        evidence.update(await self.fetcher.fetch(targets))
        evidence, misattributed = self._trusted_ranks(evidence, cluster)
        lap("fetch")

        result = self.engine.step(evidence, now, cluster.topology or None)
        verdicts = dict(result.verdicts)
        for node in evidence:  # a node without a verdict is unknown, never silently healthy
            verdicts.setdefault(node, NodeVerdict(node, Verdict.UNKNOWN, reason="NoEvidence", since=now))
        lap("detect")

        decision = policy.decide(verdicts, cluster.nodes, breaker, self.memory, self.settings.safety, now)
        acting = not discovery_error and self.may_write()
        if acting or self.settings.dry_run or self.kube is None:
            self.memory = decision.memory
        self._local_breaker = decision.breaker
        planned = {a.node: _describe(a) for a in decision.actions if hasattr(a, "node")}
        lap("decide")

        if acting:
            await asyncio.to_thread(self._act, decision, cluster, now)
            if decision.actions and self.kube is not None:  # show what the cluster holds now, not before
                cluster = await asyncio.to_thread(self.kube.cluster)
        elif self.settings.dry_run or self.kube is None:
            would = {_describe(a) for a in decision.actions if not isinstance(a, policy.Notify)}
            for description in sorted(would - self._reported):  # each planned action once, not every cycle
                log.info("dry-run: would %s", description)
            self._reported = would
        lap("act")

        self.counters.cycles += 1
        health = self.fetcher.health
        self.snapshot = Snapshot(
            completed_at=self.clock(),
            verdicts=verdicts,
            result=result,
            cluster=cluster,
            breaker=decision.breaker,
            blocked=decision.blocked,
            planned=planned,
            agent_urls={h.node: url for url, h in health.items() if h.node},
            phase_seconds=phases,
            misattributed=misattributed,
            error=discovery_error,
        )
        return self.snapshot

    def _trusted_ranks(
        self, evidence: dict[str, Evidence | None], cluster: ClusterView
    ) -> tuple[dict[str, Evidence | None], list[attribution.MisattributedRank]]:
        """Leave out the ranks whose pod runs on another node (Kubernetes mode); log each such rank once."""
        if cluster.pods is None:
            return evidence, []
        checked, misattributed = attribution.check_ranks(evidence, cluster.pods)
        new = set(misattributed) - self._misattributed
        for rank in sorted(new, key=attribution.MisattributedRank.describe):
            log.warning("not trusting a rank: %s; it is left out of detection", rank.describe())
        self._misattributed = set(misattributed)
        return checked, misattributed

    def _discover(self) -> tuple[list[Target], ClusterView, policy.BreakerState]:
        """Where the agents are, the selected nodes and the breaker (in a worker thread: blocking API calls)."""
        if self.kube is None:
            return (
                [Target(url) for url in self.settings.agent_urls],
                ClusterView({}, {}),
                policy.BreakerState(),
            )
        targets = [Target(a.url, a.node) for a in self.kube.agents()]
        return targets, self.kube.cluster(), self.kube.breaker()

    # ----------------------------------------------------------------------------------------------- acting
    def _act(self, decision: policy.Decision, cluster: ClusterView, now: float) -> None:
        """Carry the actions out (in a worker thread). A failed action is logged and counted; the others go on,
        and the next cycle starts again from what the cluster says."""
        assert self.kube is not None
        kube, guard = self.kube, self.may_write
        conditioned: set[str] = set()
        for action in decision.actions:
            try:
                self._do(kube, action, now)
                if isinstance(action, (policy.Cordon, policy.Release)):
                    conditioned.add(action.node)
            except NotLeader as error:
                log.warning("%s; stopping this cycle's actions", error)
                return
            except KubeError as error:
                self.counters.action_failures[type(action).__name__] += 1
                log.error("could not %s: %s (will retry next cycle)", _describe(action), error)
        # Keep the LockstepHealthy condition in line with what Lockstep holds (also after a person's release).
        for name, state in cluster.nodes.items():
            if not state.managed or name in conditioned:
                continue
            try:
                if state.held and state.condition_healthy != "False":
                    kube.set_condition(name, False, state.owned_reason, "held by Lockstep", guard)
                elif not state.held and state.condition_healthy == "False":
                    kube.set_condition(name, True, "Released", "not held by Lockstep", guard)
            except NotLeader:
                return
            except KubeError as error:
                self.counters.action_failures["Condition"] += 1
                log.error("could not set the %s condition of %s: %s", "LockstepHealthy", name, error)

    def _do(self, kube: Kube, action: policy.Action, now: float) -> None:
        guard, safety = self.may_write, self.settings.safety
        if isinstance(action, policy.Cordon):
            verdict = action.verdict
            evidence = policy.evidence_annotation(verdict, safety.evidence_annotation_max_bytes)
            if kube.cordon(action.node, action.reason, evidence, verdict.since or now, guard):
                self.counters.cordons[action.reason] += 1
                log.warning("cordoned %s: %s", action.node, policy.summary(verdict))
                self._event(
                    kube,
                    action.node,
                    "LockstepCordoned",
                    f"cordoned and tainted: {policy.summary(verdict)}",
                    True,
                )
                kube.set_condition(action.node, False, action.reason, policy.summary(verdict), guard)
        elif isinstance(action, policy.Release):
            person = action.cause == "person"
            reason = kube.release(action.node, guard, remember=person, uncordon=not person)
            if reason is not None:
                self.counters.releases[action.cause] += 1
                how = "a person released it" if person else "healthy for the probation period"
                log.warning("released %s (held for %s): %s", action.node, reason, how)
                self._event(
                    kube, action.node, "LockstepReleased", f"released (held for {reason}): {how}", False
                )
                kube.set_condition(action.node, True, "Released", how, guard)
        elif isinstance(action, policy.ForgetRelease):
            kube.forget_release(action.node, guard)
        elif isinstance(action, policy.Notify):
            self._event(kube, action.node, action.event_reason, action.message, True)
        elif isinstance(action, policy.OpenBreaker):
            log.error(
                "circuit breaker OPEN: %s; no cordons until a person runs `lockstep release --breaker`",
                action.reason,
            )
            kube.open_breaker(action.reason, action.nodes, now, guard)

    def _event(self, kube: Kube, node: str, reason: str, message: str, warning: bool) -> None:
        """Events are best effort: a failed one is counted and logged, and never stops the writes after it."""
        try:
            kube.event(node, reason, message, warning, self.may_write)
            self.counters.events[reason] += 1
        except KubeError as error:
            self.counters.action_failures["Event"] += 1
            log.error("could not emit %s for %s: %s", reason, node, error)


def _describe(action: Any) -> str:
    if isinstance(action, policy.Cordon):
        return f"cordon {action.node} ({action.reason})"
    if isinstance(action, policy.Release):
        return f"release {action.node} ({action.cause})"
    if isinstance(action, policy.ForgetRelease):
        return f"forget the person's release of {action.node}"
    if isinstance(action, policy.Notify):
        return f"emit {action.event_reason} for {action.node}"
    return f"open the circuit breaker ({action.reason})"
