"""`lockstep`: the operator's command line (status, explain, release, simulate, demo).

Each command lives in its own module that exposes `register(subparsers)`; the module's handler is set with
`parser.set_defaults(handler=...)` and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that each register one or more subcommands. A module missing here is a command not built yet.
COMMAND_MODULES = (
    "controller.operator_cli",  # status, explain NODE, release NODE, release --breaker
    "controller.simulate",  # simulate SCENARIO.yaml
    "controller.demo",  # demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockstep",
        description="Operate Lockstep: see verdicts, explain them, release nodes, replay scenarios, run the demo.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args))


if __name__ == "__main__":
    sys.exit(main())
