"""NVML missing, failing or partial: fields left out, errors counted, the collector fails cleanly and recovers."""

from __future__ import annotations

import logging
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.collectors.base import SourceUnavailable
from agent.collectors.nvml import NvmlCollector
from tests.agent.nvml.conftest import FakeNvmlConfig
from tests.agent.nvml.nvml_support import Scrape, scrape, wait_until

GPU3 = {"gpu": "3", "uuid": "GPU-5f0e6a3c-1003-4b1d-8e2f-a1b2c3d40003"}


def test_a_function_not_supported_on_one_gpu_leaves_only_that_sample_out(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"gpus": {"3": {"not_supported": ["nvmlDeviceGetPowerUsage"]}}})
    result = scrape(make_collector())
    assert result.value("lockstep_gpu_power_watts", **GPU3) is None
    assert len(result.samples("lockstep_gpu_power_watts")) == 7
    assert result.value("lockstep_gpu_power_limit_watts", **GPU3) == 700
    assert result.samples("lockstep_nvml_call_errors_total") == []  # not supported is no error


def test_a_gpu_that_supports_almost_nothing_still_scrapes_and_logs_each_gap_once_at_debug(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], caplog: pytest.LogCaptureFixture
) -> None:
    lacking = [
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetTemperature",
        "nvmlDeviceGetFieldValues",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetRetiredPages",
        "nvmlDeviceGetRetiredPagesPendingStatus",
        "nvmlDeviceGetRemappedRows",
        "nvmlDeviceGetPcieReplayCounter",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetNvLinkErrorCounter",
    ]
    fake_nvml.write({"not_supported": lacking})
    collector = make_collector()
    with caplog.at_level(logging.DEBUG, logger="agent.backends.nvml"):
        scrape(collector)
        result = scrape(collector)
    assert result.value("lockstep_gpus") == 8
    for gone in (
        "lockstep_gpu_utilization_ratio",
        "lockstep_gpu_memory_used_bytes",
        "lockstep_gpu_temperature_celsius",
        "lockstep_gpu_memory_temperature_celsius",
        "lockstep_gpu_energy_joules_total",
        "lockstep_gpu_clock_event_reason_active",
        "lockstep_gpu_ecc_errors_total",
        "lockstep_gpu_retired_pages",
        "lockstep_gpu_remapped_rows",
        "lockstep_gpu_row_remap_pending",
        "lockstep_gpu_pcie_replays_total",
        "lockstep_gpu_nvlink_up",
    ):
        assert result.samples(gone) == [], gone
    assert len(result.samples("lockstep_gpu_power_watts")) == 8
    gaps = [
        r
        for r in caplog.records
        if "leaving the field out" in r.getMessage() and GPU3["uuid"] in r.getMessage()
    ]
    # all but nvmlDeviceGetTemperature (tried only if the V call is missing) and the error counters of absent links
    assert len(gaps) == len(lacking) - 2
    assert len(gaps) == len(
        {r.getMessage().split(" ")[0] for r in gaps}
    )  # once per GPU and call, not per scrape
    assert all(r.levelno == logging.DEBUG for r in gaps)


def test_a_function_missing_from_an_older_driver_falls_back_to_its_predecessor(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write(
        {
            "errors": {
                "nvmlDeviceGetTemperatureV": "FUNCTION_NOT_FOUND",
                "nvmlDeviceGetCurrentClocksEventReasons": "FUNCTION_NOT_FOUND",
            },
            "gpus": {"3": {"thermal_throttle": True}},
        }
    )
    result = scrape(make_collector())
    assert result.value("lockstep_gpu_temperature_celsius", **GPU3) == 94  # nvmlDeviceGetTemperature
    assert result.value("lockstep_gpu_clock_event_reason_active", reason="hw_thermal_slowdown", **GPU3) == 1


def test_an_unexpected_error_leaves_the_field_out_and_is_counted(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetPowerUsage": "UNKNOWN"}}}})
    collector = make_collector()
    with caplog.at_level(logging.WARNING, logger="agent.backends.nvml"):
        scrape(collector)
        result = scrape(collector)
    assert result.value("lockstep_gpu_power_watts", **GPU3) is None
    assert (
        result.value("lockstep_nvml_call_errors_total", function="nvmlDeviceGetPowerUsage", error="Unknown")
        == 2
    )
    assert len([r for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.getMessage()]) == 1


def test_nvml_init_failure_fails_the_collector_says_so_once_and_recovers_when_the_driver_is_back(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.write({"init_error": "DRIVER_NOT_LOADED"})
    collector = make_collector(start=True)
    with caplog.at_level(logging.INFO, logger="agent.collectors.nvml"):
        for _ in range(3):
            with pytest.raises(SourceUnavailable, match="driver not loaded"):
                collector.collect()
        with pytest.raises(SourceUnavailable):
            collector.evidence()
        assert len([r for r in caplog.records if "NVML unavailable" in r.getMessage()]) == 1
        fake_nvml.write({})
        assert scrape(collector).value("lockstep_gpus") == 8
    assert any("NVML sees 8 GPUs" in r.getMessage() for r in caplog.records)


def test_device_count_failing_mid_run_fails_the_scrape_and_recovers(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    assert scrape(collector).value("lockstep_gpus") == 8
    fake_nvml.write({"errors": {"nvmlDeviceGetCount_v2": "UNKNOWN"}})
    with pytest.raises(SourceUnavailable, match="nvmlDeviceGetCount_v2"):
        collector.collect()
    fake_nvml.write({})
    assert scrape(collector).value("lockstep_gpus") == 8


def test_a_configured_library_that_does_not_exist_makes_nvml_unavailable(
    make_collector: Callable[..., NvmlCollector], tmp_path: Path
) -> None:
    collector = make_collector(library_path=str(tmp_path / "libnvidia-ml.so.1"))
    with pytest.raises(SourceUnavailable, match="does not exist"):
        collector.collect()


def test_a_node_without_gpus_scrapes_fine_with_a_count_of_zero(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.write({"gpu_count": 0})
    collector = make_collector(start=True)
    with caplog.at_level(logging.INFO, logger="agent.collectors.nvml"):
        result = scrape(collector)
        scrape(collector)
    assert result.value("lockstep_gpus") == 0
    assert result.samples("lockstep_gpu_lost") == []
    assert collector.evidence().gpus == []
    assert len([r for r in caplog.records if "no GPUs" in r.getMessage()]) == 1


def test_xid_events_unavailable_do_not_stop_the_metrics(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"errors": {"nvmlEventSetCreate": "NOT_SUPPORTED"}, "gpus": {"3": {"xid": [79]}}})
    collector = make_collector(start=True)
    assert scrape(collector).value("lockstep_gpus") == 8
    assert scrape(collector).samples("lockstep_gpu_xid_errors_total") == []


AGENT_WITHOUT_NVML = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from agent.collectors.base import SourceUnavailable
from agent.collectors.nvml import NvmlCollector
from agent.settings import AgentSettings

collector = NvmlCollector.from_settings(AgentSettings())
collector.start()
for _ in range(3):
    try:
        collector.collect()
        print("collected")
    except SourceUnavailable as error:
        print("unavailable:", error)
collector.close()
print("closed")
"""


def test_without_any_nvml_library_the_collector_reports_unavailable_and_the_process_runs_on(
    subprocess_env: dict[str, str], python: str
) -> None:
    env = {k: v for k, v in subprocess_env.items() if not k.startswith(("LOCKSTEP_", "FAKE_NVML"))}
    env.pop("LD_LIBRARY_PATH", None)
    env.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [python, "-c", AGENT_WITHOUT_NVML], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        lines[:3]
        == ["unavailable: NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this node?)"] * 3
    )
    assert lines[3] == "closed"
    assert done.stderr.count("NVML unavailable") == 1


def test_a_gpu_whose_name_nvml_cannot_give_is_still_read_and_not_lost(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetName": "NOT_SUPPORTED"}}}})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_lost", **GPU3) == 0
    assert result.samples("lockstep_gpu_power_watts", **GPU3)[0][0]["model"] == ""
    assert collector.evidence().hard_signals == []


def test_a_gpu_the_agent_may_not_open_is_left_out_and_never_called_lost(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetHandleByIndex_v2": "NO_PERMISSION"}}}})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpus") == 7
    assert result.samples("lockstep_gpu_lost", gpu="3") == []
    assert collector.evidence().hard_signals == []


def test_one_read_without_a_handle_is_a_glitch_and_a_second_one_makes_the_gpu_lost(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    scrape(collector)
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetHandleByIndex_v2": "UNKNOWN"}}}})
    first = scrape(collector)
    assert first.value("lockstep_gpu_lost", **GPU3) == 0
    assert first.value("lockstep_gpu_power_watts", **GPU3) is None
    [signal] = [s for s in collector.evidence().hard_signals if s.kind == "gpu_lost"]  # the second read
    assert signal.device == GPU3["uuid"] and "Unknown Error" in signal.detail
    fake_nvml.write({})
    assert scrape(collector).value("lockstep_gpu_lost", **GPU3) == 0


# -- the field batch: one nvmlDeviceGetFieldValues per GPU stands for the individual calls ----------------------

FAULTS = {
    "time_seconds": 100,  # frozen, so both scrapes see the same energy
    "gpus": {
        "3": {
            "ecc": {"volatile_corrected": 1, "volatile_uncorrected": 2, "aggregate_corrected": 3},
            "remapped_rows": {"correctable": 4, "uncorrectable": 5, "pending": True, "failure": True},
            "retired_pages": {"single_bit_ecc": 6, "double_bit_ecc": 7, "pending": True},
            "pcie": {"replay_counter": 8},
            "nvlink_down": [0, 17],
            "nvlink_errors": {"5": {"replay": 1, "recovery": 2, "crc_flit": 3, "crc_data": 4, "ecc_data": 5}},
            "power_limit_watts": 650,
        }
    },
}


def series_lines(result: Scrape) -> list[str]:
    return [line for line in result.text.splitlines() if not line.startswith("#")]


def test_the_field_batch_and_the_individual_calls_of_an_older_driver_give_the_same_metrics(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write(FAULTS)
    batched = scrape(make_collector())
    fake_nvml.write({**FAULTS, "errors": {"nvmlDeviceGetFieldValues": "FUNCTION_NOT_FOUND"}})
    unbatched = scrape(make_collector())
    assert batched.value("lockstep_gpu_nvlink_link_errors_total", link="5", counter="ecc_data", **GPU3) == 5
    assert batched.value("lockstep_gpu_nvlink_up", link="17", **GPU3) == 0
    assert batched.value("lockstep_gpu_remapped_rows", cause="uncorrectable", **GPU3) == 5
    # the HBM temperature exists only as a field; everything else comes from the individual calls unchanged
    memory_temperature = "lockstep_gpu_memory_temperature_celsius"
    assert len(batched.samples(memory_temperature)) == 8 and unbatched.samples(memory_temperature) == []
    without_it = [line for line in series_lines(batched) if memory_temperature not in line]
    assert without_it == series_lines(unbatched)


def test_after_the_first_read_a_scrape_calls_nvml_only_for_what_can_change_and_the_batch_does_not_answer(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    for name in (
        "nvmlDeviceGetNvLinkErrorCounter",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetTotalEccErrors",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMaxPcieLinkGeneration",
        "nvmlDeviceGetMaxPcieLinkWidth",
    ):
        real = getattr(pynvml, name)
        monkeypatch.setattr(pynvml, name, counted(real, calls))
    collector = make_collector()
    scrape(collector)  # the first read finds each GPU's links, identity, widest PCIe link and NVLink CRC counters
    assert calls["nvmlDeviceGetNvLinkErrorCounter"] == 8 * 18 * 3 and calls["nvmlDeviceGetUUID"] == 8
    calls.clear()
    scrape(collector)
    assert calls == Counter()  # identity and PCIe maximum kept, CRC and ECC data counters left to the refresh
    collector._backend.refresh_nvlink_errors()
    assert calls == Counter(nvmlDeviceGetNvLinkErrorCounter=8 * 18 * 3)  # CRC flit, CRC data, ECC data
    calls.clear()
    fake_nvml.write({"errors": {"nvmlDeviceGetFieldValues": "FUNCTION_NOT_FOUND"}})
    scrape(collector)
    assert calls == Counter(
        nvmlDeviceGetNvLinkErrorCounter=8 * 18 * 2,  # replay and recovery, which the batch would have answered
        nvmlDeviceGetNvLinkState=8 * 18,
        nvmlDeviceGetTotalEccErrors=8 * 4,
    )


def test_nvlink_crc_and_ecc_data_counters_are_refreshed_in_the_background_and_batched_ones_on_every_scrape(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector(start=True, nvlink_error_interval_seconds=0.2)
    scrape(collector)
    fake_nvml.write({"gpus": {"3": {"nvlink_errors": {"5": {"replay": 2, "crc_flit": 7, "ecc_data": 1}}}}})
    assert scrape(collector).value("lockstep_gpu_nvlink_link_errors_total", link="5", counter="replay", **GPU3) == 2
    refreshed = wait_until(
        lambda: scrape(collector).value(
            "lockstep_gpu_nvlink_link_errors_total", link="5", counter="crc_flit", **GPU3
        ),
        what="the background refresh to read the CRC flit counter",
    )
    assert refreshed == 7
    assert scrape(collector).value("lockstep_gpu_nvlink_errors_total", counter="ecc_data", **GPU3) == 1


def test_a_gpu_lost_and_back_is_identified_afresh(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUUID", counted(pynvml.nvmlDeviceGetUUID, calls))
    collector = make_collector()
    scrape(collector)
    fake_nvml.write({"gpus": {"3": {"lost": True}}})
    assert scrape(collector).value("lockstep_gpu_lost", **GPU3) == 1
    fake_nvml.write({})
    calls.clear()
    assert scrape(collector).value("lockstep_gpu_lost", **GPU3) == 0
    assert calls == Counter(nvmlDeviceGetUUID=1)


def counted(function: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        calls[function.__name__] += 1
        return function(*args)

    call.__name__ = function.__name__
    return call


def test_a_field_the_gpu_does_not_support_leaves_its_samples_out_and_is_logged_once_not_counted(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector], caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml.write(
        {"gpus": {"3": {"not_supported": ["nvmlDeviceGetTotalEccErrors", "nvmlDeviceGetNvLinkErrorCounter"]}}}
    )
    collector = make_collector()
    with caplog.at_level(logging.DEBUG, logger="agent.backends.nvml"):
        scrape(collector)
        result = scrape(collector)
    assert result.samples("lockstep_gpu_ecc_errors_total", **GPU3) == []
    assert len(result.samples("lockstep_gpu_ecc_errors_total")) == 7 * 4
    assert result.samples("lockstep_gpu_nvlink_errors_total", **GPU3) == []
    assert len(result.samples("lockstep_gpu_nvlink_up", **GPU3)) == 18
    assert result.samples("lockstep_nvml_call_errors_total") == []
    gaps = [r.getMessage().split(" ")[0] for r in caplog.records if "leaving the field out" in r.getMessage()]
    assert sorted(gaps) == ["nvmlDeviceGetNvLinkErrorCounter", "nvmlDeviceGetTotalEccErrors"]


def test_an_error_in_a_batched_field_leaves_it_out_and_is_counted_under_its_call(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetRemappedRows": "UNKNOWN"}}}})
    collector = make_collector()
    scrape(collector)
    result = scrape(collector)
    assert result.samples("lockstep_gpu_remapped_rows", **GPU3) == []
    assert len(result.samples("lockstep_gpu_remapped_rows", cause="correctable")) == 7
    assert (
        result.value("lockstep_nvml_call_errors_total", function="nvmlDeviceGetRemappedRows", error="Unknown")
        == 2
    )


def test_a_batched_field_that_finds_the_gpu_lost_makes_the_gpu_lost(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    fake_nvml.write({"gpus": {"3": {"errors": {"nvmlDeviceGetNvLinkErrorCounter": "GPU_IS_LOST"}}}})
    collector = make_collector()
    result = scrape(collector)
    assert result.value("lockstep_gpu_lost", **GPU3) == 1
    assert result.value("lockstep_gpu_lost", gpu="2") == 0
    [signal] = [s for s in collector.evidence().hard_signals if s.kind == "gpu_lost"]
    assert signal.device == GPU3["uuid"] and "GPU is lost" in signal.detail
