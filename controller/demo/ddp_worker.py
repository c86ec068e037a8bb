"""One rank of the demo's training job: a small model trained with DistributedDataParallel (or FSDP2) over gloo.

Started once per node by `controller.demo.job` with the usual torch.distributed environment (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). Each step spends `--compute-seconds` in "device compute" (a sleep, as a GPU
kernel leaves the CPU idle) multiplied by the factor in the slowdown file, then all-reduces the gradients
(`--parallel fsdp`: each layer sharded with FSDP2's `fully_shard`, so the step all-gathers parameters in forward
and backward and reduce-scatters gradients).
Unlike `tools/ddp_job.py` (real CPU compute, optional pacing that absorbs a slowdown), a straggler here is
exactly "this rank's device compute takes x times longer", and four ranks fit on two cores. A rank asked to (its
checkpoint request file) writes a checkpoint for that many seconds after its optimizer step, alone.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

CHECKPOINT_BYTES_PER_SECOND = 50e6


def read_factor(path: Path | None) -> float:
    """The slowdown factor (1.0 = normal speed) written by the fault injector; 1.0 if absent or unreadable."""
    if path is None:
        return 1.0
    try:
        return max(0.0, float(path.read_text().strip() or 1.0))
    except (OSError, ValueError):
        return 1.0


def take_checkpoint_request(path: Path | None) -> float:
    """Seconds of checkpoint writing the fault injector asked this rank for (the request is removed); 0 if none."""
    if path is None:
        return 0.0
    try:
        seconds = float(path.read_text().strip() or 0.0)
        path.unlink()
    except (OSError, ValueError):
        return 0.0
    return max(0.0, seconds)


def write_checkpoint(path: Path, seconds: float, bytes_per_second: float = CHECKPOINT_BYTES_PER_SECOND) -> None:
    """Save a "checkpoint" for `seconds`, at `bytes_per_second` (a large model to slow storage): the same chunk
    written over and over at the start of `path`, so the disk holds one chunk whatever the time."""
    chunk = bytes(4 << 20)
    deadline = time.monotonic() + seconds
    with open(path, "wb") as out:
        while time.monotonic() < deadline:
            out.seek(0)
            out.write(chunk)
            out.flush()
            time.sleep(len(chunk) / bytes_per_second)
    path.unlink(missing_ok=True)


def parallelize(model: nn.Sequential, parallel: str) -> nn.Module:
    """DDP (the model fits one gradient bucket: one all-reduce per step) or FSDP2 with each layer sharded."""
    if parallel == "ddp":
        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--compute-seconds", type=float, default=0.2, help="device compute per step, s")
    parser.add_argument("--steps", type=int, default=0, help="steps to run; 0 = until stopped")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the model")
    parser.add_argument(
        "--parallel",
        choices=("ddp", "fsdp"),
        default="ddp",
        help="ddp: one gradient all-reduce per step; fsdp: FSDP2 all-gathers and reduce-scatters per layer",
    )
    args = parser.parse_args()
    slowdown_file = os.environ.get("LOCKSTEP_DEMO_SLOWDOWN_FILE")
    slowdown_path = Path(slowdown_file) if slowdown_file else None
    checkpoint_file = os.environ.get("LOCKSTEP_DEMO_CHECKPOINT_FILE")
    checkpoint_path = Path(checkpoint_file) if checkpoint_file else None

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(args.width, args.width), nn.ReLU(), nn.Linear(args.width, args.width))
    trained = parallelize(model, args.parallel)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01)
    inputs, targets = torch.randn(32, args.width), torch.randn(32, args.width)
    print(f"rank {rank} of {dist.get_world_size()} training", flush=True)

    step, reported_step = 0, 0
    last_report = time.monotonic()
    while args.steps == 0 or step < args.steps:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(trained(inputs), targets)
        time.sleep(args.compute_seconds * read_factor(slowdown_path))
        loss.backward()  # DDP all-reduces the gradient buckets here (FSDP: all-gathers, reduce-scatters)
        optimizer.step()
        if checkpoint_path is not None and (seconds := take_checkpoint_request(checkpoint_path)) > 0:
            # this rank alone saves while its peers go on to the next step's all-reduce and wait there
            write_checkpoint(checkpoint_path.with_name("checkpoint.bin"), seconds)
        step += 1
        if (now := time.monotonic()) - last_report >= 10:
            step_seconds = (now - last_report) / (step - reported_step)
            print(
                f"rank {rank} step {step} step_seconds {step_seconds:.3f} loss {loss.item():.4f}", flush=True
            )
            last_report, reported_step = now, step
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
