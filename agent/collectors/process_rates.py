"""Per training process: its state, and how fast it writes and computes, over the time since an earlier look.

The collective collector looks at each rank's process on every evidence pull (`observe`) and puts the result in
the rank's evidence (agent/collectors/collective.py). Rates span from the newest earlier look at least
`min_span_seconds` old (the previous pull, ~5 s before), so two pulls close together still measure over seconds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agent.backends.process_activity import ProcessActivity

MAX_LOOKS = 8  # per process: enough to reach back past a few close pulls


@dataclass(frozen=True)
class ProcessRates:
    state: str
    write_bytes_per_second: float | None  # None until two looks min_span_seconds apart (or io unreadable)
    cpu_share: float | None  # CPU seconds per second (1.0 = one core busy)


class ProcessWatch:
    """Looks of each process by pid; `read(pid)` is `agent.backends.process_activity.read_activity`."""

    def __init__(self, read: Callable[[int], ProcessActivity | None], min_span_seconds: float = 1.0) -> None:
        self._read = read
        self.min_span_seconds = min_span_seconds
        self._looks: dict[int, deque[tuple[float, ProcessActivity]]] = {}

    def observe(self, pids: Iterable[int], now: float) -> dict[int, ProcessRates]:
        """Look at each process now (monotonic s); the rates of those still there. Forgets every other pid."""
        rates: dict[int, ProcessRates] = {}
        looks: dict[int, deque[tuple[float, ProcessActivity]]] = {}
        for pid in set(pids):
            activity = self._read(pid) if pid > 0 else None
            if activity is None:
                continue
            history = looks[pid] = self._looks.get(pid) or deque(maxlen=MAX_LOOKS)
            earlier = next((look for look in reversed(history) if now - look[0] >= self.min_span_seconds), None)
            history.append((now, activity))
            rates[pid] = _rates(activity, earlier, now)
        self._looks = looks
        return rates


def _rates(activity: ProcessActivity, earlier: tuple[float, ProcessActivity] | None, now: float) -> ProcessRates:
    if earlier is None:
        return ProcessRates(activity.state, None, None)
    then, before = earlier
    span = now - then
    written = None
    if activity.written_bytes is not None and before.written_bytes is not None:
        written = max(activity.written_bytes - before.written_bytes, 0) / span
    return ProcessRates(activity.state, written, max(activity.cpu_seconds - before.cpu_seconds, 0.0) / span)
