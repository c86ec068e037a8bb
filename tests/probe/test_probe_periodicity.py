"""Zero-touch periodicity: the period and bursts of a real gloo job's traffic, from NIC byte counters alone.

Two ranks in two network namespaces talk over veth pairs and a bridge made by the test; the collector samples
the host ends of the veths, as the agent samples a node's NICs. The job runs without the probe.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.collectors.period_estimate import autocorrelation, estimate
from agent.collectors.periodicity import ESTIMATE_SECONDS, PeriodicityCollector
from agent.settings import PeriodicitySettings

from .jobs import DDP_JOB, wait_for


def square_pulses(
    period_seconds: float, interval_seconds: float, seconds: float, seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds / interval_seconds)) * interval_seconds
    return np.where(t % period_seconds < 0.1, 1e9, 1e6) + rng.normal(0, 1e7, len(t)).clip(-1e6, None)


@pytest.mark.parametrize("period", [0.4, 0.75, 1.5, 3.0])
def test_estimator_finds_the_period_of_bursty_traffic_not_a_multiple(period: float) -> None:
    pattern = estimate(square_pulses(period, 0.05, 30), 0.05, 1e5)
    assert pattern.period_seconds == pytest.approx(period, rel=0.05)
    assert pattern.regularity > 0.5
    assert pattern.burst_bytes_per_second == pytest.approx(
        1e9, rel=0.1
    )  # the rate inside a burst, not the mean
    assert pattern.mean_bytes_per_second < pattern.burst_bytes_per_second / 2


def step_bursts(period: float, interval: float, seconds: float, second_burst_after: float) -> np.ndarray:
    """Rates of a job that sends 17 MB each step and 6 MB `second_burst_after` later, with 20 ms step jitter."""
    rng = np.random.default_rng(2)
    rates = np.full(int(seconds / interval), 1e5)
    t = rng.uniform(0, period)
    while t < seconds:
        for offset, nbytes in ((0.0, 17e6), (second_burst_after, 6e6)):
            if (index := int((t + offset) / interval)) < len(rates):
                rates[index] += nbytes / interval
        t += period + rng.normal(0, 0.02)
    return rates


@pytest.mark.parametrize("period", [0.43, 0.6, 0.77, 1.5])
def test_two_bursts_per_step_give_the_step_period_not_the_gap_between_them(period: float) -> None:
    pattern = estimate(step_bursts(period, 0.05, 20, second_burst_after=0.15), 0.05, 1e5)
    assert pattern.period_seconds == pytest.approx(period, rel=0.05)


def test_estimator_reports_no_period_for_noise_or_idle_links() -> None:
    rng = np.random.default_rng(1)
    assert estimate(np.abs(rng.normal(5e8, 1e8, 600)), 0.05, 1e5).period_seconds is None
    assert estimate(np.full(600, 10.0), 0.05, 1e5).period_seconds is None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_namespaces() -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(namespaces, host-side veth names, rank addresses) on a fresh bridge; all removed afterwards."""
    tag = secrets.token_hex(2)
    bridge, namespaces = f"lspbr{tag}", [f"lsp{tag}n{i}" for i in range(2)]
    host_ends, inner_ends = [f"lsp{tag}h{i}" for i in range(2)], [f"lsp{tag}v{i}" for i in range(2)]
    subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
    addresses = [f"{subnet}.{i + 1}" for i in range(2)]
    try:
        ip("link", "add", bridge, "type", "bridge")
        ip("link", "set", bridge, "up")
        for ns, host, inner, address in zip(namespaces, host_ends, inner_ends, addresses, strict=True):
            ip("netns", "add", ns)
            ip("link", "add", host, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", ns)
            ip("link", "set", host, "master", bridge)
            ip("link", "set", host, "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            ip("-n", ns, "link", "set", inner, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield namespaces, host_ends, addresses
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        for link in [*host_ends, bridge]:
            subprocess.run(["ip", "link", "del", link], capture_output=True, timeout=30)


@pytest.mark.root
@pytest.mark.slow
def test_period_and_bursts_of_a_gloo_job_across_namespaces_are_seen_on_the_nics(
    two_namespaces, subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    namespaces, host_ends, addresses = two_namespaces
    step_seconds = (
        0.6  # the pace asked for; on a busy machine steps can take longer, so compare with the real ones
    )
    steps_log = tmp_path / "rank0.jsonl"
    collector = PeriodicityCollector(
        PeriodicitySettings(interfaces=host_ends, exclude=[], sample_hz=20, window_seconds=20)
    )
    procs = []
    try:
        collector.start()
        for rank, ns in enumerate(namespaces):
            env = {**subprocess_env, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": addresses[0],
                   "MASTER_PORT": "29517", "GLOO_SOCKET_IFNAME": f"lsp{ns[3:7]}v{rank}"}  # fmt: skip
            env.pop("LOCKSTEP_PROBE", None)
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, str(DDP_JOB), "--steps", "0", "--hidden", "1024",
                 "--step-seconds", str(step_seconds), "--log-every", "1"],
                env=env, stdout=steps_log.open("w") if rank == 0 else subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            ))  # fmt: skip

        def periodic() -> bool:
            found = {p.interface: p for p in collector.evidence().periodicity}
            return all(name in found and found[name].period_seconds for name in host_ends) and all(
                p.window_seconds > 12 for p in found.values()
            )

        wait_for(periodic, 180, "a period on both links", interval=1.0)
        found = {p.interface: p for p in collector.evidence().periodicity}
        metrics = {m.name: m for m in collector.collect()}
    finally:
        collector.close()
        for proc in procs:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=30)
    real_steps = [
        json.loads(line)["step_seconds"] for line in steps_log.read_text().splitlines() if '"step"' in line
    ]
    real_period = float(np.median(real_steps[-30:]))
    assert real_period >= step_seconds
    for name in host_ends:
        pattern = found[name]
        assert pattern.period_seconds == pytest.approx(real_period, rel=0.2)
        assert pattern.regularity > 0.3
        assert pattern.burst_bytes_per_second > 2 * pattern.mean_bytes_per_second
        assert pattern.mean_bytes_per_second > 1e6  # the gradients (17 MB a step) really crossed this link
    periods = {s.labels["interface"]: s.value for s in metrics["lockstep_traffic_period_seconds"].samples}
    assert set(periods) == set(host_ends)


@pytest.mark.parametrize("seed", range(40))
def test_estimator_never_fails_on_random_traffic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rates = rng.choice([0.0, 1e6, 1e9], size=int(rng.integers(3, 700)), p=[0.5, 0.3, 0.2])
    pattern = estimate(rates, 0.05, 1e5)
    assert pattern.period_seconds is None or 0.1 <= pattern.period_seconds <= len(rates) * 0.05 / 3
    assert 0.0 <= pattern.regularity <= 1.0


@pytest.mark.parametrize("samples", [12, 299, 300, 601, 1193])  # 2 x 299 and 2 x 1193 have large prime factors
def test_autocorrelation_is_the_direct_sum_over_overlapping_samples(samples: int) -> None:
    x = np.random.default_rng(samples).random(samples)
    centered = x - x.mean()
    direct = np.correlate(centered, centered, "full")[samples - 1 :]
    expected = (direct / (samples - np.arange(samples))) / (direct[0] / samples)
    np.testing.assert_allclose(autocorrelation(x), expected, rtol=0, atol=1e-12)


def test_history_of_each_interface_survives_others_appearing_and_vanishing(tmp_path: Path) -> None:
    def interface(name: str, sent: int) -> None:
        statistics = tmp_path / name / "statistics"
        statistics.mkdir(parents=True, exist_ok=True)
        (statistics / "rx_bytes").write_text("0\n")
        (statistics / "tx_bytes").write_text(f"{sent}\n")

    collector = PeriodicityCollector(
        PeriodicitySettings(
            sysfs_net=str(tmp_path), sample_hz=10, window_seconds=60, exclude=[], min_bytes_per_second=0
        )
    )
    interface("eth0", 0)
    collector.rescan()
    for tick in range(1, 51):  # 10 MB/s on eth0 for 5 s
        interface("eth0", tick * 1_000_000)
        if tick == 20:
            interface("eth1", 0)  # appears
            collector.rescan()
        collector.sample(tick / 10)
    eth0_window = collector.patterns()["eth0"][1]
    (tmp_path / "eth1").rename(tmp_path / "gone")  # vanishes
    collector.rescan()
    patterns = collector.patterns()
    assert set(patterns) == {"eth0"}
    assert patterns["eth0"][1] == pytest.approx(eth0_window) == pytest.approx(4.9)
    assert patterns["eth0"][0].mean_bytes_per_second == pytest.approx(10e6)
    collector.close()


def bursts_sent(t: float, period: float, burst: float = 0.2, rate: float = 1e9, floor: float = 1e6) -> int:
    """Bytes sent by `t` (s) by a job that sends at `rate` for the first `burst` s of each period, else `floor`."""
    return int(floor * t + (rate - floor) * ((t // period) * burst + min(t % period, burst)))


class Interface:
    """One interface of a fixture sysfs tree whose tx_bytes the test sets; the collector reads it like sysfs."""

    def __init__(self, root: Path, name: str = "eth0") -> None:
        self.statistics = root / name / "statistics"
        self.statistics.mkdir(parents=True)
        (self.statistics / "rx_bytes").write_text("0\n")
        (self.statistics / "tx_bytes").write_text("0\n")
        self.total = 0

    def sent(self, total: int) -> None:
        self.total = total
        with open(self.statistics / "tx_bytes", "r+") as file:  # in place: the collector holds it open
            file.truncate(0)
            file.write(f"{total}\n")


def run(
    collector: PeriodicityCollector, eth0: Interface, start: float, seconds: float, period: float
) -> float:
    """Sample for `seconds` from `start` at the interval the collector asks for, as the ticker would, while a job
    of `period` s steps sends (from where the counter is); the end."""
    t, before = start, eth0.total
    while t < start + seconds:
        eth0.sent(before + bursts_sent(t - start, period))
        collector.sample(t)
        t += collector.interval_seconds
    return t


@pytest.fixture
def one_interface(tmp_path: Path) -> Iterator[tuple[Interface, PeriodicityCollector]]:
    """eth0 of a fixture tree, and a collector that samples it at 20 Hz or 10 Hz over 30 s windows."""
    eth0 = Interface(tmp_path)
    collector = PeriodicityCollector(
        PeriodicitySettings(sysfs_net=str(tmp_path), sample_hz=20, min_sample_hz=10, window_seconds=30, exclude=[])
    )
    collector.rescan()
    yield eth0, collector
    collector.close()


def test_sampling_is_slower_without_traffic_or_with_long_steps_and_faster_for_short_steps(
    one_interface: tuple[Interface, PeriodicityCollector],
) -> None:
    eth0, collector = one_interface
    collector.sample(0.0)
    collector.patterns()
    assert collector.interval_seconds == 0.05, "until the traffic is known"
    for t in np.arange(1, 120) * 0.05:  # past ESTIMATE_SECONDS: estimated again
        collector.sample(float(t))  # nothing sent
    collector.patterns()
    assert collector.interval_seconds == 0.1, "an idle node is sampled at min_sample_hz"

    t = run(collector, eth0, 10.0, 30.0, period=2.0)
    [(pattern, _)] = collector.patterns().values()
    assert pattern.period_seconds == pytest.approx(2.0, rel=0.05)
    assert collector.interval_seconds == 0.1, "2 s steps give 20 reads per step at 10 Hz"

    t = run(collector, eth0, t, 30.0, period=0.4)
    [(pattern, _)] = collector.patterns().values()
    assert pattern.period_seconds == pytest.approx(0.4, rel=0.05)
    assert collector.interval_seconds == 0.05, "0.4 s steps get 8 reads at 20 Hz, not 4"
    metrics = {m.name: m.samples for m in collector.collect()}
    assert metrics["lockstep_traffic_sample_rate_hertz"][0].value == 20.0


@pytest.mark.parametrize("period", [0.75, 1.5])
def test_a_window_read_at_two_rates_gives_the_period_and_rates_of_the_traffic(
    one_interface: tuple[Interface, PeriodicityCollector], period: float
) -> None:
    eth0, collector = one_interface
    collector.interval_seconds = collector.slow_interval_seconds
    t = run(collector, eth0, 0.0, 12.0, period)
    collector.interval_seconds = collector.fast_interval_seconds
    run(collector, eth0, t, 18.0, period)
    [(pattern, window)] = collector.patterns().values()
    assert window == pytest.approx(30.0, abs=0.2)
    assert pattern.period_seconds == pytest.approx(period, rel=0.05)
    assert pattern.mean_bytes_per_second == pytest.approx(bursts_sent(30.0, period) / 30.0, rel=0.05)
    assert pattern.burst_bytes_per_second == pytest.approx(1e9, rel=0.1)


def test_a_slower_rate_than_the_faster_one_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="min_sample_hz \\(40\\) is above sample_hz \\(20\\)"):
        PeriodicitySettings(sample_hz=20, min_sample_hz=40)


def test_patterns_are_estimated_again_once_enough_new_reads_arrived_not_on_every_scrape(
    one_interface: tuple[Interface, PeriodicityCollector],
) -> None:
    eth0, collector = one_interface
    t = run(collector, eth0, 0.0, 30.0, period=2.0)
    first = collector.patterns()
    t = run(collector, eth0, t, ESTIMATE_SECONDS / 2, period=0.4)
    assert collector.patterns() is first, "a scrape soon after reuses the estimate"
    run(collector, eth0, t, ESTIMATE_SECONDS / 2 + 0.5, period=0.4)
    again = collector.patterns()
    assert again is not first
    # the new reads count
    assert again["eth0"][0].mean_bytes_per_second > first["eth0"][0].mean_bytes_per_second
