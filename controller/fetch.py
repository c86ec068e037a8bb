"""Pull `/api/v1/evidence` from every agent: the first step of the controller loop.

Bounded concurrency, a timeout per request and a per-agent backoff after failures. An agent that does not answer
with valid, fresh evidence yields None for its node: detection calls that node "unknown", never "faulty".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import pydantic

from agent.evidence import Evidence
from controller.detect.columns import without_samples
from controller.settings import FetchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """An agent to pull from; `node` is None when only its URL is known (`--agent-url`): learnt from its evidence."""

    url: str
    node: str | None = None


@dataclass
class AgentHealth:
    node: str | None = None
    failures: int = 0
    retry_at: float = 0.0  # monotonic s before which the agent is not asked again
    last_error: str = ""
    evidence_age_seconds: float | None = None


@dataclass
class FetchStats:
    reachable: int = 0
    agents: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # kind: timeout, http, invalid, stale, mismatch


class EvidenceFetcher:
    """Keeps one HTTP session and the per-agent backoff between cycles."""

    def __init__(self, settings: FetchSettings) -> None:
        self.settings = settings
        self.health: dict[str, AgentHealth] = {}
        self.stats = FetchStats()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, targets: Sequence[Target]) -> dict[str, Evidence | None]:
        """node -> its evidence, or None if unreachable, in backoff, invalid or stale."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
            )
        semaphore = asyncio.Semaphore(self.settings.concurrency)
        urls = {t.url for t in targets}
        self.health = {url: h for url, h in self.health.items() if url in urls}

        async def one(target: Target) -> tuple[str | None, Evidence | None]:
            health = self.health.setdefault(target.url, AgentHealth(node=target.node))
            health.node = target.node or health.node
            if time.monotonic() < health.retry_at:
                return health.node, None
            async with semaphore:
                evidence = await self._pull(target, health)
            return health.node, evidence

        results = await asyncio.gather(*(one(t) for t in targets))
        evidence: dict[str, Evidence | None] = {}
        for node, document in results:
            if node is not None and evidence.get(node) is None:
                evidence[node] = document
        self.stats.agents = len(targets)
        self.stats.reachable = sum(1 for e in evidence.values() if e is not None)
        return evidence

    async def _pull(self, target: Target, health: AgentHealth) -> Evidence | None:
        assert self._session is not None
        try:
            async with self._session.get(target.url.rstrip("/") + "/api/v1/evidence") as response:
                if response.status != 200:
                    return self._failed(target, health, "http", f"HTTP {response.status}")
                document = Evidence.model_validate_json(await response.read())
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as error:
            return self._failed(target, health, "timeout", f"{type(error).__name__}: {error}")
        except pydantic.ValidationError as error:
            return self._failed(target, health, "invalid", f"invalid evidence: {error.error_count()} errors")
        if target.node is not None and document.node != target.node:
            return self._failed(
                target, health, "mismatch", f"agent says node {document.node!r}, pod runs on {target.node!r}"
            )
        health.node = document.node
        age = time.time() - document.collected_at
        health.evidence_age_seconds = max(0.0, age)
        if age > self.settings.max_evidence_age_seconds:
            return self._failed(target, health, "stale", f"evidence is {age:.0f} s old")
        health.failures, health.last_error = 0, ""
        return without_samples(document)  # columns decoded now, while other agents answer, not in the cycle

    def _failed(self, target: Target, health: AgentHealth, kind: str, message: str) -> Evidence | None:
        """Count and log the failure, back the agent off; returns None (no evidence) for the caller to return."""
        self.stats.errors[kind] += 1
        health.failures += 1
        health.last_error = message
        backoff = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_initial_seconds * 2 ** (health.failures - 1),
        )
        health.retry_at = time.monotonic() + backoff
        log.log(
            logging.WARNING if health.failures == 1 else logging.DEBUG,
            "agent %s (node %s): %s; next try in %.0f s",
            target.url,
            health.node or "?",
            message,
            backoff,
        )
        return None
