"""Keeps a collector's recent readings so its evidence can report rates over a window of seconds.

Every read (scrape or evidence pull) is remembered; the base of the rates is the newest reading at least
`window_seconds` old, or the oldest one while the agent has not run that long.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Reading(Generic[T]):
    monotonic: float  # s, for rates
    wall: float  # Unix s, for evidence timestamps
    value: T


class RollingWindow(Generic[T]):
    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        self._lock = threading.Lock()
        self._readings: deque[Reading[T]] = deque()

    def add(self, value: T) -> Reading[T]:
        reading = Reading(monotonic=time.monotonic(), wall=time.time(), value=value)
        with self._lock:
            self._readings.append(reading)
            horizon = reading.monotonic - self.window_seconds
            while len(self._readings) >= 2 and self._readings[1].monotonic <= horizon:
                self._readings.popleft()
        return reading

    def span(self) -> tuple[Reading[T], Reading[T]]:
        """(base, newest) readings; they are the same reading right after the first read."""
        with self._lock:
            return self._readings[0], self._readings[-1]
