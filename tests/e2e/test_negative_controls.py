"""Negative controls on one shared cluster (3 ranks, 1 idle node): a healthy job, a job-wide slowdown, one rank
writing a checkpoint while the others wait and a job restart must never get a node blamed, cordoned or tainted,
and the idle node is never touched."""

from __future__ import annotations

import pytest

from controller.demo.faults import JobRestart, JobSlowdown, NoFault, RankCheckpoint
from controller.demo.scenario import DemoRun, Detection
from tests.e2e.conftest import HEALTHY_SECONDS

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

WATCH_SECONDS = 35.0  # several detection windows and more than the 20% straggler's persistence


def watch_quietly(demo: DemoRun, detection: Detection, measured: list[Detection]) -> None:
    measured.append(detection)
    assert detection.innocent_blamed == (), f"{detection.fault}: nodes blamed {detection.innocent_blamed}"
    assert demo.observer is not None
    touched = {name for name, (cordoned, taint) in demo.observer.kube_nodes().items() if cordoned or taint}
    assert touched == set()
    assert demo.job is not None and demo.job.failed_ranks() == []


def test_healthy_job_blames_nobody(shared_demo: DemoRun, measured: list[Detection]) -> None:
    fault = NoFault()
    at = shared_demo.inject(fault)
    watch_quietly(shared_demo, shared_demo.watch_fault(fault, at, WATCH_SECONDS), measured)


def test_whole_job_slowing_at_once_like_a_checkpoint_blames_nobody(
    shared_demo: DemoRun, measured: list[Detection]
) -> None:
    fault = JobSlowdown(factor=1.6)
    at = shared_demo.inject(fault)
    detection = shared_demo.watch_fault(fault, at, WATCH_SECONDS)
    assert shared_demo.job is not None
    for rank in range(shared_demo.job.world_size):
        shared_demo.job.set_slowdown(rank, 1.0)
    watch_quietly(shared_demo, detection, measured)


def test_one_rank_writing_a_checkpoint_while_its_peers_wait_blames_nobody(
    shared_demo: DemoRun, measured: list[Detection]
) -> None:
    fault = RankCheckpoint(target_rank=0, seconds=25.0)  # past the hang threshold (8-20 s): a stopped rank would be hung
    shared_demo.observe(HEALTHY_SECONDS)  # a job with a known step, also when this test runs alone
    at = shared_demo.inject(fault)
    watch_quietly(shared_demo, shared_demo.watch_fault(fault, at, WATCH_SECONDS), measured)


def test_whole_job_restarting_blames_nobody(shared_demo: DemoRun, measured: list[Detection]) -> None:
    fault = JobRestart()
    at = shared_demo.inject(fault)
    watch_quietly(shared_demo, shared_demo.watch_fault(fault, at, WATCH_SECONDS), measured)


def test_idle_node_without_a_rank_is_reported_but_never_touched(shared_demo: DemoRun) -> None:
    assert shared_demo.cluster is not None and shared_demo.observer is not None
    idle = shared_demo.cluster.nodes[-1].name
    view = shared_demo.observer.views[idle]
    assert view.verdict in ("healthy", "unknown")
    assert idle not in shared_demo.observer.ever_blamed
    assert idle not in shared_demo.observer.ever_suspect
