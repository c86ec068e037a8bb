"""A small, real data-parallel training job (torch DDP or FSDP2, gloo, CPU) for tests, the demo and benchmarks.

It is an ordinary training script: it knows nothing of Lockstep. Run it under the probe with LOCKSTEP_PROBE=1.

Launch modes:
  python tools/ddp_job.py --nproc 4 --steps 200          spawns 4 local ranks (torch.multiprocessing.spawn)
  torchrun --nproc-per-node 2 tools/ddp_job.py ...       one rank per process from torchrun's env
  RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 python tools/ddp_job.py ...
                                                         one rank per process, env set by hand (netns tests)

Fault injection while the job runs: point --slowdown-file (or env DDP_JOB_SLOWDOWN_FILE) at a file with
lines `RANK FACTOR` (or `* FACTOR`); each step a rank re-reads it (only when it changed) and after its own
compute sleeps (FACTOR - 1) x its compute time, i.e. it computes FACTOR times slower. Write the file at any
time to start a straggler, empty it to stop. SIGSTOP a rank's pid to simulate a hang.

Rank 0 prints one JSON line per --log-every steps and a final JSON summary: {"event": "done", "steps": N,
"step_seconds_median": s, "step_seconds_mean": s, ...}. Each rank writes its pid to --pid-dir/rank<R>.pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="ranks to spawn locally when not launched with RANK set")
    parser.add_argument("--steps", type=int, default=100, help="training steps; 0 = run until killed")
    parser.add_argument("--hidden", type=int, default=256, help="width of the MLP's hidden layers")
    parser.add_argument("--layers", type=int, default=4, help="hidden layers of the MLP")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb: smaller = more all-reduces")
    parser.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp",
                        help="ddp: DistributedDataParallel (all-reduces of gradient buckets); fsdp: FSDP2 fully_shard "
                        "per layer (parameter all-gathers in forward and backward, gradient reduce-scatters)")
    parser.add_argument("--step-seconds", type=float, default=0.0,
                        help="pace steps to at least this period (idle time counts as compute)")
    parser.add_argument("--extra-allreduces", type=int, default=0,
                        help="tiny torch.distributed.all_reduce calls per step (a collective flood)")
    parser.add_argument("--subgroup-allreduces", type=int, default=0,
                        help="tiny all-reduces per step in a process group of the first half of the ranks (rounded up) "
                        "(every rank calls them, as torch requires; for the others they do nothing)")
    parser.add_argument("--slowdown-file", default=os.environ.get("DDP_JOB_SLOWDOWN_FILE", ""),
                        help="file of `RANK FACTOR` lines read during the run (env DDP_JOB_SLOWDOWN_FILE)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per rank")
    parser.add_argument("--log-every", type=int, default=0, help="rank 0 logs every N steps (0 = only the summary)")
    parser.add_argument("--pid-dir", default="", help="write rank<R>.pid files here")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the summary statistics")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Slowdown:
    """This rank's compute factor from the slowdown file, re-read when its mtime changes."""

    def __init__(self, path: str, rank: int) -> None:
        self.path = Path(path) if path else None
        self.rank = rank
        self.factor = 1.0
        self._mtime = -1.0

    def current(self) -> float:
        if self.path is None:
            return 1.0
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            self.factor, self._mtime = 1.0, -1.0
            return 1.0
        if mtime != self._mtime:
            self._mtime = mtime
            self.factor = 1.0
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] in ("*", str(self.rank)):
                    with contextlib.suppress(ValueError):
                        self.factor = max(1.0, float(parts[1]))
        return self.factor


def build_model(args: argparse.Namespace) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(64, args.hidden), nn.ReLU()]
    for _ in range(args.layers):
        layers += [nn.Linear(args.hidden, args.hidden), nn.ReLU()]
    layers.append(nn.Linear(args.hidden, 10))
    return nn.Sequential(*layers)


def parallelize(model: nn.Module, args: argparse.Namespace) -> nn.Module:
    if args.parallel == "ddp":
        return DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def train(args: argparse.Namespace) -> None:
    """One rank: init the process group from env (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), train, report."""
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.pid_dir:
        Path(args.pid_dir).mkdir(parents=True, exist_ok=True)
        Path(args.pid_dir, f"rank{rank}.pid").write_text(str(os.getpid()))
    torch.manual_seed(args.seed)
    model = parallelize(build_model(args), args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed + rank)
    inputs = torch.randn(args.batch, 64, generator=generator)
    targets = torch.randint(0, 10, (args.batch,), generator=generator)
    tiny = torch.zeros(1)
    subgroup = dist.new_group(list(range((world + 1) // 2))) if args.subgroup_allreduces else None
    slowdown = Slowdown(args.slowdown_file, rank)
    step_seconds: list[float] = []
    step = 0
    while args.steps == 0 or step < args.steps:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()  # DDP all-reduces the gradient buckets here (FSDP: all-gathers, reduce-scatters)
        optimizer.step()
        compute = time.perf_counter() - started
        for _ in range(args.extra_allreduces):
            dist.all_reduce(tiny)
        for _ in range(args.subgroup_allreduces):
            dist.all_reduce(tiny, group=subgroup)
        factor = slowdown.current()
        if factor > 1.0:
            time.sleep((factor - 1.0) * compute)
        if args.step_seconds > 0:
            time.sleep(max(0.0, args.step_seconds - (time.perf_counter() - started)))
        step_seconds.append(time.perf_counter() - started)
        step += 1
        if rank == 0 and args.log_every and step % args.log_every == 0:
            print(json.dumps({"event": "step", "step": step, "loss": round(loss.item(), 4),
                              "step_seconds": round(step_seconds[-1], 6)}), flush=True)
    dist.barrier()
    if rank == 0:
        measured = step_seconds[args.warmup :] or step_seconds
        print(json.dumps({
            "event": "done", "steps": step, "world_size": world,
            "step_seconds_median": statistics.median(measured), "step_seconds_mean": statistics.fmean(measured),
            "step_seconds_min": min(measured), "step_seconds_max": max(measured),
        }), flush=True)  # fmt: skip
    dist.destroy_process_group()


def _spawned(local_rank: int, args: argparse.Namespace) -> None:
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(args.nproc))
    train(args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        train(args)
        return 0
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(args,), nprocs=args.nproc, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
