"""Run a scenario: synthetic evidence -> the real detection engine, cycle by cycle -> scored against the truth.

A fault that blames a node is detected when that node's verdict turns faulty (time to detect from the fault's
start); a fabric fault when a fabric finding names its nodes and none of them gets a verdict. Every verdict
episode (a node suspect or faulty, until it is healthy again) not explained by a node fault active at the
time is a false verdict; precision = explained episodes / all episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.detect import DetectionConfig, DetectionEngine
from controller.model import Severity, Verdict
from controller.simulate.physics import Noise, incarnations
from controller.simulate.scenario import FaultSpec, Scenario
from controller.simulate.synth import Agents

HARD_HOLD_GRACE_SECONDS = (
    130.0  # a hard verdict is held after its signal ends (DetectionConfig.hard_hold_seconds)
)


@dataclass
class FaultOutcome:
    fault: FaultSpec
    blamed_nodes: tuple[str, ...]
    detected_after: float | None = None  # s from the fault's start to the verdict (or fabric finding)
    reason: str = ""
    verdict: str = ""
    expectation_met: bool = False
    note: str = ""


@dataclass
class Episode:
    node: str
    start: float
    verdict: str
    reason: str
    explained: bool


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    faults: list[FaultOutcome] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    cycles: int = 0
    engine_seconds: list[float] = field(default_factory=list)

    @property
    def expected(self) -> list[FaultOutcome]:
        return [f for f in self.faults if f.fault.expect_detected]

    @property
    def recall(self) -> float:
        expected = self.expected
        return sum(f.detected_after is not None for f in expected) / len(expected) if expected else 1.0

    @property
    def false_verdicts(self) -> list[Episode]:
        return [e for e in self.episodes if not e.explained]

    @property
    def precision(self) -> float:
        return (len(self.episodes) - len(self.false_verdicts)) / len(self.episodes) if self.episodes else 1.0

    @property
    def passed(self) -> bool:
        return (
            self.recall >= self.scenario.min_recall
            and len(self.false_verdicts) <= self.scenario.max_false_verdicts
            and all(f.expectation_met for f in self.faults)
        )


def default_within(fault: FaultSpec, scenario: Scenario) -> float | None:
    """Time-to-detect targets: hard faults within one cycle, hangs 30 s, stragglers 60 s, links 60 s."""
    if fault.within_seconds is not None:
        return fault.within_seconds
    if fault.kind == "hard":
        return scenario.cycle_seconds
    return {
        "hang": 30.0,
        "straggler": 60.0,
        "slow_link": 60.0,
        "switch_fault": 60.0,
        "link_between": 60.0,
    }.get(fault.kind)


def run_scenario(
    scenario: Scenario, config: DetectionConfig | None = None, noise: Noise | None = None
) -> ScenarioOutcome:
    import time

    rng = np.random.default_rng(scenario.seed)
    runs = incarnations(scenario, noise or Noise.load(), rng)
    agents = Agents(scenario, runs, rng)
    engine = DetectionEngine(config)
    topology = {scenario.node_name(n): scenario.switch_of(n) for n in range(scenario.nodes)}
    outcome = ScenarioOutcome(scenario)
    for fault in scenario.faults:
        nodes = (fault.node,) if fault.node is not None else fault.nodes
        if fault.kind == "switch_fault":
            nodes = tuple(n for n in range(scenario.nodes) if scenario.switch_of(n) == fault.label)
        outcome.faults.append(FaultOutcome(fault, tuple(scenario.node_name(n) for n in nodes)))
    open_episodes: dict[str, Episode] = {}
    t = scenario.cycle_seconds
    while t <= scenario.duration_seconds:
        evidence = agents.evidence(t)
        started = time.process_time()
        result = engine.step(evidence, t, topology)
        outcome.engine_seconds.append(time.process_time() - started)
        outcome.cycles += 1
        fabric = [f for f in result.findings if f.severity is Severity.FABRIC]
        for fo in outcome.faults:
            if fo.detected_after is not None or t < fo.fault.start:
                continue
            if fo.fault.fabric:
                hit = next((f for f in fabric if set(f.nodes) & set(fo.blamed_nodes)), None)
                if hit is not None:
                    fo.detected_after, fo.reason, fo.verdict = t - fo.fault.start, hit.reason, "fabric"
            elif fo.fault.expect_detected:
                for node in fo.blamed_nodes:
                    v = result.verdicts[node]
                    if v.verdict is Verdict.FAULTY:
                        fo.detected_after, fo.reason, fo.verdict = (
                            t - fo.fault.start,
                            v.reason,
                            v.verdict.value,
                        )
                        break
        for node, v in result.verdicts.items():
            bad = v.verdict in (Verdict.SUSPECT, Verdict.FAULTY)
            if bad and node not in open_episodes:
                episode = Episode(node, t, v.verdict.value, v.reason, _explained(outcome.faults, node, t))
                open_episodes[node] = episode
                outcome.episodes.append(episode)
            elif bad:
                open_episodes[node].verdict = max(
                    open_episodes[node].verdict, v.verdict.value, key=("suspect", "faulty").index
                )
            elif not bad and v.verdict is not Verdict.UNKNOWN:
                open_episodes.pop(node, None)
        t += scenario.cycle_seconds
    for fo in outcome.faults:
        fo.expectation_met, fo.note = _judge(fo, scenario)
    return outcome


def _explained(faults: list[FaultOutcome], node: str, t: float) -> bool:
    """Is a verdict on `node` at `t` explained by a node fault that blames it and is active (or just ended)?"""
    for fo in faults:
        f = fo.fault
        if f.fabric or not f.expect_detected or node not in fo.blamed_nodes:
            continue
        end = f.end if f.end is not None else float("inf")
        if f.start <= t <= end + HARD_HOLD_GRACE_SECONDS:
            return True
    return False


def _judge(fo: FaultOutcome, scenario: Scenario) -> tuple[bool, str]:
    f = fo.fault
    if not f.expect_detected:
        return True, "negative control"
    if fo.detected_after is None:
        return False, "not detected"
    within = default_within(f, scenario)
    if within is not None and fo.detected_after > within + 1e-6:
        return False, f"detected after {fo.detected_after:.0f} s, target {within:.0f} s"
    if f.expect_reason and fo.reason != f.expect_reason:
        return False, f"blamed as {fo.reason}, expected {f.expect_reason}"
    return True, "ok"


def report(outcome: ScenarioOutcome) -> str:
    """Human-readable lines: one per fault, the false verdicts, then the totals."""
    s = outcome.scenario
    lines = [
        f"scenario {s.name}: {s.nodes} nodes x {s.gpus_per_node} GPUs, {len(s.jobs)} jobs, {outcome.cycles} cycles of {s.cycle_seconds:g} s"
    ]
    for fo in outcome.faults:
        f = fo.fault
        where = ", ".join(fo.blamed_nodes) or (f.job or "")
        what = f"{f.kind:<13} {where:<24} at {f.start:>5.0f} s"
        if not f.expect_detected:
            lines.append(f"  {what}  negative control")
        elif fo.detected_after is None:
            lines.append(f"  {what}  NOT DETECTED  [{fo.note}]")
        else:
            lines.append(
                f"  {what}  {fo.verdict} as {fo.reason} after {fo.detected_after:.0f} s  [{fo.note}]"
            )
    for e in outcome.false_verdicts:
        lines.append(f"  FALSE VERDICT {e.node} {e.verdict} ({e.reason}) at {e.start:.0f} s")
    ttd = [f.detected_after for f in outcome.expected if f.detected_after is not None]
    cpu = outcome.engine_seconds
    lines.append(
        f"  precision {outcome.precision:.2f}  recall {outcome.recall:.2f}  false verdicts {len(outcome.false_verdicts)}"
        + (f"  time to detect mean {np.mean(ttd):.0f} s max {max(ttd):.0f} s" if ttd else "")
        + (f"  engine {1000 * float(np.median(cpu)):.1f} ms/cycle" if cpu else "")
        + f"  -> {'PASS' if outcome.passed else 'FAIL'}"
    )
    return "\n".join(lines)


def totals(outcomes: list[ScenarioOutcome]) -> str:
    """One line over many scenarios: precision, recall, false verdicts, time to detect per fault kind."""
    expected = [f for o in outcomes for f in o.expected]
    episodes = [e for o in outcomes for e in o.episodes]
    false = [e for o in outcomes for e in o.false_verdicts]
    found = [f for f in expected if f.detected_after is not None]
    by_kind: dict[str, list[float]] = {}
    for f in found:
        by_kind.setdefault(f.fault.kind, []).append(float(f.detected_after or 0.0))
    kinds = ", ".join(f"{kind} {np.mean(t):.0f}/{max(t):.0f} s" for kind, t in sorted(by_kind.items()))
    precision = (len(episodes) - len(false)) / len(episodes) if episodes else 1.0
    recall = len(found) / len(expected) if expected else 1.0
    return (
        f"all scenarios: precision {precision:.2f}  recall {recall:.2f} ({len(found)}/{len(expected)})  "
        f"false verdicts {len(false)}  time to detect mean/max: {kinds}"
    )
