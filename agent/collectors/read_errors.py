"""Counts the files or calls a collector could not read, logged once per source, exported on every scrape.

A collector keeps one `ReadErrors` and adds its family to what `collect()` returns; a read error costs one
sample, never the scrape.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from agent.families import CounterFamily

log = logging.getLogger(__name__)


class ReadErrors:
    """Per-source error counts of one collector (`source`: a sysfs path below the root, an NVML call, ...)."""

    def __init__(self, collector: str) -> None:
        self.collector = collector
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def note(self, source: str, reason: str) -> None:
        with self._lock:
            first = source not in self.counts
            self.counts[source] += 1
        if first:
            log.warning("%s: cannot read %s: %s (counted, logged once)", self.collector, source, reason)

    def family(self) -> CounterFamily:
        family = CounterFamily(
            "lockstep_collector_read_errors",
            "Reads that failed (unreadable or malformed file, failing call) since the agent started.",
            labels=["collector", "source"],
        )
        with self._lock:
            for source, count in sorted(self.counts.items()):
                family.add_metric([self.collector, source], float(count))
        return family
