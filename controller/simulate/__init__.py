"""`lockstep simulate SCENARIO.yaml...`: replay synthetic evidence of a cluster with injected faults through the
detection engine and score it (per fault: detected or not, when, as what; precision, recall, time to detect).

Exits non-zero when a scenario's own expectations fail (a missed fault, a late detection, a false verdict).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from controller.detect import DetectionConfig
from controller.simulate.run import report, run_scenario, totals
from controller.simulate.scenario import ScenarioError, load_scenario


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="replay synthetic evidence with injected faults through the detectors and score them",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenarios",
        nargs="+",
        metavar="SCENARIO.yaml",
        help="scenario files (see README.md, Simulation); a directory runs every *.yaml in it",
    )
    parser.add_argument(
        "--detection-config",
        metavar="FILE",
        help="YAML file with detection thresholds (DetectionConfig fields)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the engine's decisions")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        config = (
            DetectionConfig.from_yaml(args.detection_config) if args.detection_config else DetectionConfig()
        )
    except (OSError, ValueError) as error:
        print(f"lockstep simulate: {error}")
        return 2
    paths: list[Path] = []
    for name in args.scenarios:
        path = Path(name)
        paths.extend(sorted(path.glob("*.yaml")) if path.is_dir() else [path])
    failed = 0
    outcomes = []
    for path in paths:
        try:
            scenario = load_scenario(path)
        except ScenarioError as error:
            print(f"lockstep simulate: {error}")
            return 2
        outcome = run_scenario(scenario, config)
        outcomes.append(outcome)
        print(report(outcome))
        failed += not outcome.passed
    if len(paths) > 1:
        print(totals(outcomes))
        print(f"{len(paths) - failed}/{len(paths)} scenarios passed")
    return 1 if failed else 0
