"""Pulling evidence from real HTTP agents: bounded concurrency, timeouts, backoff; failure means None (unknown)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from controller.fetch import EvidenceFetcher, Target
from controller.settings import FetchSettings

from .conftest import evidence_for

Handler = Callable[[web.Request], Awaitable[web.Response]]


class Agents:
    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []
        self.hits: dict[str, int] = {}
        self.in_flight = 0
        self.most_in_flight = 0

    async def serve(self, name: str, handler: Handler) -> str:
        async def counted(request: web.Request) -> web.Response:
            self.hits[name] = self.hits.get(name, 0) + 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1

        app = web.Application()
        app.router.add_get("/api/v1/evidence", counted)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@pytest.fixture
async def http_agents() -> AsyncIterator[Agents]:
    agents = Agents()
    yield agents
    for runner in agents.runners:
        await runner.cleanup()


def answer(node: str, delay: float = 0.0, age: float = 0.0) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        document = evidence_for(node).model_copy(update={"collected_at": time.time() - age})
        return web.Response(text=document.model_dump_json(), content_type="application/json")

    return handler


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_node_learns_its_name_from_its_agent_and_an_unreachable_agent_is_none(http_agents: Agents) -> None:
    fetcher = EvidenceFetcher(FetchSettings(timeout_seconds=1.0))
    good = await http_agents.serve("a", answer("node-a"))
    result = await fetcher.fetch([Target(good), Target(closed_port_url(), "node-b")])
    await fetcher.close()
    assert result["node-a"] is not None and result["node-a"].node == "node-a"
    assert result["node-b"] is None
    assert fetcher.stats.reachable == 1 and fetcher.stats.errors["timeout"] == 1


async def test_a_hung_agent_times_out_without_holding_up_the_others(http_agents: Agents) -> None:
    fetcher = EvidenceFetcher(FetchSettings(timeout_seconds=0.5))
    slow = await http_agents.serve("slow", answer("node-slow", delay=3))
    fast = await http_agents.serve("fast", answer("node-fast"))
    started = time.monotonic()
    result = await fetcher.fetch([Target(slow, "node-slow"), Target(fast, "node-fast")])
    elapsed = time.monotonic() - started
    await fetcher.close()
    assert result["node-slow"] is None and result["node-fast"] is not None
    assert elapsed < 2.5, "the slow agent's 3 s must be cut by the 0.5 s timeout"


async def test_a_failed_agent_is_backed_off_then_asked_again(http_agents: Agents) -> None:
    state = {"fail": True}

    async def flaky(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=500)
        return await answer("node-f")(request)

    url = await http_agents.serve("f", flaky)
    fetcher = EvidenceFetcher(FetchSettings(timeout_seconds=1.0, backoff_initial_seconds=0.3))
    assert (await fetcher.fetch([Target(url, "node-f")]))["node-f"] is None
    assert (await fetcher.fetch([Target(url, "node-f")]))["node-f"] is None
    assert http_agents.hits["f"] == 1, "in backoff: not asked again at once"
    state["fail"] = False
    await asyncio.sleep(0.35)
    assert (await fetcher.fetch([Target(url, "node-f")]))["node-f"] is not None
    await fetcher.close()


async def test_concurrency_is_bounded(http_agents: Agents) -> None:
    urls = [await http_agents.serve(f"a{i}", answer(f"node-{i}", delay=0.1)) for i in range(8)]
    fetcher = EvidenceFetcher(FetchSettings(concurrency=2))
    result = await fetcher.fetch([Target(url, f"node-{i}") for i, url in enumerate(urls)])
    await fetcher.close()
    assert all(result.values()) and len(result) == 8
    assert http_agents.most_in_flight <= 2


async def test_invalid_stale_and_mismatched_evidence_are_none(http_agents: Agents) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(text='{"node": 5}', content_type="application/json")

    urls = {
        "invalid": await http_agents.serve("i", garbage),
        "stale": await http_agents.serve("s", answer("stale", age=600)),
        "mismatch": await http_agents.serve("m", answer("someone-else")),
    }
    fetcher = EvidenceFetcher(FetchSettings(max_evidence_age_seconds=30))
    result = await fetcher.fetch([Target(url, node) for node, url in urls.items()])
    await fetcher.close()
    assert result == {"invalid": None, "stale": None, "mismatch": None}
    assert {k: fetcher.stats.errors[k] for k in ("invalid", "stale", "mismatch")} == {
        "invalid": 1, "stale": 1, "mismatch": 1}
