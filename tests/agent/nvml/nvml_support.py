"""Helpers for the NVML tests: scrape a collector and read samples back, wait for background work."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agent.collectors.nvml import NvmlCollector


@dataclass
class Scrape:
    """One scrape of a collector, parsed back from the Prometheus text format."""

    text: str

    def samples(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        found = []
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    found.append((sample.labels, sample.value))
        return found

    def value(self, name: str, **labels: str) -> float | None:
        """The one sample matching, or None if there is none."""
        found = self.samples(name, **labels)
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
        return found[0][1] if found else None


class _Once:
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def scrape(collector: NvmlCollector) -> Scrape:
    registry = CollectorRegistry()
    registry.register(_Once(list(collector.collect())))
    return Scrape(generate_latest(registry).decode())


def wait_until(condition: Callable[[], Any], timeout_seconds: float = 20.0, what: str = "condition") -> Any:
    """Poll until condition() is truthy; generous, because the test machine is shared and busy."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds} s waiting for {what}")
        time.sleep(0.05)
