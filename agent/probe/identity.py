"""Who a training process is (job, rank, pod), from the environment that launchers and Kubernetes set.

Read once by the probe when the process group comes up; records carry the result to the agent.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

_KUBEFLOW_MASTER = re.compile(r"^(?P<job>.+)-master-0$")


@dataclass(frozen=True)
class Identity:
    """A rank of a job. `job` is what the controller groups ranks by: equal on every rank of one job."""

    job: str
    rank: int
    world_size: int
    local_rank: int | None
    pod: str
    namespace: str


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value.lstrip("-").isdigit():
            return int(value)
    return None


def _volcano_job(environ: Mapping[str, str]) -> str:
    """Volcano's svc plugin sets VC_<TASK>_HOSTS = '<job>-<task>-0.<job>,...': the job is the service domain."""
    if "VC_TASK_INDEX" not in environ and "VK_TASK_INDEX" not in environ:
        return ""
    for name in sorted(environ):
        if name.startswith("VC_") and name.endswith("_HOSTS"):
            first = environ[name].split(",")[0]
            if "." in first:
                return first.split(".")[1]
    return ""


def job_name(environ: Mapping[str, str], init_method: str = "") -> str:
    """The job's name, first match wins: LOCKSTEP_JOB, JobSet, Kubeflow PyTorchJob, Volcano, torchrun's run
    id, the rendezvous address (MASTER_ADDR:MASTER_PORT, or the init_method URL), else host and parent pid.

    Names from Kubernetes are qualified with the namespace (POD_NAMESPACE) so equal names in two namespaces
    stay apart; LOCKSTEP_JOB is taken verbatim.
    """
    if environ.get("LOCKSTEP_JOB"):
        return environ["LOCKSTEP_JOB"]
    namespace = environ.get("POD_NAMESPACE", "")
    name = environ.get("JOBSET_NAME", "")
    if not name and "PET_NNODES" in environ:
        match = _KUBEFLOW_MASTER.match(environ.get("MASTER_ADDR", ""))
        name = match.group("job") if match else ""
    name = name or _volcano_job(environ)
    if name:
        return f"{namespace}/{name}" if namespace else name
    run_id = environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun-{run_id}"
    if environ.get("MASTER_ADDR") and environ.get("MASTER_PORT"):
        return f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}"
    if init_method and not init_method.startswith("env://"):
        return init_method
    return f"{socket.gethostname()}-{os.getppid()}"


def identify(
    environ: Mapping[str, str], rank: int | None = None, world_size: int | None = None, init_method: str = ""
) -> Identity:
    """Identity of this process; `rank`/`world_size` from torch.distributed win over RANK/WORLD_SIZE."""
    env_rank = _int(environ, "RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")
    env_world = _int(environ, "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE")
    rank_ = rank if rank is not None else (env_rank if env_rank is not None else 0)
    world = world_size if world_size is not None else (env_world if env_world else 1)
    return Identity(
        job=job_name(environ, init_method),
        rank=rank_,
        world_size=world,
        local_rank=_int(environ, "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"),
        pod=environ.get("POD_NAME", "") or environ.get("HOSTNAME", ""),
        namespace=environ.get("POD_NAMESPACE", ""),
    )
