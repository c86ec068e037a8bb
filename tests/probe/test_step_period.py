"""The step period the agent reports is one training step, also when DDP's buckets all have the same size."""

from __future__ import annotations

import numpy as np

from agent.collectors.step_period import step_period_seconds


def issue_times(step: float, offsets_in_step: list[float], steps: int, jitter: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return [i * step + offset + rng.normal(0, jitter) for i in range(steps) for offset in offsets_in_step]


def test_two_equal_buckets_per_step_give_the_step_not_the_bucket_interval() -> None:
    times = issue_times(0.21, [0.15, 0.17], steps=60, jitter=0.003)
    period = step_period_seconds(times, pattern_length=1)
    assert period is not None and abs(period - 0.21) < 0.01


def test_four_buckets_per_step_with_noise_give_the_step() -> None:
    times = issue_times(1.0, [0.50, 0.58, 0.66, 0.74], steps=40, jitter=0.01, seed=1)
    period = step_period_seconds(times, pattern_length=1)
    assert period is not None and abs(period - 1.0) < 0.03


def test_one_collective_per_step_gives_the_step() -> None:
    times = issue_times(0.3, [0.2], steps=50, jitter=0.01, seed=2)
    period = step_period_seconds(times, pattern_length=1)
    assert period is not None and abs(period - 0.3) < 0.02


def test_a_known_pattern_length_is_kept_when_the_gaps_have_no_further_structure() -> None:
    # Three different bucket sizes per step: the (op, bytes) pattern already says 3 collectives per step.
    times = issue_times(0.6, [0.2, 0.4, 0.6], steps=30, jitter=0.002, seed=3)
    period = step_period_seconds(times, pattern_length=3)
    assert period is not None and abs(period - 0.6) < 0.02


def test_too_few_collectives_give_no_period() -> None:
    assert step_period_seconds([1.0], pattern_length=1) is None
