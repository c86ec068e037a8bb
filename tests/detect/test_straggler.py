"""The straggler detector blames the rank that arrives late and waits little, never its victims."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from controller.detect import DetectionConfig, DetectionEngine
from controller.detect.ranks import group_ranks
from controller.detect.straggler import (
    find_stragglers,
    find_stragglers_many,
    leave_one_out_median,
    median_along,
)
from controller.model import Verdict
from tests.detect.helpers import documents, lockstep_ranks

CONFIG = DetectionConfig()


def _findings(nodes: int, per_node: int, **kwargs: object) -> list:
    docs = documents(lockstep_ranks(nodes, per_node, 60.0, **kwargs), 60.0, nodes)  # type: ignore[arg-type]
    groups = [g for job in group_ranks({n: d for n, d in docs.items() if d}).values() for g in job.values()]
    return [f for g in groups for f in find_stragglers(g, 1.0, CONFIG).findings]


def test_leave_one_out_median_is_the_median_of_the_other_ranks() -> None:
    values = np.array([[1.0, 5.0], [2.0, 2.0], [3.0, 1.0], [4.0, 4.0]])
    expected = np.array([[np.median(np.delete(values[:, c], r)) for c in range(2)] for r in range(4)])
    assert np.allclose(leave_one_out_median(values), expected)


def test_straggler_that_arrives_late_is_blamed_not_its_victims() -> None:
    findings = _findings(4, 8, late_node=2, late_seconds=0.2)
    assert [f.node for f in findings] == ["n2"]
    assert findings[0].reason == "Straggler"
    assert findings[0].evidence["peers"] == ["n0", "n1", "n3"]


def test_one_slow_gpu_is_found_among_the_ranks_of_its_node() -> None:
    findings = _findings(4, 8, late_node=1, late_rank=13, late_seconds=0.2)
    assert [f.node for f in findings] == ["n1"]
    assert findings[0].evidence["ranks"] == [13]


def test_two_rank_job_blames_the_late_rank() -> None:
    findings = _findings(2, 1, late_node=0, late_seconds=0.15)
    assert [f.node for f in findings] == ["n0"]


def test_node_wide_straggler_in_a_two_node_job_is_measured_against_the_other_node() -> None:
    # 60 ms late on a 1 s step (threshold 4%: 40 ms): against the median of all 16 ranks, half of them its own,
    # the node would look 30 ms late and its peers 30 ms early
    findings = _findings(2, 8, late_node=1, late_seconds=0.06)
    assert [f.node for f in findings] == ["n1"]
    assert findings[0].evidence["subject"] == "node"
    # ... and a node whose clock is ahead by as much still waits like its peers: not blamed
    assert _findings(2, 8, clock_offsets={1: 0.06}) == []
    assert _findings(3, 4, clock_offsets={2: 0.06}) == []


def test_clock_ahead_looks_late_but_waits_like_everyone_and_is_not_blamed() -> None:
    assert _findings(4, 8, clock_offsets={3: 0.08}) == []


def test_straggler_with_clock_behind_is_still_found_from_waits() -> None:
    findings = _findings(4, 8, late_node=1, late_seconds=0.2, clock_offsets={1: -0.25})
    assert [f.node for f in findings] == ["n1"]
    assert findings[0].evidence["culprits"][0]["method"] == "clock-free"


def test_whole_job_slowing_down_blames_nobody() -> None:
    assert _findings(4, 8, world_slowdown=1.6) == []


def _run(cycles: int, build, nodes: int, cycle: float = 5.0, engine: DetectionEngine | None = None):  # type: ignore[no-untyped-def]
    engine = engine or DetectionEngine()
    results = []
    for i in range(1, cycles + 1):
        t = i * cycle
        results.append(engine.step(build(t), t))
    return results


def test_persistent_straggler_becomes_faulty_and_its_victims_stay_healthy() -> None:
    results = _run(
        16, lambda t: documents(lockstep_ranks(4, 8, t, late_node=2, late_seconds=0.2, seed=1), t, 4), 4
    )
    final = results[-1].verdicts
    assert final["n2"].verdict is Verdict.FAULTY and final["n2"].reason == "Straggler"
    assert all(final[n].verdict is Verdict.HEALTHY for n in ("n0", "n1", "n3"))
    assert final["n2"].findings[0].evidence["ranks"] == list(range(16, 24))


def test_one_late_window_gives_no_verdict() -> None:
    def build(t: float):  # type: ignore[no-untyped-def]
        late = 2 if t == 50.0 else None
        return documents(lockstep_ranks(4, 8, t, late_node=late, late_seconds=0.3, seed=2), t, 4)

    results = _run(16, build, 4)
    assert all(v.verdict is Verdict.HEALTHY for r in results for v in r.verdicts.values())


def test_slow_gpu_in_a_one_node_job_blames_that_node() -> None:
    findings = _findings(1, 8, late_node=0, late_rank=5, late_seconds=0.2)
    assert [(f.node, f.evidence["ranks"]) for f in findings] == [("n0", [5])]


def test_pipeline_stages_in_their_own_process_groups_are_not_compared_with_each_other() -> None:
    # Stage 1 runs 300 ms behind stage 0 by design; each stage is its own process group.
    stage0 = lockstep_ranks(2, 4, 60.0, seed=4)
    stage1 = lockstep_ranks(2, 4, 60.3, seed=5)
    ranks = {
        0: [r.model_copy(update={"process_group": "pp0"}) for r in stage0[0]],
        1: [r.model_copy(update={"process_group": "pp0"}) for r in stage0[1]],
        2: [r.model_copy(update={"process_group": "pp1"}) for r in stage1[0]],
        3: [r.model_copy(update={"process_group": "pp1"}) for r in stage1[1]],
    }
    docs = {n: d for n, d in documents(ranks, 60.0, 4).items() if d}
    groups = [g for job in group_ranks(docs).values() for g in job.values()]
    assert sorted(g.process_group for g in groups) == ["pp0", "pp1"]
    assert [f for g in groups for f in find_stragglers(g, 1.0, CONFIG).findings] == []


@pytest.mark.parametrize("shape", [(3, 7, 16), (3, 8, 15), (2, 2, 6), (2, 1, 3)])
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sorted_median_gives_numpys_median_with_nans_and_infinities(
    shape: tuple[int, ...], axis: int, keepdims: bool
) -> None:
    values = np.random.default_rng(sum(shape)).normal(size=shape)
    values[0, 0, 0] = np.nan
    values[1, :, 1] = np.inf
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.median(values, axis=axis, keepdims=keepdims)
    got = median_along(values, axis=axis, keepdims=keepdims)
    assert got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True)


def test_groups_whose_ranks_all_sent_too_few_samples_are_left_out_and_the_others_still_compared() -> None:
    # The first group's ranks each sent fewer samples than `min_collectives` (the last group of the cycle once
    # put its median position one past the end of the rank arrays: the whole cycle failed).
    few = group_ranks(documents(lockstep_ranks(4, 1, 60.0, job="a", samples=3), 60.0, 4))  # type: ignore[arg-type]
    late = group_ranks(documents(lockstep_ranks(4, 1, 60.0, job="b", late_node=2), 60.0, 4))  # type: ignore[arg-type]
    groups = [g for jobs in (late, few) for job in jobs.values() for g in job.values()]
    reports = find_stragglers_many([(g, 1.0) for g in groups], CONFIG)
    assert [[f.node for f in r.findings] for r in reports] == [["n2"], []]
    assert find_stragglers(groups[1], 1.0, CONFIG).findings == []


def _sampled_findings(nodes: int, per_node: int, **kwargs: object) -> list:
    """As `_findings`, with waits known on one collective in 4 (the probe's sample, the same seqs on every rank)."""
    return _findings(nodes, per_node, waits_timed_every=4, **kwargs)


def test_clock_ahead_with_waits_timed_on_every_fourth_collective_is_still_not_blamed() -> None:
    assert _sampled_findings(4, 8, clock_offsets={3: 0.08}) == []


def test_straggler_with_waits_timed_on_every_fourth_collective_is_blamed_with_its_wait_deficit() -> None:
    findings = _sampled_findings(4, 8, late_node=2, late_seconds=0.2)
    assert [f.node for f in findings] == ["n2"]
    culprit = findings[0].evidence["culprits"][0]
    assert culprit["method"] == "arrival" and culprit["wait_deficit_seconds"] > 0.1  # the wait-share check ran
    assert findings[0].evidence["peer_wait_seconds"] is not None


def test_straggler_with_clock_behind_and_sampled_waits_is_found_clock_free_needing_more_collectives() -> None:
    full = _findings(4, 8, late_node=1, late_seconds=0.2, clock_offsets={1: -0.25})
    sampled = _sampled_findings(4, 8, late_node=1, late_seconds=0.2, clock_offsets={1: -0.25})
    assert [f.node for f in sampled] == ["n1"]
    assert sampled[0].evidence["culprits"][0]["method"] == "clock-free"
    assert sampled[0].evidence["collectives_needed"] >= full[0].evidence["collectives_needed"]


def test_a_window_with_too_few_timed_waits_is_judged_by_arrival_alone_as_without_waits() -> None:
    # one timed collective in 24 (fewer than min_timed_collectives): one wait is no median
    docs = documents(lockstep_ranks(4, 8, 60.0, late_node=2, late_seconds=0.2, waits_timed_every=24), 60.0, 4)
    groups = [g for job in group_ranks({n: d for n, d in docs.items() if d}).values() for g in job.values()]
    reports = [find_stragglers(g, 1.0, CONFIG) for g in groups]
    findings = [f for r in reports for f in r.findings]
    assert [f.node for f in findings] == ["n2"]
    assert findings[0].evidence["peer_wait_seconds"] is None
    assert all(c["wait_deficit_seconds"] is None for c in findings[0].evidence["culprits"])
    assert all(not r.wait_seconds for r in reports)


# A step of several blocking collectives (FSDP's all-gathers and reduce-scatters, DDP's gradients and a logged
# loss) lines the ranks up at each: a straggler is late only at the collective after its extra compute.


def test_straggler_late_at_one_collective_of_each_step_is_blamed_by_its_lateness_per_step() -> None:
    findings = _findings(4, 1, late_node=3, late_seconds=0.2, late_positions=(2,))
    assert [f.node for f in findings] == ["n3"]
    culprit = findings[0].evidence["culprits"][0]
    assert culprit["method"] == "arrival per step" and culprit["lateness_seconds"] > 0.15


def test_straggler_late_at_one_collective_of_each_step_is_blamed_when_none_of_those_is_timed() -> None:
    # waits timed at position 0 of each step only: its lateness (position 1) shows in no wait, but a rank late
    # at none of its timed collectives is no clock running ahead
    findings = _sampled_findings(4, 8, late_node=1, late_seconds=0.2, late_positions=(1,))
    assert [f.node for f in findings] == ["n1"]


def test_straggler_late_at_one_of_forty_collectives_a_step_is_blamed_over_whole_steps() -> None:
    # more collectives a step than half the usual window (FSDP over many layers): compared over 4 steps of them,
    # or as many as the agents sent (128)
    findings = _findings(4, 1, late_node=3, late_seconds=0.2, late_positions=(7,), per_step=40, samples=128)
    assert [f.node for f in findings] == ["n3"]
    assert findings[0].evidence["compared_collectives"] > 64


def test_clock_ahead_is_not_blamed_per_step_either() -> None:
    # late by its offset at every collective of every step, but waits like everyone at each
    for offset in (0.05, 0.2):
        assert _findings(4, 1, clock_offsets={3: offset}) == []
        assert _sampled_findings(4, 8, clock_offsets={3: offset}) == []


def test_straggler_late_at_one_collective_of_each_step_becomes_faulty_its_victims_stay_healthy() -> None:
    def build(t: float):  # type: ignore[no-untyped-def]
        return documents(lockstep_ranks(4, 1, t, late_node=0, late_seconds=0.1, late_positions=(3,)), t, 4)

    final = _run(16, build, 4)[-1].verdicts
    assert final["n0"].verdict is Verdict.FAULTY and final["n0"].reason == "Straggler"
    assert all(final[n].verdict is Verdict.HEALTHY for n in ("n1", "n2", "n3"))
