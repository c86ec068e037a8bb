"""The demo's training job: one real torch.distributed DDP (or FSDP2) rank (gloo, CPU) per node, inside the node's
namespace, with the Lockstep probe switched on and per-rank slowdown and checkpoint request files the fault
injectors write."""

from __future__ import annotations

import logging
import os
import shutil
import site
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from controller.demo.cluster import Node, free_port
from controller.demo.paths import PROBE_PTH
from controller.demo.processes import Child, ProcessSet

log = logging.getLogger(__name__)

WORKER_MODULE = "controller.demo.ddp_worker"
SLOWDOWN_ENV = "LOCKSTEP_DEMO_SLOWDOWN_FILE"
CHECKPOINT_ENV = "LOCKSTEP_DEMO_CHECKPOINT_FILE"


def probe_bootstrap_env(env: dict[str, str], work_dir: Path) -> str:
    """Switch the probe on in `env` the way a user does (LOCKSTEP_PROBE=1, no code change); returns how.

    An installed lockstep has put `lockstep-probe.pth` into site-packages. Running from a checkout, the demo
    puts the same file in a site directory of its own, added through a `sitecustomize` on PYTHONPATH.
    """
    env["LOCKSTEP_PROBE"] = "1"
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    if any((Path(d) / PROBE_PTH.name).exists() for d in site_dirs):
        return "installed lockstep-probe.pth"
    site_dir = work_dir / "probe-site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(PROBE_PTH, site_dir / PROBE_PTH.name)
    (site_dir / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n"
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site_dir), env.get("PYTHONPATH", "")) if p)
    return f"lockstep-probe.pth from this checkout ({site_dir})"


@dataclass
class TrainingJob:
    """A DDP job with rank i on `nodes[i]`; rank 0's node hosts the rendezvous (MASTER_ADDR)."""

    name: str
    nodes: list[Node]
    processes: ProcessSet
    base_env: Mapping[str, str]  # with the probe switched on (probe_bootstrap_env)
    compute_seconds: float = 0.2
    parallel: str = "ddp"  # or "fsdp" (controller.demo.ddp_worker --parallel)
    ranks: dict[int, Child] = field(default_factory=dict)
    generation: int = 0

    @property
    def world_size(self) -> int:
        return len(self.nodes)

    def slowdown_file(self, rank: int) -> Path:
        return self.nodes[rank].directory / f"slowdown-rank{rank}"

    def set_slowdown(self, rank: int, factor: float) -> None:
        """Make rank `rank` spend `factor` times its normal compute per step (1.0 = normal), from its next step."""
        _write_whole(self.slowdown_file(rank), f"{factor}\n")

    def checkpoint_file(self, rank: int) -> Path:
        return self.nodes[rank].directory / f"checkpoint-rank{rank}"

    def request_checkpoint(self, rank: int, seconds: float) -> None:
        """Make rank `rank` write a checkpoint for `seconds` after its current step, while its peers wait."""
        _write_whole(self.checkpoint_file(rank), f"{seconds}\n")

    def start(self) -> None:
        self.generation += 1
        master = self.nodes[0]
        port = free_port(master.ip) if master.netns is None else 29500 + self.generation
        for rank, node in enumerate(self.nodes):
            self.set_slowdown(rank, 1.0)
            env = dict(self.base_env)
            env.update(
                {
                    "RANK": str(rank),
                    "LOCAL_RANK": "0",
                    "WORLD_SIZE": str(self.world_size),
                    "LOCAL_WORLD_SIZE": "1",
                    "MASTER_ADDR": master.ip,
                    "MASTER_PORT": str(port),
                    "GLOO_SOCKET_IFNAME": node.interface,
                    "LOCKSTEP_SOCKET_DIR": str(node.socket_dir),
                    "LOCKSTEP_JOB": self.name,
                    "NODE_NAME": node.name,
                    SLOWDOWN_ENV: str(self.slowdown_file(rank)),
                    CHECKPOINT_ENV: str(self.checkpoint_file(rank)),
                    "OMP_NUM_THREADS": "1",
                }
            )
            argv = [
                *node.exec_prefix(),
                sys.executable,
                "-m",
                WORKER_MODULE,
                "--compute-seconds",
                str(self.compute_seconds),
                "--parallel",
                self.parallel,
            ]
            self.ranks[rank] = self.processes.start(f"{self.name}-g{self.generation}-rank{rank}", argv, env)

    def stop(self) -> None:
        for child in self.ranks.values():
            self.processes.stop(child, grace_seconds=2.0)
        self.ranks.clear()

    def restart(self) -> None:
        """Stop every rank and start the job again (a new rendezvous, sequence numbers from zero)."""
        self.stop()
        self.start()

    def failed_ranks(self) -> list[int]:
        return [rank for rank, child in self.ranks.items() if not child.running()]


def _write_whole(path: Path, text: str) -> None:
    """Replace `path` atomically: the rank reading it every step never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
