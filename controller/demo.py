"""`lockstep demo`: a local cluster with a real training job and an injected fault (placeholder until built)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the local end-to-end demo")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    print("lockstep demo: the end-to-end demo is being built; see README.md for what exists so far.")
    return 0
