"""Agent overhead: CPU share of one core, RSS and scrape latency, side by side with prometheus-node-exporter.

Both exporters run on this machine in the same run and are scraped once a second for --seconds, one after the other,
in --rounds rounds (the budget is judged on the median CPU share, the highest RSS and the latencies of all rounds),
over a kept-alive connection with the Accept header Prometheus sends (no gzip for either). The agent reads a fixture sysfs tree with
--nics ConnectX RoCE ports (copied from tests/fixtures), 8 fake GPUs when the fake NVML library is built (`make fake-nvml`), and --ranks probe senders
(one process each, the probe's own Recorder and Sender) issuing --collectives-per-second each into its socket.
It dumps this machine's established TCP sockets for their send RTT (sock_diag), as on a node with hostNetwork.
The RoCE ports' byte counters (netdev statistics and RDMA port counters) move as a data-parallel job's would: a
burst at 200 Gb/s for the first fifth of every --step-seconds, a trickle otherwise (a helper process rewrites the
fixture files 50 times a second); the agent samples NIC counters faster for steps under 1 s (see
agent/collectors/periodicity.py), so the step changes its cost: the output says the rate it sampled at.
With --evidence-every 5 the agent also serves the controller's evidence pulls, as in a cluster (node-exporter has
no such API). The agent runs from compiled bytecode, as installed by pip (which compiles a wheel's modules; compiling
them at each start instead costs ~1.3 MB of RSS). Each connection is scraped WARM_UP_SCRAPES times before its window,
as a long-lived Prometheus connection has been: the agent then answers it ahead of each scrape (agent/scrape_ahead.py);
`--agent-arg=--scrape-ahead-seconds=0` measures scrapes that collect. The sysfs tree is on tmpfs (/dev/shm) when there
is one: sysfs is in memory. Budget: < 1% of a core, < 60 MB RSS, scrape < 10 ms.

    python benchmarks/agent_overhead.py [--rounds 3] [--seconds 40] [--nics 8] [--ranks 8] [--collectives-per-second 500]
                                        [--evidence-every 5] [--step-seconds 2]
"""

from __future__ import annotations

import argparse
import compileall
import ctypes
import http.client
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
FIXTURE_SYSFS = REPO / "tests" / "fixtures" / "sysfs" / "gpu-node"
FIXTURE_PROCFS = REPO / "tests" / "fixtures" / "procfs" / "gpu-node"
FAKE_NVML = REPO / "build" / "fake-nvml" / "libnvidia-ml.so.1"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
# what Prometheus 2.x sends: each exporter answers in the best format it has (the agent: OpenMetrics)
WARM_UP_SCRAPES = 3  # per connection, once a second, before the window
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@dataclass
class Measurement:
    name: str
    cpu_share_of_core: float
    rss_bytes: int
    latencies_seconds: list[float]
    body_bytes: int
    series: int
    body: str

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def established_tcp_sockets() -> int:
    """Established TCP sockets of this machine's network namespace (/proc/net/tcp and tcp6, state 01)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            count += sum(1 for line in lines if line.split()[3:4] == ["01"])
    return count


def procfs_of_this_node(root: Path) -> Path:
    """The fixture procfs (TCP counters, boot id) with `1/ns/net` pointing at the network namespace the benchmark
    runs in (the node's, here), so the agent, running in it too, samples the send RTT of the machine's real TCP
    sockets (sock_diag) as it does on a node with hostNetwork."""
    shutil.copytree(FIXTURE_PROCFS, root)
    (root / "1" / "ns").mkdir()
    (root / "1" / "ns" / "net").symlink_to(f"/proc/{os.getpid()}/ns/net")
    return root


def sysfs_with_nics(root: Path, nics: int) -> Path:
    """A sysfs tree with `nics` RoCE ports mlx5_0.. and their netdevs, cloned from the fixture's mlx5_0."""
    shutil.copytree(FIXTURE_SYSFS / "class" / "net", root / "class" / "net")
    template = FIXTURE_SYSFS / "class" / "infiniband" / "mlx5_0"
    for i in range(nics):
        netdev = f"ens{i + 1}f0np0"
        device = root / "class" / "infiniband" / f"mlx5_{i}"
        shutil.copytree(template, device)
        shutil.rmtree(device / "device" / "net")
        (device / "device" / "net" / netdev).mkdir(parents=True)
        if not (root / "class" / "net" / netdev).exists():
            shutil.copytree(FIXTURE_SYSFS / "class" / "net" / "ens1f0np0", root / "class" / "net" / netdev)
    return root


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout:g} s")


def measure(
    name: str, process: subprocess.Popen[bytes], url: str, seconds: float, evidence_every: float = 0.0
) -> Measurement:
    """Scrape `url` once a second over one kept-alive connection, as Prometheus does, and with `evidence_every` > 0
    also pull the agent's /api/v1/evidence that often (s) over another, as the controller does; CPU share is the
    process's CPU time over wall time in the window. Latencies are the scrapes'."""
    proc = psutil.Process(process.pid)
    target = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(target.netloc, timeout=10)
    controller = http.client.HTTPConnection(target.netloc, timeout=10)

    def get(conn: http.client.HTTPConnection, path: str) -> bytes:
        conn.request("GET", path, headers={"Accept": PROMETHEUS_ACCEPT})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"{target.netloc}{path}: HTTP {response.status}")
        return body

    def scrape() -> bytes:
        return get(connection, target.path)

    for _ in range(WARM_UP_SCRAPES):  # outside the window: Prometheus keeps a connection for hours, and the agent
        tick = time.monotonic()  # answers its scrapes ahead once it has seen them come steadily (scrape_ahead.py)
        scrape()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    cpu_start, wall_start = sum(proc.cpu_times()[:2]), time.monotonic()
    latencies: list[float] = []
    body = b""
    next_evidence = wall_start + 0.5 if evidence_every > 0 else math.inf  # half-way between two scrapes
    while time.monotonic() - wall_start < seconds:
        tick = time.monotonic()
        body = scrape()
        latencies.append(time.monotonic() - tick)
        if tick + 0.5 >= next_evidence:
            time.sleep(max(0.0, next_evidence - time.monotonic()))
            get(controller, "/api/v1/evidence")
            next_evidence += evidence_every
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    cpu = sum(proc.cpu_times()[:2]) - cpu_start
    wall = time.monotonic() - wall_start
    connection.close()
    controller.close()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return Measurement(name, cpu / wall, proc.memory_info().rss, latencies, len(body), series, body.decode())


def probe_load(socket_dir: str, rank: int, world_size: int, per_second: float) -> None:
    """Run one rank's probe: issue and complete `per_second` all-reduces per second until killed."""
    from agent.probe.identity import Identity
    from agent.probe.recorder import Recorder
    from agent.probe.transport import Sender
    from agent.probe.wire import Op

    recorder = Recorder()
    identity = Identity(job="bench/job", rank=rank, world_size=world_size, local_rank=rank, pod="", namespace="")
    Sender(recorder, identity, socket_dir).start()
    interval, next_at = 1.0 / per_second, time.monotonic()
    while True:
        recorder.complete(recorder.issue("default", Op.all_reduce, 64 << 20))
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def nic_traffic(sysfs: Path, nics: int, step_seconds: float) -> None:
    """Move the byte counters of the `nics` RoCE ports of the benchmark's tree as a job with `step_seconds` steps
    would, until killed: 25 GB/s each way for the first fifth of each step, 1 MB/s otherwise."""
    burst, trickle, share = 25e9, 1e6, 0.2
    files = []  # (file, bytes per unit): netdev statistics count bytes, RDMA port data counters 4-byte words
    for i in range(nics):
        statistics = sysfs / "class" / "net" / f"ens{i + 1}f0np0" / "statistics"
        counters = sysfs / "class" / "infiniband" / f"mlx5_{i}" / "ports" / "1" / "counters"
        for path, unit in ((statistics / "rx_bytes", 1), (statistics / "tx_bytes", 1),
                           (counters / "port_rcv_data", 4), (counters / "port_xmit_data", 4)):  # fmt: skip
            files.append((open(path, "r+"), unit, int(path.read_text())))  # noqa: SIM115 - open until killed
    start = time.monotonic()
    while True:
        t = time.monotonic() - start
        steps, into = divmod(t, step_seconds)
        sent = trickle * t + (burst - trickle) * (steps * share * step_seconds + min(into, share * step_seconds))
        for file, unit, base in files:  # rewritten in place (the agent holds the files open), never shorter:
            os.pwrite(file.fileno(), f"{base + int(sent / unit)}\n".encode(), 0)  # a read never finds it empty
        time.sleep(0.02)


def pooled(rounds: list[Measurement]) -> Measurement:
    """One exporter over all rounds: the median CPU share, the highest RSS, every scrape's latency."""
    last = rounds[-1]
    return Measurement(
        last.name,
        statistics.median(m.cpu_share_of_core for m in rounds),
        max(m.rss_bytes for m in rounds),
        [latency for m in rounds for latency in m.latencies_seconds],
        last.body_bytes,
        last.series,
        last.body,
    )


def print_row(label: str, m: Measurement) -> None:
    print(
        f"{label:22}{m.cpu_share_of_core * 100:11.2f}{m.rss_bytes / 1e6:9.1f}{m.percentile(0.5) * 1e3:9.2f}"
        f"{m.percentile(0.99) * 1e3:9.2f}{max(m.latencies_seconds) * 1e3:9.2f}{m.series:8d}{m.body_bytes / 1e3:9.1f}"
    )


PR_SET_PDEATHSIG = 1  # prctl: the signal a process gets when its parent dies


def dies_with_parent() -> None:
    """preexec_fn of the benchmark's children: SIGTERM when the benchmark dies however it dies (Ctrl-C, a SIGPIPE
    from `| head`, kill -9), so no agent, exporter or sender is left running to disturb the next measurement."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--seconds", type=float, default=40.0,
        help="measurement window per exporter and round (s); with 3 rounds, 120 scrapes each: their p99 is not "
        "simply the slowest one (printed too)",
    )  # fmt: skip
    parser.add_argument(
        "--settle-seconds", type=float, default=15.0,
        help="after the agent is ready, wait this long before measuring: its windows fill, its first estimates run",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, each measuring the agent and then node-exporter (default 3)"
    )
    parser.add_argument("--nics", type=int, default=8, help="RoCE ports in the generated sysfs tree")
    parser.add_argument("--ranks", type=int, default=8, help="training ranks sending probe records")
    parser.add_argument("--collectives-per-second", type=float, default=500.0, help="per rank")
    parser.add_argument(
        "--evidence-every", type=float, default=0.0,
        help="also pull the agent's /api/v1/evidence every this many s, as the controller does (default 5 s there); "
        "0 = scrapes only",
    )  # fmt: skip
    parser.add_argument(
        "--agent-arg", action="append", default=[], help="extra agent flag, e.g. --agent-arg=--no-collector.periodicity"
    )
    parser.add_argument(
        "--step-seconds", type=float, default=2.0,
        help="the training step the RoCE ports' byte counters follow (s); 0 = the counters stand still",
    )  # fmt: skip
    parser.add_argument("--probe-load", nargs=3, metavar=("SOCKET_DIR", "RANK", "WORLD"), help=argparse.SUPPRESS)
    parser.add_argument("--nic-traffic", metavar="SYSFS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe_load:
        socket_dir, rank, world = args.probe_load
        probe_load(socket_dir, int(rank), int(world), args.collectives_per_second)
        return 0
    if args.nic_traffic:
        nic_traffic(Path(args.nic_traffic), args.nics, args.step_seconds)
        return 0

    env = dict(os.environ, PYTHONPATH=str(REPO))
    compileall.compile_dir(REPO / "agent", quiet=1)  # into agent/**/__pycache__ (ignored by git); read even if
    # PYTHONDONTWRITEBYTECODE is set, which stops only the writing
    gpus = "8 (fake NVML)" if FAKE_NVML.exists() else "none (run `make fake-nvml`)"

    # sysfs lives in memory: the fixture tree goes on tmpfs where there is one, not on a disk file system that
    # journals the access times of the counter files the traffic helper rewrites 50 times a second
    memory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="lockstep-bench-", dir=memory) as tmp:
        sysfs = sysfs_with_nics(Path(tmp) / "sys", args.nics)
        socket_dir = Path(tmp) / "run"
        socket_dir.mkdir()
        agent_port, exporter_port = free_port(), free_port()
        agent_args = [
            "--listen", f"127.0.0.1:{agent_port}",
            "--node-name", "bench",
            "--network.sysfs-root", str(sysfs),
            "--host.procfs-root", str(procfs_of_this_node(Path(tmp) / "proc")),
            "--periodicity.sysfs-net", str(sysfs / "class" / "net"),
            "--collective.socket-dir", str(socket_dir),
        ]  # fmt: skip
        agent_args += ["--nvml.library-path", str(FAKE_NVML)] if FAKE_NVML.exists() else ["--no-collector.nvml"]
        agent_args += args.agent_arg
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", *agent_args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_parent,
        )
        exporter = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{exporter_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=dies_with_parent,
        )
        senders = [
            subprocess.Popen(
                [sys.executable, __file__, "--probe-load", str(socket_dir), str(rank), str(args.ranks),
                 "--collectives-per-second", str(args.collectives_per_second)],
                env=env, preexec_fn=dies_with_parent,
            )  # fmt: skip
            for rank in range(args.ranks)
        ]
        if args.step_seconds > 0:
            senders.append(subprocess.Popen(
                [sys.executable, __file__, "--nic-traffic", str(sysfs), "--nics", str(args.nics),
                 "--step-seconds", str(args.step_seconds)],
                env=env, preexec_fn=dies_with_parent,
            ))  # fmt: skip
        try:
            agent_url = f"http://127.0.0.1:{agent_port}/metrics"
            exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
            wait_ready(f"http://127.0.0.1:{agent_port}/readyz", agent)
            wait_ready(exporter_url, exporter)
            print(
                f"agent: {args.nics} RoCE ports + fixture netdevs, GPUs: {gpus}, {args.ranks} ranks x "
                f"{args.collectives_per_second:g} collectives/s, "
                + (f"{args.step_seconds:g} s steps on the NICs" if args.step_seconds > 0 else "NIC counters still")
                + f", {established_tcp_sockets()} established TCP sockets on the machine"
                + f"; scraping each exporter 1/s for {args.seconds:g} s"
                + (f"; the agent's evidence pulled every {args.evidence_every:g} s" if args.evidence_every > 0 else "")
            )
            time.sleep(args.settle_seconds)
            print(f"{'':22}{'CPU % core':>11}{'RSS MB':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'series':>8}{'body kB':>9}")
            rounds: list[tuple[Measurement, Measurement]] = []
            for number in range(1, args.rounds + 1):  # alternating: both see the same drift of the machine
                pair = (
                    measure("lockstep-agent", agent, agent_url, args.seconds, args.evidence_every),
                    measure("node-exporter", exporter, exporter_url, args.seconds),
                )
                rounds.append(pair)
                for m in pair:
                    print_row(f"{m.name} #{number}", m)
        finally:
            for process in [agent, exporter, *senders]:
                stop(process)

    agent_m, peer = pooled([a for a, _ in rounds]), pooled([e for _, e in rounds])
    if args.rounds > 1:
        print("over the rounds (median CPU, highest RSS, latencies pooled):")
        for m in (agent_m, peer):
            print_row(m.name, m)
    print(
        "ratio agent/node-exporter: "
        f"CPU {agent_m.cpu_share_of_core / max(peer.cpu_share_of_core, 1e-9):.2f}x, "
        f"RSS {agent_m.rss_bytes / peer.rss_bytes:.2f}x, "
        f"p50 {agent_m.percentile(0.5) / peer.percentile(0.5):.2f}x, "
        f"p99 {agent_m.percentile(0.99) / peer.percentile(0.99):.2f}x"
    )
    budget = {
        "CPU < 1% of a core": agent_m.cpu_share_of_core < 0.01,
        "RSS < 60 MB": agent_m.rss_bytes < 60e6,
        "scrape p99 < 10 ms": agent_m.percentile(0.99) < 0.010,
    }
    print("budget: " + ", ".join(f"{k}: {'ok' if ok else 'OVER'}" for k, ok in budget.items()))
    print(f"mean scrape latency agent {statistics.mean(agent_m.latencies_seconds) * 1e3:.2f} ms")
    durations = [
        f"{name} {float(seconds) * 1e3:.1f} ms"
        for name, seconds in re.findall(r'^lockstep_collector_duration_seconds\{collector="([^"]+)"\} (\S+)$', agent_m.body, re.M)
    ]
    print("collector durations in the last scrape: " + ", ".join(durations))
    answers = dict(re.findall(r'^lockstep_agent_scrapes_total\{answer="(\w+)"\} (\S+)$', agent_m.body, re.M))
    print(
        "agent answers since it started (last scrape): "
        + ", ".join(f"{name} {float(count):g}" for name, count in answers.items())
        + " (prepared: made ahead of a steady scraper's scrape; collected: at the scrape)"
    )
    rate = re.search(r"^lockstep_traffic_sample_rate_hertz (\S+)$", agent_m.body, re.M)
    periods = re.findall(r'^lockstep_traffic_period_seconds\{interface="([^"]+)"\} (\S+)$', agent_m.body, re.M)
    print(
        f"NIC counters sampled at {float(rate.group(1)) if rate else float('nan'):g} Hz; periods found: "
        + (", ".join(f"{name} {float(value):.2f} s" for name, value in periods) or "none")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
