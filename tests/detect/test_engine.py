"""Engine-level behaviour: restarts, jobs without nodes, fabric, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.evidence import NicEvidence
from controller.detect import DetectionConfig, DetectionEngine
from controller.model import JobState, Severity, Verdict
from tests.detect.helpers import documents, lockstep_ranks


def test_job_restart_with_sequence_reset_and_new_pids_gives_no_verdict() -> None:
    engine = DetectionEngine()
    seen_restarting = False
    for i in range(1, 30):
        t = i * 5.0
        restarted = t >= 60
        ranks = lockstep_ranks(
            4, 8, t, seed=3, pid_base=900 if restarted else 100, first_seq=-240 if restarted else 0
        )
        result = engine.step(documents(ranks, t, 6), t)
        seen_restarting |= any(j.state is JobState.RESTARTING for j in result.jobs) and restarted
        assert all(v.verdict is Verdict.HEALTHY for v in result.verdicts.values())
    assert seen_restarting


def test_nodes_without_a_job_are_healthy_and_jobs_map_ranks_to_nodes() -> None:
    result = DetectionEngine().step(documents(lockstep_ranks(2, 2, 50.0), 50.0, 4), 50.0)
    assert result.verdicts["n3"].verdict is Verdict.HEALTHY
    (job,) = result.jobs
    assert job.rank_nodes == {0: "n0", 1: "n0", 2: "n1", 3: "n1"} and job.world_size == 4


def test_lossy_link_on_one_node_is_blamed_and_on_two_nodes_is_the_fabric() -> None:
    lossy = NicEvidence(
        name="eth0", link_speed_bits_per_second=1e11, tx_bytes_per_second=1e9, retransmits_per_second=300.0
    )
    engine = DetectionEngine()
    one = engine.step(documents(lockstep_ranks(4, 2, 50.0), 50.0, 4, nics={1: lossy}), 50.0)
    assert [(f.reason, f.node) for f in one.findings] == [("SlowLink", "n1")]
    two = DetectionEngine().step(
        documents(lockstep_ranks(4, 2, 50.0), 50.0, 4, nics={1: lossy, 2: lossy}), 50.0
    )
    assert [(f.reason, f.severity, f.nodes) for f in two.findings] == [
        ("FabricLink", Severity.FABRIC, ("n1", "n2"))
    ]


def test_many_suspects_behind_one_switch_are_a_fabric_finding_not_verdicts() -> None:
    lossy = NicEvidence(
        name="eth0", link_speed_bits_per_second=1e11, tx_bytes_per_second=1e9, retransmits_per_second=300.0
    )
    topology = {f"n{i}": "sw-a" if i < 3 else "sw-b" for i in range(6)}
    ranks = {}
    for k in range(3):  # job k spans n{k} (behind sw-a) and n{k+3} (behind sw-b)
        pair = lockstep_ranks(2, 1, 50.0, job=f"j{k}")
        ranks[k], ranks[k + 3] = pair[0], pair[1]
    result = DetectionEngine().step(
        documents(ranks, 50.0, 6, nics={0: lossy, 1: lossy, 2: lossy}), 50.0, topology
    )
    assert [f.reason for f in result.findings if f.severity is Severity.FABRIC] == ["SwitchFault"]
    assert all(v.verdict is Verdict.HEALTHY for v in result.verdicts.values())


def test_config_loads_from_yaml_and_rejects_unknown_keys(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("hang_min_seconds: 5\nsuspect_windows: 2\n")
    config = DetectionConfig.from_yaml(good)
    assert config.hang_min_seconds == 5.0 and config.suspect_windows == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("hang_minimum: 5\n")
    with pytest.raises(ValueError, match="hang_minimum"):
        DetectionConfig.from_yaml(bad)


def test_healthy_verdicts_name_their_node_cycle_after_cycle() -> None:
    engine = DetectionEngine()
    for t in (50.0, 55.0, 60.0):
        result = engine.step(documents(lockstep_ranks(2, 2, t), t, 3), t)
    assert {n: (v.node, v.verdict) for n, v in result.verdicts.items()} == {
        n: (n, Verdict.HEALTHY) for n in ("n0", "n1", "n2")
    }


def test_tcp_retransmits_on_one_node_point_at_its_link() -> None:
    from agent.evidence import HostEvidence

    docs = documents(lockstep_ranks(3, 1, 50.0), 50.0, 3)
    shaped = {
        name: doc.model_copy(
            update={
                "host": HostEvidence(
                    tcp_out_segments_per_second=10_000.0,
                    tcp_retransmit_segments_per_second=400.0 if name == "n2" else 1.0,
                )
            }
        )
        for name, doc in docs.items()
        if doc is not None
    }
    result = DetectionEngine().step(shaped, 50.0)
    (finding,) = result.findings
    assert (finding.reason, finding.node) == ("SlowLink", "n2")
    assert "tcp_retransmit_ratio" in finding.evidence["signals"]


def test_junk_evidence_never_crashes_and_never_blames() -> None:
    import math
    import random

    from agent.evidence import CollectiveSample, Evidence, RankEvidence

    rnd = random.Random(7)
    junk = [math.inf, -math.inf, math.nan, -1.0, 0.0, 1e12]
    engine = DetectionEngine()
    for cycle in range(12):
        t = 100.0 + 5 * cycle
        docs = {}
        for node in range(5):
            ranks = [
                RankEvidence(
                    job=rnd.choice(["a", "b"]),
                    rank=rnd.randrange(4),
                    world_size=rnd.choice([1, 2, 4, 0]),
                    process_group=rnd.choice(["default", "pp"]),
                    pid=rnd.randrange(3),
                    window_seconds=rnd.choice([0.0, 10.0]),
                    last_seq=rnd.randrange(-1, 50),
                    last_progress_at=rnd.choice([t, 0.0, math.nan]),
                    pending_seq=rnd.choice([None, 3, 99]),
                    pending_since=rnd.choice([None, t - 50, math.inf]),
                    step_period_seconds=rnd.choice([None, 0.0, -1.0, 1.0]),
                    samples=[
                        CollectiveSample(
                            seq=rnd.randrange(40),
                            op="x",
                            arrival=rnd.choice(junk + [t]),
                            wait_seconds=rnd.choice([None, *junk]),
                        )
                        for _ in range(rnd.randrange(30))
                    ],
                )
                for _ in range(rnd.randrange(4))
            ]
            docs[f"n{node}"] = Evidence(node=f"n{node}", collected_at=t, ranks=ranks)
        result = engine.step(docs, t)
        assert all(
            v.verdict in (Verdict.HEALTHY, Verdict.SUSPECT, Verdict.FAULTY) for v in result.verdicts.values()
        )
    assert not any(v.verdict is Verdict.FAULTY for v in result.verdicts.values())


def test_job_view_ranks_read_as_rank_views_and_serialise_as_a_list_of_them() -> None:
    from controller.server import to_plain

    engine = DetectionEngine()
    for t in (5.0, 40.0):  # past the warm-up: straggler figures are in the view
        result = engine.step(documents(lockstep_ranks(2, 2, t, late_node=1), t, 2), t)
    (job,) = result.jobs
    views = list(job.ranks)
    assert len(job.ranks) == 4 and [v.rank for v in views] == [0, 1, 2, 3]
    assert [v.node for v in views] == ["n0", "n0", "n1", "n1"] and job.ranks[-1] == views[-1]
    assert job.ranks[1:3] == tuple(views[1:3])
    assert all(v.lateness_seconds is not None and v.process_group == "default" for v in views)
    assert views[3].lateness_seconds > views[0].lateness_seconds + 0.1  # type: ignore[operator]
    plain = to_plain(job)["ranks"]
    assert isinstance(plain, list) and plain[2] == {
        "rank": 2,
        "node": "n1",
        "process_group": "default",
        "last_seq": views[2].last_seq,
        "pending_seq": None,
        "lateness_seconds": views[2].lateness_seconds,
        "wait_seconds": views[2].wait_seconds,
        "compute_gap_seconds": views[2].compute_gap_seconds,
    }


def test_after_a_failover_a_job_running_for_minutes_is_compared_at_once_a_starting_one_waits() -> None:
    # After a failover the new controller sees every job for the first time. A job whose collectives have run for
    # 5 minutes is past its warm-up: its straggler is compared in the first cycle, not 30 s later.
    running = DetectionEngine().step(documents(lockstep_ranks(4, 8, 300.0, late_node=2), 300.0, 4), 300.0)
    assert [j.state for j in running.jobs] == [JobState.SLOW]
    assert {f.node for f in running.findings if f.reason == "Straggler"} == {"n2"}
    # A job that started 10 s ago (its first collectives are in its samples) still gets the whole grace.
    starting = DetectionEngine().step(documents(lockstep_ranks(4, 8, 5.0, late_node=2), 5.0, 4), 5.0)
    assert [j.state for j in starting.jobs] == [JobState.RESTARTING] and not starting.findings
