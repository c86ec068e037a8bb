"""Probe overhead on a real DDP job (gloo, CPU): training step time with the probe vs without.

Three measurements, all against a live collective collector in this process:

1. interleaved steps (robust on a shared machine): two identical 2-rank DDP jobs run at once, one under the
   probe (installed in its processes: dispatcher kernel, wrappers, sender thread), one without, and take turns
   step by step (a barrier keeps the idle job blocked); ratio of median step times with a 95% confidence
   interval (bootstrap over the pairs of adjacent steps), its spread over blocks of steps, and the same ratio for
   the rank's CPU time per step (less sensitive to other load on the machine);
2. separate runs of tools/ddp_job.py with and without LOCKSTEP_PROBE=1 in ABBA order (end to end, including
   the probe's sender thread; sensitive to load drift between runs);
3. per collective, precisely: CPU time per all-reduce (time.process_time, all threads of the process: the
   probe's sender included) of a one-rank gloo group without and with the probe, in alternating subprocesses,
   for a small tensor and a bucket-sized one (the DDP job's gradient bytes per all-reduce); the probe's added
   microseconds times the all-reduces per step the probe recorded in measurement 1, over that job's step time, is
   the expected step overhead (`expected_step_overhead`). Measurements 1 and 2 cannot resolve a few 0.1%: their
   noise floor shows in an A/A run (`--control`: neither job of measurement 1 is probed, its ratio should be 1), and
   a bias of the two process pairs flips sign with `--probed-job 1`.

The probe uses the compiled all-reduce kernel where one is built (`python -m agent.probe.compiled --build`), else the
Python one; LOCKSTEP_PROBE_COMPILED=0 in the environment measures the Python one. `kernel` in the output says which.

Also prints the Recorder's hot-path cost per collective. Target (DESIGN.md): step time within 1%.
Output: progress lines, then one JSON summary (keys: interleaved_turns, per_collective, expected_step_overhead,
ratio_of_medians/ratio_of_mins when --pairs > 0, records_received, hot_path_us_per_collective).

    python benchmarks/probe_overhead.py [--interleaved-steps 2000] [--pairs 4] [--steps 300] [--hidden 1024]
                                        [--probed-job 0] [--control] [--cost-processes 3] [--cost-iterations 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.collectors.collective import CollectiveCollector  # noqa: E402
from agent.probe.recorder import Recorder  # noqa: E402
from agent.probe.wire import Op  # noqa: E402
from agent.settings import CollectiveSettings  # noqa: E402

WARM_STEPS = 20  # interleaved steps left out of the statistics (DDP rebuilds its buckets after the first)
ROLES = ("main", "sender", "backend")  # the threads of a rank whose CPU per step measurement 1 reports


def hot_path_microseconds(n: int = 200_000) -> float:
    """Recorder.issue + complete per collective, us (what a wrapped collective adds on the training thread)."""
    recorder = Recorder(capacity=n + 1)
    started = time.perf_counter()
    for _ in range(n):
        recorder.complete(recorder.issue("default", Op.all_reduce, 4096))
    return (time.perf_counter() - started) / n * 1e6


def free_port() -> int:
    import socket as socket_module

    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def thread_cpu_ns() -> dict[int, int]:
    """CPU time of each thread of this process so far, ns (/proc/self/task/<tid>/schedstat, first field)."""
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                cpu[int(tid)] = int(stat.read().split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended meanwhile
            continue
    return cpu


def _interleaved_rank(index: int, ports: list[int], socket_dir: str, steps: int, hidden: int, bucket_mb: float,
                      turns: Any, out: str, control: bool, probed_job: int) -> None:  # fmt: skip
    """Process `index` of two 2-rank jobs, job 0 (indices 0, 1) and job 1 (2, 3): job `probed_job` under the probe
    (not with `control`), the other without it."""
    job, rank = divmod(index, 2)
    name = "with" if job == probed_job else "without"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[job]), RANK=str(rank), WORLD_SIZE="2")
    probe = None
    if name == "with" and not control:
        import agent.probe

        probe = agent.probe.install(socket_dir)
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(64, hidden), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    ddp = DistributedDataParallel(nn.Sequential(*layers, nn.Linear(hidden, 10)), bucket_cap_mb=bucket_mb)
    inputs = torch.randn(32, 64)
    times: dict[str, Any] = {key: [] for key in (name, f"cpu_{name}", *(f"{role}_cpu_{name}" for role in ROLES))}
    main = threading.get_native_id()
    issued_before = 0
    for step in range(steps):
        if step == WARM_STEPS and probe is not None:
            issued_before = probe.recorder.issued()
        for turn in (step % 2, 1 - step % 2):  # the jobs take turns, each going first every other step
            turns.wait()  # the other job is idle (blocked here) while this one steps
            if turn == job:
                threads_before = thread_cpu_ns()
                cpu_started, started = time.process_time(), time.perf_counter()
                ddp(inputs).sum().backward()
                times[name].append(time.perf_counter() - started)
                times[f"cpu_{name}"].append(time.process_time() - cpu_started)
                threads_after = thread_cpu_ns()
                sender = probe_thread_id(probe)
                by_role = dict.fromkeys(ROLES, 0.0)
                for tid, ns in threads_after.items():
                    role = "main" if tid == main else "sender" if tid == sender else "backend"
                    by_role[role] += (ns - threads_before.get(tid, 0)) * 1e-9
                for role, seconds in by_role.items():
                    times[f"{role}_cpu_{name}"].append(seconds)
    if probe is not None:  # what the probe saw: all-reduces per step, gradient bytes per all-reduce
        per_step = (probe.recorder.issued() - issued_before) / (steps - WARM_STEPS)
        gradient_bytes = sum(p.numel() * p.element_size() for p in ddp.parameters())
        times.update(all_reduces_per_step=per_step, bytes_per_all_reduce=int(gradient_bytes / max(per_step, 1.0)),
                     kernel="compiled" if probe.recorder.compiled is not None else "python")
    if rank == 0:
        Path(f"{out}.{name}").write_text(json.dumps(times))
    dist.destroy_process_group()


def probe_thread_id(probe: Any) -> int | None:
    """Native id of the probe sender's thread (None without the probe or before it starts)."""
    sender = probe.sender if probe is not None else None
    return sender._thread.native_id if sender is not None else None


def interleaved(args: argparse.Namespace, socket_dir: str, tmp: str, probed_job: int) -> dict[str, object]:
    import torch.multiprocessing as mp

    ports = [free_port(), free_port()]
    out = str(Path(tmp, "interleaved"))
    turns = mp.get_context("spawn").Barrier(4)
    mp.spawn(_interleaved_rank, nprocs=4, join=True,
             args=(ports, socket_dir, args.interleaved_steps, args.hidden, args.bucket_mb, turns, out, args.control,
                   probed_job))  # fmt: skip
    times = {**json.loads(Path(f"{out}.with").read_text()), **json.loads(Path(f"{out}.without").read_text())}
    warm = WARM_STEPS
    with_, without = times["with"][warm:], times["without"][warm:]
    blocks = 20
    size = len(with_) // blocks
    block_ratios = [statistics.median(with_[i * size : (i + 1) * size]) / statistics.median(without[i * size : (i + 1) * size])
                    for i in range(blocks)]  # fmt: skip
    return {
        "control": args.control,  # A/A: neither job probed, the ratio's noise floor
        "probed_job": probed_job,  # which process pair: a bias of the pairs flips sign with it
        "steps_each": len(with_),
        "step_seconds_median_without": statistics.median(without),
        "step_seconds_median_with": statistics.median(with_),
        "ratio": statistics.median(with_) / statistics.median(without),
        "ratio_ci95": ratio_ci95(with_, without),
        "ratio_over_blocks": {"blocks": blocks, "median": statistics.median(block_ratios), "min": min(block_ratios),
                              "max": max(block_ratios), "stdev": statistics.stdev(block_ratios)},
        "cpu_seconds_median_without": statistics.median(times["cpu_without"][warm:]),
        "cpu_seconds_median_with": statistics.median(times["cpu_with"][warm:]),
        "cpu_ratio": statistics.median(times["cpu_with"][warm:]) / statistics.median(times["cpu_without"][warm:]),
        "cpu_ratio_ci95": ratio_ci95(times["cpu_with"][warm:], times["cpu_without"][warm:]),
        # CPU per step by thread (/proc schedstat), s: the training thread (median; with the probe: its kernel and
        # the flushes it runs), the probe sender's thread (mean: it runs rarely), the backend's threads (median)
        "thread_cpu_seconds_per_step": {
            side: {"main": statistics.median(times[f"main_cpu_{side}"][warm:]),
                   "sender": statistics.mean(times[f"sender_cpu_{side}"][warm:]),
                   "backend": statistics.median(times[f"backend_cpu_{side}"][warm:])}
            for side in ("with", "without")},
        "main_cpu_ratio": statistics.median(times["main_cpu_with"][warm:]) / statistics.median(times["main_cpu_without"][warm:]),
        "main_cpu_ratio_ci95": ratio_ci95(times["main_cpu_with"][warm:], times["main_cpu_without"][warm:]),
        "kernel": times.get("kernel"),  # the probe's all-reduce kernel (agent/probe/compiled.py; None: --control)
        "all_reduces_per_step": times.get("all_reduces_per_step"),  # as the probe recorded them (None: --control)
        "bytes_per_all_reduce": times.get("bytes_per_all_reduce"),
    }  # fmt: skip


def _one_rank_all_reduces(probed: bool, nbytes: int, iterations: int, reps: int, socket_dir: str, queue: Any) -> None:
    """Subprocess: median over `reps` of the CPU us per all-reduce of `nbytes` (float32) in a one-rank gloo group,
    with or without the probe. CPU time of the whole process: the probe's sender thread counts too."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    if probed:
        import agent.probe

        agent.probe.install(socket_dir)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    group, tensor = dist.group.WORLD, torch.ones(max(nbytes // 4, 1))
    for _ in range(min(iterations, 500)):
        group.allreduce([tensor]).wait()
    per_rep = []
    for _ in range(reps):
        started = time.process_time()
        for _ in range(iterations):
            group.allreduce([tensor]).wait()
        per_rep.append((time.process_time() - started) / iterations * 1e6)
    dist.destroy_process_group()
    queue.put(statistics.median(per_rep))


def per_collective(nbytes: int, iterations: int, processes: int, socket_dir: str) -> dict[str, object]:
    """CPU us per all-reduce of `nbytes` without and with the probe: `processes` subprocesses each, alternating
    (ABBA), 5 reps each; medians over the processes."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    us: dict[bool, list[float]] = {False: [], True: []}
    for index in range(processes):
        for probed in (False, True) if index % 2 == 0 else (True, False):
            queue = context.Queue()
            process = context.Process(target=_one_rank_all_reduces, args=(probed, nbytes, iterations, 5, socket_dir, queue))
            process.start()
            us[probed].append(queue.get(timeout=600))
            process.join(timeout=60)
    without, with_ = statistics.median(us[False]), statistics.median(us[True])
    return {"bytes": nbytes, "iterations": iterations, "cpu_us_without": round(without, 2),
            "cpu_us_with": round(with_, 2), "added_us": round(with_ - without, 2),
            "added_us_per_process": [round(w - wo, 2) for w, wo in zip(us[True], us[False], strict=True)]}  # fmt: skip


def expected_overhead(cost: dict[str, Any], all_reduces_per_step: float, step_seconds: float) -> float:
    """Share of a step the probe adds: its us per all-reduce x all-reduces per step / step time."""
    return float(cost["added_us"]) * 1e-6 * all_reduces_per_step / step_seconds


def ratio_ci95(with_: list[float], without: list[float], resamples: int = 2000) -> list[float]:
    """95% bootstrap interval of median(with) / median(without), resampling the pairs of adjacent steps together
    (so load that hits both steps of a pair stays paired)."""
    import numpy as np

    pairs = np.column_stack([with_, without])
    picks = np.random.default_rng(0).integers(0, len(pairs), size=(resamples, len(pairs)))
    medians = np.median(pairs[picks], axis=1)  # (resamples, 2)
    low, high = np.quantile(medians[:, 0] / medians[:, 1], [0.025, 0.975])
    return [float(low), float(high)]


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interleaved-steps", type=int, default=2000, help="steps per model in measurement 1")
    parser.add_argument("--pairs", type=int, default=4, help="interleaved (without, with) probe run pairs")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket size (DDP's default 25 MB)")
    parser.add_argument("--probed-job", choices=("0", "1", "both"), default="both",
                        help="which job of measurement 1 is probed (processes 0-1 or 2-3): a bias of the process pairs "
                        "flips sign with it; both (default): measurement 1 runs once each way and the geometric mean "
                        "of the two ratios cancels that bias")
    parser.add_argument("--control", action="store_true",
                        help="A/A control: neither job of measurement 1 is probed (its ratio shows the noise floor)")
    parser.add_argument("--cost-processes", type=int, default=3,
                        help="subprocesses per side of measurement 3 (per-collective CPU cost); 0 skips it")
    parser.add_argument("--cost-iterations", type=int, default=10_000,
                        help="all-reduces per rep in measurement 3 (one rank: a bucket-sized one costs as little)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp:
        site = Path(tmp, "site")
        site.mkdir()
        shutil.copy(REPO / "agent" / "probe" / "lockstep-probe.pth", site)
        (site / "sitecustomize.py").write_text("import os, site\nsite.addsitedir(os.path.dirname(__file__))\n")
        socket_dir = Path(tmp, "sock")
        collector = CollectiveCollector(CollectiveSettings(socket_dir=str(socket_dir), trust="process"))
        collector.start()
        base = {k: v for k, v in os.environ.items() if k not in ("LOCKSTEP_PROBE", "RANK", "WORLD_SIZE")}
        base["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO), base.get("PYTHONPATH", "")])
        base["LOCKSTEP_SOCKET_DIR"] = str(socket_dir)
        without, with_probe = [], []
        try:
            each_way = []
            for probed_job in (0, 1) if args.probed_job == "both" else (int(args.probed_job),):
                each_way.append(interleaved(args, str(socket_dir), tmp, probed_job))
                print("interleaved turns:", json.dumps(each_way[-1]), flush=True)
            turns = each_way[0]
            costs: dict[str, dict[str, Any]] = {}
            if args.cost_processes:
                sizes = {"small": 4096, "bucket": int(turns["bytes_per_all_reduce"] or args.bucket_mb * 2**20)}
                for name, nbytes in sizes.items():
                    costs[name] = per_collective(nbytes, args.cost_iterations, args.cost_processes, str(socket_dir))
                    print(f"per collective ({name}):", json.dumps(costs[name]), flush=True)
            for pair in range(args.pairs):
                if pair % 2:  # ABBA order: drifting machine load favours neither side
                    with_probe.append(run_job({**base, "LOCKSTEP_PROBE": "1"}, args))
                    without.append(run_job(base, args))
                else:
                    without.append(run_job(base, args))
                    with_probe.append(run_job({**base, "LOCKSTEP_PROBE": "1"}, args))
                print(f"pair {pair + 1}: median step without {without[-1][0] * 1e3:.3f} ms, with {with_probe[-1][0] * 1e3:.3f} ms, "
                      f"ratio {with_probe[-1][0] / without[-1][0]:.4f}", flush=True)  # fmt: skip
            records = collector.state.accepted
        finally:
            collector.close()
    # the machine may be shared: the min step time is the least disturbed estimate of the intrinsic cost
    summary: dict[str, object] = {"benchmark": "probe_overhead", "nproc": args.nproc, "steps": args.steps,
                                  "hidden": args.hidden, "bucket_mb": args.bucket_mb, "pairs": args.pairs,
                                  "control": args.control}  # fmt: skip
    for index, name in ((0, "median"), (1, "min")) if args.pairs else ():
        ratios = [w[index] / wo[index] for w, wo in zip(with_probe, without, strict=True)]
        summary[f"step_seconds_{name}_without"] = statistics.median(wo[index] for wo in without)
        summary[f"step_seconds_{name}_with"] = statistics.median(w[index] for w in with_probe)
        summary[f"ratio_of_{name}s"] = {
            "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "stdev": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        }  # fmt: skip
    summary["interleaved_turns"] = each_way
    if len(each_way) == 2:  # the bias of the process pairs cancels in the geometric mean of the two ways
        summary["geometric_mean_of_both_ways"] = {
            key: math.sqrt(float(each_way[0][key]) * float(each_way[1][key]))  # type: ignore[arg-type]
            for key in ("ratio", "cpu_ratio", "main_cpu_ratio")
        }
    summary["per_collective"] = costs
    per_step = turns["all_reduces_per_step"]
    summary["expected_step_overhead"] = {
        name: expected_overhead(cost, per_step, turns["step_seconds_median_without"]) for name, cost in costs.items()
    } if per_step else None  # fmt: skip
    summary["records_received"] = records
    summary["hot_path_us_per_collective"] = hot_path_microseconds()
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
