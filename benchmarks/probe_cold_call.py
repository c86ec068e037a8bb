"""The probe's training-thread CPU per all-reduce when its code runs cold, as inside a training step.

A hot loop (probe_overhead.py measurement 3) keeps the probe's code and data in the caches; inside a step the
all-reduce comes after the model's compute and the same code costs several times more (README, Benchmarks). Here
each all-reduce of a one-rank gloo group follows a --sleep-ms pause, and the dispatcher kernel (with the probe
installed: recorder, sender, flushes; one kernel, with what it keeps between calls, as in a job) is registered for
every other all-reduce only, so each subprocess measures
its peer, the same all-reduce without the kernel, in the same run. Prints per subprocess the median
training-thread CPU (time.thread_time) per all-reduce with and without the kernel and the difference, then the
median over subprocesses. Wall-clock noise from other load does not count, but its cache pollution does: repeat.
`--kernel compiled` (needs `python -m agent.probe.compiled --build`) measures the compiled kernel, `python` the
Python one (agent/probe/dispatch.py).

    python benchmarks/probe_cold_call.py [--kernel python] [--processes 4] [--calls 200] [--sleep-ms 30] [--bytes 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collectors.collective import CollectiveCollector  # noqa: E402
from agent.settings import CollectiveSettings  # noqa: E402


def one_process(calls: int, sleep_seconds: float, nbytes: int, socket_dir: str, compiled: bool) -> dict[str, float]:
    """Median training-thread CPU us per all-reduce with the kernel registered and without it, alternating."""
    import agent.probe
    from agent.probe.dispatch import EXPECTED_SCHEMA, allreduce_kernel, register
    from benchmarks.probe_overhead import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    probe = agent.probe.install(socket_dir, compiled_kernel=compiled)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group, tensor = dist.group.WORLD, torch.ones(max(nbytes // 4, 1))
    for _ in range(50):
        group.allreduce([tensor]).wait()
    us: dict[bool, list[float]] = {True: [], False: []}
    issued = probe.recorder.issued()
    kernel = allreduce_kernel(probe.recorder, probe.groups.name)  # one kernel, as in a job: registered, unregistered
    compiled_kernel: Any = probe.recorder.compiled
    if compiled != (compiled_kernel is not None):
        raise RuntimeError("no compiled kernel built for this torch: python -m agent.probe.compiled --build")
    for call in range(2 * calls):
        with_kernel = call % 2 == 0
        if compiled_kernel is not None:
            if with_kernel and not compiled_kernel.registered:
                compiled_kernel.register(EXPECTED_SCHEMA)
            elif not with_kernel and compiled_kernel.registered:
                compiled_kernel.unregister()
        elif with_kernel and probe.kernel is None:
            probe.kernel = register(kernel)
        elif not with_kernel and probe.kernel is not None:
            probe.kernel._destroy()  # type: ignore[attr-defined]  # torch.library.Library: the registration goes
            probe.kernel = None
        time.sleep(sleep_seconds)
        started = time.thread_time_ns()
        group.allreduce([tensor]).wait()
        us[with_kernel].append((time.thread_time_ns() - started) / 1e3)
    if probe.recorder.issued() - issued != calls:
        raise RuntimeError("the kernel did not record every all-reduce it saw")
    dist.destroy_process_group()
    with_, without = statistics.median(us[True]), statistics.median(us[False])
    return {"us_with": round(with_, 1), "us_without": round(without, 1), "added_us": round(with_ - without, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--calls", type=int, default=200, help="all-reduces each way per process")
    parser.add_argument("--sleep-ms", type=float, default=30.0, help="pause before each all-reduce (a step's compute)")
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--kernel", choices=("compiled", "python"), default="compiled")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # socket directory: run one measuring process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.calls, args.sleep_ms / 1e3, args.bytes, args.child, args.kernel == "compiled")))
        return 0
    per_process = []
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as socket_dir:
        collector = CollectiveCollector(CollectiveSettings(socket_dir=socket_dir, trust="process"))
        collector.start()  # a live agent end: the flushes send as they would in a job
        try:
            for index in range(args.processes):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", socket_dir, "--calls", str(args.calls),
                     "--sleep-ms", str(args.sleep_ms), "--bytes", str(args.bytes), "--kernel", args.kernel],
                    capture_output=True, text=True, check=True, timeout=600,
                ).stdout  # fmt: skip
                per_process.append(json.loads(out.strip().splitlines()[-1]))
                print(f"process {index + 1}:", json.dumps(per_process[-1]), flush=True)
        finally:
            collector.close()
    summary = {"benchmark": "probe_cold_call", "kernel": args.kernel, "calls": args.calls, "sleep_ms": args.sleep_ms, "bytes": args.bytes,
               "per_process": per_process,
               **{key: statistics.median(p[key] for p in per_process) for key in ("us_with", "us_without", "added_us")}}  # fmt: skip
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
