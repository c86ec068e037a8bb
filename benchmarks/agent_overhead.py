"""Agent overhead: CPU share of one core, RSS and scrape latency, side by side with prometheus-node-exporter.

Both exporters run on this machine in the same run and are scraped once a second for --seconds. The agent reads
a fixture sysfs tree with --nics ConnectX RoCE ports (copied from tests/fixtures) and, when the fake NVML library
is built (`make fake-nvml`) and the NVML collector exists, 8 fake GPUs. Budget: < 1% of a core, < 60 MB RSS,
scrape < 10 ms.

    python benchmarks/agent_overhead.py [--seconds 30] [--nics 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
FIXTURE_SYSFS = REPO / "tests" / "fixtures" / "sysfs" / "gpu-node"
FIXTURE_PROCFS = REPO / "tests" / "fixtures" / "procfs" / "gpu-node"
FAKE_NVML = REPO / "build" / "fake-nvml" / "libnvidia-ml.so.1"
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"


@dataclass
class Measurement:
    name: str
    cpu_share_of_core: float
    rss_bytes: int
    latencies_seconds: list[float]
    body_bytes: int
    series: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_seconds)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def measure(name: str, process: subprocess.Popen[bytes], url: str, seconds: float) -> Measurement:
    """Scrape `url` once a second; CPU share is the process's CPU time over wall time in the window."""
    proc = psutil.Process(process.pid)
    urllib.request.urlopen(url, timeout=10).read()  # warm-up scrape, outside the window
    cpu_start, wall_start = sum(proc.cpu_times()[:2]), time.monotonic()
    latencies: list[float] = []
    body = b""
    while time.monotonic() - wall_start < seconds:
        tick = time.monotonic()
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        latencies.append(time.monotonic() - tick)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    cpu = sum(proc.cpu_times()[:2]) - cpu_start
    wall = time.monotonic() - wall_start
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return Measurement(name, cpu / wall, proc.memory_info().rss, latencies, len(body), series)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window per exporter (s)")
    parser.add_argument("--nics", type=int, default=8, help="RoCE ports in the generated sysfs tree")
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(REPO))
    agent_args = ["--host.procfs-root", str(FIXTURE_PROCFS), "--node-name", "bench"]
    gpus = "none"
    if FAKE_NVML.exists() and (REPO / "agent" / "collectors" / "nvml.py").exists():
        env["LD_LIBRARY_PATH"] = f"{FAKE_NVML.parent}:{env.get('LD_LIBRARY_PATH', '')}"
        gpus = "8 (fake NVML)"
    else:
        agent_args.append("--no-collector.nvml")

    with tempfile.TemporaryDirectory(prefix="lockstep-bench-") as tmp:
        sysfs = sysfs_with_nics(Path(tmp) / "sys", args.nics)
        agent_port, exporter_port = free_port(), free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "--listen", f"127.0.0.1:{agent_port}", "--network.sysfs-root", str(sysfs)]
            + agent_args,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        exporter = subprocess.Popen(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{exporter_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            agent_url = f"http://127.0.0.1:{agent_port}/metrics"
            exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
            wait_ready(f"http://127.0.0.1:{agent_port}/readyz", agent)
            wait_ready(exporter_url, exporter)
            print(f"agent: {args.nics} RoCE ports + fixture netdevs, GPUs: {gpus}; scraping each 1/s for {args.seconds:g} s")
            results = [
                measure("lockstep-agent", agent, agent_url, args.seconds),
                measure("node-exporter", exporter, exporter_url, args.seconds),
            ]
        finally:
            stop(agent)
            stop(exporter)

    print(f"{'':16}{'CPU % core':>11}{'RSS MB':>9}{'p50 ms':>9}{'p99 ms':>9}{'series':>8}{'body kB':>9}")
    for m in results:
        print(
            f"{m.name:16}{m.cpu_share_of_core * 100:11.2f}{m.rss_bytes / 1e6:9.1f}{m.percentile(0.5) * 1e3:9.2f}"
            f"{m.percentile(0.99) * 1e3:9.2f}{m.series:8d}{m.body_bytes / 1e3:9.1f}"
        )
    agent_m, peer = results
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
