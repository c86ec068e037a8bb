"""A rank's training step period from its collectives' issue times: the period the controller compares with.

The (op, bytes) pattern of a step gives a first repeat length (`repeat_length` in rank_window), but DDP
buckets of equal size collapse it to one bucket. The gaps between collectives tell the rest: inside a step
the buckets follow each other during the backward pass, between steps lie the forward pass and the optimizer,
so the gap sequence is itself periodic with the true step. Its autocorrelation finds that period.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.collectors.order_stats import median

MIN_GAP_SPREAD_RATIO = 0.2
"""Gaps whose spread is below 20% of their mean are uniform: one collective per step (or no structure)."""
MIN_CORRELATION = 0.5
"""A lag whose gaps correlate at least this much with the gaps one lag later is a repeat of the step."""
MIN_REPEATS = 3
"""A candidate step must fit at least three times into the window to be trusted."""


def step_period_seconds(issued_at: Sequence[float], pattern_length: int) -> float | None:
    """Median time (s) between a collective and the same collective one step later.

    `issued_at`: issue times (s) in sequence order; `pattern_length`: collectives per repeat of the (op, bytes)
    pattern, a lower bound of the collectives per step. Returns None without enough data.
    """
    times = np.asarray(issued_at, dtype=float)
    if pattern_length < 1 or len(times) <= pattern_length:
        return None
    lag = _step_lag(np.diff(times), pattern_length)
    period = median(times[lag:] - times[:-lag])
    return period if period > 0 else None


def _step_lag(gaps: np.ndarray, pattern_length: int) -> int:
    """Collectives per step: the smallest multiple of `pattern_length` at which the gap sequence repeats (its
    autocorrelation, normalised per overlapping pair, reaches MIN_CORRELATION)."""
    centred = gaps - gaps.mean()
    energy = float(np.dot(centred, centred))
    if len(gaps) < 2 * pattern_length or energy <= (MIN_GAP_SPREAD_RATIO * gaps.mean()) ** 2 * len(gaps):
        return pattern_length
    lags = np.arange(pattern_length, len(gaps) // MIN_REPEATS + 1, pattern_length)
    # every lag's sum of centred[i] * centred[i + lag] at once (np.correlate's "full" output from index len - 1)
    sums = np.correlate(centred, centred, "full")[len(gaps) - 1 + lags]
    correlations = sums / energy * len(gaps) / (len(gaps) - lags)
    repeats = np.flatnonzero(correlations >= MIN_CORRELATION)
    return int(lags[repeats[0]]) if len(repeats) else pattern_length
