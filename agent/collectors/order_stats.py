"""Median and quantile of a numpy array, as numpy's `np.median` and `np.quantile` (method "linear") compute them.

The step period and traffic estimators need only these two. numpy's own functions import numpy.ma and the rest of
its quantile machinery on first use, ~2 MB of the agent's RSS for a sort and a lerp.
"""

from __future__ import annotations

import math

import numpy as np


def median(values: np.ndarray) -> float:
    """The middle value, or the mean of the two middle ones; `values` must not be empty."""
    ordered = np.sort(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def quantile(values: np.ndarray, q: float) -> float:
    """The `q` quantile (0..1), interpolated linearly between the closest ranks; `values` must not be empty."""
    ordered = np.sort(values)
    index = (len(ordered) - 1) * q
    below = math.floor(index)
    above = min(below + 1, len(ordered) - 1)
    low, high, t = float(ordered[below]), float(ordered[above]), index - below
    return high - (high - low) * (1 - t) if t >= 0.5 else low + (high - low) * t
