"""`lockstep-controller`: parse settings, connect to Kubernetes (or use `--agent-url`), run the loop and the API.

The only place in the controller that exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Sequence

import pydantic
from aiohttp import web

from controller import settings as settings_module
from controller.detect.config import DetectionConfig
from controller.detect.engine import DetectionEngine
from controller.fetch import EvidenceFetcher
from controller.kube import Kube, KubeError, load_api_client
from controller.leader import LeaderElector
from controller.loop import ControllerLoop
from controller.server import build_app
from controller.settings import ControllerSettings

log = logging.getLogger("controller")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lockstep-controller",
        description="Pull evidence from every Lockstep agent, find the node that breaks the lockstep of a training "
        "job, and cordon + taint it with the evidence attached, within safety limits. Settings come from flags, "
        "env LOCKSTEP_* (nested with __, e.g. LOCKSTEP_SAFETY__MAX_CORDONED_NODES=2) and --config FILE (YAML).",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="HOST:PORT of /metrics, /healthz, /readyz, /api/v1/nodes, /api/v1/jobs (default 0.0.0.0:9446)",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (see README, 'Controller')")
    parser.add_argument(
        "--agent-url",
        action="append",
        dest="agent_urls",
        metavar="URL",
        help="pull evidence from this agent (repeatable); no Kubernetes: nothing is written, "
        "verdicts show in the API and metrics",
    )
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help="decide and report, write nothing to Kubernetes"
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: in-cluster service account, then ~/.kube/config)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        dest="interval_seconds",
        metavar="SECONDS",
        help="seconds between cycles (default 5)",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


async def serve(settings: ControllerSettings, engine: DetectionEngine) -> None:
    kube = leader = None
    if not settings.agent_urls:
        kube = Kube(load_api_client(settings.kube.kubeconfig), settings.kube)
        if settings.leader.enabled and not settings.dry_run:
            leader = LeaderElector(kube, settings.leader)
    fetcher = EvidenceFetcher(settings.fetch)
    loop = ControllerLoop(settings, engine, fetcher, kube, leader)

    runner = web.AppRunner(build_app(loop), access_log=None)
    await runner.setup()
    host, _, port = settings.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]") or None, int(port))
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname() if sockets else (host, port)
    mode = "agent list (no Kubernetes)" if kube is None else ("dry-run" if settings.dry_run else "acting")
    log.info("lockstep-controller listening on %s:%s; mode: %s", bound[0], bound[1], mode)

    stop, stop_watching = asyncio.Event(), threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    if kube is not None and settings.kube.watch:
        kube.watch(stop_watching, settings.kube.watch_seconds)
    tasks = [asyncio.create_task(loop.run(stop))]
    if leader is not None:
        tasks.append(asyncio.create_task(leader.run(stop)))
    try:
        await asyncio.gather(*tasks)
    finally:
        stop_watching.set()
        await fetcher.close()
        await runner.cleanup()
        log.info("lockstep-controller stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "kubeconfig")}
    try:
        settings = settings_module.load(args.config, **flags)
        if args.kubeconfig:
            settings.kube.kubeconfig = args.kubeconfig
        engine = DetectionEngine(DetectionConfig.from_mapping(settings.detection))
    except (ValueError, TypeError, pydantic.ValidationError) as error:
        print(f"lockstep-controller: invalid settings: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings, engine))
    except (OSError, KubeError) as error:
        log.error("cannot start: %s (use --kubeconfig, or --agent-url to run without Kubernetes)", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
