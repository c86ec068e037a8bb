"""The agent's command line: parse the settings (CLI > env > file > defaults), build the collectors, serve until
SIGTERM. Started through agent/__main__.py (`lockstep-agent`, `python -m agent`), which leaves TLS out first.

The command line is generated from the settings tree, so `--help` documents every setting with its env name.
This is the only place in the agent that exits the process: 2 for bad settings, 1 for a failed bind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import threading
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from agent import __version__
from agent.collectors import COLLECTORS
from agent.collectors.runner import CollectorRunner
from agent.server import build_app, serve
from agent.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, AgentSettings, load_settings, text_value

log = logging.getLogger("agent")


class SettingsError(Exception):
    """The settings cannot be loaded; the message names the file or field."""


def build_parser() -> argparse.ArgumentParser:
    """One option per setting, generated from the settings tree; each section's `enabled` is `--collector.NAME`."""
    parser = argparse.ArgumentParser(
        prog="lockstep-agent",
        description=(
            "Lockstep node agent: serves GPU, network, host and training-collective telemetry on /metrics "
            "(Prometheus) and /api/v1/evidence (the controller). Every option below is also an environment "
            "variable (shown in brackets) and a key of the YAML --config file; precedence is "
            "command line > environment > file > default."
        ),
    )
    parser.add_argument("--version", action="version", version=f"lockstep-agent {__version__}")
    parser.add_argument(
        "--config", type=Path, metavar="FILE", default=argparse.SUPPRESS, help="YAML file with settings."
    )
    general = parser.add_argument_group("agent")
    sections: list[tuple[str, type[BaseModel]]] = []
    for name, field in AgentSettings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation))
        else:
            _add_option(general, (name,), field)
    collector_reads = {spec.name: spec.reads for spec in COLLECTORS}
    for section, model in sections:
        doc = (model.__doc__ or section).strip().splitlines()[0]
        reads = f" Reads: {collector_reads[section]}." if section in collector_reads else ""
        group = parser.add_argument_group(f"{section} collector", doc + reads)
        for name, field in model.model_fields.items():
            _add_option(group, (section, name), field)
    return parser


def _add_option(group: argparse._ArgumentGroup, path: tuple[str, ...], field: FieldInfo) -> None:
    env = ENV_PREFIX + ENV_NESTED_DELIMITER.join(path).upper()
    dest = ".".join(path)
    help_text = f"{field.description or ''} [{env}]".replace("%", "%%")  # argparse formats help with %
    default = field.get_default(call_default_factory=True)
    if path[-1] == "enabled" and len(path) == 2:
        group.add_argument(
            f"--collector.{path[0]}",
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=f"{help_text} (default: {'on' if default else 'off'})",
        )
        return
    flag = "--" + ".".join(part.replace("_", "-") for part in path)
    shown = "" if default in ("", None) else f" (default: {default})"
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is Literal else ()
    listed = typing.get_origin(field.annotation) in (list, set, tuple)
    metavar = "{" + ",".join(map(str, choices)) + "}" if choices else "A,B,..." if listed else "VALUE"
    group.add_argument(flag, dest=dest, metavar=metavar, default=argparse.SUPPRESS, help=help_text + shown)


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Merge the command line over env and the config file; raises SettingsError naming the bad field."""
    cli: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest == "config":
            continue
        *sections, name = dest.split(".")
        node = cli
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = text_value((*sections, name), value) if isinstance(value, str) else value
    file_values = _read_config(args.config) if "config" in args else {}
    try:
        return load_settings(file_values, cli)
    except ValidationError as error:
        raise SettingsError("invalid settings: " + "; ".join(_describe(e) for e in error.errors())) from None


def _describe(error: ErrorDetails) -> str:
    """'network.window_seconds: Input should be greater than 0 (got -1)'."""
    where = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error['input']!r})" if where else message


def _read_config(path: Path) -> dict[str, Any]:
    import yaml  # only with --config: keeps the agent's memory down when configured by env and flags

    try:
        values = yaml.safe_load(path.read_text())
    except OSError as error:
        raise SettingsError(f"cannot read config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise SettingsError(f"config file {path} is not valid YAML: {error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings, not {type(values).__name__}")
    return values


def run(settings: AgentSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = CollectorRunner.from_settings(settings)
    host, port = settings.listen_address
    app = build_app(runner, settings.scrape_ahead_seconds)
    server = serve(app, host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and not app.ready.wait(1.0):  # startup only: a wakeup a second until ready
        pass
    if not stop.is_set():
        _freeze_startup_objects()
    stop.wait()  # the handler runs in this thread and ends the wait: no wakeup a second to look at `stop`
    log.info("stopping")
    server.stop()


def _freeze_startup_objects() -> None:
    """Leave what startup and the first collection made (modules, settings, caches: ~48,000 objects) out of the
    garbage collector's full collections, which then scan a few thousand objects instead: ~1 ms instead of ~20 ms
    on whichever thread (often a scrape's) happens to trigger one; then give the heap's free pages back to the
    kernel (malloc_trim: what startup's temporaries left between live objects, ~0.3 MB of RSS)."""
    gc.collect()
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc mallopt parameters
MALLOC_ARENAS = 2
MALLOC_FIXED_THRESHOLD_BYTES = 128 * 1024


def _lean_malloc() -> None:
    """Keep glibc's malloc from holding freed memory: at most 2 arenas (by default up to 8 per core, one per thread
    that allocates; each keeps its own freed memory, ~1 MB of RSS here), and fixed 128 KiB mmap and trim thresholds
    (glibc raises the mmap one after each large free, so the per-sender buffers of a probe ingest, ~100-300 KiB,
    would come from the heap and leave holes there: ~1 MB of RSS). Like MALLOC_ARENA_MAX=2
    MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072 in the environment; a no-op without mallopt."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_FIXED_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_FIXED_THRESHOLD_BYTES)


def _single_threaded_blas() -> None:
    """numpy's OpenBLAS starts a thread per core but one when it is imported (95 idle threads with their stacks on a
    96-core GPU node); the agent does no linear algebra. Before the collectors import numpy; an explicit
    OPENBLAS_NUM_THREADS in the environment wins."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    _lean_malloc()
    _single_threaded_blas()
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingsError as error:
        print(f"lockstep-agent: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("lockstep-agent %s on node %s", __version__, settings.node_name)
    try:
        run(settings)
    except OSError as error:
        log.error("cannot listen on %s: %s", settings.listen, error.strerror or error)
        return 1
    return 0
