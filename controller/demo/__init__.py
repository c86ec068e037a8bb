"""`lockstep demo`: a local cluster with a real training job and an injected fault, detected and acted on.

The command line lives here; `scenario.DemoRun` does the work (and is what `tests/e2e` drives).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType

from controller.demo.cluster import ClusterError
from controller.demo.faults import FAULTS, Fault, FaultError
from controller.demo.scenario import STOP_REQUESTED, DemoOptions, DemoRun, Detection, PrerequisiteError
from controller.demo.timeline import Timeline

FAULT_CHOICES = ("straggler", "hang", "slow-link", "xid", "none", "rank-checkpoint")
DEFAULT_WATCH_SECONDS = 30.0  # how long `--fault none` watches for false alarms
ALERT_WAIT_SECONDS = 20.0  # after the cordon, how long to wait for Prometheus to fire the alert about it


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the local end-to-end demo: a cluster, a real training job, a fault, its detection",
        description=(
            "Build a small cluster on this machine (one network namespace per node when root, localhost ports "
            "otherwise), each node with a Lockstep agent and fake NVML GPUs; register the nodes in the "
            "Kubernetes API emulator; run the controller against it; start a real torch.distributed DDP job "
            "(gloo, CPU, one rank per node, probe on); let it train, inject a fault and print the timeline "
            "until the faulty node is cordoned and tainted. Everything is removed at the end, also on Ctrl-C. "
            "Exit code 0: the fault was found in time and no innocent node was blamed; 1: not; 2: cannot run."
        ),
    )
    parser.add_argument(
        "--nodes", type=int, default=4, help="nodes in the cluster, 2..16 (default %(default)s)"
    )
    parser.add_argument(
        "--fault",
        choices=FAULT_CHOICES,
        default="straggler",
        help="fault to inject (default %(default)s): "
        + "; ".join(f"{name}: {FAULTS[name].help}" for name in FAULT_CHOICES),
    )
    parser.add_argument(
        "--target-rank",
        type=int,
        default=None,
        help="rank whose node gets the fault (default: the last rank)",
    )
    parser.add_argument(
        "--fault-at",
        type=float,
        default=20.0,
        help="seconds of healthy training, after every rank reports, before the fault (default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"seconds allowed from the fault to its detection (default: the fault's budget in DESIGN.md: "
        f"xid 15, hang 30, straggler and slow-link 60); with --fault none or rank-checkpoint, seconds to watch for false alarms (default {DEFAULT_WATCH_SECONDS:g})",
    )
    parser.add_argument(
        "--straggler-slowdown",
        type=float,
        default=1.4,
        help="compute factor of the straggling rank, 1.4 = +40%% per step (default %(default)s)",
    )
    parser.add_argument(
        "--xid",
        type=int,
        default=79,
        help="XID code fired by --fault xid (default %(default)s: GPU has fallen off the bus)",
    )
    parser.add_argument(
        "--link-rate", default="8mbit", help="tc tbf rate for --fault slow-link (default %(default)s)"
    )
    parser.add_argument(
        "--idle-nodes",
        type=int,
        default=0,
        help="nodes with an agent but no rank, a negative control (default %(default)s)",
    )
    parser.add_argument(
        "--step-compute",
        type=float,
        default=0.2,
        help="simulated device compute per training step, s (default %(default)s)",
    )
    parser.add_argument(
        "--parallel",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="how the job shards its model (default %(default)s): ddp: DistributedDataParallel, one gradient "
        "all-reduce per step; fsdp: FSDP2 (fully_shard per layer), all-gathers and reduce-scatters per layer",
    )
    parser.add_argument(
        "--localhost",
        action="store_true",
        help="use localhost ports instead of network namespaces, even as root",
    )
    parser.add_argument(
        "--no-prometheus", action="store_true", help="do not start Prometheus even if it is installed"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the result, keep the cluster running until Ctrl-C, and keep the logs",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging of the demo itself")
    parser.set_defaults(handler=run)


def build_fault(args: argparse.Namespace, world_size: int) -> Fault:
    target = args.target_rank if args.target_rank is not None else world_size - 1
    if not 0 <= target < world_size:
        raise FaultError(f"--target-rank {target} is not a rank of a {world_size}-rank job")
    fault_class = FAULTS[args.fault]
    parameters: dict[str, object] = {
        "straggler": {"factor": args.straggler_slowdown},
        "xid": {"xid": args.xid},
        "slow-link": {"rate": args.link_rate},
    }.get(args.fault, {})
    return fault_class(target_rank=target if fault_class.on_one_rank else None, **parameters)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_on_signal(signum: int, frame: FrameType | None) -> None:
    """Unwind to the teardown on the first stop signal; ignore further ones so the teardown is not cut short."""
    for other in STOP_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    STOP_REQUESTED.set()
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_on_signal)
    if not 2 <= args.nodes <= 16 or not 0 <= args.idle_nodes <= args.nodes - 2:
        print(
            "lockstep demo: need 2..16 nodes with at least 2 ranks (--nodes, --idle-nodes)", file=sys.stderr
        )
        return 2
    use_namespaces = not args.localhost and os.geteuid() == 0
    options = DemoOptions(
        nodes=args.nodes,
        idle_nodes=args.idle_nodes,
        use_namespaces=use_namespaces,
        prometheus=not args.no_prometheus,
        compute_seconds=args.step_compute,
        parallel=args.parallel,
        keep_work_dir=args.keep,
    )
    try:
        fault = build_fault(args, args.nodes - args.idle_nodes)
        if fault.name == "slow-link" and not use_namespaces:
            raise FaultError(
                "--fault slow-link needs network namespaces and tc: run as root without --localhost"
            )
    except FaultError as error:
        print(f"lockstep demo: {error}", file=sys.stderr)
        return 2
    timeout = args.timeout if args.timeout is not None else (fault.budget_seconds or DEFAULT_WATCH_SECONDS)
    timeline = Timeline()
    watch = (
        f"watching {timeout:g} s for false alarms"
        if not fault.blames_a_node
        else f"detection allowed {timeout:g} s"
    )
    timeline.say(f"lockstep demo: {args.nodes} nodes, fault {fault.name!r}, {watch} after the fault")
    try:
        with DemoRun(options, timeline) as demo:
            demo.start_job()
            demo.observe(args.fault_at)
            injected_at = demo.inject(fault)
            detection = demo.watch_fault(fault, injected_at, timeout)
            if detection.found:
                demo.watch_alerts(ALERT_WAIT_SECONDS)
            firing = (
                sorted(k for k, v in demo.observer.alerts.items() if v == "firing") if demo.observer else []
            )
            print_summary(timeline, detection, timeout, firing if demo.prometheus else None)
            if args.keep:
                keep_running(demo)
    except PrerequisiteError as error:
        print(f"lockstep demo: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nlockstep demo: interrupted; everything it started has been removed", file=sys.stderr)
        return 130
    except ClusterError as error:
        print(
            f"lockstep demo: could not build the cluster: {error}\n(without network namespaces: --localhost)",
            file=sys.stderr,
        )
        return 1
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"lockstep demo: failed: {error}", file=sys.stderr)
        return 1
    return 0 if detection.passed else 1


def print_summary(timeline: Timeline, detection: Detection, timeout: float, alerts: list[str] | None) -> None:
    """The run in a few lines; `alerts` are the firing Prometheus alerts (None: Prometheus not running)."""
    say = timeline.say
    say("")
    say("summary")
    if detection.target is None:
        say(f"  fault              {detection.fault} (nothing should be blamed)")
    else:
        say(
            f"  fault              {detection.fault} on {detection.target} at {detection.injected_at_seconds:.1f} s"
        )

        def seconds(value: float | None) -> str:
            return f"{value:.1f} s after the fault" if value is not None else "never"

        say(f"  first suspect      {seconds(detection.first_suspect_seconds)}")
        say(
            f"  faulty verdict     {seconds(detection.faulty_seconds)}{f' ({detection.reason})' if detection.reason else ''}"
        )
        say(f"  cordoned           {seconds(detection.cordoned_seconds)}")
        say(
            f"  tainted            {seconds(detection.tainted_seconds)}{f' ({detection.taint})' if detection.taint else ''}"
        )
        ttd = detection.time_to_detect_seconds
        budget = f"budget {detection.budget_seconds:g} s" if detection.budget_seconds else "no budget"
        say(
            f"  time to detect     {f'{ttd:.1f} s' if ttd is not None else f'not within {timeout:g} s'} ({budget})"
        )
    say(f"  innocent blamed    {', '.join(detection.innocent_blamed) or 'none'}")
    if alerts is not None:
        say(f"  alerts firing      {', '.join(alerts) or 'none'}")
    if detection.innocent_suspects:
        say(f"  innocent suspects  {', '.join(detection.innocent_suspects)} (never acted on)")
    say(f"  result             {'PASS' if detection.passed else 'FAIL'}")


def keep_running(demo: DemoRun) -> None:
    assert demo.controller is not None
    demo.timeline.say(
        f"\n--keep: the cluster runs until Ctrl-C. Try `lockstep status --controller {demo.controller.url}`."
    )
    if demo.prometheus:
        demo.timeline.say(f"Prometheus: {demo.prometheus.url}")
    while True:
        demo.observe(5.0)
        time.sleep(0)
