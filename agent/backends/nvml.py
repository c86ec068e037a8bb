"""The only code that talks to NVML: pynvml calls in, one plain snapshot per GPU and XID events out.

`agent/collectors/nvml.py` turns these into metrics and evidence. NVML's return codes become data here:
NotSupported / FunctionNotFound -> the field is None (logged once at debug per GPU and call); GPU_IS_LOST, or no
handle for an index -> `GpuSnapshot.lost_reason`; a missing library or a failed nvmlInit -> `NvmlUnavailable`;
any other error -> the field is None and the error is counted in `call_errors()`. What NVML also offers as a field
is read with one nvmlDeviceGetFieldValues per GPU (`_FieldBatch`); a field the batch does not answer is read with
its own call, so the return codes above mean the same with or without the batch.

Not every value is asked for on every read (on real GPUs a call costs 10 us to 1 ms; the fake answers in ~2 us).
Kept while the GPU stays reachable, since they cannot change while the driver runs: a GPU's identity (uuid, name, PCI
bus id: 3 calls) and its maximum PCIe generation and width (2 calls). Read off the scrape path, every few seconds by
the collector's background thread (`refresh_nvlink_errors`): the NVLink CRC flit, CRC data and ECC data counters,
which NVML has no per-link field for (3 calls per link: 54 of the ~70 calls per H100). They are no hard-fault
evidence (an NVLink going down is its state, read every time), only rates for dashboards. Everything that signals a
fault (XIDs, ECC, row remaps, retired pages, throttling, current PCIe link, NVLink state, a lost GPU) is read on
every read. A GPU found lost, and an nvmlShutdown, forget what was kept.

Loading: pynvml opens "libnvidia-ml.so.1" by soname. With `library_path` the backend loads that file first
(ctypes.CDLL); the dynamic loader then answers pynvml's soname lookup with the library already loaded, so tests
and the demo point an agent at the fake NVML without LD_LIBRARY_PATH. A process keeps the first NVML it loaded.

Threads: NVML is thread-safe. `_lock` guards nvmlInit/nvmlShutdown and this object's caches; the XID wait runs
under `_event_lock` only, and the slow PCIe throughput sampling (20 ms per call) runs under neither, so neither
stalls a scrape.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pynvml

log = logging.getLogger(__name__)

T = TypeVar("T")

# Return codes that mean "this GPU or driver does not have it": leave the field out.
_ABSENT = frozenset({pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})

ECC_ERROR_TYPES = (
    ("corrected", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
    ("uncorrected", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
)
ECC_COUNTER_TYPES = (("volatile", pynvml.NVML_VOLATILE_ECC), ("aggregate", pynvml.NVML_AGGREGATE_ECC))
RETIREMENT_CAUSES = (
    ("single_bit_ecc", pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
    ("double_bit_ecc", pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
)
NVLINK_COUNTERS = (
    ("replay", pynvml.NVML_NVLINK_ERROR_DL_REPLAY),
    ("recovery", pynvml.NVML_NVLINK_ERROR_DL_RECOVERY),
    ("crc_flit", pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT),
    ("crc_data", pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA),
    ("ecc_data", pynvml.NVML_NVLINK_ERROR_DL_ECC_DATA),
)
CLOCK_EVENT_REASONS = (  # name -> nvmlClocksEventReason* bit
    ("gpu_idle", pynvml.nvmlClocksEventReasonGpuIdle),
    ("applications_clocks_setting", pynvml.nvmlClocksEventReasonApplicationsClocksSetting),
    ("sw_power_cap", pynvml.nvmlClocksEventReasonSwPowerCap),
    ("hw_slowdown", pynvml.nvmlClocksEventReasonHwSlowdown),
    ("sync_boost", pynvml.nvmlClocksEventReasonSyncBoost),
    ("sw_thermal_slowdown", pynvml.nvmlClocksEventReasonSwThermalSlowdown),
    ("hw_thermal_slowdown", pynvml.nvmlClocksEventReasonHwThermalSlowdown),
    ("hw_power_brake_slowdown", pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown),
    ("display_clock_setting", pynvml.nvmlClocksEventReasonDisplayClockSetting),
)
# Fields read with one nvmlDeviceGetFieldValues call per GPU instead of one call each (nvml.h NVML_FI_DEV_*). A field
# the driver does not answer falls back to the individual call, which then reports its own NotSupported or error.
ECC_FIELDS = {
    ("corrected", "volatile"): pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL,
    ("uncorrected", "volatile"): pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL,
    ("corrected", "aggregate"): pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL,
    ("uncorrected", "aggregate"): pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL,
}
RETIREMENT_FIELDS = {
    "single_bit_ecc": pynvml.NVML_FI_DEV_RETIRED_SBE,
    "double_bit_ecc": pynvml.NVML_FI_DEV_RETIRED_DBE,
}
REMAPPED_ROWS_FIELDS = (  # in nvmlDeviceGetRemappedRows' order: correctable, uncorrectable, pending, failure
    pynvml.NVML_FI_DEV_REMAPPED_COR,
    pynvml.NVML_FI_DEV_REMAPPED_UNC,
    pynvml.NVML_FI_DEV_REMAPPED_PENDING,
    pynvml.NVML_FI_DEV_REMAPPED_FAILURE,
)
DEVICE_FIELDS = (
    pynvml.NVML_FI_DEV_MEMORY_TEMP,
    pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
    pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT,
    *ECC_FIELDS.values(),
    *RETIREMENT_FIELDS.values(),
    pynvml.NVML_FI_DEV_RETIRED_PENDING,
    *REMAPPED_ROWS_FIELDS,
    pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER,
)
# NVLINK_COUNTERS name -> field with the link as scopeId. Only the two nvml.h documents per link: its CRC flit, CRC
# data and ECC data fields are "_TOTAL ... for all Lanes/Links" or per lane, so those counters keep their own call
# (nvmlDeviceGetNvLinkErrorCounter) rather than risk one link showing another's errors.
NVLINK_COUNTER_FIELDS = {
    "replay": pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY,
    "recovery": pynvml.NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY,
}
NVLINK_COUNTERS_BATCHED = tuple(
    (name, NVLINK_COUNTER_FIELDS[name], c) for name, c in NVLINK_COUNTERS if name in NVLINK_COUNTER_FIELDS
)
NVLINK_COUNTERS_BY_CALL = tuple((name, c) for name, c in NVLINK_COUNTERS if name not in NVLINK_COUNTER_FIELDS)
_NVLINK_STATES_ACTIVE = {  # NVML_FI_DEV_NVLINK_GET_STATE values that nvmlDeviceGetNvLinkState surely reports alike
    pynvml.NVML_NVLINK_STATE_ACTIVE: True,
    pynvml.NVML_NVLINK_STATE_INACTIVE: False,
}
# nvmlFieldValue_t (40 bytes): fieldId, scopeId, timestamp, latencyUsec (skipped), valueType, nvmlReturn, value (an
# 8-byte union, read as its unsigned members: NVML's platforms are all little-endian, so uiVal is the low 32 bits).
_FIELD_VALUE = "24xIIQ"
_FIELD_VALUE_MASKS = {  # valueType -> mask of its bits in the union; other types fall back to the individual call
    pynvml.NVML_VALUE_TYPE_UNSIGNED_INT: 0xFFFFFFFF,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG: 0xFFFFFFFFFFFFFFFF,
    pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: 0xFFFFFFFFFFFFFFFF,
}
_EVENT_SET_REBUILD_SECONDS = 30.0  # how often to retry registering a reachable GPU the event set lacks
_NVLINK_REDISCOVER_SECONDS = 300.0  # how often to look again for NVLinks on a GPU that showed none
_HANDLE_ERRORS_BEFORE_LOST = (
    2  # reads in a row without a handle (other than GPU_IS_LOST) that make a GPU lost
)
_KIB = 1024  # nvmlDeviceGetPcieThroughput reports KB/s with 1 KB granularity
_MHZ = 1e6


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used on this node: library missing, driver not loaded, nvmlInit or the device count failed."""


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    uuid: str
    model: str = ""
    pci_bus_id: str = ""


@dataclass(frozen=True)
class NvLinkSnapshot:
    link: int
    active: bool | None
    errors: Mapping[str, int] = field(default_factory=dict)  # NVLINK_COUNTERS name -> count since driver load


@dataclass(frozen=True)
class GpuSnapshot:
    """What NVML said about one GPU in one read; None = NVML does not support that field on this GPU."""

    identity: GpuIdentity
    lost_reason: str = ""  # non-empty: NVML cannot reach the GPU (GPU_IS_LOST, or no handle for its index)
    utilization_ratio: float | None = None
    memory_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_celsius: float | None = None
    memory_temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # since the driver was loaded
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    clock_event_reasons: int | None = None  # nvmlClocksEventReason* bit mask
    # (corrected|uncorrected, volatile|aggregate) -> count
    ecc_errors: Mapping[tuple[str, str], int] = field(default_factory=dict)
    retired_pages: Mapping[str, int] = field(default_factory=dict)  # RETIREMENT_CAUSES name -> pages
    retired_pages_pending: bool | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    pcie_link_generation: int | None = None
    pcie_link_max_generation: int | None = None
    pcie_link_width: int | None = None
    pcie_link_max_width: int | None = None
    pcie_replays: int | None = None
    nvlinks: tuple[NvLinkSnapshot, ...] = ()

    @property
    def lost(self) -> bool:
        return bool(self.lost_reason)


@dataclass(frozen=True)
class PcieThroughput:
    tx_bytes_per_second: float | None
    rx_bytes_per_second: float | None


@dataclass(frozen=True)
class XidEvent:
    gpu: GpuIdentity
    code: int
    at: float  # Unix s when the agent received it


class GpuBackend(Protocol):
    """What the NVML collector needs from a GPU library."""

    def read(self) -> list[GpuSnapshot]:
        """One snapshot per GPU NVML enumerates now; raises NvmlUnavailable."""
        ...

    def read_pcie_throughput(self) -> dict[str, PcieThroughput]:
        """PCIe throughput by GPU uuid; slow (NVML samples each counter for 20 ms): call off the scrape path."""
        ...

    def refresh_nvlink_errors(self) -> None:
        """Read the NVLink error counters `read` takes as last refreshed; call off the scrape path."""
        ...

    def listen_for_xids(self) -> bool:
        """Register every reachable GPU for XID events now (NVML does not keep an XID that happens before); False
        if that is not possible yet. Raises NvmlUnavailable."""
        ...

    def wait_for_xid(self, timeout_seconds: float) -> XidEvent | None:
        """The next XID event, or None after about timeout_seconds; raises NvmlUnavailable."""
        ...

    def call_errors(self) -> dict[tuple[str, str], int]:
        """Unexpected NVML errors so far, by (function, error)."""
        ...

    def driver_version(self) -> str:
        """The NVIDIA driver version, "" if NVML does not say; raises NvmlUnavailable."""
        ...

    def close(self) -> None: ...


class _GpuLost(Exception):
    """A call on this GPU returned NVML_ERROR_GPU_IS_LOST."""


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _error_name(error: pynvml.NVMLError) -> str:
    return type(error).__name__.removeprefix("NVMLError_") or str(error.value)


def _handle_key(handle: Any) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


class _FieldBatch:
    """One GPU's nvmlDeviceGetFieldValues request: DEVICE_FIELDS, then per NVLink its state and error counters.
    The link fields (18 links x 6 on an H100, most of the batch) rarely change: while their raw answers stay the
    same, `read` returns the same link dict object, so what is derived from it can be reused (see `_read_nvlinks`).

    The request array is built once and reused, and the answers are decoded with one struct unpack: pynvml's
    wrapper fills the array on every call and the values read through ctypes attributes cost more per field than
    the individual call they save (benchmarks/nvml_collector.py). Not thread-safe: the backend reads under its
    lock."""

    def __init__(self, links: tuple[int, ...]) -> None:
        per_link = (pynvml.NVML_FI_DEV_NVLINK_GET_STATE, *NVLINK_COUNTER_FIELDS.values())
        self.links = links
        self.request = tuple((field_id, 0) for field_id in DEVICE_FIELDS) + tuple(
            (field_id, link) for link in links for field_id in per_link
        )
        self._device_words = 3 * len(DEVICE_FIELDS)  # value type, return code, value per field
        self._link_answers: tuple[int, ...] | None = None
        self._link_fields: dict[tuple[int, int], int] = {}
        self._values = (pynvml.c_nvmlFieldValue_t * len(self.request))()
        self._layout = struct.Struct("<" + _FIELD_VALUE * len(self.request))
        for value, (field_id, scope_id) in zip(self._values, self.request, strict=True):
            value.fieldId = field_id
            value.scopeId = scope_id

    def read(self, handle: Any) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
        """Answered device fields and link fields, by (field id, scope id); the link dict is the same object as
        last time while the links' answers are. Raises pynvml.NVMLError if the call fails, _GpuLost if a field
        says the GPU is lost."""
        if self._layout.size != ctypes.sizeof(self._values) or sys.byteorder != "little":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # a layout this decoder does not know
        function = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")  # raises FunctionNotFound
        returned = function(handle, ctypes.c_int32(len(self.request)), ctypes.byref(self._values))
        if returned != pynvml.NVML_SUCCESS:
            raise pynvml.NVMLError(returned)
        flat = self._layout.unpack_from(self._values)  # value type, return code, value; per field
        codes = flat[1::3]
        if pynvml.NVML_ERROR_GPU_IS_LOST in codes:
            key = self.request[codes.index(pynvml.NVML_ERROR_GPU_IS_LOST)]
            raise _GpuLost(f"nvmlDeviceGetFieldValues (field {key[0]}, scope {key[1]}): GPU is lost")
        device = self._decode(self.request[: len(DEVICE_FIELDS)], flat[: self._device_words])
        link_answers = flat[self._device_words :]
        if link_answers != self._link_answers:
            self._link_fields = self._decode(self.request[len(DEVICE_FIELDS) :], link_answers)
            self._link_answers = link_answers
        return device, self._link_fields

    @staticmethod
    def _decode(request: Sequence[tuple[int, int]], flat: Sequence[int]) -> dict[tuple[int, int], int]:
        return {
            key: raw & mask
            for key, value_type, code, raw in zip(request, flat[0::3], flat[1::3], flat[2::3], strict=True)
            if code == pynvml.NVML_SUCCESS and (mask := _FIELD_VALUE_MASKS.get(value_type))
        }


class NvmlBackend:
    """GpuBackend on pynvml. Lazily calls nvmlInit; after a failure it retries at most every init_retry_seconds."""

    def __init__(
        self,
        library_path: str = "",
        init_retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._library_path = library_path
        self._init_retry_seconds = init_retry_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.RLock()
        self._event_lock = threading.Lock()
        self._accounting_lock = threading.Lock()
        self._open = False
        self._failure = ""
        self._failed_at = 0.0
        self._driver_version = ""
        self._identities: dict[int, GpuIdentity] = {}  # last known identity by index, for GPUs lost later
        self._handle_failures: Counter[int] = Counter()  # index -> reads in a row without a handle
        self._no_permission_logged: set[int] = set()
        self._handles: dict[str, Any] = {}  # uuid -> handle of the GPUs reachable in the last read
        self._nvlinks: dict[str, tuple[tuple[int, ...], float]] = {}  # uuid -> (links that exist, when found)
        self._field_batches: dict[str, _FieldBatch] = {}  # uuid -> its nvmlDeviceGetFieldValues request
        # (handle address, index) -> identity
        self._identified: dict[tuple[int | None, int], GpuIdentity] = {}
        # (uuid, NVML function) -> its answer, which cannot change
        self._fixed: dict[tuple[str, str], int] = {}
        # uuid -> (links, per link its NVLINK_COUNTERS_BY_CALL by name) as last read by refresh_nvlink_errors
        self._nvlink_errors: dict[str, tuple[tuple[int, ...], dict[int, dict[str, int]]]] = {}
        # uuid -> (the batch's link answers, the counters read by call, the link snapshots made of them)
        self._nvlink_snapshots: dict[str, tuple[object, object, tuple[NvLinkSnapshot, ...]]] = {}
        self._absent_logged: set[tuple[str, str]] = set()
        self._errors_logged: set[tuple[str, str, str]] = set()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._event_set: Any = None
        self._event_gpus: dict[int | None, GpuIdentity] = {}  # handle address -> GPU, for the registered GPUs
        self._event_uuids: set[str] = set()  # GPUs registered in the event set
        self._event_set_built_at = 0.0
        self._event_set_failed_at: float | None = None
        self._event_problems: set[str] = set()  # problems with XID events logged so far

    # -- lifecycle --------------------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        """nvmlInit once; raise NvmlUnavailable (without retrying before init_retry_seconds) if it fails."""
        if self._open:
            return
        if self._failure and self._monotonic() - self._failed_at < self._init_retry_seconds:
            raise NvmlUnavailable(self._failure)
        try:
            if self._library_path:
                if not os.path.exists(self._library_path):
                    raise NvmlUnavailable(
                        f"NVML library {self._library_path} (nvml.library_path) does not exist"
                    )
                ctypes.CDLL(self._library_path)
            pynvml.nvmlInit()
        except (OSError, pynvml.NVMLError, NvmlUnavailable) as error:
            self._failure = self._describe_init_failure(error)
            self._failed_at = self._monotonic()
            raise NvmlUnavailable(self._failure) from error
        self._open = True
        self._failure = ""
        self._driver_version = _text(self._call("system", pynvml.nvmlSystemGetDriverVersion) or "")

    @staticmethod
    def _describe_init_failure(error: Exception) -> str:
        if isinstance(error, pynvml.NVMLError_LibraryNotFound):
            return "NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this node?)"
        if isinstance(error, pynvml.NVMLError_DriverNotLoaded):
            return "NVIDIA driver not loaded (nvmlInit: Driver Not Loaded)"
        if isinstance(error, pynvml.NVMLError):
            return f"nvmlInit failed: {error}"
        return str(error)

    def _give_up(self, reason: str) -> NvmlUnavailable:
        """NVML broke mid-session: shut it down so the next attempt starts with a fresh nvmlInit."""
        self._close_nvml()
        self._failure = reason
        self._failed_at = self._monotonic()
        return NvmlUnavailable(reason)

    def _close_nvml(self) -> None:
        self._free_event_set()
        self._identified.clear()  # handles may differ after the next nvmlInit
        self._fixed.clear()
        self._nvlink_errors.clear()
        self._nvlink_snapshots.clear()
        if self._open:
            self._open = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as error:
                log.debug("nvmlShutdown: %s", error)

    def close(self) -> None:
        with self._event_lock, self._lock:
            self._close_nvml()

    def driver_version(self) -> str:
        with self._lock:
            self._ensure_open()
            return self._driver_version

    # -- calls ------------------------------------------------------------------------------------------------

    def _call(
        self, gpu: str, function: Callable[..., T], *args: Any, fallback: Callable[..., T] | None = None
    ) -> T | None:
        """Call an NVML function; None when the GPU lacks it or it failed (counted). Raises _GpuLost."""
        try:
            return function(*args)
        except pynvml.NVMLError as error:
            name = function.__name__
            if error.value == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND and fallback is not None:
                return self._call(gpu, fallback, *args)
            if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost(f"{name}: GPU is lost") from error
            with self._accounting_lock:
                if error.value in _ABSENT:
                    self._log_absent_once(gpu, name, str(error))
                    return None
                self._errors[(name, _error_name(error))] += 1
                if (gpu, name, _error_name(error)) not in self._errors_logged:
                    self._errors_logged.add((gpu, name, _error_name(error)))
                    log.warning("%s on GPU %s failed: %s; leaving the field out (counted)", name, gpu, error)
            return None

    def _log_absent_once(self, gpu: str, what: str, why: str) -> None:
        """Debug-log a field this GPU lacks, once per GPU and call (callers hold _accounting_lock)."""
        if (gpu, what) not in self._absent_logged:
            self._absent_logged.add((gpu, what))
            log.debug("%s on GPU %s: %s; leaving the field out", what, gpu, why)

    def call_errors(self) -> dict[tuple[str, str], int]:
        with self._accounting_lock:
            return dict(self._errors)

    # -- snapshots --------------------------------------------------------------------------------------------

    def read(self) -> list[GpuSnapshot]:
        with self._lock:
            self._ensure_open()
            try:
                count = pynvml.nvmlDeviceGetCount()
            except pynvml.NVMLError as error:
                raise self._give_up(f"nvmlDeviceGetCount_v2 failed: {error}") from error
            read = [r for r in (self._read_gpu(index) for index in range(count)) if r is not None]
            for snapshot, _ in read:
                if snapshot.lost:
                    self._forget(snapshot.identity)
            self._handles = {
                snapshot.identity.uuid: handle for snapshot, handle in read if handle is not None
            }
            return [snapshot for snapshot, _ in read]

    def _identify(self, index: int) -> tuple[Any, GpuIdentity]:
        """Handle and identity of the GPU at index. Raises pynvml.NVMLError if there is no handle, _GpuLost if
        the GPU is lost; an identity field NVML cannot give is left empty (the uuid then reads "GPU <index>").
        A complete identity is kept for the handle (a GPU's, for the session) and index (shifted when a GPU
        before it vanishes); `_forget` drops it when the GPU is lost."""
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        key = (_handle_key(handle), index)
        known = self._identified.get(key)
        if known is not None:
            return handle, known
        gpu = f"GPU {index}"
        uuid = self._call(gpu, pynvml.nvmlDeviceGetUUID, handle)
        model = self._call(gpu, pynvml.nvmlDeviceGetName, handle)
        pci = self._call(gpu, pynvml.nvmlDeviceGetPciInfo, handle)
        identity = GpuIdentity(
            index=index,
            uuid=_text(uuid or ""),
            model=_text(model or ""),
            pci_bus_id="" if pci is None else _text(pci.busId),
        )
        if identity.uuid and identity.model and identity.pci_bus_id:
            self._identified[key] = identity
        return handle, identity

    def _forget(self, gpu: GpuIdentity) -> None:
        """Drop what is kept about a GPU found lost: if it comes back (reset), it is read afresh."""
        self._identified = {key: known for key, known in self._identified.items() if known.uuid != gpu.uuid}
        self._fixed = {key: value for key, value in self._fixed.items() if key[0] != gpu.uuid}
        self._nvlink_errors.pop(gpu.uuid, None)
        self._nvlink_snapshots.pop(gpu.uuid, None)

    def _read_gpu(self, index: int) -> tuple[GpuSnapshot, Any] | None:
        """The GPU's snapshot and handle (None if unreachable); None to leave out a GPU this agent may not see."""
        known = self._identities.get(index, GpuIdentity(index=index, uuid=""))
        try:
            handle, identity = self._identify(index)
        except pynvml.NVMLError as error:
            return self._no_handle(index, known, error)
        except _GpuLost as lost:
            return GpuSnapshot(identity=known, lost_reason=str(lost)), None
        self._handle_failures.pop(index, None)
        self._identities[index] = identity
        try:
            return self._read_fields(identity, handle), handle
        except _GpuLost as lost:
            return GpuSnapshot(identity=identity, lost_reason=str(lost)), None

    def _no_handle(
        self, index: int, known: GpuIdentity, error: pynvml.NVMLError
    ) -> tuple[GpuSnapshot, Any] | None:
        """No handle for a GPU NVML counts. NO_PERMISSION: not this agent's to see (nvmlDeviceGetCount_v2 counts
        GPUs the caller may not open), so left out, never "lost". GPU_IS_LOST: lost. Anything else: lost once it
        repeats, so one glitch does not make a lost GPU."""
        if error.value == pynvml.NVML_ERROR_NO_PERMISSION:
            if index not in self._no_permission_logged:
                self._no_permission_logged.add(index)
                log.info(
                    "GPU %d: no permission to open it (is its device in this container?); leaving it out",
                    index,
                )
            return None
        self._handle_failures[index] += 1
        if (
            error.value == pynvml.NVML_ERROR_GPU_IS_LOST
            or self._handle_failures[index] >= _HANDLE_ERRORS_BEFORE_LOST
        ):
            return GpuSnapshot(identity=known, lost_reason=f"no handle for GPU {index}: {error}"), None
        return GpuSnapshot(identity=known), None

    def _read_fields(self, gpu: GpuIdentity, handle: Any) -> GpuSnapshot:
        def call(
            function: Callable[..., T], *args: Any, fallback: Callable[..., T] | None = None
        ) -> T | None:
            return self._call(gpu.uuid, function, *args, fallback=fallback)

        def field(field_id: int, function: Callable[..., int], *args: Any) -> int | None:
            value = fields.get((field_id, 0))
            return value if value is not None else call(function, handle, *args)

        utilization = call(pynvml.nvmlDeviceGetUtilizationRates, handle)
        memory = call(pynvml.nvmlDeviceGetMemoryInfo, handle)
        temperature = call(
            pynvml.nvmlDeviceGetTemperatureV,
            handle,
            pynvml.NVML_TEMPERATURE_GPU,
            fallback=pynvml.nvmlDeviceGetTemperature,
        )
        links = self._nvlinks_of(gpu.uuid, handle)
        fields, link_fields = self._field_values(gpu.uuid, handle, links)
        memory_temperature: float | None = fields.get((pynvml.NVML_FI_DEV_MEMORY_TEMP, 0))
        if memory_temperature is None:
            memory_temperature = self._memory_temperature(gpu.uuid, handle)
        power_mw = call(pynvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = field(pynvml.NVML_FI_DEV_POWER_CURRENT_LIMIT, pynvml.nvmlDeviceGetEnforcedPowerLimit)
        energy_mj = field(
            pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, pynvml.nvmlDeviceGetTotalEnergyConsumption
        )
        sm_mhz = call(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_SM)
        memory_mhz = call(pynvml.nvmlDeviceGetClockInfo, handle, pynvml.NVML_CLOCK_MEM)
        reasons = call(
            pynvml.nvmlDeviceGetCurrentClocksEventReasons,
            handle,
            fallback=pynvml.nvmlDeviceGetCurrentClocksThrottleReasons,
        )
        ecc: dict[tuple[str, str], int] = {}
        for error_name, error_type in ECC_ERROR_TYPES:
            for counter_name, counter_type in ECC_COUNTER_TYPES:
                count = field(
                    ECC_FIELDS[(error_name, counter_name)],
                    pynvml.nvmlDeviceGetTotalEccErrors,
                    error_type,
                    counter_type,
                )
                if count is not None:
                    ecc[(error_name, counter_name)] = count
        retired: dict[str, int] = {}
        for cause_name, cause in RETIREMENT_CAUSES:
            pages = fields.get((RETIREMENT_FIELDS[cause_name], 0))
            if pages is None:
                addresses = call(pynvml.nvmlDeviceGetRetiredPages, handle, cause)
                pages = None if addresses is None else len(addresses)
            if pages is not None:
                retired[cause_name] = int(pages)
        pending_pages = field(
            pynvml.NVML_FI_DEV_RETIRED_PENDING, pynvml.nvmlDeviceGetRetiredPagesPendingStatus
        )
        remap: Sequence[int] | None
        if all((field_id, 0) in fields for field_id in REMAPPED_ROWS_FIELDS):
            remap = [fields[(field_id, 0)] for field_id in REMAPPED_ROWS_FIELDS]
        else:
            remap = call(pynvml.nvmlDeviceGetRemappedRows, handle)
        return GpuSnapshot(
            identity=gpu,
            utilization_ratio=None if utilization is None else utilization.gpu / 100.0,
            memory_utilization_ratio=None if utilization is None else utilization.memory / 100.0,
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_free_bytes=None if memory is None else int(memory.free),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_celsius=None if temperature is None else float(temperature),
            memory_temperature_celsius=None if memory_temperature is None else float(memory_temperature),
            power_watts=None if power_mw is None else power_mw / 1000.0,
            power_limit_watts=None if limit_mw is None else limit_mw / 1000.0,
            energy_joules=None if energy_mj is None else energy_mj / 1000.0,
            sm_clock_hertz=None if sm_mhz is None else sm_mhz * _MHZ,
            memory_clock_hertz=None if memory_mhz is None else memory_mhz * _MHZ,
            clock_event_reasons=None if reasons is None else int(reasons),
            ecc_errors=ecc,
            retired_pages=retired,
            retired_pages_pending=None
            if pending_pages is None
            else pending_pages == pynvml.NVML_FEATURE_ENABLED,
            remapped_rows_correctable=None if remap is None else int(remap[0]),
            remapped_rows_uncorrectable=None if remap is None else int(remap[1]),
            row_remap_pending=None if remap is None else bool(remap[2]),
            row_remap_failure=None if remap is None else bool(remap[3]),
            pcie_link_generation=call(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            pcie_link_max_generation=self._fixed_value(
                gpu.uuid, pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle
            ),
            pcie_link_width=call(pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            pcie_link_max_width=self._fixed_value(gpu.uuid, pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
            pcie_replays=field(pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER, pynvml.nvmlDeviceGetPcieReplayCounter),
            nvlinks=self._read_nvlinks(gpu.uuid, handle, links, link_fields),
        )

    def _fixed_value(self, gpu: str, function: Callable[[Any], int], handle: Any) -> int | None:
        """A value that cannot change while the driver runs (the PCIe link the GPU and system allow): asked until
        NVML answers it, then kept."""
        key = (gpu, function.__name__)
        value = self._fixed.get(key)
        if value is None:
            value = self._call(gpu, function, handle)
            if value is not None:
                self._fixed[key] = value
        return value

    def _field_values(
        self, gpu: str, handle: Any, links: tuple[int, ...]
    ) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
        """The device and link fields of the GPU's batch NVML answered, by (field id, scope id); empty when the
        call fails as a whole. Fields it did not answer are left out silently: their individual calls then say why,
        as without the batch. Raises _GpuLost."""
        batch = self._field_batches.get(gpu)
        if batch is None or batch.links != links:
            batch = self._field_batches[gpu] = _FieldBatch(links)
        try:
            return batch.read(handle)
        except pynvml.NVMLError as error:
            if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                raise _GpuLost("nvmlDeviceGetFieldValues: GPU is lost") from error
            with self._accounting_lock:
                if (gpu, "field batch") not in self._absent_logged:
                    self._absent_logged.add((gpu, "field batch"))
                    log.debug("nvmlDeviceGetFieldValues on GPU %s: %s; one call per field", gpu, error)
            return {}, {}

    def _memory_temperature(self, gpu: str, handle: Any) -> float | None:
        """HBM temperature: NVML has it only as field NVML_FI_DEV_MEMORY_TEMP (nvmlDeviceGetFieldValues)."""
        values = self._call(gpu, pynvml.nvmlDeviceGetFieldValues, handle, [pynvml.NVML_FI_DEV_MEMORY_TEMP])
        if values is None:
            return None
        value = values[0]
        if value.nvmlReturn == pynvml.NVML_SUCCESS:
            return float(value.value.uiVal)
        if value.nvmlReturn == pynvml.NVML_ERROR_GPU_IS_LOST:
            raise _GpuLost("nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP): GPU is lost")
        with self._accounting_lock:
            self._log_absent_once(gpu, "NVML_FI_DEV_MEMORY_TEMP", f"return code {value.nvmlReturn}")
        return None

    def _nvlinks_of(self, gpu: str, handle: Any) -> tuple[int, ...]:
        links, found_at = self._nvlinks.get(gpu, ((), -math.inf))
        if not links and self._monotonic() - found_at >= _NVLINK_REDISCOVER_SECONDS:
            links = self._discover_nvlinks(gpu, handle)
        return links

    def _read_nvlinks(
        self, gpu: str, handle: Any, links: tuple[int, ...], fields: Mapping[tuple[int, int], int]
    ) -> tuple[NvLinkSnapshot, ...]:
        """State and error counters per link: from the field batch, else by call; NVLINK_COUNTERS_BY_CALL as
        `refresh_nvlink_errors` last read them (read here only the first time, or when the links changed). The
        same tuple as last time while the batch's link answers and those counters are the same objects (unchanged)
        and no link needed a call."""
        refreshed = self._nvlink_errors.get(gpu)
        if refreshed is None or refreshed[0] != links:
            refreshed = self._nvlink_errors[gpu] = (links, self._nvlink_errors_by_call(gpu, handle, links))
        by_call = refreshed[1]
        last = self._nvlink_snapshots.get(gpu)
        if last is not None and last[0] is fields and last[1] is by_call:
            return last[2]
        called = False
        result = []
        for link in links:
            state = fields.get((pynvml.NVML_FI_DEV_NVLINK_GET_STATE, link))
            if state in _NVLINK_STATES_ACTIVE:
                active: bool | None = _NVLINK_STATES_ACTIVE[state]
            else:  # not answered, or a state (sleep, traffic disabled) the call may see otherwise: ask the call
                enabled = self._call(gpu, pynvml.nvmlDeviceGetNvLinkState, handle, link)
                active = None if enabled is None else enabled == pynvml.NVML_FEATURE_ENABLED
                called = True
            errors = {}
            for counter_name, field_id, counter in NVLINK_COUNTERS_BATCHED:
                count = fields.get((field_id, link))
                if count is None:
                    count = self._call(gpu, pynvml.nvmlDeviceGetNvLinkErrorCounter, handle, link, counter)
                    called = True
                if count is not None:
                    errors[counter_name] = int(count)
            errors.update(by_call[link])
            result.append(NvLinkSnapshot(link=link, active=active, errors=errors))
        snapshots = tuple(result)
        if called:
            self._nvlink_snapshots.pop(gpu, None)
        else:
            self._nvlink_snapshots[gpu] = (fields, by_call, snapshots)
        return snapshots

    def _nvlink_errors_by_call(
        self, gpu: str, handle: Any, links: tuple[int, ...]
    ) -> dict[int, dict[str, int]]:
        """NVLINK_COUNTERS_BY_CALL of each link, by name; raises _GpuLost."""
        counts: dict[int, dict[str, int]] = {}
        for link in links:
            counts[link] = {}
            for counter_name, counter in NVLINK_COUNTERS_BY_CALL:
                count = self._call(gpu, pynvml.nvmlDeviceGetNvLinkErrorCounter, handle, link, counter)
                if count is not None:
                    counts[link][counter_name] = int(count)
        return counts

    def refresh_nvlink_errors(self) -> None:
        """Read NVLINK_COUNTERS_BY_CALL of the GPUs reachable in the last read, for the reads until the next
        refresh; under neither lock (3 calls per link), so it does not stall a scrape."""
        with self._lock:
            self._ensure_open()
            handles = dict(self._handles)
            links = {uuid: self._nvlinks.get(uuid, ((), 0.0))[0] for uuid in handles}
        for uuid, handle in handles.items():
            try:
                self._nvlink_errors[uuid] = (
                    links[uuid],
                    self._nvlink_errors_by_call(uuid, handle, links[uuid]),
                )
            except _GpuLost:
                self._nvlink_errors.pop(uuid, None)  # the next read asks again, and finds the GPU lost

    def _discover_nvlinks(self, gpu: str, handle: Any) -> tuple[int, ...]:
        """Links whose state NVML reports. Remembered; a GPU without any (PCIe cards) is asked again only every
        _NVLINK_REDISCOVER_SECONDS, not with NVML_NVLINK_MAX_LINKS calls on every read."""
        links = []
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            try:
                pynvml.nvmlDeviceGetNvLinkState(handle, link)
            except pynvml.NVMLError as error:
                if error.value == pynvml.NVML_ERROR_GPU_IS_LOST:
                    raise _GpuLost("nvmlDeviceGetNvLinkState: GPU is lost") from error
                continue
            links.append(link)
        self._nvlinks[gpu] = (tuple(links), self._monotonic())
        if not links:
            with self._accounting_lock:
                self._log_absent_once(gpu, "nvmlDeviceGetNvLinkState", "no link answers")
        return tuple(links)

    def read_pcie_throughput(self) -> dict[str, PcieThroughput]:
        with self._lock:
            self._ensure_open()
            handles = dict(self._handles)
        result = {}
        for uuid, handle in handles.items():
            try:
                tx = self._call(
                    uuid, pynvml.nvmlDeviceGetPcieThroughput, handle, pynvml.NVML_PCIE_UTIL_TX_BYTES
                )
                rx = self._call(
                    uuid, pynvml.nvmlDeviceGetPcieThroughput, handle, pynvml.NVML_PCIE_UTIL_RX_BYTES
                )
            except _GpuLost:
                continue
            result[uuid] = PcieThroughput(
                tx_bytes_per_second=None if tx is None else tx * _KIB,
                rx_bytes_per_second=None if rx is None else rx * _KIB,
            )
        return result

    # -- XID events -------------------------------------------------------------------------------------------

    def listen_for_xids(self) -> bool:
        with self._event_lock:
            return self._current_event_set() is not None

    def wait_for_xid(self, timeout_seconds: float) -> XidEvent | None:
        with self._event_lock:
            event_set = self._current_event_set()
            if event_set is None:
                time.sleep(timeout_seconds)
                return None
            try:
                data = pynvml.nvmlEventSetWait(event_set, max(1, int(timeout_seconds * 1000)))
            except pynvml.NVMLError as error:
                if error.value == pynvml.NVML_ERROR_TIMEOUT:
                    return None
                # GPU_IS_LOST (a registered GPU fell off) or worse: re-register the GPUs that are still there.
                self._note_event_problem(
                    f"nvmlEventSetWait: {error}; registering the GPUs for XID events again"
                )
                with self._lock:
                    self._free_event_set()
                time.sleep(timeout_seconds)
                return None
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                return None
            gpu = self._event_gpus.get(_handle_key(data.device), GpuIdentity(index=-1, uuid="unknown"))
            return XidEvent(gpu=gpu, code=int(data.eventData), at=self._clock())

    def _current_event_set(self) -> Any:
        """The event set registered for XIDs on every reachable GPU; rebuilt (at most every 30 s) when a reachable
        GPU is not registered, e.g. one that came back after a reset."""
        with self._lock:
            self._ensure_open()
            if self._event_set is not None:
                unregistered = set(self._handles) - self._event_uuids
                if (
                    not unregistered
                    or self._monotonic() - self._event_set_built_at < _EVENT_SET_REBUILD_SECONDS
                ):
                    return self._event_set
            failed_at = self._event_set_failed_at
            if failed_at is not None and self._monotonic() - failed_at < self._init_retry_seconds:
                return None
            self._free_event_set()
            try:
                self._event_set = pynvml.nvmlEventSetCreate()
            except pynvml.NVMLError as error:
                self._note_event_problem(
                    f"XID events unavailable (nvmlEventSetCreate: {error}); retrying later"
                )
                self._event_set_failed_at = self._monotonic()
                return None
            self._event_set_failed_at = None
            self._event_set_built_at = self._monotonic()
            self._register_all()
            return self._event_set

    def _note_event_problem(self, problem: str) -> None:
        """Log a problem with XID events at info the first time, at debug when it repeats."""
        log.log(logging.DEBUG if problem in self._event_problems else logging.INFO, "%s", problem)
        self._event_problems.add(problem)

    def _register_all(self) -> None:
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError as error:
            raise self._give_up(f"nvmlDeviceGetCount_v2 failed: {error}") from error
        for index in range(count):
            try:
                handle, gpu = self._identify(index)
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
            except _GpuLost:
                continue  # reported as gpu_lost by read()
            except pynvml.NVMLError as error:
                if error.value != pynvml.NVML_ERROR_GPU_IS_LOST:  # a lost GPU is reported as gpu_lost already
                    self._note_event_problem(f"GPU {index}: no XID events ({error})")
                continue
            self._event_uuids.add(gpu.uuid)
            self._event_gpus[_handle_key(handle)] = gpu

    def _free_event_set(self) -> None:
        if self._event_set is not None:
            try:
                pynvml.nvmlEventSetFree(self._event_set)
            except pynvml.NVMLError as error:
                log.debug("nvmlEventSetFree: %s", error)
        self._event_set = None
        self._event_gpus = {}
        self._event_uuids = set()
