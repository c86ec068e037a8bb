"""Period, burst throughput and regularity of a byte-rate series: the zero-touch view of collective traffic.

Pure numpy on one interface's rate samples (bytes/s, evenly spaced); used by agent/collectors/periodicity.py.
Data-parallel training moves its gradients in one burst per step, so the rate series repeats every step: the
first strong peak of its autocorrelation is the step period.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.collectors.order_stats import quantile

MIN_REGULARITY = 0.3  # autocorrelation below this at the best lag: no period worth reporting
HARMONIC_SHARE = 0.6  # the period is the shortest lag whose multiples up to the best peak all reach 60% of it:
# sampling jitter (a burst landing in one 50 ms sample or the next) lowers single peaks of the true period


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
    # zero-padded to at least 2n - 1 (no wrap-around), and to a power of two: an FFT of a length with large prime
    # factors (2 x 299 = 2 x 13 x 23 samples) costs 5-10x more
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centered, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    if acf[0] <= 0:
        return np.zeros(n)
    # unbiased: divide by the number of overlapping samples, so long lags are not penalised
    return (acf / (n - np.arange(n))) / (acf[0] / n)


def _repeats(acf: np.ndarray, lag: int, best_lag: int, threshold: float) -> bool:
    """Whether the series repeats every `lag` samples: the autocorrelation is high at the lag and at each of its
    multiples up to the best peak (within a sample of jitter). A sub-structure of a step, such as two bursts
    less than a step apart, is high at its own lag but not at its multiples."""
    period = _refine(acf, lag)
    for k in range(1, int((best_lag + 0.5) / period) + 1):
        multiple = int(round(k * period))
        if acf[max(0, multiple - 1) : multiple + 2].max() < threshold:
            return False
    return True


def _refine(acf: np.ndarray, lag: int) -> float:
    """The peak's position with sub-sample precision (parabola through the lag and its neighbours)."""
    y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
    denominator = y0 - 2 * y1 + y2
    offset = 0.5 * (y0 - y2) / denominator if denominator < 0 else 0.0
    return float(lag) + float(np.clip(offset, -0.5, 0.5))


def estimate(rates: np.ndarray, interval_seconds: float, min_mean_bytes_per_second: float) -> TrafficPattern:
    """Pattern of `rates` (bytes/s, one sample per `interval_seconds`). Periods between 2 samples and a third of
    the series are found; idle or aperiodic traffic gets period None."""
    rates = np.asarray(rates, dtype=float)
    mean = float(rates.mean()) if len(rates) else 0.0
    active = rates[rates > mean] if len(rates) else rates
    burst = quantile(active, 0.9) if len(active) else mean
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
    # choose on the biased autocorrelation, which fades with the lag: a far lag that few samples overlap
    # (and a drifting step time decorrelates) must not outrank the step itself
    n = len(rates)
    biased = acf * (n - np.arange(n)) / n
    peaks = lags[(biased[lags] >= biased[lags - 1]) & (biased[lags] >= biased[lags + 1])].tolist()
    if not peaks:
        return TrafficPattern(None, 0.0, burst, mean)
    best_lag = max(peaks, key=lambda lag: biased[lag])
    threshold = HARMONIC_SHARE * biased[best_lag]
    lag = next((lag for lag in peaks if _repeats(biased, lag, best_lag, threshold)), best_lag)
    regularity = float(np.clip(acf[lag], 0.0, 1.0))
    if regularity < MIN_REGULARITY:
        return TrafficPattern(None, regularity, burst, mean)
    return TrafficPattern(_refine(acf, lag) * interval_seconds, regularity, burst, mean)
