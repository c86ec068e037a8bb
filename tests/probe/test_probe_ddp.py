"""A real DDP job (gloo, CPU, several ranks) under the probe, as seen by the agent's collective collector."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.probe.recorder import TIMED_EVERY, is_timed

from .jobs import DDP_JOB, Job, ranks_by_number, run_ranks, start_collector, wait_for

pytestmark = pytest.mark.slow


def mlp_parameter_bytes(hidden: int, layers: int) -> int:
    """Bytes of tools/ddp_job.py's MLP (64 inputs, `layers` hidden layers, 10 outputs), float32."""
    params = 64 * hidden + hidden + layers * (hidden * hidden + hidden) + hidden * 10 + 10
    return 4 * params


def test_agent_sees_every_ddp_all_reduce_with_consecutive_seqs_and_true_bytes(
    ddp_job, probe_env: dict[str, str], probe_kernel: dict[str, str], socket_dir: Path
) -> None:
    collector = start_collector(socket_dir, evidence_samples=4096, window_seconds=600)
    try:
        steps, hidden, layers = 30, 64, 2
        job = ddp_job("--nproc", "3", "--steps", str(steps), "--hidden", str(hidden), "--layers", str(layers),
                      "--bucket-mb", "0.02", "--extra-allreduces", "1", env={**probe_env, **probe_kernel})  # fmt: skip
        job.finish()
        # the final barrier is the last collective of every rank
        wait_for(lambda: all(r.samples and r.samples[-1].op == "barrier" for r in ranks_by_number(collector).values())
                 and len(ranks_by_number(collector)) == 3, 30, "every rank's final barrier")  # fmt: skip
        ranks = ranks_by_number(collector)
    finally:
        collector.close()
    assert sorted(ranks) == [0, 1, 2]
    reference = [(s.seq, s.op, s.bytes) for s in ranks[0].samples]
    for rank, evidence in ranks.items():
        seqs = [s.seq for s in evidence.samples]
        assert seqs == list(range(len(seqs))), f"rank {rank} has gaps or disorder"
        assert [(s.seq, s.op, s.bytes) for s in evidence.samples] == reference, f"rank {rank} differs from rank 0"
        assert evidence.world_size == 3 and evidence.dropped_records == 0
        # waits where the probe times completion: the sampled seqs (the same on every rank) and synchronous calls
        timed = [s for s in evidence.samples if is_timed(s.seq) or s.op == "barrier"]
        assert len(timed) >= len(evidence.samples) // (2 * TIMED_EVERY)
        assert all(s.wait_seconds is not None and s.wait_seconds >= 0 for s in timed)
    all_reduces = [s for s in ranks[0].samples if s.op == "all_reduce"]
    grad_bytes = sum(s.bytes for s in all_reduces if s.bytes != 4)
    assert grad_bytes == steps * mlp_parameter_bytes(hidden, layers)  # every gradient all-reduced once per step
    assert len(all_reduces) > 2 * steps  # several buckets per step plus the script's own tiny all-reduce
    assert sum(1 for s in all_reduces if s.bytes == 4) == steps
    assert [s.op for s in ranks[0].samples].count("barrier") == 1


def test_stopped_rank_shows_as_stalled_while_its_peers_wait_in_a_pending_collective(
    ddp_job, probe_env: dict[str, str], probe_kernel: dict[str, str], collector, socket_dir: Path
) -> None:
    job: Job = ddp_job("--nproc", "3", "--steps", "0", "--step-seconds", "0.3", env={**probe_env, **probe_kernel})
    wait_for(lambda: len(ranks_by_number(collector)) == 3 and all(r.last_seq > 10 for r in ranks_by_number(collector).values()),
             120, "three ranks making progress")  # fmt: skip
    period = statistics.median(r.step_period_seconds or 0.3 for r in ranks_by_number(collector).values())
    assert period >= 0.25  # the pattern is one step, paced at 0.3 s (longer on a busy machine)
    stopped_pid = job.rank_pid(2)
    stopped_at = time.time()
    os.kill(stopped_pid, signal.SIGSTOP)
    try:

        def peers_wait() -> bool:
            ranks = ranks_by_number(collector)
            return all(ranks[r].pending_seq is not None for r in (0, 1))

        wait_for(peers_wait, 60, "the peers to show a pending collective")
        ranks = ranks_by_number(collector)
    finally:
        os.kill(stopped_pid, signal.SIGCONT)
    stalled, peers = ranks[2], [ranks[0], ranks[1]]
    for peer in peers:
        assert peer.pending_op == "all_reduce"
        assert peer.pending_seq is not None and peer.pending_since is not None
        assert peer.pending_seq > stalled.last_seq  # the stopped rank never issued the collective its peers wait in
        # the hang is visible from the peers' first unanswered collective: within 3 step periods of the stop
        assert peer.pending_since - stopped_at < 3 * period
    assert stalled.pending_seq is None
    assert stalled.last_progress_at < min(p.pending_since for p in peers)  # type: ignore[type-var]
    assert stalled.process_state == "T", "the agent sees the rank's process stopped: hung, not busy"
    assert all(peer.process_state in ("R", "S", "D") for peer in peers)


def test_straggler_arrives_late_and_waits_little_while_its_peers_wait_long(
    ddp_job, probe_env: dict[str, str], probe_kernel: dict[str, str], collector, tmp_path: Path
) -> None:
    slowdown = tmp_path / "slowdown"
    slowdown.write_text("1 6\n")  # rank 1 computes 6x slower than its peers
    ddp_job("--nproc", "3", "--steps", "60", "--hidden", "256", "--slowdown-file", str(slowdown),
            env={**probe_env, **probe_kernel}).finish()  # fmt: skip
    wait_for(lambda: len(ranks_by_number(collector)) == 3 and all(r.last_seq >= 60 for r in ranks_by_number(collector).values()),
             30, "all records")  # fmt: skip
    ranks = ranks_by_number(collector)
    arrivals = {rank: {s.seq: s.arrival for s in ev.samples} for rank, ev in ranks.items()}
    common = set.intersection(*(set(a) for a in arrivals.values()))
    lateness = {rank: statistics.median(arrivals[rank][seq] - min(arrivals[r][seq] for r in arrivals) for seq in common)
                for rank in arrivals}  # fmt: skip
    waits = {rank: ev.wait_seconds_p50 or 0.0 for rank, ev in ranks.items()}
    assert max(lateness, key=lambda r: lateness[r]) == 1
    assert min(waits, key=lambda r: waits[r]) == 1
    for peer in (0, 2):
        assert waits[peer] > 2 * waits[1]
        assert lateness[1] > lateness[peer]


def test_torchrun_ranks_are_probed_and_named_after_the_run_id(probe_env: dict[str, str], collector, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", "run-7", str(DDP_JOB), "--steps", "5"],
        env=probe_env, check=True, capture_output=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    wait_for(lambda: len(ranks_by_number(collector)) == 2, 30, "both torchrun ranks")
    ranks = ranks_by_number(collector)
    assert {r.job for r in ranks.values()} == {"torchrun-run-7"}
    assert {r.local_rank for r in ranks.values()} == {0, 1}
    assert all(r.last_seq == 5 for r in ranks.values())  # 5 DDP all-reduces and the final barrier


def test_each_process_group_has_its_own_sequence_and_non_members_record_nothing(ddp_job, socket_dir: Path) -> None:
    collector = start_collector(socket_dir, evidence_samples=4096, window_seconds=600)
    try:
        ddp_job("--nproc", "3", "--steps", "10", "--hidden", "32", "--layers", "1", "--subgroup-allreduces", "2").finish()
        wait_for(lambda: all(r.last_seq == 10 for r in ranks_by_number(collector, "default").values())
                 and len(ranks_by_number(collector, "default")) == 3, 30, "every rank's final barrier")  # fmt: skip
        groups = {r.process_group for r in collector.evidence().ranks}
        [subgroup] = groups - {"default"}
        members = ranks_by_number(collector, subgroup)
    finally:
        collector.close()
    assert sorted(members) == [0, 1]  # the first half of 3 ranks; rank 2 is no member and records nothing
    for evidence in members.values():
        assert [s.seq for s in evidence.samples] == list(range(20))
    for evidence in ranks_by_number(collector, "default").values():
        assert [s.seq for s in evidence.samples] == list(range(11))  # subgroup calls left the default group alone


HOOKED_AND_PLAIN_DDP = """
import json, sys
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from agent.probe.patch import timed_allreduce_hook
from agent.probe.recorder import Recorder

def rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    def model():
        torch.manual_seed(0)
        layers = nn.Sequential(nn.Linear(16, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 4))
        return DistributedDataParallel(layers, bucket_cap_mb=0.2)
    recorder = Recorder()
    hooked, plain = model(), model()
    hooked.register_comm_hook(hooked.process_group, timed_allreduce_hook(recorder, "default"))
    torch.manual_seed(1 + rank)  # every rank its own data: the average is not any rank's gradient
    for _ in range(3):
        inputs = torch.randn(8, 16)
        for ddp in (hooked, plain):
            ddp(inputs).sum().backward()  # gradients accumulate over the steps, as without zero_grad
    identical = all(torch.equal(a.grad, b.grad) for a, b in zip(hooked.parameters(), plain.parameters()))
    completed = [(token[1], token[4], done) for token, done in recorder.completed]
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"identical": identical, "completed": completed, "pending": len(recorder.pending)}, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank_main, args=(3, int(sys.argv[1]), sys.argv[2]), nprocs=3)
"""


def test_probe_hook_averages_gradients_bit_identically_to_ddp_without_a_hook_and_times_every_bucket(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    # 3 ranks: scaling by 1/3 rounds, so only DDP's own arithmetic (multiply by the reciprocal) matches it exactly
    results = run_ranks(HOOKED_AND_PLAIN_DDP, 3, subprocess_env, tmp_path)
    for result in results:
        assert result["identical"]
        assert result["pending"] == 0
        seqs = [seq for seq, _, _ in result["completed"]]
        assert sorted(seqs) == list(range(len(seqs))) and len(seqs) > 3  # each bucket once (gloo may finish them out of order)
        assert all(done >= issued for _, issued, done in result["completed"])
    assert len({len(result["completed"]) for result in results}) == 1


PROBED_CPU_DDP = """
import json, sys
import agent.probe
probe = agent.probe.install(sys.argv[3])
import torch, torch.distributed as dist, torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

def rank_main(rank, world, port, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    probe = agent.probe.installed()
    def model():
        torch.manual_seed(0)
        layers = nn.Sequential(nn.Linear(16, 300), nn.ReLU(), nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 4))
        return DistributedDataParallel(layers, bucket_cap_mb=0.2)
    def issued():  # one process group here
        return probe.recorder.issued()
    default_path, builtin_hook = model(), model()
    builtin_hook._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
    counts = {}
    for name, ddp in (("default_path", default_path), ("builtin_hook", builtin_hook)):
        before = issued()
        for _ in range(3):
            ddp(torch.randn(8, 16) + rank).sum().backward()  # each rank its own gradients
        counts[name] = issued() - before
        counts[f"{name}_gradient"] = [p.grad.sum().item() for p in ddp.parameters()]
    before = issued()
    summed = torch.ones(1)
    dist.all_reduce(summed)
    counts["all_reduce"] = issued() - before
    counts["all_reduce_sum"] = summed.item()
    counts["comm_hook"] = default_path._get_ddp_logging_data().get("comm_hook", "")
    counts["kernel"] = "compiled" if probe.recorder.compiled is not None else "python"
    probe.recorder.poll()  # what the sender does before each flush: completes the untimed all-reduces
    counts["pending"] = len(probe.recorder.pending)
    with open(f"{out}.{rank}", "w") as f:
        json.dump(counts, f)
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(rank_main, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2)
"""


def test_probe_records_cpu_ddp_on_its_default_path_builtin_hooks_and_each_all_reduce_once(
    subprocess_env: dict[str, str], probe_kernel: dict[str, str], tmp_path: Path
) -> None:
    results = run_ranks(PROBED_CPU_DDP, 2, {**subprocess_env, **probe_kernel}, tmp_path)
    compiled = probe_kernel["LOCKSTEP_PROBE_COMPILED"] == "1"
    for counts in results:
        assert counts["kernel"] == ("compiled" if compiled else "python")
        assert counts["comm_hook"] == ""  # DDP keeps its C++ default path: the probe registered no hook
        assert counts["default_path"] > 3  # every bucket of 3 steps, several per step once DDP rebuilt its buckets
        assert counts["builtin_hook"] == counts["default_path"]  # a builtin C++ hook's all-reduces too
        assert counts["all_reduce"] == 1  # torch.distributed.all_reduce: recorded once, not by wrapper and kernel
        assert counts["all_reduce_sum"] == 2.0  # and reduced: the kernel passes every all-reduce on to gloo
        assert counts["pending"] == 0
    for name in ("default_path_gradient", "builtin_hook_gradient"):  # ranks' own gradients, averaged alike
        assert results[0][name] == results[1][name]


def test_agent_sees_every_fsdp_all_gather_and_reduce_scatter_with_true_bytes(ddp_job, socket_dir: Path) -> None:
    """FSDP2 (fully_shard per layer) moves parameters and gradients with all-gathers and reduce-scatters, not
    all-reduces: each shows on every rank, in the same order, with this rank's bytes (its shard for an all-gather,
    the whole gradient for a reduce-scatter)."""
    collector = start_collector(socket_dir, evidence_samples=4096, window_seconds=600)
    try:
        steps, hidden, layers, world = 12, 64, 2, 2
        job = ddp_job("--parallel", "fsdp", "--nproc", str(world), "--steps", str(steps), "--hidden", str(hidden),
                      "--layers", str(layers))  # fmt: skip
        job.finish()
        wait_for(lambda: all(r.samples and r.samples[-1].op == "barrier" for r in ranks_by_number(collector).values())
                 and len(ranks_by_number(collector)) == world, 30, "every rank's final barrier")  # fmt: skip
        ranks = ranks_by_number(collector)
    finally:
        collector.close()
    reference = [(s.seq, s.op, s.bytes) for s in ranks[0].samples]
    for rank, evidence in ranks.items():
        assert [s.seq for s in evidence.samples] == list(range(len(reference))), f"rank {rank} has gaps or disorder"
        assert [(s.seq, s.op, s.bytes) for s in evidence.samples] == reference, f"rank {rank} differs from rank 0"
    ops = [op for _, op, _ in reference]
    linear_layers = layers + 2  # every Linear is its own FSDP unit
    assert ops.count("reduce_scatter") == steps * linear_layers  # each unit's gradients, once per step
    assert ops.count("all_gather") >= steps * linear_layers  # each unit's parameters, at least once per step
    assert ops.count("all_reduce") == 0 and ops.count("barrier") == 1
    parameter_bytes = mlp_parameter_bytes(hidden, layers)
    assert sum(b for _, op, b in reference if op == "reduce_scatter") == steps * parameter_bytes
    forward_gathers = [b for _, op, b in reference[: 2 * linear_layers] if op == "all_gather"][:linear_layers]
    assert sum(forward_gathers) == parameter_bytes // world  # the first forward gathers every shard once
