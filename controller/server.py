"""The controller's read-only HTTP API (default :9446): /metrics, /healthz, /readyz, /api/v1/nodes, /api/v1/jobs.

Everything served comes from the loop's latest snapshot; nothing here changes the cluster (people change it through
the Kubernetes API with their own credentials: `lockstep release`).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller import policy
from controller.loop import ControllerLoop
from controller.metrics import registry


def to_plain(value: Any) -> Any:
    """Dataclasses, enums, tuples and mappings -> JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [to_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def node_reports(loop: ControllerLoop) -> list[dict[str, Any]]:
    snapshot, health = loop.snapshot, {h.node: h for h in loop.fetcher.health.values() if h.node}
    misattributed: dict[str, list[str]] = {}
    for rank in snapshot.misattributed:
        misattributed.setdefault(rank.node, []).append(rank.describe())
    reports = []
    for name in sorted(set(snapshot.verdicts) | set(snapshot.cluster.nodes)):
        verdict = snapshot.verdicts.get(name)
        state = snapshot.cluster.nodes.get(name)
        agent = health.get(name)
        reports.append(
            {
                "node": name,
                "verdict": verdict.verdict.value if verdict else "unknown",
                "confidence": verdict.confidence if verdict else 0.0,
                "reason": verdict.reason if verdict else "",
                "since": verdict.since if verdict else None,
                "summary": policy.summary(verdict) if verdict else "",
                "findings": to_plain(verdict.findings) if verdict else [],
                "kubernetes": to_plain(state) if state else None,
                "held_by_lockstep": bool(state and state.held),
                "blocked": snapshot.blocked.get(name, ""),
                "planned": snapshot.planned.get(name, ""),
                "agent_url": snapshot.agent_urls.get(name, ""),
                "agent_error": agent.last_error if agent else "",
                "evidence_age_seconds": agent.evidence_age_seconds if agent else None,
                "misattributed_ranks": misattributed.get(name, []),
            }
        )
    return reports


def build_app(loop: ControllerLoop) -> web.Application:
    reg = registry(loop)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(reg)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        """Ready once a cycle completed recently (within three intervals, at least 30 s)."""
        completed = loop.snapshot.completed_at
        allowed = max(30.0, 3 * loop.settings.interval_seconds)
        if completed and time.time() - completed < allowed:
            return web.Response(text="ready\n")
        return web.Response(
            status=503, text=f"not ready: no cycle completed in {allowed:.0f} s {loop.snapshot.error}\n"
        )

    async def nodes(request: web.Request) -> web.Response:
        snapshot = loop.snapshot
        return web.json_response(
            {
                "completed_at": snapshot.completed_at,
                "dry_run": loop.settings.dry_run,
                "leader": loop.leader is None or loop.leader.is_leader(),
                "error": loop.snapshot.error,
                "breaker": to_plain(snapshot.breaker),
                "nodes": node_reports(loop),
                "agents": [
                    {"url": url, "node": health.node, "error": health.last_error}
                    for url, health in sorted(loop.fetcher.health.items())
                ],
            }
        )

    async def jobs(request: web.Request) -> web.Response:
        result = loop.snapshot.result
        return web.json_response(
            {
                "completed_at": loop.snapshot.completed_at,
                "jobs": to_plain(list(result.jobs)) if result else [],
            }
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/jobs", jobs)
    return app
