"""Fault injectors of the demo: what each fault does to one node, which verdict it should earn and how soon
(DESIGN.md budgets), plus the negative controls that must earn none."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from controller.demo.cluster import Cluster, Node
from controller.demo.job import TrainingJob

log = logging.getLogger(__name__)

GPUS_PER_NODE = 2  # fake GPUs per demo node: enough to show one failing next to a healthy one


class FaultError(RuntimeError):
    """A fault could not be injected here (e.g. `tc` needs root and network namespaces)."""


@dataclass
class Fault:
    """A fault on the node of rank `target_rank` (None: the whole job, or nothing)."""

    name: ClassVar[str]
    help: ClassVar[str]
    budget_seconds: ClassVar[float]  # time to detect allowed by DESIGN.md
    blames_a_node: ClassVar[bool] = True  # False for negative controls: nothing may be blamed
    on_one_rank: ClassVar[bool] = True  # False for what the whole job does (or nothing): no target rank

    target_rank: int | None = None

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        """Apply the fault now; returns what was done, in words."""
        raise NotImplementedError

    def clear(self, cluster: Cluster, job: TrainingJob) -> None:  # noqa: B027 - most faults end with the run
        """Undo what `inject` did that teardown would not (processes and namespaces go with the cluster)."""

    def target_node(self, job: TrainingJob) -> Node | None:
        return job.nodes[self.target_rank] if self.target_rank is not None else None


@dataclass
class NoFault(Fault):
    name = "none"
    help = "inject nothing: the healthy control, nothing may be blamed"
    budget_seconds = 0.0
    blames_a_node = False
    on_one_rank = False

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        return "no fault (healthy control)"


@dataclass
class Straggler(Fault):
    name = "straggler"
    help = "slow one rank's compute by --straggler-slowdown (a throttled or degraded GPU)"
    budget_seconds = 60.0
    factor: float = 1.4

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        assert self.target_rank is not None
        job.set_slowdown(self.target_rank, self.factor)
        return f"rank {self.target_rank} compute x{self.factor:g} (+{(self.factor - 1) * 100:.0f}% per step)"


@dataclass
class Hang(Fault):
    name = "hang"
    help = "SIGSTOP one rank: its peers block in the next all-reduce"
    budget_seconds = 30.0

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        assert self.target_rank is not None
        child = job.ranks[self.target_rank]
        os.kill(child.pid, signal.SIGSTOP)
        return f"rank {self.target_rank} (pid {child.pid}) stopped with SIGSTOP"

    def clear(self, cluster: Cluster, job: TrainingJob) -> None:
        child = job.ranks.get(self.target_rank) if self.target_rank is not None else None
        if child is not None and child.running():
            os.kill(child.pid, signal.SIGCONT)


@dataclass
class SlowLink(Fault):
    name = "slow-link"
    help = "limit what one node sends with `tc tbf` on its interface (a degraded link or NIC; needs root)"
    budget_seconds = 60.0
    rate: str = "8mbit"
    # A shallow queue, as on a degraded port: bursts beyond it are dropped, so the node's TCP retransmits.
    queue_latency: str = "20ms"

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        node = self.target_node(job)
        if node is None or node.netns is None:
            raise FaultError("slow-link needs network namespaces: run the demo as root")
        # tbf shapes egress: the node's own sends are slow and dropped past the queue (TCP retransmits on it),
        # as with a degraded NIC or cable; the qdisc goes with the namespace at teardown.
        argv = [*node.exec_prefix(), "tc", "qdisc", "replace", "dev", node.interface, "root", "tbf"]
        argv += ["rate", self.rate, "burst", "32kbit", "latency", self.queue_latency]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise FaultError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
        return f"{node.name} sends at most {self.rate} (tc tbf on its {node.interface})"


@dataclass
class Xid(Fault):
    name = "xid"
    help = "fire XID --xid on GPU 0 of one node through its fake NVML config"
    budget_seconds = 15.0
    xid: int = 79

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        node = self.target_node(job)
        assert node is not None
        write_nvml_config(node, xids=[(0, self.xid)])
        return f"XID {self.xid} on GPU 0 of {node.name} (fake NVML)"


@dataclass
class JobSlowdown(Fault):
    """Negative control: every rank slows at once (checkpoint, evaluation, a slow data loader)."""

    name = "job-slowdown"
    help = "negative control: slow every rank at once (a checkpoint); nothing may be blamed"
    budget_seconds = 0.0
    blames_a_node = False
    on_one_rank = False
    factor: float = 1.6

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        for rank in range(job.world_size):
            job.set_slowdown(rank, self.factor)
        return f"every rank compute x{self.factor:g} at once (job-wide slowdown)"


@dataclass
class JobRestart(Fault):
    """Negative control: the whole job stops and starts again (new rendezvous, sequence numbers from 0)."""

    name = "job-restart"
    help = "negative control: restart the whole job; nothing may be blamed"
    budget_seconds = 0.0
    blames_a_node = False
    on_one_rank = False

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        job.restart()
        return f"job {job.name} restarted (generation {job.generation})"


@dataclass
class RankCheckpoint(Fault):
    """Negative control: one rank saves a checkpoint (writes for a while) as its peers wait at the next all-reduce:
    it stops behind them as a hung rank does, but its process runs and writes."""

    name = "rank-checkpoint"
    help = (
        "negative control: the --target-rank writes a checkpoint for 25 s (50 MB/s) after a step while the others "
        "wait in the next all-reduce: it stops behind them as a hung rank would; nothing may be blamed"
    )
    budget_seconds = 0.0
    blames_a_node = False
    seconds: float = 25.0

    def inject(self, cluster: Cluster, job: TrainingJob) -> str:
        assert self.target_rank is not None
        job.request_checkpoint(self.target_rank, self.seconds)
        return f"rank {self.target_rank} writes a checkpoint for {self.seconds:g} s while its peers wait"


FAULTS: dict[str, type[Fault]] = {
    f.name: f for f in (Straggler, Hang, SlowLink, Xid, NoFault, JobSlowdown, JobRestart, RankCheckpoint)
}


def write_nvml_config(node: Node, xids: list[tuple[int, int]] | None = None) -> None:
    """Write the node's fake-NVML config (tools/fake-nvml): healthy GPUs, plus XID events as (gpu index, code).

    The fake library re-reads the file when it changes and delivers XIDs it has not delivered yet; the file is
    replaced atomically so the agent never reads half of it.
    """
    config: dict[str, object] = {"gpu_count": GPUS_PER_NODE}
    gpus: dict[str, dict[str, list[int]]] = {}
    for gpu, code in xids or []:
        gpus.setdefault(str(gpu), {"xid": []})["xid"].append(code)
    if gpus:
        config["gpus"] = gpus
    tmp = node.nvml_config.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(node.nvml_config)
