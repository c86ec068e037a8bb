"""Each fault the fake NVML injects shows up in the metrics and, where it is hard evidence, as a hard signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.collectors.nvml import NvmlCollector
from agent.evidence import HardSignal
from tests.agent.nvml.conftest import FakeNvmlConfig
from tests.agent.nvml.nvml_support import scrape

UUID3 = "GPU-5f0e6a3c-1003-4b1d-8e2f-a1b2c3d40003"
GPU3 = {"gpu": "3", "uuid": UUID3}


def signals_of(collector: NvmlCollector, kind: str) -> list[HardSignal]:
    return [s for s in collector.evidence().hard_signals if s.kind == kind]


def inject(fake_nvml: FakeNvmlConfig, **gpu3: Any) -> None:
    fake_nvml.write({"gpus": {"3": gpu3}})


def test_uncorrectable_ecc_errors_are_counted_and_raise_a_signal_for_that_gpu_only(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, ecc={"volatile_uncorrected": 2, "aggregate_uncorrected": 5, "volatile_corrected": 7})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_ecc_errors_total", error="uncorrected", counter="volatile", **GPU3) == 2
    assert (
        result.value("lockstep_gpu_ecc_errors_total", error="uncorrected", counter="aggregate", **GPU3) == 5
    )
    assert result.value("lockstep_gpu_ecc_errors_total", error="corrected", counter="volatile", **GPU3) == 7
    assert (
        result.value("lockstep_gpu_ecc_errors_total", error="uncorrected", counter="volatile", gpu="2") == 0
    )
    [signal] = signals_of(collector, "ecc_uncorrectable")
    assert signal.device == UUID3 and signal.count == 2


def test_corrected_ecc_errors_alone_are_no_hard_signal(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, ecc={"volatile_corrected": 1000, "aggregate_corrected": 1000})
    assert make_collector().evidence().hard_signals == []


def test_row_remap_failure_and_pending_are_exported_and_signalled(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, remapped_rows={"correctable": 1, "uncorrectable": 3, "pending": True, "failure": True})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_row_remap_failure", **GPU3) == 1
    assert result.value("lockstep_gpu_row_remap_pending", **GPU3) == 1
    assert result.value("lockstep_gpu_remapped_rows", cause="uncorrectable", **GPU3) == 3
    assert result.value("lockstep_gpu_remapped_rows", cause="correctable", **GPU3) == 1
    assert result.value("lockstep_gpu_row_remap_failure", gpu="4") == 0
    assert [s.device for s in signals_of(collector, "row_remap_failure")] == [UUID3]
    [pending] = signals_of(collector, "row_remap_pending")
    assert pending.device == UUID3 and "3 rows" in pending.detail


def test_retired_pages_are_counted_by_cause_and_pending_retirement_is_signalled(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, retired_pages={"single_bit_ecc": 2, "double_bit_ecc": 1, "pending": True})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_retired_pages", cause="single_bit_ecc", **GPU3) == 2
    assert result.value("lockstep_gpu_retired_pages", cause="double_bit_ecc", **GPU3) == 1
    assert result.value("lockstep_gpu_retired_pages_pending", **GPU3) == 1
    assert [s.device for s in signals_of(collector, "retired_pages_pending")] == [UUID3]


def test_thermal_throttling_sets_its_reasons_and_is_a_thermal_not_a_power_signal(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, thermal_throttle=True)
    collector = make_collector()
    result = scrape(collector)
    active = {
        labels["reason"]
        for labels, v in result.samples("lockstep_gpu_clock_event_reason_active", **GPU3)
        if v
    }
    assert active == {"sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown"}
    assert result.value("lockstep_gpu_temperature_celsius", **GPU3) == 94
    [signal] = signals_of(collector, "thermal_throttle")
    assert signal.device == UUID3 and "hw_thermal_slowdown" in signal.detail and "94 °C" in signal.detail
    assert signals_of(collector, "power_throttle") == []


def test_power_brake_is_a_power_signal(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, power_throttle=True)
    collector = make_collector()
    active = {
        labels["reason"]
        for labels, v in scrape(collector).samples("lockstep_gpu_clock_event_reason_active", **GPU3)
        if v
    }
    assert active == {"hw_power_brake_slowdown", "hw_slowdown"}
    [signal] = signals_of(collector, "power_throttle")
    assert signal.device == UUID3
    assert signals_of(collector, "thermal_throttle") == []


def test_a_gpu_at_its_software_power_cap_is_normal_and_raises_nothing(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, clock_event_reasons=0x4)  # nvmlClocksEventReasonSwPowerCap: a busy GPU at its limit
    collector = make_collector()
    assert (
        scrape(collector).value("lockstep_gpu_clock_event_reason_active", reason="sw_power_cap", **GPU3) == 1
    )
    assert collector.evidence().hard_signals == []


def test_throttling_keeps_its_first_seen_while_it_lasts_and_starts_over_after_it_stops(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    now = [1000.0]
    collector = make_collector(clock=lambda: now[0])
    inject(fake_nvml, thermal_throttle=True)
    assert signals_of(collector, "thermal_throttle")[0].first_seen == 1000.0
    now[0] = 1030.0
    [still] = signals_of(collector, "thermal_throttle")
    assert (still.first_seen, still.last_seen) == (1000.0, 1030.0)
    fake_nvml.write({})
    now[0] = 1040.0
    assert signals_of(collector, "thermal_throttle") == []
    inject(fake_nvml, thermal_throttle=True)
    now[0] = 1050.0
    assert signals_of(collector, "thermal_throttle")[0].first_seen == 1050.0


def test_a_narrower_pcie_link_is_degraded_at_any_load(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, pcie={"width": 8}, utilization_gpu_percent=0)
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_pcie_link_width", **GPU3) == 8
    assert result.value("lockstep_gpu_pcie_link_max_width", **GPU3) == 16
    [signal] = signals_of(collector, "pcie_degraded")
    assert signal.device == UUID3 and "x8" in signal.detail and "x16" in signal.detail


def test_a_slower_pcie_generation_is_degraded_only_while_the_gpu_is_busy(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    inject(
        fake_nvml, pcie={"generation": 1}, utilization_gpu_percent=0
    )  # idle GPUs drop to Gen1 to save power
    assert scrape(collector).value("lockstep_gpu_pcie_link_generation", **GPU3) == 1
    assert signals_of(collector, "pcie_degraded") == []
    inject(fake_nvml, pcie={"generation": 3}, utilization_gpu_percent=95)
    [signal] = signals_of(collector, "pcie_degraded")
    assert signal.device == UUID3 and "Gen3" in signal.detail


def test_pcie_replays_are_a_counter(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    inject(fake_nvml, pcie={"replay_counter": 42})
    assert scrape(make_collector()).value("lockstep_gpu_pcie_replays_total", **GPU3) == 42


def test_an_nvlink_that_goes_down_is_exported_and_signalled_with_its_link(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    inject(fake_nvml, nvlink_down=[5, 11], nvlink_errors={"5": {"crc_flit": 12, "replay": 3}})
    result = scrape(collector)
    assert result.value("lockstep_gpu_nvlink_up", link="5", **GPU3) == 0
    assert result.value("lockstep_gpu_nvlink_up", link="4", **GPU3) == 1
    assert result.value("lockstep_gpu_nvlink_link_errors_total", link="5", counter="crc_flit", **GPU3) == 12
    assert result.value("lockstep_gpu_nvlink_errors_total", counter="crc_flit", **GPU3) == 12
    assert result.value("lockstep_gpu_nvlink_errors_total", counter="replay", **GPU3) == 3
    [signal] = signals_of(collector, "nvlink_down")
    assert signal.device == UUID3 and signal.count == 2 and "5, 11" in signal.detail


def test_a_gpu_whose_nvlinks_were_never_up_anywhere_raises_no_nvlink_signal(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    every_link = list(range(18))  # a PCIe card without NVLink bridges reports every link inactive
    fake_nvml.write(
        {"gpu_count": 2, "gpus": {"0": {"nvlink_down": every_link}, "1": {"nvlink_down": every_link}}}
    )
    collector = make_collector()
    assert scrape(collector).value("lockstep_gpu_nvlink_up", gpu="0", link="0") == 0
    assert signals_of(collector, "nvlink_down") == []


def test_a_lost_gpu_is_flagged_and_its_other_metrics_left_out_while_the_rest_carry_on(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    scrape(collector)  # known while healthy: its identity stays on the lost gauge
    inject(fake_nvml, lost=True)
    result = scrape(collector)
    assert result.value("lockstep_gpus") == 8
    assert result.value("lockstep_gpu_lost", **GPU3) == 1
    assert result.value("lockstep_gpu_lost", gpu="2") == 0
    assert result.value("lockstep_gpu_power_watts", **GPU3) is None
    assert len(result.samples("lockstep_gpu_power_watts")) == 7
    [signal] = signals_of(collector, "gpu_lost")
    assert signal.device == UUID3 and "GPU is lost" in signal.detail
    evidence = {g.index: g for g in collector.evidence().gpus}
    assert not evidence[3].healthy and evidence[2].healthy


def test_a_gpu_that_vanishes_from_the_device_list_is_reported_lost_under_its_old_identity(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    assert scrape(collector).value("lockstep_gpus") == 8
    inject(fake_nvml, absent=True)
    result = scrape(collector)
    assert result.value("lockstep_gpus") == 7
    assert result.value("lockstep_gpu_lost", uuid=UUID3) == 1
    # GPU 4 moved up to index 3: NVML indexes the GPUs it still sees
    assert result.value("lockstep_gpu_lost", gpu="3", uuid="GPU-5f0e6a3c-1004-4b1d-8e2f-a1b2c3d40004") == 0
    [signal] = signals_of(collector, "gpu_lost")
    assert signal.device == UUID3 and "vanished" in signal.detail
    assert [g.healthy for g in collector.evidence().gpus if g.uuid == UUID3] == [False]


def test_a_smaller_gpu_count_loses_the_last_gpus(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    scrape(collector)
    fake_nvml.write({"gpu_count": 6})
    result = scrape(collector)
    assert result.value("lockstep_gpus") == 6
    assert sorted(int(labels["gpu"]) for labels, v in result.samples("lockstep_gpu_lost") if v) == [6, 7]
    assert len(signals_of(collector, "gpu_lost")) == 2


def test_a_gpu_that_comes_back_is_no_longer_lost(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    scrape(collector)
    inject(fake_nvml, absent=True)
    assert signals_of(collector, "gpu_lost")
    fake_nvml.write({})
    assert signals_of(collector, "gpu_lost") == []
    assert scrape(collector).value("lockstep_gpu_lost", **GPU3) == 0


def test_every_hard_fault_shows_in_the_first_read_after_it_happens_on_a_collector_that_read_before(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    """What the backend keeps between reads (identity, widest PCIe link, NVLink CRC counters) hides no fault."""
    collector = make_collector()
    scrape(collector)
    assert collector.evidence().hard_signals == []
    fake_nvml.write(
        {
            "gpus": {
                "1": {
                    "ecc": {"volatile_uncorrected": 1},
                    "remapped_rows": {"pending": True, "failure": True},
                },
                "2": {"retired_pages": {"pending": True}, "thermal_throttle": True, "pcie": {"width": 4}},
                "3": {"nvlink_down": [2]},
                "4": {"power_throttle": True},
                "5": {"lost": True},
            }
        }
    )
    found = {(s.kind, s.device[-1]) for s in collector.evidence().hard_signals}
    assert found == {
        ("ecc_uncorrectable", "1"),
        ("row_remap_pending", "1"),
        ("row_remap_failure", "1"),
        ("retired_pages_pending", "2"),
        ("thermal_throttle", "2"),
        ("pcie_degraded", "2"),
        ("nvlink_down", "3"),
        ("power_throttle", "4"),
        ("gpu_lost", "5"),
    }


def test_an_nvlink_that_fails_between_scrapes_shows_in_the_next_scrape_though_unchanged_links_are_reused(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    """The NVLink rows of a GPU are made again only when its links' answers change: a change must never be missed."""
    collector = make_collector()
    healthy = [scrape(collector) for _ in range(2)]
    for result in healthy:
        assert result.value("lockstep_gpu_nvlink_up", link="17", **GPU3) == 1
        assert (
            result.value("lockstep_gpu_nvlink_link_errors_total", link="17", counter="replay", **GPU3) is None
        )
    inject(fake_nvml, nvlink_down=[17], nvlink_errors={"17": {"replay": 4}})
    failed = scrape(collector)
    assert failed.value("lockstep_gpu_nvlink_up", link="17", **GPU3) == 0
    assert failed.value("lockstep_gpu_nvlink_link_errors_total", link="17", counter="replay", **GPU3) == 4
    assert failed.value("lockstep_gpu_nvlink_errors_total", counter="replay", **GPU3) == 4
    assert failed.value("lockstep_gpu_nvlink_up", link="17", gpu="2") == 1  # the other GPUs' reused rows
    inject(fake_nvml, nvlink_down=[17], nvlink_errors={"17": {"replay": 9}})
    assert scrape(collector).value("lockstep_gpu_nvlink_errors_total", counter="replay", **GPU3) == 9
    assert len(scrape(collector).samples("lockstep_gpu_nvlink_up")) == 8 * 18
