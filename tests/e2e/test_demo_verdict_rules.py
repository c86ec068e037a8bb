"""How the demo judges a run (pure, no cluster): what counts as found, in time, and as blaming the innocent."""

from __future__ import annotations

import io

from controller.demo.observe import parse_controller_nodes
from controller.demo.scenario import Detection
from controller.demo.timeline import Timeline


def detection(**fields: object) -> Detection:
    values: dict[str, object] = {
        "fault": "straggler",
        "target": "node3",
        "injected_at_seconds": 40.0,
        "budget_seconds": 60.0,
    }
    values.update(fields)
    return Detection(**values)  # type: ignore[arg-type]


def test_fault_counts_as_found_only_when_the_target_is_faulty_cordoned_and_tainted() -> None:
    assert not detection(faulty_seconds=30.0, cordoned_seconds=31.0).found
    found = detection(faulty_seconds=30.0, cordoned_seconds=31.0, tainted_seconds=32.5)
    assert found.found and found.time_to_detect_seconds == 32.5 and found.within_budget and found.passed


def test_detection_past_the_budget_is_found_but_not_within_budget() -> None:
    late = detection(faulty_seconds=61.0, cordoned_seconds=61.0, tainted_seconds=61.0)
    assert late.found and not late.within_budget


def test_blaming_an_innocent_node_fails_the_run_even_when_the_target_was_found() -> None:
    both = detection(
        faulty_seconds=5.0, cordoned_seconds=5.0, tainted_seconds=5.0, innocent_blamed=("node1",)
    )
    assert both.found and not both.passed


def test_negative_control_passes_only_when_nobody_is_blamed() -> None:
    assert detection(fault="none", target=None).passed
    assert not detection(fault="none", target=None, innocent_blamed=("node0",)).passed


def test_controller_status_is_read_per_node_with_the_findings_in_words() -> None:
    findings = [{"summary": "stuck 23 s in collective 51"}, {"summary": ""}, "not a finding"]
    document = {
        "nodes": [
            {"node": "n0", "verdict": "faulty", "reason": "Hang", "findings": findings},
            {"verdict": "x"},
        ]
    }
    assert parse_controller_nodes(document) == {"n0": ("faulty", "Hang", "stuck 23 s in collective 51")}


def test_timeline_prints_each_milestone_with_seconds_since_start() -> None:
    out = io.StringIO()
    timeline = Timeline(out=out, started=0.0)
    event = timeline.add("fault", "rank 3 stopped", node="node3")
    assert timeline.first("fault", node="node3") is event
    assert timeline.first("fault", node="node1") is None
    assert "fault" in out.getvalue() and "rank 3 stopped" in out.getvalue() and "s]" in out.getvalue()
