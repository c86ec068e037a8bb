"""Hard faults act in the same cycle; teardown XIDs do nothing; a hang names the rank that never entered."""

from __future__ import annotations

from agent.evidence import Evidence, HardSignal, RankEvidence
from controller.detect import DetectionConfig, DetectionEngine
from controller.detect.hang import find_hang
from controller.detect.hard import hard_findings
from controller.detect.ranks import group_ranks
from controller.model import Severity, Verdict

CONFIG = DetectionConfig()


def _xid(code: int, t: float = 100.0) -> HardSignal:
    return HardSignal(kind="xid", device="GPU-1", xid=code, first_seen=t, last_seen=t)


def test_gpu_fallen_off_the_bus_makes_the_node_faulty_in_the_first_cycle() -> None:
    engine = DetectionEngine()
    result = engine.step(
        {
            "a": Evidence(node="a", collected_at=100.0, hard_signals=[_xid(79)]),
            "b": Evidence(node="b", collected_at=100.0),
        },
        100.0,
    )
    assert result.verdicts["a"].verdict is Verdict.FAULTY
    assert result.verdicts["a"].reason == "CriticalXid"
    assert result.verdicts["a"].findings[0].evidence["xid"] == 79
    assert result.verdicts["b"].verdict is Verdict.HEALTHY


def test_teardown_xids_43_and_45_are_not_faults() -> None:
    document = Evidence(node="a", collected_at=100.0, hard_signals=[_xid(43), _xid(45), _xid(13)])
    assert hard_findings(document, CONFIG) == []


def test_thermal_throttle_counts_only_once_it_persists() -> None:
    signal = HardSignal(kind="thermal_throttle", device="GPU-1", first_seen=100.0, last_seen=110.0)
    assert hard_findings(Evidence(node="a", collected_at=110.0, hard_signals=[signal]), CONFIG) == []
    late = hard_findings(
        Evidence(node="a", collected_at=100.0 + CONFIG.thermal_throttle_seconds, hard_signals=[signal]),
        CONFIG,
    )
    assert [f.reason for f in late] == ["ThermalThrottle"]


def test_missing_evidence_is_unknown_never_faulty() -> None:
    result = DetectionEngine().step({"a": None}, 100.0)
    assert result.verdicts["a"].verdict is Verdict.UNKNOWN


def _rank(
    rank: int, last_seq: int, pending: int | None, since: float | None, progress: float, world: int = 3
) -> RankEvidence:
    return RankEvidence(
        job="j",
        rank=rank,
        world_size=world,
        window_seconds=10,
        last_seq=last_seq,
        pending_seq=pending,
        pending_since=since,
        last_progress_at=progress,
    )


def test_hang_names_the_rank_that_never_entered_the_collective_others_wait_in() -> None:
    documents = {
        "a": Evidence(node="a", collected_at=200.0, ranks=[_rank(0, 41, 42, 185.0, 185.0)]),
        "b": Evidence(
            node="b", collected_at=203.0, ranks=[_rank(1, 41, 42, 186.0, 186.0)]
        ),  # a newer document
        "c": Evidence(node="c", collected_at=199.0, ranks=[_rank(2, 41, None, None, 184.0)]),  # an older one
    }
    group = group_ranks(documents)[("", "j")]["default"]
    report = find_hang(group, 1.0, CONFIG)
    assert report.hung and report.stuck_seq == 42
    assert [(f.reason, f.node) for f in report.findings] == [("Hang", "c")]


def test_every_rank_stuck_inside_one_collective_is_a_fabric_alert_not_a_node() -> None:
    documents = {
        n: Evidence(node=n, collected_at=200.0, ranks=[_rank(i, 41, 42, 180.0, 180.0)])
        for i, n in enumerate("abc")
    }
    report = find_hang(group_ranks(documents)[("", "j")]["default"], 1.0, CONFIG)
    assert [(f.reason, f.severity) for f in report.findings] == [("CollectiveHang", Severity.FABRIC)]


def test_short_waits_are_not_a_hang() -> None:
    documents = {
        "a": Evidence(node="a", collected_at=200.0, ranks=[_rank(0, 41, 42, 198.0, 198.0)]),
        "c": Evidence(node="c", collected_at=200.0, ranks=[_rank(2, 41, None, None, 197.0)]),
    }
    assert not find_hang(group_ranks(documents)[("", "j")]["default"], 1.0, CONFIG).hung


def test_hang_after_ddp_issued_several_buckets_blames_the_rank_behind_the_frontier() -> None:
    # DDP: every rank issued bucket 40; the healthy ones went on to issue 41-43 and now wait; rank 1 was
    # stopped (SIGSTOP) right after issuing 40, so it is pending too, but behind the frontier.
    documents = {
        "a": Evidence(node="a", collected_at=200.0, ranks=[_rank(0, 43, 40, 185.0, 185.5)]),
        "b": Evidence(node="b", collected_at=200.0, ranks=[_rank(1, 40, 40, 185.0, 185.0)]),
        "c": Evidence(node="c", collected_at=200.0, ranks=[_rank(2, 43, 40, 185.1, 185.4)]),
    }
    report = find_hang(group_ranks(documents)[("", "j")]["default"], 1.0, CONFIG)
    assert [(f.reason, f.node) for f in report.findings] == [("Hang", "b")]


def _laggard_doing(state: str | None, writes: float | None, progress: float = 184.0) -> dict[str, Evidence]:
    """Ranks 0 and 1 wait in collective 42 since 185 s; rank 2 stopped issuing at `progress`, its process in
    `state` writing `writes` bytes/s (None: an agent that does not say)."""
    laggard = _rank(2, 41, None, None, progress).model_copy(
        update={"process_state": state, "process_write_bytes_per_second": writes}
    )
    return {
        "a": Evidence(node="a", collected_at=200.0, ranks=[_rank(0, 41, 42, 185.0, 185.0)]),
        "b": Evidence(node="b", collected_at=200.0, ranks=[_rank(1, 41, 42, 185.0, 185.0)]),
        "c": Evidence(node="c", collected_at=200.0, ranks=[laggard]),
    }


def test_a_rank_writing_a_checkpoint_while_its_peers_wait_is_busy_not_hung() -> None:
    report = find_hang(group_ranks(_laggard_doing("R", 200e6))[("", "j")]["default"], 1.0, CONFIG)
    assert report.hung and report.findings == []
    report = find_hang(group_ranks(_laggard_doing("D", 5e6))[("", "j")]["default"], 1.0, CONFIG)
    assert report.findings == []


def test_a_stopped_silent_or_unknown_laggard_is_hung_and_so_is_one_busy_past_the_limit() -> None:
    for state, writes in [("T", None), ("S", 2e3), ("R", None), (None, None), ("T", 200e6)]:
        report = find_hang(group_ranks(_laggard_doing(state, writes))[("", "j")]["default"], 1.0, CONFIG)
        assert [(f.reason, f.node) for f in report.findings] == [("Hang", "c")], (state, writes)
    long_ago = 200.0 - CONFIG.hang_busy_max_seconds
    documents = _laggard_doing("R", 200e6, progress=long_ago)
    assert [f.node for f in find_hang(group_ranks(documents)[("", "j")]["default"], 1.0, CONFIG).findings] == ["c"]


def _long_step_job(stopped_idle: float, peers_waiting: float) -> dict[str, Evidence]:
    """Rank 2 issued collective 41 and made no progress for `stopped_idle` s; ranks 0 and 1 wait in 42."""
    t = 300.0
    return {
        "a": Evidence(
            node="a", collected_at=t, ranks=[_rank(0, 41, 42, t - peers_waiting, t - peers_waiting)]
        ),
        "b": Evidence(
            node="b", collected_at=t, ranks=[_rank(1, 41, 42, t - peers_waiting, t - peers_waiting)]
        ),
        "c": Evidence(node="c", collected_at=t, ranks=[_rank(2, 41, None, None, t - stopped_idle)]),
    }


def test_hang_in_a_long_step_is_called_once_the_stopped_rank_stalled_for_hang_max_seconds() -> None:
    # an 8 s step: the peers blocked at the collective a step after rank 2 stopped, and waited 13 s so far (a
    # wait of 5 steps, clamped to 20 s, would call it 7 s later: 28 s after the stop, past the 30 s target with
    # a cycle's delay)
    group = group_ranks(_long_step_job(stopped_idle=21.0, peers_waiting=13.0))[("", "j")]["default"]
    report = find_hang(group, 8.0, CONFIG)
    assert [(f.reason, f.node) for f in report.findings] == [("Hang", "c")]


def test_a_long_step_whose_slow_rank_progressed_within_two_steps_is_no_hang() -> None:
    # a 30 s step: a rank 12 s slower than its peers is idle for 25 s between collectives, and they wait 10 s
    group = group_ranks(_long_step_job(stopped_idle=25.0, peers_waiting=10.0))[("", "j")]["default"]
    assert not find_hang(group, 30.0, CONFIG).hung
    # ... and a short pause of the stopped rank is none either, whatever the step
    group = group_ranks(_long_step_job(stopped_idle=15.0, peers_waiting=7.0))[("", "j")]["default"]
    assert not find_hang(group, 3.0, CONFIG).hung


def test_with_the_step_period_unknown_peers_must_wait_hang_max_seconds() -> None:
    # a job's first collectives (no step period yet): rank 2 is 12 s late to collective 42 (compiling, warming
    # up its data loader) and idle for 12 s; its peers waiting 12 s is an uneven start, not a hang
    group = group_ranks(_long_step_job(stopped_idle=12.0, peers_waiting=12.0))[("", "j")]["default"]
    assert not find_hang(group, None, CONFIG).hung
    # ... which it is once they waited hang_max_seconds
    stalled = CONFIG.hang_max_seconds + 1
    group = group_ranks(_long_step_job(stopped_idle=stalled, peers_waiting=stalled))[("", "j")]["default"]
    report = find_hang(group, None, CONFIG)
    assert [(f.reason, f.node) for f in report.findings] == [("Hang", "c")]
