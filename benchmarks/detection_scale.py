"""How the detection cycle scales: 100 -> 10,000 nodes x 8 ranks, jobs of 10 nodes, 32 samples per rank.

Builds each node's evidence document (not timed), reduces it to sample columns as the fetcher does when a
document arrives (`without_samples`) and drops the full document, so the process holds what the controller holds:
one round of lean documents. Then times `DetectionEngine.step` on a warm engine (a second cycle with new
documents, as in production) in CPU seconds of this process (`time.process_time`), measures the peak memory the
cycle allocates (tracemalloc, in a separate cycle since tracing slows it) and the process's peak RSS.
Peer measured in the same run ("floor"): one pure-Python pass reading seq, arrival and wait of the samples the
straggler detector uses — the least any Python detector must spend to look at the data once. The ratio to it
is what stays comparable on a busy or a different machine. The reduction to columns is timed apart ("decode
s", summed over the documents: spread over the polling round, not in the cycle). Budget (DESIGN.md): 10,000
nodes x 8 ranks under 1 s of one core and under 1 GB.

Usage: python benchmarks/detection_scale.py [--sizes 100,1000,3000,10000] [--samples 32]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.evidence import (  # noqa: E402
    CollectiveSample,
    Evidence,
    NicEvidence,
    RankEvidence,
    TrafficPeriodicity,
)
from controller.detect import DetectionEngine  # noqa: E402
from controller.detect.columns import without_samples  # noqa: E402

RANKS_PER_NODE = 8
NODES_PER_JOB = 10
STEP_SECONDS = 1.0
COLLECTIVES_PER_STEP = 4


def cluster_evidence(
    nodes: int, samples: int, t: float, rng: np.random.Generator
) -> Iterator[tuple[str, Evidence]]:
    """One polling round, one document at a time: every node runs 8 ranks of a 10-node job; in every 20th job
    node 7 is a straggler (5% of jobs with a culprit at once: a bad day, so the culprit path is part of the cost)."""
    last_seq = int(t * COLLECTIVES_PER_STEP / STEP_SECONDS)
    seqs = np.arange(last_seq - samples + 1, last_seq + 1)
    base = seqs * STEP_SECONDS / COLLECTIVES_PER_STEP
    for node in range(nodes):
        job, slot = divmod(node, NODES_PER_JOB)
        ranks = []
        for local in range(RANKS_PER_NODE):
            late = 0.15 if slot == 7 and job % 20 == 0 else 0.0
            arrival = base + late + rng.normal(0, 0.005, samples)
            wait = 0.2 + 0.15 - late + rng.normal(0, 0.005, samples)
            ranks.append(
                RankEvidence.model_construct(
                    job=f"job-{job}",
                    rank=slot * RANKS_PER_NODE + local,
                    world_size=NODES_PER_JOB * RANKS_PER_NODE,
                    process_group="default",
                    namespace="train",
                    pid=10_000 + node * RANKS_PER_NODE + local,
                    window_seconds=10.0,
                    collectives_in_window=40,
                    step_period_seconds=STEP_SECONDS,
                    last_seq=last_seq,
                    last_progress_at=t - 0.1,
                    pending_seq=None,
                    pending_since=None,
                    wait_seconds_p50=float(np.median(wait)),
                    compute_gap_seconds_p50=0.6,
                    samples=[
                        CollectiveSample.model_construct(
                            seq=int(s),
                            op="allreduce",
                            bytes=25_000_000,
                            arrival=float(a),
                            wait_seconds=float(w),
                        )
                        for s, a, w in zip(seqs, arrival, wait, strict=True)
                    ],
                )
            )
        yield (
            f"node-{node:05d}",
            Evidence.model_construct(
                node=f"node-{node:05d}",
                collected_at=t,
                hard_signals=[],
                gpus=[],
                nics=[
                    NicEvidence(
                        name="eth0",
                        link_speed_bits_per_second=100e9,
                        tx_bytes_per_second=1e9,
                        rx_bytes_per_second=1e9,
                    )
                ],
                periodicity=[
                    TrafficPeriodicity(
                        interface="eth0",
                        period_seconds=1.0,
                        burst_bytes_per_second=9e9,
                        regularity=0.9,
                        window_seconds=10,
                    )
                ],
                ranks=ranks,
            ),
        )


def fetched_round(
    nodes: int, samples: int, t: float, rng: np.random.Generator, window: int
) -> tuple[dict[str, Evidence | None], float, float]:
    """What the controller holds after one polling round: each document reduced to columns as it arrives and
    the full document dropped. Also returns the CPU seconds of the floor pass and of the reduction (s)."""
    evidence: dict[str, Evidence | None] = {}
    floor_cpu = decode_cpu = 0.0
    checksum = 0.0
    for node, document in cluster_evidence(nodes, samples, t, rng):
        started = time.process_time()
        checksum += sum(
            s.arrival + (s.wait_seconds or 0.0) + s.seq
            for rank in document.ranks
            for s in rank.samples[-window:]
        )
        reduced = time.process_time()
        evidence[node] = without_samples(document)  # as the fetcher does
        decode_cpu += time.process_time() - reduced
        floor_cpu += reduced - started
    assert checksum != 0
    return evidence, floor_cpu, decode_cpu


def measure(nodes: int, samples: int) -> dict[str, float]:
    """Three cycles, each on freshly fetched documents (one round in memory at a time, as in the controller)."""
    rng = np.random.default_rng(nodes)
    topology = {f"node-{n:05d}": f"switch-{n // 32}" for n in range(nodes)}
    engine = DetectionEngine()
    config = engine.config
    window = (
        config.samples_per_rank
        if nodes * RANKS_PER_NODE <= config.scale_ranks
        else config.samples_per_rank_at_scale
    )
    evidence, _, _ = fetched_round(nodes, samples, 100.0, rng, window)
    engine.step(evidence, 100.0, topology)  # first sight: warm-up starts
    del evidence
    later = 100.0 + config.restart_grace_seconds + 5  # past the warm-up: every detector runs
    gc.collect()
    gc.disable()  # the engine pauses collection during a cycle; do the same for the peer and the decoding
    evidence, floor_cpu, decode_cpu = fetched_round(nodes, samples, later, rng, window)
    gc.enable()
    started = time.process_time()
    result = engine.step(evidence, later, topology)
    cpu = time.process_time() - started
    del evidence
    evidence, _, _ = fetched_round(nodes, samples, later + 5, rng, window)
    gc.collect()
    tracemalloc.start()
    engine.step(evidence, later + 5, topology)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "nodes": nodes,
        "ranks": nodes * RANKS_PER_NODE,
        "cpu_seconds": cpu,
        "decode_cpu_seconds": decode_cpu,
        "floor_cpu_seconds": floor_cpu,
        "peak_alloc_bytes": peak,
        "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "findings": len(result.findings),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000,3000,10000", help="comma-separated node counts")
    parser.add_argument(
        "--samples", type=int, default=32, help="collective samples per rank in each document"
    )
    args = parser.parse_args()
    rows = [measure(int(size), args.samples) for size in args.sizes.split(",")]
    first = rows[0]
    print(
        f"{'nodes':>7} {'ranks':>7} {'cycle cpu s':>12} {'us/rank':>8} {'vs first':>9} {'vs floor':>9} {'decode s':>9} {'cycle alloc MB':>15} {'RSS MB':>8} {'findings':>9}"
    )
    for row in rows:
        scale = (row["cpu_seconds"] / row["ranks"]) / (first["cpu_seconds"] / first["ranks"])
        print(
            f"{row['nodes']:>7} {row['ranks']:>7} {row['cpu_seconds']:>12.3f} {1e6 * row['cpu_seconds'] / row['ranks']:>8.1f} "
            f"{scale:>8.2f}x {row['cpu_seconds'] / row['floor_cpu_seconds']:>8.1f}x {row['decode_cpu_seconds']:>9.3f} {row['peak_alloc_bytes'] / 2**20:>15.1f} {row['rss_bytes'] / 2**20:>8.0f} {row['findings']:>9}"
        )
    last = rows[-1]
    print(
        f"budget at {last['nodes']} nodes: cycle {last['cpu_seconds']:.3f} s of one core (< 1 s), "
        f"cycle allocations {last['peak_alloc_bytes'] / 2**20:.0f} MB, process RSS incl. one round of lean evidence {last['rss_bytes'] / 2**20:.0f} MB (< 1024 MB)"
    )
    return 0 if last["cpu_seconds"] < 1.0 and last["rss_bytes"] < 2**30 else 1


if __name__ == "__main__":
    raise SystemExit(main())
