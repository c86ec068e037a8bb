"""The controller's own Prometheus metrics, built fresh from the loop's latest snapshot on every scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from controller.loop import PHASES, ControllerLoop
from controller.model import Verdict


class ControllerCollector(Collector):
    def __init__(self, loop: ControllerLoop) -> None:
        self.loop = loop

    def collect(self) -> Iterator[Metric]:
        loop, snapshot, counters = self.loop, self.loop.snapshot, self.loop.counters

        verdict = GaugeMetricFamily(
            "lockstep_node_verdict",
            "1 for the node's current verdict (detection engine), 0 for the others",
            labels=["node", "verdict"],
        )
        for node, node_verdict in sorted(snapshot.verdicts.items()):
            for value in Verdict:
                verdict.add_metric([node, value.value], 1.0 if node_verdict.verdict is value else 0.0)
        yield verdict

        cordoned = GaugeMetricFamily(
            "lockstep_node_cordoned",
            "1 for every node Lockstep holds cordoned and tainted now, with the taint's reason "
            "(node annotations lockstep.dev/reason, read from the Kubernetes API each cycle)",
            labels=["node", "reason"],
        )
        for node, state in sorted(snapshot.cluster.nodes.items()):
            if state.held:
                cordoned.add_metric([node, state.owned_reason], 1.0)
        yield cordoned

        yield _counter(
            "lockstep_controller_cordons",
            "Nodes cordoned and tainted by Lockstep (Kubernetes API)",
            "reason",
            counters.cordons,
        )
        yield _counter(
            "lockstep_controller_releases",
            "Nodes released from Lockstep (probation or a person)",
            "cause",
            counters.releases,
        )
        yield _counter(
            "lockstep_controller_events",
            "Kubernetes Events emitted, by event reason",
            "reason",
            counters.events,
        )
        yield _counter(
            "lockstep_controller_action_failures",
            "Actions that failed after retries (next cycle retries)",
            "action",
            counters.action_failures,
        )

        blocked = GaugeMetricFamily(
            "lockstep_controller_blocked_nodes", "Faulty nodes the safety limits keep Lockstep from cordoning"
        )
        blocked.add_metric([], float(len(snapshot.blocked)))
        yield blocked

        breaker = GaugeMetricFamily(
            "lockstep_controller_breaker_open",
            "1 while the circuit breaker is open (ConfigMap in the cluster)",
        )
        breaker.add_metric([], 1.0 if snapshot.breaker.open else 0.0)
        yield breaker

        duration = GaugeMetricFamily(
            "lockstep_controller_cycle_duration_seconds",
            "Duration of each phase of the last controller cycle",
            labels=["phase"],
        )
        for phase in PHASES:
            if phase in snapshot.phase_seconds:
                duration.add_metric([phase], snapshot.phase_seconds[phase])
        yield duration

        cycles = CounterMetricFamily(
            "lockstep_controller_cycles", "Controller cycles, by outcome", labels=["outcome"]
        )
        cycles.add_metric(["ok"], float(counters.cycles))
        cycles.add_metric(["failed"], float(counters.cycle_failures))
        cycles.add_metric(["cluster_unreadable"], float(counters.discovery_failures))
        yield cycles

        last = GaugeMetricFamily(
            "lockstep_controller_last_cycle_timestamp_seconds", "Unix time the last cycle ended"
        )
        if snapshot.completed_at:
            last.add_metric([], snapshot.completed_at)
        yield last

        age = GaugeMetricFamily(
            "lockstep_controller_evidence_age_seconds",
            "Age of the last evidence pulled from the node's agent",
            labels=["node"],
        )
        for health in loop.fetcher.health.values():
            if health.node and health.evidence_age_seconds is not None:
                age.add_metric([health.node], health.evidence_age_seconds)
        yield age

        misattributed = GaugeMetricFamily(
            "lockstep_controller_misattributed_ranks",
            "Ranks the node's agent reported for a pod that Kubernetes runs elsewhere or not at all (pods "
            "list/watch), left out of detection in the last cycle",
            labels=["node"],
        )
        for node, count in sorted(Counter(rank.node for rank in snapshot.misattributed).items()):
            misattributed.add_metric([node], float(count))
        yield misattributed

        agents = GaugeMetricFamily("lockstep_controller_agents", "Agents the controller pulls evidence from")
        agents.add_metric([], float(loop.fetcher.stats.agents))
        yield agents
        reachable = GaugeMetricFamily(
            "lockstep_controller_agents_reachable", "Agents that answered with fresh evidence"
        )
        reachable.add_metric([], float(loop.fetcher.stats.reachable))
        yield reachable
        yield _counter(
            "lockstep_controller_fetch_errors",
            "Failed evidence pulls, by kind",
            "kind",
            loop.fetcher.stats.errors,
        )

        if loop.kube is not None:
            stats = loop.kube.stats
            errors = CounterMetricFamily(
                "lockstep_controller_api_errors",
                "Kubernetes API errors, by verb and HTTP code (or timeout)",
                labels=["verb", "code"],
            )
            for (verb, code), count in sorted(stats.errors.items()):
                errors.add_metric([verb, code], float(count))
            yield errors
            yield _counter(
                "lockstep_controller_api_retries",
                "Kubernetes API calls retried after an error",
                "verb",
                stats.retries,
            )
            yield _counter(
                "lockstep_controller_api_conflicts",
                "409 Conflicts met (and retried from a fresh read)",
                "verb",
                stats.conflicts,
            )

        leader = GaugeMetricFamily(
            "lockstep_controller_leader", "1 while this replica holds the Lease and may act"
        )
        leader.add_metric([], 1.0 if loop.leader is None or loop.leader.is_leader() else 0.0)
        yield leader


def _counter(name: str, documentation: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(values.items()):
        family.add_metric([key], float(count))
    return family


def registry(loop: ControllerLoop) -> CollectorRegistry:
    """A registry of our own (no process-wide default registry, nothing registered at import time)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(ControllerCollector(loop))
    return reg
