"""Contract tests: the fake NVML behaves as nvml.h documents, so what passes here holds on a real driver.

Struct layouts and constants are compared between the real header (compiled with gcc) and pynvml's ctypes view;
return codes, units and formats are checked through pynvml and raw ctypes calls in a fresh process that finds the
fake by soname through LD_LIBRARY_PATH, as an agent in the demo does.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pynvml
import pytest

from tests.agent.nvml.conftest import REPO, FakeNvmlConfig

LAYOUT_PROGRAM = r"""
#include <nvml.h>
#include <stddef.h>
#include <stdio.h>
#define SIZE(t) printf("\"sizeof %s\": %zu,\n", #t, sizeof(t))
#define OFFSET(t, f) printf("\"offsetof %s.%s\": %zu,\n", #t, #f, offsetof(t, f))
#define CONSTANT(c) printf("\"%s\": %lld,\n", #c, (long long)(c))
int main(void) {
    printf("{\n");
    SIZE(nvmlPciInfo_t); OFFSET(nvmlPciInfo_t, bus); OFFSET(nvmlPciInfo_t, pciDeviceId); OFFSET(nvmlPciInfo_t, busId);
    SIZE(nvmlMemory_t); OFFSET(nvmlMemory_t, free); OFFSET(nvmlMemory_t, used);
    SIZE(nvmlUtilization_t); OFFSET(nvmlUtilization_t, memory);
    SIZE(nvmlEventData_t); OFFSET(nvmlEventData_t, eventType); OFFSET(nvmlEventData_t, eventData);
    OFFSET(nvmlEventData_t, gpuInstanceId); OFFSET(nvmlEventData_t, computeInstanceId);
    SIZE(nvmlFieldValue_t); OFFSET(nvmlFieldValue_t, valueType); OFFSET(nvmlFieldValue_t, nvmlReturn);
    OFFSET(nvmlFieldValue_t, value);
    SIZE(nvmlTemperature_t); OFFSET(nvmlTemperature_t, temperature);
    CONSTANT(NVML_ERROR_NOT_SUPPORTED); CONSTANT(NVML_ERROR_FUNCTION_NOT_FOUND); CONSTANT(NVML_ERROR_GPU_IS_LOST);
    CONSTANT(NVML_ERROR_TIMEOUT); CONSTANT(NVML_ERROR_LIBRARY_NOT_FOUND); CONSTANT(NVML_ERROR_DRIVER_NOT_LOADED);
    CONSTANT(nvmlEventTypeXidCriticalError); CONSTANT(NVML_FI_DEV_MEMORY_TEMP); CONSTANT(nvmlTemperature_v1);
    CONSTANT(nvmlClocksEventReasonSwPowerCap); CONSTANT(nvmlClocksThrottleReasonHwSlowdown);
    CONSTANT(nvmlClocksEventReasonSwThermalSlowdown); CONSTANT(nvmlClocksThrottleReasonHwThermalSlowdown);
    CONSTANT(nvmlClocksThrottleReasonHwPowerBrakeSlowdown); CONSTANT(NVML_NVLINK_MAX_LINKS);
    CONSTANT(NVML_NVLINK_ERROR_DL_CRC_FLIT); CONSTANT(NVML_PCIE_UTIL_RX_BYTES); CONSTANT(NVML_CLOCK_MEM);
    printf("\"end\": 0\n}\n");
    return 0;
}
"""


@pytest.fixture(scope="module")
def header_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Sizes, offsets and constants as the real nvml.h defines them (what the fake is compiled with)."""
    files = importlib.metadata.distribution("nvidia-nvml-dev").files or []
    [header] = [f for f in files if f.name == "nvml.h"]
    work = tmp_path_factory.mktemp("layout")
    (work / "layout.c").write_text(LAYOUT_PROGRAM)
    include = Path(str(header.locate())).parent
    subprocess.run(
        [
            "gcc",
            "-Wno-deprecated-declarations",
            f"-I{include}",
            "-o",
            str(work / "layout"),
            str(work / "layout.c"),
        ],
        check=True,
        timeout=120,
    )
    return json.loads(
        subprocess.run([str(work / "layout")], check=True, capture_output=True, text=True).stdout
    )


PYNVML_STRUCTS = {
    "nvmlPciInfo_t": pynvml.nvmlPciInfo_t,
    "nvmlMemory_t": pynvml.c_nvmlMemory_t,
    "nvmlUtilization_t": pynvml.c_nvmlUtilization_t,
    "nvmlEventData_t": pynvml.c_nvmlEventData_t,
    "nvmlFieldValue_t": pynvml.c_nvmlFieldValue_t,
    "nvmlTemperature_t": pynvml.c_nvmlTemperature_v1_t,
}


def test_the_header_and_pynvml_agree_on_every_struct_the_fake_fills(header_layout: dict[str, int]) -> None:
    checked = 0
    for key, value in header_layout.items():
        if key.startswith("sizeof "):
            assert ctypes.sizeof(PYNVML_STRUCTS[key.removeprefix("sizeof ")]) == value, key
            checked += 1
        elif key.startswith("offsetof "):
            struct, field = key.removeprefix("offsetof ").split(".")
            assert getattr(PYNVML_STRUCTS[struct], field).offset == value, key
            checked += 1
    assert checked == 20


def test_the_header_and_pynvml_agree_on_the_constants_the_agent_relies_on(
    header_layout: dict[str, int],
) -> None:
    constants = {
        k: v for k, v in header_layout.items() if not k.startswith(("sizeof ", "offsetof ")) and k != "end"
    }
    assert len(constants) == 18
    for name, value in constants.items():
        assert getattr(pynvml, name) == value, name


# The start of each probe script (run as PROBE_PRELUDE + probe): pynvml, and configure() to replace the fake's
# config file atomically.
PROBE_PRELUDE = r"""
import ctypes, json, os, sys, threading, time
import pynvml as n

config = os.environ["FAKE_NVML_CONFIG"]
def configure(doc):
    with open(config + ".partial", "w") as f:
        json.dump(doc, f)
    os.replace(config + ".partial", config)
"""

PROBE = r"""
def code(call, *args):
    try:
        call(*args)
        return 0
    except n.NVMLError as error:
        return error.value

seen = {}
configure({})
n.nvmlInit()
lib = n.nvmlLib
seen["library"] = lib._name
h = n.nvmlDeviceGetHandleByIndex(2)
pci = n.nvmlDeviceGetPciInfo(h)
seen["pci"] = [pci.domain, pci.bus, pci.device, pci.busId, pci.busIdLegacy, pci.pciDeviceId]
seen["uuid"] = n.nvmlDeviceGetUUID(h)
seen["name"] = n.nvmlDeviceGetName(h)
seen["power_mw"] = n.nvmlDeviceGetPowerUsage(h)
seen["limit_mw"] = n.nvmlDeviceGetEnforcedPowerLimit(h)
seen["sm_mhz"] = n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)
energy = n.nvmlDeviceGetTotalEnergyConsumption(h)
time.sleep(0.2)
seen["energy_mj"] = [energy, n.nvmlDeviceGetTotalEnergyConsumption(h)]
seen["index_past_the_end"] = code(n.nvmlDeviceGetHandleByIndex, 8)
seen["nvlink_past_the_last"] = code(n.nvmlDeviceGetNvLinkState, h, 18)
small = ctypes.create_string_buffer(4)
seen["name_in_a_small_buffer"] = lib.nvmlDeviceGetName(h, small, ctypes.c_uint(4))
seen["null_output"] = lib.nvmlDeviceGetPowerUsage(h, None)
wrong_version = n.c_nvmlTemperature_v1_t()
wrong_version.version = 0
seen["temperature_wrong_version"] = lib.nvmlDeviceGetTemperatureV(h, ctypes.byref(wrong_version))
fields = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_MEMORY_TEMP, 999])
seen["fields"] = [[f.nvmlReturn, f.valueType, f.value.uiVal] for f in fields]
started = time.monotonic()
n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES)
seen["pcie_throughput_seconds"] = time.monotonic() - started
lib.nvmlErrorString.restype = ctypes.c_char_p
seen["error_strings"] = {str(c): lib.nvmlErrorString(c).decode() for c in n.NVMLError._errcode_to_string}


# each field stands for an individual call: the same value, and that call's injected errors per field
def field_values(ids):
    return [[f.nvmlReturn, f.value.uiVal if f.valueType == n.NVML_VALUE_TYPE_UNSIGNED_INT else f.value.ullVal]
            for f in n.nvmlDeviceGetFieldValues(h, ids)]

configure({"time_seconds": 100, "gpus": {"2": {
    "ecc": {"volatile_corrected": 1, "volatile_uncorrected": 2, "aggregate_corrected": 3, "aggregate_uncorrected": 4},
    "retired_pages": {"single_bit_ecc": 5, "double_bit_ecc": 6, "pending": True},
    "remapped_rows": {"correctable": 7, "uncorrectable": 8, "failure": True}, "pcie": {"replay_counter": 9},
    "power_limit_watts": 650, "nvlink_down": [17],
    "nvlink_errors": {"17": {"replay": 10, "recovery": 11, "crc_flit": 12, "crc_data": 13, "ecc_data": 14}}}}})
link_fields = [n.NVML_FI_DEV_NVLINK_GET_STATE, n.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY,
               n.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY]
device_fields = [n.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, n.NVML_FI_DEV_POWER_CURRENT_LIMIT,
                 n.NVML_FI_DEV_ECC_SBE_VOL_TOTAL, n.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, n.NVML_FI_DEV_ECC_SBE_AGG_TOTAL,
                 n.NVML_FI_DEV_ECC_DBE_AGG_TOTAL, n.NVML_FI_DEV_RETIRED_SBE, n.NVML_FI_DEV_RETIRED_DBE,
                 n.NVML_FI_DEV_RETIRED_PENDING, n.NVML_FI_DEV_REMAPPED_COR, n.NVML_FI_DEV_REMAPPED_UNC,
                 n.NVML_FI_DEV_REMAPPED_PENDING, n.NVML_FI_DEV_REMAPPED_FAILURE, n.NVML_FI_DEV_PCIE_REPLAY_COUNTER]
fields_asked = device_fields + [(f, link) for link in (16, 17) for f in link_fields]
seen["batched_fields"] = field_values(fields_asked)
seen["individual_calls"] = [
    n.nvmlDeviceGetTotalEnergyConsumption(h), n.nvmlDeviceGetEnforcedPowerLimit(h),
    *[n.nvmlDeviceGetTotalEccErrors(h, e, c) for c in (n.NVML_VOLATILE_ECC, n.NVML_AGGREGATE_ECC)
      for e in (n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)],
    len(n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)),
    len(n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)),
    n.nvmlDeviceGetRetiredPagesPendingStatus(h), *n.nvmlDeviceGetRemappedRows(h), n.nvmlDeviceGetPcieReplayCounter(h),
    *[v for link in (16, 17) for v in [n.nvmlDeviceGetNvLinkState(h, link)]
      + [n.nvmlDeviceGetNvLinkErrorCounter(h, link, c) for c in range(2)]],
]
seen["field_link_past_the_last"] = field_values([(n.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY, 18)])[0][0]
configure({"gpus": {"2": {"not_supported": ["nvmlDeviceGetTotalEccErrors"],
                          "errors": {"nvmlDeviceGetNvLinkErrorCounter": "GPU_IS_LOST"}}}})
seen["fields_with_injected_errors"] = [r for r, _ in field_values(
    [n.NVML_FI_DEV_ECC_DBE_VOL_TOTAL, (n.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY, 3), (n.NVML_FI_DEV_NVLINK_GET_STATE, 3),
     n.NVML_FI_DEV_PCIE_REPLAY_COUNTER])]

# retired pages: a size query first, as the header describes
configure({"gpus": {"2": {"retired_pages": {"double_bit_ecc": 3}}}})
count = ctypes.c_uint(0)
seen["retired_size_query"] = [lib.nvmlDeviceGetRetiredPages(h, 1, ctypes.byref(count), None), count.value]
seen["retired_pages"] = len(n.nvmlDeviceGetRetiredPages(h, 1))

# events
s = n.nvmlEventSetCreate()
seen["register_unsupported_type"] = code(n.nvmlDeviceRegisterEvents, h, 1 << 40, s)
n.nvmlDeviceRegisterEvents(h, n.nvmlEventTypeXidCriticalError, s)
started = time.monotonic()
seen["wait_without_events"] = code(n.nvmlEventSetWait, s, 300)
seen["waited_seconds"] = time.monotonic() - started
configure({"gpus": {"2": {"xid": [79]}}})
event = n.nvmlEventSetWait(s, 5000)
seen["event"] = [event.eventType, event.eventData, event.gpuInstanceId, event.computeInstanceId,
                 n.nvmlDeviceGetUUID(event.device)]

# a GPU that falls off the bus
configure({"gpus": {"2": {"xid": [79], "lost": True}}})
seen["lost_handle"] = code(n.nvmlDeviceGetHandleByIndex, 2)
seen["lost_old_handle"] = code(n.nvmlDeviceGetPowerUsage, h)
seen["lost_wait"] = code(n.nvmlEventSetWait, s, 100)
seen["count_with_lost_gpu"] = n.nvmlDeviceGetCount()
n.nvmlEventSetFree(s)

# a broken config is reported and the last good one stays
with open(config, "w") as f:
    f.write('{"gpus": {"2": {"lost": tru')
seen["after_broken_config"] = code(n.nvmlDeviceGetHandleByIndex, 2)
configure({"gpus": {"2": {"lots": True}}})
seen["after_unknown_key"] = code(n.nvmlDeviceGetHandleByIndex, 2)

# refcounted init, as documented: calls fail only after the last nvmlShutdown
configure({})
n.nvmlInit()
n.nvmlShutdown()
seen["after_one_of_two_shutdowns"] = n.nvmlDeviceGetCount()
n.nvmlShutdown()
seen["after_last_shutdown"] = lib.nvmlDeviceGetCount_v2(ctypes.byref(ctypes.c_uint()))
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def probe(fake_nvml_library: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What pynvml sees from the fake in a fresh process that finds it through LD_LIBRARY_PATH."""
    config = FakeNvmlConfig(tmp_path_factory.mktemp("probe") / "fake-nvml.json")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LD_LIBRARY_PATH": str(fake_nvml_library.parent),
        "FAKE_NVML_CONFIG": str(config.path),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE_PRELUDE + PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, Any] = json.loads(done.stdout)
    seen["stderr"] = done.stderr
    return seen


def test_the_fake_is_found_by_soname_through_the_library_path(probe: dict[str, Any]) -> None:
    assert probe["library"] == "libnvidia-ml.so.1"


def test_pci_bus_ids_follow_the_header_formats(probe: dict[str, Any]) -> None:
    domain, bus, device, bus_id, legacy, device_id = probe["pci"]
    assert bus_id == f"{domain:08X}:{bus:02X}:{device:02X}.0"  # NVML_DEVICE_PCI_BUS_ID_FMT
    assert legacy == f"{domain:04X}:{bus:02X}:{device:02X}.0"  # NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT
    assert device_id & 0xFFFF == 0x10DE  # vendor NVIDIA in the low 16 bits


def test_identity_strings_fit_their_documented_buffers(probe: dict[str, Any]) -> None:
    assert (
        probe["uuid"].startswith("GPU-") and len(probe["uuid"]) + 1 <= pynvml.NVML_DEVICE_UUID_V2_BUFFER_SIZE
    )
    assert len(probe["name"]) + 1 <= pynvml.NVML_DEVICE_NAME_V2_BUFFER_SIZE
    assert probe["name_in_a_small_buffer"] == pynvml.NVML_ERROR_INSUFFICIENT_SIZE


def test_units_are_milliwatts_megahertz_and_millijoules_since_driver_load(probe: dict[str, Any]) -> None:
    assert 100_000 <= probe["power_mw"] <= probe["limit_mw"] == 700_000
    assert 1000 <= probe["sm_mhz"] <= 2100
    before, after = probe["energy_mj"]
    assert after > before  # draw over 0.2 s at ~550 W is ~110 J = 110,000 mJ
    assert 0.5 * 0.2 * probe["power_mw"] <= after - before <= 10 * probe["power_mw"]


def test_invalid_arguments_return_invalid_argument(probe: dict[str, Any]) -> None:
    assert probe["index_past_the_end"] == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert probe["nvlink_past_the_last"] == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert probe["null_output"] == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_versioned_structs_check_their_version(probe: dict[str, Any]) -> None:
    assert probe["temperature_wrong_version"] == pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH


def test_each_batched_field_gives_the_value_of_the_call_it_stands_for(probe: dict[str, Any]) -> None:
    codes = [code for code, _ in probe["batched_fields"]]
    assert codes == [pynvml.NVML_SUCCESS] * len(codes)
    assert [value for _, value in probe["batched_fields"]] == probe["individual_calls"]
    assert probe["individual_calls"][1:14] == [650000, 1, 2, 3, 4, 5, 6, 1, 7, 8, 0, 1, 9]
    assert probe["field_link_past_the_last"] == pynvml.NVML_ERROR_INVALID_ARGUMENT


def test_a_batched_field_fails_as_the_call_it_stands_for_was_told_to(probe: dict[str, Any]) -> None:
    assert probe["fields_with_injected_errors"] == [
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_GPU_IS_LOST,
        pynvml.NVML_SUCCESS,
        pynvml.NVML_SUCCESS,
    ]


def test_field_values_report_status_per_field(probe: dict[str, Any]) -> None:
    memory_temperature, unknown = probe["fields"]
    assert (
        memory_temperature[0] == pynvml.NVML_SUCCESS
        and memory_temperature[1] == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    )
    assert 20 <= memory_temperature[2] <= 110
    assert unknown[0] == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_pcie_throughput_takes_its_documented_20_ms_sample(probe: dict[str, Any]) -> None:
    assert probe["pcie_throughput_seconds"] >= 0.02


def test_error_strings_are_the_ones_pynvml_knows(probe: dict[str, Any]) -> None:
    for code, text in probe["error_strings"].items():
        assert text == pynvml.NVMLError._errcode_to_string[int(code)], code


def test_retired_pages_answer_a_size_query_with_insufficient_size(probe: dict[str, Any]) -> None:
    assert probe["retired_size_query"] == [pynvml.NVML_ERROR_INSUFFICIENT_SIZE, 3]
    assert probe["retired_pages"] == 3


def test_event_waits_time_out_with_nvml_error_timeout(probe: dict[str, Any]) -> None:
    assert probe["wait_without_events"] == pynvml.NVML_ERROR_TIMEOUT
    assert probe["waited_seconds"] >= 0.25
    assert probe["register_unsupported_type"] == pynvml.NVML_ERROR_NOT_SUPPORTED


def test_an_xid_event_carries_its_code_and_device_as_documented(probe: dict[str, Any]) -> None:
    event_type, data, gpu_instance, compute_instance, uuid = probe["event"]
    assert event_type == pynvml.nvmlEventTypeXidCriticalError
    assert data == 79
    assert gpu_instance == compute_instance == 0xFFFFFFFF  # not MIG
    assert uuid == probe["uuid"]


def test_a_lost_gpu_answers_gpu_is_lost_everywhere_but_is_still_counted(probe: dict[str, Any]) -> None:
    assert probe["lost_handle"] == pynvml.NVML_ERROR_GPU_IS_LOST
    assert probe["lost_old_handle"] == pynvml.NVML_ERROR_GPU_IS_LOST
    assert probe["lost_wait"] == pynvml.NVML_ERROR_GPU_IS_LOST
    assert probe["count_with_lost_gpu"] == 8


def test_a_broken_config_is_reported_and_the_last_good_one_stays_in_force(probe: dict[str, Any]) -> None:
    assert probe["after_broken_config"] == pynvml.NVML_ERROR_GPU_IS_LOST
    assert probe["after_unknown_key"] == pynvml.NVML_ERROR_GPU_IS_LOST
    assert "offset" in probe["stderr"] and "keeping the previous config" in probe["stderr"]
    assert "unknown key 'lots'" in probe["stderr"]


def test_init_is_reference_counted(probe: dict[str, Any]) -> None:
    assert probe["after_one_of_two_shutdowns"] == 8
    assert probe["after_last_shutdown"] == pynvml.NVML_ERROR_UNINITIALIZED


WAIT_PROBE = r"""
configure({})
n.nvmlInit()
s = n.nvmlEventSetCreate()
n.nvmlDeviceRegisterEvents(n.nvmlDeviceGetHandleByIndex(2), n.nvmlEventTypeXidCriticalError, s)
threading.Timer(0.3, configure, [{"gpus": {"2": {"xid": [48]}}}]).start()
started = time.monotonic()
event = n.nvmlEventSetWait(s, 30000)
print(json.dumps({"xid": event.eventData, "waited_seconds": time.monotonic() - started}))
"""
# Makes inotify unavailable to the process it is preloaded into, as a kernel without it or out of instances would.
NO_INOTIFY = "#include <errno.h>\nint inotify_init1(int flags) { (void)flags; errno = EMFILE; return -1; }\n"


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "without-inotify"])
def test_an_xid_written_while_a_wait_blocks_ends_that_wait_long_before_its_timeout(
    inotify: bool, fake_nvml_library: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(fake_nvml_library.parent),
        "FAKE_NVML_CONFIG": str(tmp_path / "fake-nvml.json"),
    }
    if not inotify:
        (tmp_path / "no_inotify.c").write_text(NO_INOTIFY)
        preload = tmp_path / "no_inotify.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", preload, tmp_path / "no_inotify.c"], check=True)
        env["LD_PRELOAD"] = str(preload)
    done = subprocess.run(
        [sys.executable, "-c", PROBE_PRELUDE + WAIT_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["xid"] == 48
    assert seen["waited_seconds"] < 10  # the XID came 0.3 s in; the wait's timeout is 30 s
