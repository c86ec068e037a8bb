"""Each fault class on one node of a real cluster: the right node gets the faulty verdict, is cordoned and
tainted within DESIGN.md's budget, and no other node is touched (read back from the Kubernetes API)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.demo.faults import Fault, Hang, SlowLink, Straggler, Xid
from controller.demo.scenario import Detection

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


RunFault = Callable[..., tuple[Detection, dict[str, tuple[bool, str | None]]]]


def assert_only_target_acted_on(
    run_fault: RunFault, fault: Fault, reason_words: tuple[str, ...], **options: object
) -> None:
    detection, api_nodes = run_fault(fault, **options)
    assert detection.target is not None
    assert detection.found, (
        f"{fault.name} on {detection.target} not acted on within {fault.budget_seconds:g} s: {detection}"
    )
    assert detection.within_budget, detection
    assert detection.innocent_blamed == (), f"innocent nodes blamed: {detection.innocent_blamed}"
    cordoned, taint = api_nodes[detection.target]
    assert cordoned and taint is not None and taint.endswith(":NoSchedule")
    assert any(word in taint.lower() for word in reason_words), (
        f"taint {taint!r} does not name {reason_words}"
    )
    touched = {name for name, (cordoned, taint) in api_nodes.items() if cordoned or taint}
    assert touched == {detection.target}


def test_critical_xid_on_one_gpu_cordons_its_node_within_15_seconds(run_fault: RunFault) -> None:
    assert_only_target_acted_on(run_fault, Xid(target_rank=2, xid=79), ("xid", "gpu"))


def test_hung_rank_is_localised_to_its_node_not_the_peers_waiting_for_it(run_fault: RunFault) -> None:
    assert_only_target_acted_on(run_fault, Hang(target_rank=1), ("hang", "stall"))


def test_20_percent_straggler_that_arrives_late_is_blamed_not_its_victims(run_fault: RunFault) -> None:
    # Compute x1.2 on a step of ~0.2 s compute + ~0.01 s all-reduce: the rank's steps take ~20% longer.
    assert_only_target_acted_on(run_fault, Straggler(target_rank=3, factor=1.2), ("straggl", "slow", "late"))


def test_20_percent_straggler_in_an_fsdp_job_is_blamed_though_late_at_one_collective_a_step(
    run_fault: RunFault,
) -> None:
    # FSDP2: six all-gathers and reduce-scatters a step, each lining the ranks up again: the slow rank is late
    # only at the one after its compute.
    assert_only_target_acted_on(
        run_fault, Straggler(target_rank=1, factor=1.2), ("straggl", "slow", "late"), parallel="fsdp"
    )


def test_slow_link_is_pinned_on_the_node_whose_link_is_limited(run_fault: RunFault) -> None:
    assert_only_target_acted_on(run_fault, SlowLink(target_rank=2), ("link", "nic", "net"))


def test_slow_link_that_queues_without_loss_is_pinned_on_the_node_whose_sends_queue(run_fault: RunFault) -> None:
    # 100 Mbit/s: tbf's 20 ms queue holds the bursts, so nothing is retransmitted; every rank slows alike.
    assert_only_target_acted_on(run_fault, SlowLink(target_rank=1, rate="100mbit"), ("link", "nic", "net"))
