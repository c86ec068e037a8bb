"""Measure the noise of a real torch.distributed gloo DDP job and save it for `lockstep simulate`.

Runs WORLD processes of a small DDP model on this machine (CPU, gloo). A DDP communication hook stamps
`time.time()` when each bucket all-reduce is issued (arrival) and when its future completes (completion), so
every rank records, per collective: arrival, wait = completion - arrival, and compute gap = arrival - previous
completion. The parent lines the records up by collective sequence number and writes the empirical
distributions the simulator samples from (quantiles, so no distribution shape is assumed):

- lateness: arrival - median arrival of that collective, as a share of the step period (healthy ranks);
- completion spread: completion - median completion of that collective, share of the step period;
- transfer: the smallest wait of each collective (the last rank's wait ~ the transfer itself), share of step;
- step jitter: step duration / median step duration.
Shares of the step period let the simulator scale the noise to the step period of a simulated job.

Usage: python tools/capture_gloo_noise.py [--world 3] [--steps 300] [--out controller/simulate/noise_gloo.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

QUANTILES = np.linspace(0.0, 1.0, 41)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, steps: int, batch: int, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 10),
    )
    # Small buckets so that one step issues several all-reduces, as real DDP does.
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.5)
    records: list[tuple[int, int, float, float]] = []
    counter = [0]
    step = [0]

    # No annotations: DDP checks the hook's annotations at runtime and rejects postponed (string) ones.
    def hook(state, bucket):  # type: ignore[no-untyped-def]
        seq = counter[0]
        counter[0] += 1
        arrival = time.time()
        future = default_hooks.allreduce_hook(state, bucket)

        def stamp(fut):  # type: ignore[no-untyped-def]
            records.append((seq, step[0], arrival, time.time()))
            return fut.value()

        return future.then(stamp)

    ddp.register_comm_hook(None, hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.01)
    data = torch.randn(batch, 256)
    target = torch.randint(0, 10, (batch,))
    for index in range(steps):
        step[0] = index
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(data), target)
        loss.backward()
        optimizer.step()
    dist.barrier()
    dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(records))


def _quantiles(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.quantile(values, QUANTILES)]


def fit(per_rank: list[list[list[float]]], warmup_steps: int) -> dict[str, object]:
    """Line the ranks' records (seq, step, arrival, completion) up by sequence number; summarise the noise."""
    common = set.intersection(
        *({int(rec[0]) for rec in records if rec[1] >= warmup_steps} for records in per_rank)
    )
    seqs = sorted(common)
    index = {seq: i for i, seq in enumerate(seqs)}
    arrival = np.full((len(per_rank), len(seqs)), np.nan)
    completion = np.full_like(arrival, np.nan)
    step_of = np.zeros(len(seqs), dtype=int)
    for r, records in enumerate(per_rank):
        for seq, step, arr, done in records:
            if int(seq) in index:
                arrival[r, index[int(seq)]] = arr
                completion[r, index[int(seq)]] = done
                step_of[index[int(seq)]] = int(step)
    wait = completion - arrival
    median_arrival = np.median(arrival, axis=0)
    first_of_step = np.flatnonzero(np.diff(step_of, prepend=-1) != 0)
    step_seconds = np.diff(median_arrival[first_of_step])
    step_period = float(np.median(step_seconds))
    lateness = (arrival - median_arrival) / step_period
    completion_spread = completion - np.median(completion, axis=0)
    transfer = wait.min(axis=0)
    return {
        "quantiles": [float(q) for q in QUANTILES],
        "lateness_step_ratio": _quantiles(lateness.ravel()),
        "completion_spread_step_ratio": _quantiles(completion_spread.ravel() / step_period),
        "transfer_step_ratio": _quantiles(transfer / step_period),
        "step_jitter_ratio": _quantiles(step_seconds / step_period),
        "step_period_seconds": step_period,
        "collectives_per_step": round(len(seqs) / max(1, len(first_of_step))),
        "wait_step_ratio_p50": float(np.median(wait) / step_period),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--world", type=int, default=3, help="number of gloo processes (2-4)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per process")
    parser.add_argument("--batch", type=int, default=2048, help="batch per rank (sets the compute per step)")
    parser.add_argument("--warmup", type=int, default=20, help="steps to drop at the start")
    parser.add_argument("--raw", help="also save the raw per-rank records (JSON) here")
    parser.add_argument("--out", default="controller/simulate/noise_gloo.json", help="where to write the fit")
    args = parser.parse_args()

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        started = time.time()
        mp.spawn(
            _worker,
            args=(args.world, _free_port(), args.steps, args.batch, out_dir),
            nprocs=args.world,
            join=True,
        )
        per_rank = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(args.world)]
    if args.raw:
        Path(args.raw).write_text(json.dumps(per_rank))
    fitted = fit(per_rank, args.warmup)
    fitted["measured"] = {
        "how": "tools/capture_gloo_noise.py: real torch.distributed gloo DDP job (CPU), time.time() in a DDP "
        "communication hook around each bucket all-reduce; quantiles over all ranks and collectives",
        "world_size": args.world,
        "steps": args.steps,
        "collectives_per_rank": len(per_rank[0]),
        "batch": args.batch,
        "torch": __import__("torch").__version__,
        "host": platform.platform(),
        "cpus": os.cpu_count(),
        "wall_seconds": round(time.time() - started, 1),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(fitted, indent=1) + "\n")
    print(json.dumps({k: v for k, v in fitted.items() if not isinstance(v, list)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
