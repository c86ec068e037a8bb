"""Probe overhead on a real DDP job: training step time with the probe vs without, interleaved repetitions.

Runs tools/ddp_job.py (gloo, CPU) alternately with LOCKSTEP_PROBE=1 (records sent to a live collective collector
in this process) and without, and prints the median step time of each run, the ratio probe/no-probe per
adjacent pair, its median and spread. Target (DESIGN.md): within 1%. Also prints the probe's hot-path cost per
collective measured in-process.

    python benchmarks/probe_overhead.py [--pairs 8] [--nproc 2] [--steps 300] [--hidden 1024] [--bucket-mb 25]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collectors.collective import CollectiveCollector  # noqa: E402
from agent.probe.recorder import Recorder  # noqa: E402
from agent.probe.wire import Op  # noqa: E402
from agent.settings import CollectiveSettings  # noqa: E402


def hot_path_microseconds(n: int = 200_000) -> float:
    """Recorder.issue + complete per collective, us (what a wrapped collective adds on the training thread)."""
    recorder = Recorder(capacity=n + 1)
    started = time.perf_counter()
    for _ in range(n):
        recorder.complete(recorder.issue("default", Op.all_reduce, 4096))
    return (time.perf_counter() - started) / n * 1e6


def run_job(env: dict[str, str], args: argparse.Namespace) -> tuple[float, float]:
    """(median, min) step time of one run, s."""
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "ddp_job.py"), "--nproc", str(args.nproc), "--steps", str(args.steps),
         "--hidden", str(args.hidden), "--bucket-mb", str(args.bucket_mb), "--warmup", "20"],
        env=env, capture_output=True, text=True, check=True, timeout=900,
    ).stdout  # fmt: skip
    summary = json.loads(out.strip().splitlines()[-1])
    return float(summary["step_seconds_median"]), float(summary["step_seconds_min"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=8, help="interleaved (without, with) probe run pairs")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket size (DDP's default 25 MB)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp:
        site = Path(tmp, "site")
        site.mkdir()
        shutil.copy(REPO / "agent" / "probe" / "lockstep-probe.pth", site)
        (site / "sitecustomize.py").write_text(
            "import os, site\nsite.addsitedir(os.path.dirname(__file__))\n"
        )
        socket_dir = Path(tmp, "sock")
        collector = CollectiveCollector(CollectiveSettings(socket_dir=str(socket_dir), trust="process"))
        collector.start()
        base = {k: v for k, v in os.environ.items() if k not in ("LOCKSTEP_PROBE", "RANK", "WORLD_SIZE")}
        base["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), base.get("PYTHONPATH", "")])
        base["LOCKSTEP_SOCKET_DIR"] = str(socket_dir)
        without, with_probe = [], []
        try:
            for pair in range(args.pairs):
                without.append(run_job(base, args))
                with_probe.append(run_job({**base, "LOCKSTEP_PROBE": "1"}, args))
                print(f"pair {pair + 1}: median step without {without[-1][0] * 1e3:.3f} ms, with {with_probe[-1][0] * 1e3:.3f} ms, "
                      f"ratio {with_probe[-1][0] / without[-1][0]:.4f}", flush=True)  # fmt: skip
            records = collector.state.accepted
        finally:
            collector.close()
    # the machine may be shared: the min step time is the least disturbed estimate of the intrinsic cost
    summary: dict[str, object] = {"benchmark": "probe_overhead", "nproc": args.nproc, "steps": args.steps,
                                  "hidden": args.hidden, "pairs": args.pairs}  # fmt: skip
    for index, name in ((0, "median"), (1, "min")):
        ratios = [w[index] / wo[index] for w, wo in zip(with_probe, without, strict=True)]
        summary[f"step_seconds_{name}_without"] = statistics.median(wo[index] for wo in without)
        summary[f"step_seconds_{name}_with"] = statistics.median(w[index] for w in with_probe)
        summary[f"ratio_of_{name}s"] = {
            "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        }  # fmt: skip
    summary["records_received"] = records
    summary["hot_path_us_per_collective"] = hot_path_microseconds()
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
