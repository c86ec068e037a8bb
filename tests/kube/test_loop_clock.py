"""The controller cycle's time is when the cycle starts, not when its fetch happened to finish."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from controller.detect import DetectionEngine
from controller.fetch import Target
from controller.loop import ControllerLoop
from controller.settings import ControllerSettings


class SlowFetcher:
    """Each fetch takes `seconds[i]` of the fake clock (agents answer slower or faster cycle to cycle)."""

    def __init__(self, clock: list[float], seconds: list[float]) -> None:
        self.clock, self.seconds, self.health = clock, list(seconds), {}

    async def fetch(self, targets: Sequence[Target]) -> dict[str, Any]:
        self.clock[0] += self.seconds.pop(0)
        return {}


class RecordingEngine(DetectionEngine):
    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def step(self, evidence: Mapping[str, Any], now: float, topology: Mapping[str, str] | None = None) -> Any:
        self.times.append(now)
        return super().step(evidence, now, topology)


def test_cycles_started_five_seconds_apart_are_judged_five_seconds_apart_whatever_their_fetch_took() -> None:
    clock = [1000.0]
    engine = RecordingEngine()
    fetcher: Any = SlowFetcher(clock, [0.03, 0.01, 2.0, 0.0])
    settings = ControllerSettings(agent_urls=["http://agent:9445"])
    loop = ControllerLoop(settings, engine, fetcher, clock=lambda: clock[0])
    for start in (1000.0, 1005.0, 1010.0, 1015.0):
        clock[0] = start
        asyncio.run(loop.cycle())
    assert engine.times == [1000.0, 1005.0, 1010.0, 1015.0]  # 15 s from the first to the 4th: persistence met
