"""A healthy 8-GPU node through the real pynvml and the fake NVML: every metric there, in base units, no signals."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.collectors.nvml import NvmlCollector
from tests.agent.nvml.conftest import FakeNvmlConfig
from tests.agent.nvml.nvml_support import scrape, wait_until

GPU0 = {"gpu": "0", "uuid": "GPU-5f0e6a3c-1000-4b1d-8e2f-a1b2c3d40000"}

PER_GPU_METRICS = (
    "lockstep_gpu_lost",
    "lockstep_gpu_utilization_ratio",
    "lockstep_gpu_memory_utilization_ratio",
    "lockstep_gpu_memory_used_bytes",
    "lockstep_gpu_memory_free_bytes",
    "lockstep_gpu_memory_total_bytes",
    "lockstep_gpu_temperature_celsius",
    "lockstep_gpu_memory_temperature_celsius",
    "lockstep_gpu_power_watts",
    "lockstep_gpu_power_limit_watts",
    "lockstep_gpu_energy_joules_total",
    "lockstep_gpu_sm_clock_hertz",
    "lockstep_gpu_memory_clock_hertz",
    "lockstep_gpu_retired_pages_pending",
    "lockstep_gpu_row_remap_pending",
    "lockstep_gpu_row_remap_failure",
    "lockstep_gpu_pcie_link_generation",
    "lockstep_gpu_pcie_link_max_generation",
    "lockstep_gpu_pcie_link_width",
    "lockstep_gpu_pcie_link_max_width",
    "lockstep_gpu_pcie_replays_total",
)


def test_every_gpu_metric_is_exported_once_per_gpu_with_identity_labels(
    make_collector: Callable[..., NvmlCollector],
) -> None:
    result = scrape(make_collector())
    assert result.value("lockstep_gpus") == 8
    for name in PER_GPU_METRICS:
        samples = result.samples(name)
        assert sorted(labels["gpu"] for labels, _ in samples) == [str(i) for i in range(8)], name
        for labels, _ in samples:
            assert labels["model"] == "NVIDIA H100 80GB HBM3"
            assert labels["uuid"].startswith("GPU-")
            assert labels["pci_bus_id"].startswith("00000000:")


def test_values_are_in_base_units(make_collector: Callable[..., NvmlCollector]) -> None:
    result = scrape(make_collector())
    assert result.value("lockstep_gpu_utilization_ratio", **GPU0) == 0.97
    assert result.value("lockstep_gpu_memory_utilization_ratio", **GPU0) == 0.42
    assert result.value("lockstep_gpu_memory_total_bytes", **GPU0) == 85520809984
    used = result.value("lockstep_gpu_memory_used_bytes", **GPU0)
    free = result.value("lockstep_gpu_memory_free_bytes", **GPU0)
    assert used is not None and free is not None and used + free == 85520809984
    assert result.value("lockstep_gpu_temperature_celsius", **GPU0) == 48
    assert result.value("lockstep_gpu_memory_temperature_celsius", **GPU0) == 56
    assert result.value("lockstep_gpu_power_watts", **GPU0) == 550  # NVML reports milliwatts
    assert result.value("lockstep_gpu_power_limit_watts", **GPU0) == 700
    assert result.value("lockstep_gpu_sm_clock_hertz", **GPU0) == 1980e6  # NVML reports MHz
    assert result.value("lockstep_gpu_memory_clock_hertz", **GPU0) == 2619e6
    assert result.value("lockstep_gpu_pcie_link_generation", **GPU0) == 5
    assert result.value("lockstep_gpu_pcie_link_width", **GPU0) == 16


def test_the_driver_version_is_exported_as_info(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"driver_version": "570.124.06"})
    assert scrape(make_collector()).value("lockstep_nvml_driver_info", driver_version="570.124.06") == 1


def test_energy_counter_grows_with_time(make_collector: Callable[..., NvmlCollector]) -> None:
    collector = make_collector()
    first = scrape(collector).value("lockstep_gpu_energy_joules_total", **GPU0)
    second = wait_until(
        lambda: (
            (v := scrape(collector).value("lockstep_gpu_energy_joules_total", **GPU0))
            and v > (first or 0)
            and v
        ),
        what="energy to grow",
    )
    assert first is not None and first > 1e6  # joules since driver load, not millijoules
    assert second > first


def test_health_counters_and_states_read_zero_on_a_healthy_node(
    make_collector: Callable[..., NvmlCollector],
) -> None:
    result = scrape(make_collector())
    ecc = result.samples("lockstep_gpu_ecc_errors_total", **GPU0)
    assert {(labels["error"], labels["counter"]) for labels, _ in ecc} == {
        ("corrected", "volatile"),
        ("corrected", "aggregate"),
        ("uncorrected", "volatile"),
        ("uncorrected", "aggregate"),
    }
    assert all(value == 0 for _, value in ecc)
    assert {
        labels["cause"]: value for labels, value in result.samples("lockstep_gpu_remapped_rows", **GPU0)
    } == {
        "correctable": 0,
        "uncorrectable": 0,
    }
    assert {labels["cause"]: v for labels, v in result.samples("lockstep_gpu_retired_pages", **GPU0)} == {
        "single_bit_ecc": 0,
        "double_bit_ecc": 0,
    }
    reasons = result.samples("lockstep_gpu_clock_event_reason_active", **GPU0)
    assert len(reasons) == 9 and all(value == 0 for _, value in reasons)
    assert result.value("lockstep_gpu_pcie_replays_total", **GPU0) == 0


def test_all_18_nvlinks_are_up_and_error_counters_are_summed_per_gpu(
    make_collector: Callable[..., NvmlCollector],
) -> None:
    result = scrape(make_collector())
    links = result.samples("lockstep_gpu_nvlink_up", **GPU0)
    assert sorted(int(labels["link"]) for labels, _ in links) == list(range(18))
    assert all(value == 1 for _, value in links)
    assert len(result.samples("lockstep_gpu_nvlink_up")) == 8 * 18
    totals = result.samples("lockstep_gpu_nvlink_errors_total", **GPU0)
    assert {labels["counter"] for labels, _ in totals} == {
        "replay",
        "recovery",
        "crc_flit",
        "crc_data",
        "ecc_data",
    }
    assert result.samples("lockstep_gpu_nvlink_link_errors_total") == []  # zeros per link stay out


def test_pcie_throughput_comes_from_the_background_sampler(
    make_collector: Callable[..., NvmlCollector],
) -> None:
    collector = make_collector(start=True, pcie_throughput_interval_seconds=1)
    scrape(collector)  # the sampler needs to know the GPUs first
    result = wait_until(
        lambda: (r := scrape(collector)).value("lockstep_gpu_pcie_transmit_bytes_per_second", **GPU0) and r,
        what="a PCIe throughput sample",
    )
    assert (
        result.value("lockstep_gpu_pcie_transmit_bytes_per_second", **GPU0) == 1200000 * 1024
    )  # KB/s -> B/s
    assert result.value("lockstep_gpu_pcie_receive_bytes_per_second", **GPU0) == 2400000 * 1024
    assert len(result.samples("lockstep_gpu_pcie_receive_bytes_per_second")) == 8


def test_pcie_throughput_is_left_out_when_switched_off(make_collector: Callable[..., NvmlCollector]) -> None:
    collector = make_collector(start=True, pcie_throughput_interval_seconds=0)
    scrape(collector)
    assert scrape(collector).samples("lockstep_gpu_pcie_transmit_bytes_per_second") == []


def test_no_sample_is_nan_and_promtool_accepts_the_output(
    make_collector: Callable[..., NvmlCollector], tmp_path: Path
) -> None:
    result = scrape(make_collector())
    for line in result.text.splitlines():
        if not line.startswith("#"):
            assert math.isfinite(float(line.rsplit(" ", 1)[1])), line
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=result.text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_help_text_names_its_nvml_source(make_collector: Callable[..., NvmlCollector]) -> None:
    helps = [line for line in scrape(make_collector()).text.splitlines() if line.startswith("# HELP")]
    assert len(helps) > 20
    for line in helps:
        assert "nvml" in line.lower() or "NVML" in line, line


def test_a_healthy_node_has_no_hard_signals_and_every_gpu_in_the_evidence(
    make_collector: Callable[..., NvmlCollector],
) -> None:
    part = make_collector().evidence()
    assert part.hard_signals == []
    assert [g.index for g in part.gpus] == list(range(8))
    assert all(g.healthy for g in part.gpus)
    gpu0 = part.gpus[0]
    assert gpu0.uuid == GPU0["uuid"]
    assert gpu0.pci_bus_id == "00000000:18:00.0"
    assert gpu0.utilization_ratio == 0.97 and gpu0.power_watts == 550 and gpu0.sm_clock_hertz == 1980e6
