"""The demo's timeline: every milestone with its time in seconds since the run started, printed as it happens
and kept for the final summary and the end-to-end tests."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO


@dataclass(frozen=True)
class Event:
    """One milestone: `kind` is a stable word tests look for (e.g. `fault`, `suspect`, `cordoned`)."""

    at_seconds: float
    kind: str
    message: str
    node: str | None = None


@dataclass
class Timeline:
    """Records and prints events relative to its start (monotonic clock)."""

    out: TextIO | None = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, kind: str, message: str, node: str | None = None) -> Event:
        event = Event(round(self.now(), 1), kind, message, node)
        self.events.append(event)
        self.say(f"[{event.at_seconds:6.1f}s] {kind:<11} {message}")
        return event

    def say(self, text: str) -> None:
        """Print a line that is not a milestone (headings, details under an event)."""
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def first(self, kind: str, node: str | None = None) -> Event | None:
        return next((e for e in self.events if e.kind == kind and (node is None or e.node == node)), None)
