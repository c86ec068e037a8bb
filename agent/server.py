"""The agent's HTTP face: `/metrics` for Prometheus, `/api/v1/evidence` for the controller, health probes.

`build_app` takes a CollectorRunner, so tests can serve any collectors in-process; `serve` binds it and
returns the bound port (port 0 picks a free one). Collector work runs off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from agent.collectors.runner import CollectorRunner
from agent.exposition import negotiate

log = logging.getLogger(__name__)

RUNNER_KEY = web.AppKey("runner", CollectorRunner)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
READY_KEY = web.AppKey("ready", asyncio.Event)


def build_app(runner: CollectorRunner) -> web.Application:
    """The aiohttp application serving `runner`; it starts the collectors and runs a first collection on startup.

    Ready (`/readyz` 200) once the collectors are started and the first collection ran. The runner is closed
    on cleanup.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(runner)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)

    app = web.Application()
    app[RUNNER_KEY] = runner
    app[REGISTRY_KEY] = registry
    app[READY_KEY] = asyncio.Event()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/v1/evidence", _evidence)
    app.cleanup_ctx.append(_collectors_lifetime)
    return app


async def _collectors_lifetime(app: web.Application) -> AsyncIterator[None]:
    runner = app[RUNNER_KEY]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, runner.start)
    first = asyncio.ensure_future(_first_collection(app))
    yield
    first.cancel()
    await loop.run_in_executor(None, runner.close)


async def _first_collection(app: web.Application) -> None:
    runner = app[RUNNER_KEY]
    await asyncio.get_running_loop().run_in_executor(None, lambda: list(runner.collect()))
    app[READY_KEY].set()
    log.info("ready: collectors %s", ", ".join(sorted(runner.collectors)) or "(none)")


async def _metrics(request: web.Request) -> web.Response:
    encoder, content_type = negotiate(request.headers.get("Accept", ""))
    registry = request.app[REGISTRY_KEY]
    body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[READY_KEY].is_set():
        return web.Response(text="ready\n")
    return web.Response(status=503, text="starting: first collection not done\n")


async def _evidence(request: web.Request) -> web.Response:
    runner = request.app[RUNNER_KEY]
    evidence = await asyncio.get_running_loop().run_in_executor(None, runner.evidence)
    return web.Response(text=evidence.model_dump_json(), content_type="application/json")


@dataclass
class RunningServer:
    """A started server: its aiohttp runner and the port it is bound to."""

    runner: web.AppRunner
    host: str
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, host: str, port: int) -> RunningServer:
    """Bind `app` on host:port (0 = a free port) and start serving; raises OSError if the bind fails."""
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, host, port)
    try:
        await site.start()
    except OSError:
        await app_runner.cleanup()
        raise
    bound = app_runner.addresses[0][1]
    log.info("serving on http://%s:%d (/metrics, /api/v1/evidence, /healthz, /readyz)", host, bound)
    return RunningServer(runner=app_runner, host=host, port=bound)
