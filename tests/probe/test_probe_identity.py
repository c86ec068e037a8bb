"""A rank's job identity comes from what launchers and Kubernetes put in its environment."""

from __future__ import annotations

import pytest

from agent.probe.identity import identify, job_name


@pytest.mark.parametrize(
    ("environ", "job"),
    [
        ({"LOCKSTEP_JOB": "llm-7b", "JOBSET_NAME": "js", "POD_NAMESPACE": "team"}, "llm-7b"),
        ({"JOBSET_NAME": "pretrain", "POD_NAMESPACE": "team-a"}, "team-a/pretrain"),
        ({"PET_NNODES": "4", "MASTER_ADDR": "bert-large-master-0", "MASTER_PORT": "23456", "POD_NAMESPACE": "ml"},
         "ml/bert-large"),
        ({"VC_TASK_INDEX": "1", "VC_WORKER_HOSTS": "vjob-worker-0.vjob,vjob-worker-1.vjob", "POD_NAMESPACE": "v"},
         "v/vjob"),
        ({"TORCHELASTIC_RUN_ID": "run42", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, "torchrun-run42"),
        ({"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, "10.0.0.1:29500"),
    ],
    ids=["override", "jobset", "kubeflow-pytorchjob", "volcano", "torchrun", "rendezvous-address"],
)  # fmt: skip
def test_job_name_follows_the_launcher(environ: dict[str, str], job: str) -> None:
    assert job_name(environ) == job


def test_init_method_names_a_job_launched_without_environment() -> None:
    assert job_name({}, "tcp://10.1.2.3:40000") == "tcp://10.1.2.3:40000"
    assert job_name({}, "env://").count("-") >= 1  # host and parent pid: still one name for all local ranks


def test_torch_distributed_rank_wins_over_the_environment() -> None:
    identity = identify({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "POD_NAME": "w-3", "POD_NAMESPACE": "ml",
                         "LOCKSTEP_JOB": "j"}, rank=5, world_size=8)  # fmt: skip
    assert (identity.rank, identity.world_size, identity.local_rank) == (5, 8, 1)
    assert (identity.pod, identity.namespace, identity.job) == ("w-3", "ml", "j")
    assert identify({"RANK": "3", "WORLD_SIZE": "8"}).rank == 3
