"""Plain-data builders for detection tests: lockstep ranks with a culprit, a clock offset, a hang."""

from __future__ import annotations

import numpy as np

from agent.evidence import (
    CollectiveSample,
    Evidence,
    HardSignal,
    HostEvidence,
    NicEvidence,
    RankEvidence,
    TcpPath,
)

STEP = 1.0
PER_STEP = 4


def lockstep_ranks(
    nodes: int,
    ranks_per_node: int,
    t: float,
    *,
    late_node: int | None = None,
    late_seconds: float = 0.2,
    late_rank: int | None = None,
    clock_offsets: dict[int, float] | None = None,
    job: str = "train",
    world_slowdown: float = 1.0,
    seed: int = 0,
    samples: int = 24,
    pid_base: int = 100,
    first_seq: int = 0,
    waits_timed_every: int = 1,
    late_positions: tuple[int, ...] | None = None,
    per_step: int = PER_STEP,
) -> dict[int, list[RankEvidence]]:
    """Ranks of one job in lockstep up to time t: the culprit arrives late, everyone completes together. Waits
    are known for the collectives whose seq is a multiple of `waits_timed_every` (the probe's sample).
    `late_positions`: the culprit is late only at these of the PER_STEP collectives of a step (its extra compute
    lies before them; the others find every rank lined up again), else at all of them. `per_step`: collectives
    in a step of STEP seconds."""
    rng = np.random.default_rng(seed + int(t))
    last = first_seq + int(t * per_step / (STEP * world_slowdown)) - 1
    seqs = np.arange(last - samples + 1, last + 1)
    base = (seqs - first_seq) * STEP * world_slowdown / per_step
    delay = late_seconds * (
        np.isin(seqs % per_step, late_positions) if late_positions is not None else np.ones(samples)
    )
    world = nodes * ranks_per_node
    out: dict[int, list[RankEvidence]] = {}
    for node in range(nodes):
        offset = (clock_offsets or {}).get(node, 0.0)
        for local in range(ranks_per_node):
            rank = node * ranks_per_node + local
            culprit = node == late_node and (late_rank is None or rank == late_rank)
            arrival = base + (delay if culprit else 0.0) + rng.normal(0, 0.003, samples)
            completion = base + delay + 0.05 + rng.normal(0, 0.001, samples)
            out.setdefault(node, []).append(
                RankEvidence(
                    job=job,
                    rank=rank,
                    world_size=world,
                    pid=pid_base + rank,
                    window_seconds=10.0,
                    collectives_in_window=len(seqs),
                    step_period_seconds=STEP * world_slowdown,
                    last_seq=int(last),
                    last_progress_at=float(completion[-1]) + offset,
                    samples=[
                        CollectiveSample(
                            seq=int(s),
                            op="allreduce",
                            bytes=1000,
                            arrival=float(a) + offset,
                            wait_seconds=None if s % waits_timed_every else float(c - a),
                        )
                        for s, a, c in zip(seqs, arrival, completion, strict=True)
                    ],
                )
            )
    return out


def documents(
    ranks: dict[int, list[RankEvidence]],
    t: float,
    nodes: int,
    *,
    hard: dict[int, list[HardSignal]] | None = None,
    nics: dict[int, NicEvidence] | None = None,
    offsets: dict[int, float] | None = None,
) -> dict[str, Evidence | None]:
    """One polling round: an evidence document per node (nodes without ranks run no job)."""
    return {
        f"n{node}": Evidence(
            node=f"n{node}",
            collected_at=t + (offsets or {}).get(node, 0.0),
            ranks=ranks.get(node, []),
            hard_signals=(hard or {}).get(node, []),
            nics=[
                (nics or {}).get(
                    node, NicEvidence(name="eth0", link_speed_bits_per_second=1e11, tx_bytes_per_second=1e9)
                )
            ],
        )
        for node in range(nodes)
    }


TcpFigures = dict[tuple[str, str], tuple[float, float | None]]
"""(sender, receiver) -> (smoothed RTT in ms, network-limited delivery rate in bytes/s; None: app-limited)"""


def with_tcp_paths(
    nodes: int,
    figures: TcpFigures,
    t: float,
    *,
    samples: int = 5,
    min_rtt_ms: float | None = None,
    app_limited_rate: float | None = None,
) -> dict[str, Evidence]:
    """A one-rank-per-node job of `nodes` nodes at time t (node nI has address 10.0.0.{I+2}), each node sending
    bulk data along the given paths; a receiver that is not a node name is an outside address. Each path carries
    at least its network-limited rate, else `app_limited_rate` (bytes/s; None: not reported)."""
    docs = documents(lockstep_ranks(nodes, 1, t), t, nodes)
    names = list(docs)

    def address(node: str) -> str:
        return f"10.0.0.{names.index(node) + 2}" if node in names else node

    out = {}
    for name, doc in docs.items():
        assert doc is not None
        tcp_paths = [
            TcpPath(
                local_address=address(src),
                remote_address=address(dst),
                rtt_seconds=ms / 1e3,
                min_rtt_seconds=None if min_rtt_ms is None else min_rtt_ms / 1e3,
                bytes_per_second=3e6,
                samples=samples,
                delivery_bytes_per_second=rate,
                delivery_bound_bytes_per_second=app_limited_rate if rate is None else rate,
            )
            for (src, dst), (ms, rate) in figures.items()
            if src == name
        ]
        out[name] = doc.model_copy(update={"host": HostEvidence(tcp_paths=tcp_paths)})
    return out
