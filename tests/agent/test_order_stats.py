"""The agent's median and quantile give numpy's answers (np.median, np.quantile with the default linear method)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.collectors.order_stats import median, quantile


@pytest.mark.parametrize("size", [1, 2, 3, 10, 11, 600])
def test_median_and_quantiles_equal_numpys(size: int) -> None:
    rng = np.random.default_rng(size)
    for values in (rng.normal(0.0, 1e6, size), rng.integers(0, 5, size).astype(float)):
        assert median(values) == np.median(values)
        for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
            assert quantile(values, q) == np.quantile(values, q)
