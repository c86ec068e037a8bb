"""Fixtures for the agent tests: fixture trees, free ports, an agent process, an in-process server."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.collectors.base import Collector
from agent.collectors.runner import CollectorRunner
from agent.server import RunningServer, build_app, serve
from tests.processes import stop_process

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SYSFS_GPU_NODE = FIXTURES / "sysfs" / "gpu-node"
PROCFS_GPU_NODE = FIXTURES / "procfs" / "gpu-node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, accept: str = "", timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


async def fetch(url: str, accept: str = "") -> tuple[int, str, str]:
    """(status, content type, body) of a GET from async tests (the in-process server shares their loop)."""
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept} if accept else {}) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


def wait_until(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def sysfs_copy(tmp_path: Path) -> Path:
    """A writable copy of the GPU node's sysfs fixture, for tests that change or break files."""
    root = tmp_path / "sys"
    shutil.copytree(SYSFS_GPU_NODE, root)
    return root


@pytest.fixture
def start_agent(subprocess_env: dict[str, str], python: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start `python -m agent` with extra arguments; returns its base URL once /readyz says ready.

    Its probe socket lives in the test's directory, so agents of parallel tests never share one.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        port = free_port()
        log = open(tmp_path / f"agent-{port}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [python, "-m", "agent", "--listen", f"127.0.0.1:{port}", "--collective.socket-dir", str(tmp_path), *args],
            env=subprocess_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"agent exited with {process.returncode}: {Path(log.name).read_text()}")
            try:
                return http_get(url + "/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_until(ready, what="agent ready")
        return url

    yield start
    for process in processes:
        stop_process(process)


@pytest.fixture
async def serve_collectors() -> AsyncIterator[Callable[..., object]]:
    """Serve the given collectors in-process on a free port; returns the base URL."""
    servers: list[RunningServer] = []

    async def start(collectors: list[Collector], *, timeout_seconds: float = 5.0, broken: tuple[str, ...] = ()) -> str:
        runner = CollectorRunner(collectors, node_name="test-node", timeout_seconds=timeout_seconds, broken=broken)
        server = serve(build_app(runner), "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


@dataclass(frozen=True)
class VethPair:
    host_side: str  # in the agent's namespace, 10.x.y.1
    namespace: str
    peer_address: str  # the other end, inside `namespace`


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def veth() -> Iterator[VethPair]:
    suffix = secrets.token_hex(3)
    namespace, host_side, peer = f"lsagent-{suffix}", f"lsag{suffix}a", f"lsag{suffix}b"
    subnet = f"10.{int(suffix[:2], 16) % 200 + 20}.{int(suffix[2:4], 16)}"
    ip("netns", "add", namespace)
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", namespace)
        ip("addr", "add", f"{subnet}.1/30", "dev", host_side)
        ip("link", "set", host_side, "up")
        ip("-n", namespace, "addr", "add", f"{subnet}.2/30", "dev", peer)
        ip("-n", namespace, "link", "set", peer, "up")
        yield VethPair(host_side=host_side, namespace=namespace, peer_address=f"{subnet}.2")
    finally:
        subprocess.run(["ip", "link", "del", host_side], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
