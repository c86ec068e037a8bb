"""Fixtures of the probe tests: a live collective collector on a temporary socket, and real DDP jobs
(tools/ddp_job.py, gloo on CPU) that run under the probe exactly as a user's job would (LOCKSTEP_PROBE=1)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.collectors.collective import CollectiveCollector
from agent.probe import wire
from agent.probe.compiled import kernel_dir, load_built
from agent.probe.identity import Identity
from agent.probe.recorder import Recorder
from agent.probe.transport import Sender

from .jobs import PTH, Job, start_collector

BindAgent = Callable[[], socket.socket]
LinkedSender = Callable[..., tuple[socket.socket, Recorder, Sender]]
IDENTITY = Identity(job="job-x", rank=1, world_size=4, local_rank=1, pod="pod-1", namespace="ml")


def receive_datagrams(sock: socket.socket) -> list[wire.Decoded]:
    """Every datagram queued on the agent's end, decoded."""
    datagrams: list[wire.Decoded] = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return datagrams
        datagrams.append(wire.decode(data))


def receive_all(sock: socket.socket) -> list[wire.Record]:
    return [record for datagram in receive_datagrams(sock) for record in datagram.as_records()]


@pytest.fixture
def probe_site(tmp_path: Path) -> Path:
    """A directory that, on PYTHONPATH, makes every child Python process its .pth as an installed lockstep does
    (site-packages is shared with other work here, so the tests do not install into it)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    shutil.copy(PTH, site_dir / PTH.name)
    (site_dir / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n"
    )
    return site_dir


@pytest.fixture
def socket_dir(tmp_path: Path) -> Path:
    return tmp_path / "run-lockstep"


@pytest.fixture
def probe_env(subprocess_env: dict[str, str], probe_site: Path, socket_dir: Path) -> dict[str, str]:
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.pathsep.join([str(probe_site), env["PYTHONPATH"]])
    env["LOCKSTEP_PROBE"] = "1"
    env["LOCKSTEP_SOCKET_DIR"] = str(socket_dir)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCKSTEP_JOB"):
        env.pop(name, None)
    return env


@pytest.fixture(params=["compiled", "python"])
def probe_kernel(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that chooses the probe's all-reduce kernel: the compiled one (built by `make install`: a missing
    build fails the test) or the Python one."""
    if request.param == "compiled" and load_built(kernel_dir(os.environ)) is None:
        pytest.fail("no compiled kernel for this torch: run `python -m agent.probe.compiled --build` (make install does)")
    return {"LOCKSTEP_PROBE_COMPILED": "1" if request.param == "compiled" else "0"}


@pytest.fixture
def collector(socket_dir: Path) -> Iterator[CollectiveCollector]:
    collector = start_collector(socket_dir)
    yield collector
    collector.close()


@pytest.fixture
def ddp_job(probe_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Job]]:
    jobs: list[Job] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Job:
        job = Job(list(args), env or probe_env, tmp_path / f"pids{len(jobs)}")
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.kill()


@pytest.fixture
def bind_agent(tmp_path: Path) -> Iterator[BindAgent]:
    """Binds the agent's end of `<tmp_path>/probe.sock` when called (a test may start without an agent); closed after
    the test."""
    sockets: list[socket.socket] = []

    def bind() -> socket.socket:
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sockets.append(receiver)
        receiver.bind(str(tmp_path / "probe.sock"))
        return receiver

    yield bind
    for receiver in sockets:
        receiver.close()


@pytest.fixture
def linked_sender(tmp_path: Path, bind_agent: BindAgent) -> LinkedSender:
    """(the agent's end, a recorder, its sender of IDENTITY to that end) when called; keyword arguments go to
    Sender. The sender's thread is not started: tests flush by hand."""

    def link(**sender_settings: float) -> tuple[socket.socket, Recorder, Sender]:
        receiver = bind_agent()
        recorder = Recorder()
        return receiver, recorder, Sender(recorder, IDENTITY, str(tmp_path), **sender_settings)

    return link
