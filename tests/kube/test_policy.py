"""Policy is pure: verdicts + cluster state + budget -> actions. Tested on plain values."""

from __future__ import annotations

import json

from controller import policy
from controller.model import Finding, NodeVerdict, Severity, Verdict
from controller.policy import BreakerState, Cordon, Memory, NodeState, Notify, OpenBreaker, Release, decide
from controller.settings import SafetySettings

from .conftest import faulty

NOW = 10_000.0


def limits(**overrides: object) -> SafetySettings:
    return SafetySettings(**{"max_cordoned_nodes": 10, "max_cordoned_ratio": 1.0, "max_cordons_per_window": 10,
                             "breaker_nodes": 10, **overrides})


def cluster(count: int, **states: NodeState) -> dict[str, NodeState]:
    nodes = {f"n{i}": NodeState(f"n{i}") for i in range(count)}
    nodes.update(states)
    return nodes


def cordoned(decision: policy.Decision) -> list[str]:
    return [a.node for a in decision.actions if isinstance(a, Cordon)]


def test_unknown_and_suspect_never_cordon() -> None:
    verdicts = {"n0": NodeVerdict("n0", Verdict.UNKNOWN), "n1": NodeVerdict("n1", Verdict.SUSPECT, 0.6, "Straggler")}
    decision = decide(verdicts, cluster(3), BreakerState(), Memory(), limits(), NOW)
    assert cordoned(decision) == []
    assert [a.node for a in decision.actions if isinstance(a, Notify)] == ["n1"]


def test_suspect_event_is_emitted_once_per_turn() -> None:
    verdicts = {"n1": NodeVerdict("n1", Verdict.SUSPECT, 0.6, "Straggler")}
    first = decide(verdicts, cluster(3), BreakerState(), Memory(), limits(), NOW)
    second = decide(verdicts, cluster(3), BreakerState(), first.memory, limits(), NOW + 5)
    assert len(first.actions) == 1 and second.actions == ()


def test_hard_evidence_goes_first_when_the_cap_allows_only_one() -> None:
    verdicts = {
        "n1": faulty("n1", "Straggler", Severity.STATISTICAL, confidence=0.99),
        "n2": faulty("n2", "CriticalXid", Severity.HARD, confidence=0.6),
    }
    decision = decide(verdicts, cluster(10), BreakerState(), Memory(), limits(max_cordoned_nodes=1), NOW)
    assert cordoned(decision) == ["n2"]
    assert "node cap" in decision.blocked["n1"]


def test_the_share_cap_is_a_fraction_of_managed_nodes_but_at_least_one() -> None:
    assert policy.node_cap(limits(max_cordoned_ratio=0.1), 100) == 10
    assert policy.node_cap(limits(max_cordoned_ratio=0.1), 4) == 1
    assert policy.node_cap(limits(max_cordoned_nodes=0), 100) == 0


def test_nodes_already_held_count_against_the_caps() -> None:
    held = NodeState("n0", unschedulable=True, tainted=True, owned_reason="CriticalXid", cordoned_by_lockstep=True,
                     owned_since=NOW - 60)
    verdicts = {"n1": faulty("n1")}
    decision = decide(verdicts, cluster(10, n0=held), BreakerState(), Memory(), limits(max_cordons_per_window=1), NOW)
    assert cordoned(decision) == [] and "rate cap" in decision.blocked["n1"]


def test_the_breaker_opens_when_too_many_nodes_turn_faulty_within_the_window() -> None:
    memory = Memory()
    for step in range(3):
        decision = decide({n: faulty(n) for n in ("n1", "n2", "n3")[: step + 1]}, cluster(10), BreakerState(), memory,
                          limits(breaker_nodes=3, max_cordoned_nodes=0), NOW + step)
        memory = decision.memory
    assert any(isinstance(a, OpenBreaker) for a in decision.actions)
    assert decision.breaker.open and decision.breaker.nodes == ("n1", "n2", "n3")


def test_turns_older_than_the_window_or_before_a_reset_do_not_count() -> None:
    memory = Memory(bad_turns=(("n1", NOW - 700), ("n2", NOW - 10)))
    reset = BreakerState(reset_at=NOW - 5)
    decision = decide({"n3": faulty("n3")}, cluster(10), reset, memory, limits(breaker_nodes=2), NOW)
    assert not decision.breaker.open and cordoned(decision) == ["n3"]


def test_an_open_breaker_blocks_cordons_but_not_a_persons_release() -> None:
    released = NodeState("n0", unschedulable=False, tainted=True, owned_reason="Hang", cordoned_by_lockstep=True)
    decision = decide({"n1": faulty("n1")}, cluster(5, n0=released), BreakerState(open=True, reason="storm"),
                      Memory(), limits(), NOW)
    assert cordoned(decision) == [] and "circuit breaker" in decision.blocked["n1"]
    assert [a for a in decision.actions if isinstance(a, Release)] == [Release("n0", "person", "Hang")]


def test_unmanaged_nodes_and_nodes_outside_the_selection_get_no_action() -> None:
    nodes = cluster(3, n1=NodeState("n1", managed=False))
    verdicts = {name: faulty(name) for name in ("n1", "n9")}  # n9: not selected (not in the cluster view)
    decision = decide(verdicts, nodes, BreakerState(), Memory(), limits(), NOW)
    assert decision.actions == ()


def test_fabric_only_evidence_alerts_and_never_cordons() -> None:
    verdicts = {"n1": faulty("n1", "LinkDegraded", Severity.FABRIC)}
    decision = decide(verdicts, cluster(3), BreakerState(), Memory(), limits(), NOW)
    assert cordoned(decision) == []
    assert isinstance(decision.actions[0], Notify) and "fabric" in decision.actions[0].message


def test_released_reason_blocks_that_reason_only_and_is_forgotten_after_a_healthy_while() -> None:
    released = NodeState("n1", released_reason="CriticalXid")
    blocked = decide({"n1": faulty("n1")}, cluster(3, n1=released), BreakerState(), Memory(), limits(), NOW)
    assert cordoned(blocked) == [] and "released" in blocked.blocked["n1"]
    other = decide({"n1": faulty("n1", "Hang")}, cluster(3, n1=released), BreakerState(), Memory(), limits(), NOW)
    assert cordoned(other) == ["n1"]
    healthy = {"n1": NodeVerdict("n1", Verdict.HEALTHY, 1.0, since=NOW - 4000)}
    forget = decide(healthy, cluster(3, n1=released), BreakerState(), Memory(), limits(), NOW)
    assert forget.actions == (policy.ForgetRelease("n1"),)


def test_probation_release_only_when_enabled_and_healthy_long_enough() -> None:
    held = NodeState("n1", unschedulable=True, tainted=True, owned_reason="Hang", cordoned_by_lockstep=True)
    short = {"n1": NodeVerdict("n1", Verdict.HEALTHY, 1.0, since=NOW - 30)}
    long = {"n1": NodeVerdict("n1", Verdict.HEALTHY, 1.0, since=NOW - 300)}
    nodes = cluster(3, n1=held)
    assert decide(long, nodes, BreakerState(), Memory(), limits(), NOW).actions == ()
    assert decide(short, nodes, BreakerState(), Memory(), limits(auto_release_after_seconds=60), NOW).actions == ()
    assert decide(long, nodes, BreakerState(), Memory(), limits(auto_release_after_seconds=60), NOW).actions == (
        Release("n1", "probation", "Hang"),)


def test_the_evidence_annotation_stays_within_its_bound_and_says_it_was_cut() -> None:
    finding = Finding("straggler", "Straggler", "n1", Severity.STATISTICAL, "late " * 50,
                      evidence={"lateness_seconds": list(range(2000))})
    verdict = NodeVerdict("n1", Verdict.FAULTY, 0.9, "Straggler", (finding,) * 5, NOW)
    text = policy.evidence_annotation(verdict, 1024)
    assert len(text.encode()) <= 1024
    document = json.loads(text)
    assert document["truncated"] is True and document["reason"] == "Straggler"
    small = policy.evidence_annotation(faulty("n1"), 4096)
    assert "truncated" not in json.loads(small)
