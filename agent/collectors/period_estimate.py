"""Period, burst throughput and regularity of a byte-rate series: the zero-touch view of collective traffic.

Pure numpy on one interface's rate samples (bytes/s, evenly spaced); used by agent/collectors/periodicity.py.
Data-parallel training moves its gradients in one burst per step, so the rate series repeats every step: the
first strong peak of its autocorrelation is the step period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_REGULARITY = 0.3  # autocorrelation below this at the best lag: no period worth reporting
HARMONIC_SHARE = 0.6  # the first peak within 60% of the best is the fundamental: sampling jitter
# (bursts landing in one 50 ms sample or the next) lowers it, while multiples of the period score higher


@dataclass(frozen=True)
class TrafficPattern:
    period_seconds: float | None
    regularity: float
    burst_bytes_per_second: float
    mean_bytes_per_second: float


def autocorrelation(x: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of `x` for lags 0..len-1 (1 at lag 0; zeros for a constant series)."""
    centered = x - x.mean()
    n = len(centered)
    spectrum = np.fft.rfft(centered, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    if acf[0] <= 0:
        return np.zeros(n)
    # unbiased: divide by the number of overlapping samples, so long lags are not penalised
    return (acf / (n - np.arange(n))) / (acf[0] / n)


def estimate(rates: np.ndarray, interval_seconds: float, min_mean_bytes_per_second: float) -> TrafficPattern:
    """Pattern of `rates` (bytes/s, one sample per `interval_seconds`). Periods between 2 samples and a third of
    the series are found; idle or aperiodic traffic gets period None."""
    rates = np.asarray(rates, dtype=float)
    mean = float(rates.mean()) if len(rates) else 0.0
    active = rates[rates > mean] if len(rates) else rates
    burst = float(np.quantile(active, 0.9)) if len(active) else mean
    if len(rates) < 12 or mean < min_mean_bytes_per_second:
        return TrafficPattern(None, 0.0, burst, mean)
    acf = autocorrelation(rates)
    max_lag = len(rates) // 3
    below = np.nonzero(acf[1 : max_lag + 1] < 0)[0]
    if len(below) == 0:
        return TrafficPattern(None, 0.0, burst, mean)
    start = int(below[0]) + 1
    lags = np.arange(max(start, 2), max_lag)
    if len(lags) == 0:
        return TrafficPattern(None, 0.0, burst, mean)
    peaks = [lag for lag in lags if acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]]
    if not peaks:
        return TrafficPattern(None, 0.0, burst, mean)
    best = max(acf[lag] for lag in peaks)
    lag = next(lag for lag in peaks if acf[lag] >= HARMONIC_SHARE * best)
    regularity = float(np.clip(acf[lag], 0.0, 1.0))
    if regularity < MIN_REGULARITY:
        return TrafficPattern(None, regularity, burst, mean)
    # parabolic interpolation around the peak for sub-sample precision
    y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
    denominator = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / denominator if denominator < 0 else 0.0
    period = (lag + float(np.clip(offset, -0.5, 0.5))) * interval_seconds
    return TrafficPattern(float(period), regularity, burst, mean)
