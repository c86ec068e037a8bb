"""Persistence of statistical findings: windows count by their new collectives, never twice, whatever the phase."""

from __future__ import annotations

from controller.detect import DetectionConfig
from controller.detect.verdicts import VerdictKeeper
from controller.model import Finding, Severity, Verdict

CYCLE = 5.0
WINDOW = 32  # collectives per judged window (samples_per_rank)


def late(last: int) -> Finding:
    return Finding(
        detector="straggler",
        reason="Straggler",
        node="n1",
        severity=Severity.STATISTICAL,
        summary="rank 3 arrives late",
        confidence=0.9,
        job="train",
        evidence={"subject": "ranks 3", "collectives": [last - WINDOW + 1, last]},
    )


def verdicts(new_per_cycle: int, cycles: int) -> list[Verdict]:
    """Verdict of each cycle on a rank late in every window, its job issuing `new_per_cycle` collectives a cycle."""
    keeper = VerdictKeeper(DetectionConfig())
    return [
        keeper.update("n1", [late(100 + i * new_per_cycle)], True, 1000.0 + i * CYCLE).verdict
        for i in range(cycles)
    ]


def test_twelve_new_collectives_a_cycle_count_as_three_quarters_of_a_window() -> None:
    # 3/4 window a cycle: 3 windows after 3 cycles (suspect), 4 after 4 cycles spanning 20 s (faulty). Counting
    # only windows half new since the last counted one needed 24 new collectives per window: 6 cycles.
    got = verdicts(12, 6)
    assert got.index(Verdict.SUSPECT) == 3 and got.index(Verdict.FAULTY) == 4


def test_a_window_of_all_new_collectives_counts_once_not_twice() -> None:
    got = verdicts(WINDOW, 5)
    assert got[:2] == [Verdict.HEALTHY, Verdict.HEALTHY]  # one window, even two, never makes a verdict
    assert got.index(Verdict.SUSPECT) == 2 and got.index(Verdict.FAULTY) == 3  # 4 windows over 15 s


def test_the_same_collectives_judged_again_add_nothing() -> None:
    got = verdicts(0, 10)
    assert set(got) == {Verdict.HEALTHY}


def test_persistence_in_collectives_does_not_shorten_persistence_in_seconds() -> None:
    keeper = VerdictKeeper(DetectionConfig())
    got = [keeper.update("n1", [late(100 + i * WINDOW)], True, 1000.0 + i).verdict for i in range(20)]
    # 1-s cycles: 4 windows after 3 s, faulty only 15 s after the first.
    assert got.index(Verdict.FAULTY) == 15
