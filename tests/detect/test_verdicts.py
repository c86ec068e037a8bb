"""Persistence of statistical findings: in the job's own late collectives and their time, never counted twice,
whatever the job's collective rate or the cycle's phase; transients, pauses and missing evidence never add up."""

from __future__ import annotations

from controller.detect import DetectionConfig
from controller.detect.verdicts import VerdictKeeper
from controller.model import Finding, Severity, Verdict

CYCLE = 5.0
WINDOW = 32  # collectives per judged window (samples_per_rank)


def late(last: int, window: int = WINDOW, seconds_per_collective: float = 0.25, needed: int = 0) -> Finding:
    return Finding(
        detector="straggler",
        reason="Straggler",
        node="n1",
        severity=Severity.STATISTICAL,
        summary="rank 3 arrives late",
        confidence=0.9,
        job="train",
        evidence={
            "subject": "ranks 3",
            "collectives": [last - window + 1, last],
            "seconds_per_collective": seconds_per_collective,
            "collectives_needed": needed,
        },
    )


def verdicts(new_per_cycle: int, cycles: int, **finding: float) -> list[Verdict]:
    """Verdict of each cycle on a rank late in every window, its job issuing `new_per_cycle` collectives a cycle."""
    keeper = VerdictKeeper(DetectionConfig())
    return [
        keeper.update("n1", [late(100 + i * new_per_cycle, **finding)], True, 1000.0 + i * CYCLE).verdict  # type: ignore[arg-type]
        for i in range(cycles)
    ]


def test_a_job_issuing_one_collective_a_second_is_faulty_after_fifteen_seconds_of_late_collectives() -> None:
    # One all-reduce per 1-s step, 16-collective windows: 5 new collectives (5 s) a cycle. Counting windows half
    # new (8 collectives) would have needed 4 x 8 / 5 cycles more; the evidence's own time needs 3.
    got = verdicts(5, 6, window=16, seconds_per_collective=1.0)
    assert got.index(Verdict.SUSPECT) == 2 and got.index(Verdict.FAULTY) == 3


def test_a_job_issuing_one_collective_every_two_seconds_is_faulty_as_soon() -> None:
    got = verdicts(2, 6, window=8, seconds_per_collective=2.5)  # 2.5 s steps: 2 new collectives, 5 s, a cycle
    assert got.index(Verdict.FAULTY) == 3


def test_lateness_near_the_noise_needs_more_collectives_than_strong_lateness() -> None:
    strong = verdicts(5, 10, window=16, seconds_per_collective=1.0, needed=3)
    weak = verdicts(5, 10, window=16, seconds_per_collective=1.0, needed=40)
    # Weak: never more than the old 4 windows of half-new collectives (3 x 16 / 2 = 24 new): 5 cycles.
    assert strong.index(Verdict.FAULTY) == 3 and weak.index(Verdict.FAULTY) == 5


def test_a_window_of_all_new_collectives_counts_once_not_twice() -> None:
    got = verdicts(WINDOW, 5)
    assert got[:2] == [Verdict.HEALTHY, Verdict.HEALTHY]  # one window, even two, never makes a verdict
    assert got.index(Verdict.SUSPECT) == 2 and got.index(Verdict.FAULTY) == 3  # 4 windows over 15 s


def test_the_same_collectives_judged_again_add_nothing() -> None:
    got = verdicts(0, 10)
    assert set(got) == {Verdict.HEALTHY}


def test_persistence_in_collectives_does_not_shorten_persistence_in_seconds() -> None:
    keeper = VerdictKeeper(DetectionConfig())
    got = [
        keeper.update(
            "n1", [late(100 + i * WINDOW, seconds_per_collective=1 / WINDOW)], True, 1000.0 + i
        ).verdict
        for i in range(20)
    ]
    # 1-s cycles of a job issuing 32 collectives a second: 4 windows after 3 s, faulty only 15 s after the first.
    assert got.index(Verdict.FAULTY) == 15


def test_a_transient_seen_in_every_other_window_never_adds_up() -> None:
    # A rank late for a few seconds every 10 s (a checkpoint write, a GC pause), caught by every other cycle.
    keeper = VerdictKeeper(DetectionConfig())
    got = [
        keeper.update("n1", [late(100 + i * 20)] if i % 2 == 0 else [], True, 1000.0 + i * CYCLE).verdict
        for i in range(24)
    ]
    assert set(got) == {Verdict.HEALTHY}


def test_a_straggler_hidden_by_one_noisy_window_is_still_found() -> None:
    keeper = VerdictKeeper(DetectionConfig())
    got = [
        keeper.update("n1", [] if i == 2 else [late(100 + i * 5, 16, 1.0)], True, 1000.0 + i * CYCLE).verdict
        for i in range(10)
    ]
    assert Verdict.FAULTY in got
    # The missed window's time is no evidence: only what the next window covers counts, so it takes longer.
    assert got.index(Verdict.FAULTY) > 3


def test_the_time_without_evidence_is_not_persistence() -> None:
    keeper = VerdictKeeper(DetectionConfig())
    got = []
    for i in range(30):  # 1-s cycles, a job issuing one collective a second, 8-collective windows
        now = 1000.0 + i
        if 3 <= i < 18:  # the node's agent does not answer for 15 s; its job runs on
            got.append(keeper.unknown("n1", now).verdict)
        else:
            got.append(keeper.update("n1", [late(100 + i, 8, 1.0)], True, now).verdict)
    # 2 s of late evidence before, the 8 s the next window covers after: not yet 15 s (the silence counted for
    # nothing); 5 s more and it is.
    assert got[18] is not Verdict.FAULTY and got.index(Verdict.FAULTY) == 23
