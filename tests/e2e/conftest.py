"""End-to-end fixtures: real demo clusters (namespaces, agents, emulator, controller, DDP job) via the same
`DemoRun` that `make demo` uses; measured times to detect are collected and printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.demo.faults import Fault
from controller.demo.scenario import DemoOptions, DemoRun, Detection
from controller.demo.timeline import Timeline

REPO = Path(__file__).resolve().parents[2]
TIMES_FILE = REPO / "build" / "e2e-times-to-detect.json"
HEALTHY_SECONDS = 15.0  # training before the fault: enough windows for the detectors' baselines
MEASURED: list[Detection] = []


def demo_options(**overrides: object) -> DemoOptions:
    """Namespaces as root (CI), localhost ports otherwise; no Prometheus (its alerts are tested in deploy)."""
    values: dict[str, object] = {"nodes": 4, "use_namespaces": os.geteuid() == 0, "prometheus": False}
    values.update(overrides)
    return DemoOptions(**values)  # type: ignore[arg-type]


def _run_fault(fault: Fault, **overrides: object) -> tuple[Detection, dict[str, tuple[bool, str | None]]]:
    """Build a cluster, train, inject `fault`, watch until its budget passes or the target is acted on.

    Returns the detection and the nodes' (cordoned, taint) read back from the Kubernetes API at the end.
    """
    with DemoRun(demo_options(**overrides), Timeline()) as demo:
        demo.start_job()
        demo.observe(HEALTHY_SECONDS)
        injected_at = demo.inject(fault)
        detection = demo.watch_fault(fault, injected_at, fault.budget_seconds)
        assert demo.observer is not None
        api_nodes = demo.observer.kube_nodes()
    MEASURED.append(detection)
    return detection, api_nodes


@pytest.fixture
def run_fault() -> Callable[..., tuple[Detection, dict[str, tuple[bool, str | None]]]]:
    """`run_fault(fault, **options)` -> (detection, {node: (cordoned, taint)} read back from the API)."""
    return _run_fault


@pytest.fixture
def measured() -> list[Detection]:
    """Detections to print in the run's summary of times to detect."""
    return MEASURED


@pytest.fixture(scope="module")
def shared_demo() -> Iterator[DemoRun]:
    """One running cluster for a module's tests (negative controls share it: nothing may be acted on)."""
    with DemoRun(demo_options(idle_nodes=1), Timeline()) as demo:
        demo.start_job()
        yield demo


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MEASURED:
        return
    terminalreporter.section("lockstep end-to-end: measured times to detect")
    for d in MEASURED:
        if d.target is None:
            blamed = ", ".join(d.innocent_blamed) or "nobody"
            terminalreporter.write_line(f"{d.fault:<13} negative control: blamed {blamed}")
            continue
        ttd = f"{d.time_to_detect_seconds:.1f} s" if d.time_to_detect_seconds is not None else "never"
        suspect = f"{d.first_suspect_seconds:.1f} s" if d.first_suspect_seconds is not None else "-"
        terminalreporter.write_line(
            f"{d.fault:<13} first suspect {suspect:>7}, faulty + cordoned + tainted {ttd:>7} "
            f"(budget {d.budget_seconds:g} s), reason {d.reason or '-'}, innocent blamed {len(d.innocent_blamed)}"
        )
    TIMES_FILE.parent.mkdir(exist_ok=True)
    TIMES_FILE.write_text(
        json.dumps(
            [
                {
                    "fault": d.fault,
                    "target": d.target,
                    "innocent_blamed": list(d.innocent_blamed),
                    "first_suspect_seconds": d.first_suspect_seconds,
                    "time_to_detect_seconds": d.time_to_detect_seconds,
                    "budget_seconds": d.budget_seconds,
                    "reason": d.reason,
                    "taint": d.taint,
                }
                for d in MEASURED
            ],
            indent=2,
        )
    )
