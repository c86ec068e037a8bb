"""NVML collector: GPU telemetry and hard GPU faults, from agent/backends/nvml.py to /metrics and /api/v1/evidence.

Every scrape and evidence pull reads a fresh snapshot per GPU. A background thread counts XID events
(nvmlEventSetWait) per code, samples the slow PCIe throughput and refreshes the NVLink counters NVML has only by
one call per link (see agent/backends/nvml.py for what is read how often). Conditions (throttling, pending row remaps, a lost
GPU ...) carry the time since when they have been seen continuously; XIDs stay in a window with first and last seen.
Which XIDs are critical is the controller's decision: this module passes the code on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from agent.backends.nvml import (
    CLOCK_EVENT_REASONS,
    GpuBackend,
    GpuIdentity,
    GpuSnapshot,
    NvmlBackend,
    NvmlUnavailable,
    PcieThroughput,
    XidEvent,
)
from agent.collectors.base import Collector, SourceUnavailable
from agent.evidence import EvidencePart, GpuEvidence, HardSignal, HardSignalKind
from agent.families import CounterFamily, Family, GaugeFamily, MetricFamily, Row

if TYPE_CHECKING:
    from agent.settings import AgentSettings, NvmlSettings

log = logging.getLogger(__name__)

GPU_LABELS = ("gpu", "uuid", "model", "pci_bus_id")
XID_WAIT_SECONDS = 1.0  # one nvmlEventSetWait (an XID ends it at once); bounds how long close() waits for the thread
LISTEN_WAIT_SECONDS = 10.0  # how long start() waits for the GPUs to be registered for XID events

# Clock-event reasons that are hard evidence. sw_power_cap is not: a busy GPU at its power limit shows it all the
# time. hw_slowdown comes with thermal and power-brake slowdowns; without a thermal reason NVIDIA names power
# (an external power brake, or fast-trigger protection against excess draw), so it counts as power then.
THERMAL_REASONS = ("sw_thermal_slowdown", "hw_thermal_slowdown")
POWER_REASONS = ("hw_power_brake_slowdown",)

# Plain per-GPU values: (metric, GpuSnapshot attribute, HELP naming the NVML source).
_GAUGES = (
    (
        "lockstep_gpu_utilization_ratio",
        "utilization_ratio",
        "Share of time a kernel ran (nvmlDeviceGetUtilizationRates .gpu).",
    ),
    (
        "lockstep_gpu_memory_utilization_ratio",
        "memory_utilization_ratio",
        "Share of time device memory was read or written (nvmlDeviceGetUtilizationRates .memory).",
    ),
    (
        "lockstep_gpu_memory_used_bytes",
        "memory_used_bytes",
        "Device memory in use (nvmlDeviceGetMemoryInfo .used).",
    ),
    (
        "lockstep_gpu_memory_free_bytes",
        "memory_free_bytes",
        "Unallocated device memory (nvmlDeviceGetMemoryInfo .free).",
    ),
    (
        "lockstep_gpu_memory_total_bytes",
        "memory_total_bytes",
        "Device memory (nvmlDeviceGetMemoryInfo .total).",
    ),
    (
        "lockstep_gpu_temperature_celsius",
        "temperature_celsius",
        "GPU die temperature (nvmlDeviceGetTemperatureV, NVML_TEMPERATURE_GPU).",
    ),
    (
        "lockstep_gpu_memory_temperature_celsius",
        "memory_temperature_celsius",
        "HBM temperature (nvmlDeviceGetFieldValues NVML_FI_DEV_MEMORY_TEMP).",
    ),
    (
        "lockstep_gpu_power_watts",
        "power_watts",
        "Power draw of the GPU and its memory (nvmlDeviceGetPowerUsage).",
    ),
    (
        "lockstep_gpu_power_limit_watts",
        "power_limit_watts",
        "Power limit in force (nvmlDeviceGetEnforcedPowerLimit).",
    ),
    ("lockstep_gpu_sm_clock_hertz", "sm_clock_hertz", "SM clock (nvmlDeviceGetClockInfo NVML_CLOCK_SM)."),
    (
        "lockstep_gpu_memory_clock_hertz",
        "memory_clock_hertz",
        "Memory clock (nvmlDeviceGetClockInfo NVML_CLOCK_MEM).",
    ),
    (
        "lockstep_gpu_retired_pages_pending",
        "retired_pages_pending",
        "1 if pages wait to be retired at the next reset (nvmlDeviceGetRetiredPagesPendingStatus).",
    ),
    (
        "lockstep_gpu_row_remap_pending",
        "row_remap_pending",
        "1 if a row remap waits for a GPU reset (nvmlDeviceGetRemappedRows isPending).",
    ),
    (
        "lockstep_gpu_row_remap_failure",
        "row_remap_failure",
        "1 if a row remap has ever failed (nvmlDeviceGetRemappedRows failureOccurred).",
    ),
    (
        "lockstep_gpu_pcie_link_generation",
        "pcie_link_generation",
        "Current PCIe link generation (nvmlDeviceGetCurrPcieLinkGeneration).",
    ),
    (
        "lockstep_gpu_pcie_link_max_generation",
        "pcie_link_max_generation",
        "Highest PCIe generation this GPU and system allow (nvmlDeviceGetMaxPcieLinkGeneration).",
    ),
    (
        "lockstep_gpu_pcie_link_width",
        "pcie_link_width",
        "Current PCIe link width, lanes (nvmlDeviceGetCurrPcieLinkWidth).",
    ),
    (
        "lockstep_gpu_pcie_link_max_width",
        "pcie_link_max_width",
        "Widest PCIe link this GPU and system allow, lanes (nvmlDeviceGetMaxPcieLinkWidth).",
    ),
)
_COUNTERS = (
    (
        "lockstep_gpu_energy_joules",
        "energy_joules",
        "Energy used since the driver was loaded (nvmlDeviceGetTotalEnergyConsumption).",
    ),
    ("lockstep_gpu_pcie_replays", "pcie_replays", "PCIe replays (nvmlDeviceGetPcieReplayCounter)."),
)


def active_reasons(mask: int) -> list[str]:
    """Names of the clock-event reasons set in an nvmlClocksEventReason* bit mask."""
    return [name for name, bit in CLOCK_EVENT_REASONS if mask & bit]


def throttle_kinds(reasons: Sequence[str]) -> dict[HardSignalKind, list[str]]:
    """Which throttle signals the active reasons make, with the reasons behind each."""
    thermal = [r for r in reasons if r in THERMAL_REASONS]
    power = [r for r in reasons if r in POWER_REASONS]
    if "hw_slowdown" in reasons and not thermal:
        power.append("hw_slowdown")
    kinds: dict[HardSignalKind, list[str]] = {}
    if thermal:
        kinds["thermal_throttle"] = thermal
    if power:
        kinds["power_throttle"] = power
    return kinds


def _context(s: GpuSnapshot) -> str:
    """What a person wants next to a throttle reason: temperatures, power against its limit, the SM clock."""
    parts = []
    if s.temperature_celsius is not None:
        parts.append(f"GPU {s.temperature_celsius:.0f} °C")
    if s.memory_temperature_celsius is not None:
        parts.append(f"HBM {s.memory_temperature_celsius:.0f} °C")
    if s.power_watts is not None and s.power_limit_watts is not None:
        parts.append(f"{s.power_watts:.0f} W of {s.power_limit_watts:.0f} W")
    if s.sm_clock_hertz is not None:
        parts.append(f"SM clock {s.sm_clock_hertz / 1e6:.0f} MHz")
    return f" ({', '.join(parts)})" if parts else ""


def _device(gpu: GpuIdentity) -> str:
    return gpu.uuid or f"GPU {gpu.index}"


@dataclass(frozen=True)
class _Condition:
    kind: HardSignalKind
    gpu: GpuIdentity
    detail: str
    count: float = 1.0


@dataclass(frozen=True)
class _Reading:
    snapshots: list[GpuSnapshot]
    vanished: list[GpuIdentity]
    signals: list[HardSignal]
    driver_version: str


class XidLog:
    """XID events: totals per (GPU, code) since the agent started, and the events of the last window_seconds.

    Events in the window are kept as per-second buckets, so an XID storm costs memory per second, not per event.
    """

    def __init__(self, window_seconds: float) -> None:
        self._window_seconds = window_seconds
        self._lock = threading.Lock()
        # (index, uuid, code) -> buckets [second, first at, last at, count], oldest first
        self._recent: dict[tuple[int, str, int], deque[list[float]]] = {}
        self._gpus: dict[tuple[int, str, int], GpuIdentity] = {}
        self._totals: Counter[tuple[int, str, int]] = Counter()

    def record(self, event: XidEvent) -> int:
        """Add one event; returns how many of this (GPU, code) there have been since the agent started."""
        key = (event.gpu.index, event.gpu.uuid, event.code)
        with self._lock:
            buckets = self._recent.setdefault(key, deque())
            if buckets and buckets[-1][0] == int(event.at):
                buckets[-1][2] = event.at
                buckets[-1][3] += 1
            else:
                buckets.append([int(event.at), event.at, event.at, 1])
            self._gpus[key] = event.gpu
            self._totals[key] += 1
            return self._totals[key]

    def totals(self) -> dict[tuple[int, str, int], int]:
        with self._lock:
            return dict(self._totals)

    def signals(self, now: float) -> list[HardSignal]:
        """One signal per (GPU, code) seen within the window, with how many and when first and last."""
        signals = []
        with self._lock:
            for key, buckets in list(self._recent.items()):
                while buckets and buckets[0][2] < now - self._window_seconds:
                    buckets.popleft()
                if not buckets:
                    del self._recent[key]
                    continue
                gpu, code = self._gpus[key], key[2]
                signals.append(
                    HardSignal(
                        kind="xid",
                        device=_device(gpu),
                        xid=code,
                        detail=f"XID {code} on GPU {gpu.index} ({gpu.pci_bus_id or 'unknown bus id'})",
                        count=sum(bucket[3] for bucket in buckets),
                        first_seen=buckets[0][1],
                        last_seen=buckets[-1][2],
                    )
                )
        return signals


class NvmlCollector(Collector):
    """GPU metrics and hard GPU signals through NVML; see the module docstring."""

    name = "nvml"

    def __init__(
        self, backend: GpuBackend, settings: NvmlSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._xids = XidLog(settings.xid_window_seconds)
        self._since: dict[tuple[str, str], float] = {}  # (kind, device) -> first seen, continuously since
        self._known: dict[str, GpuIdentity] = {}  # every GPU seen reachable since start, by uuid
        self._links_seen_active: set[tuple[str, int]] = set()
        # uuid -> (what its NVLink rows were made of, the rows)
        self._nvlink_rows: dict[str, tuple[object, _NvLinkRows]] = {}
        self._pcie: dict[str, tuple[PcieThroughput, float]] = {}  # uuid -> (sample, monotonic time)
        self._status = ""  # what was last logged about NVML's availability
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> NvmlCollector:
        nvml = settings.nvml
        return cls(
            NvmlBackend(library_path=nvml.library_path, init_retry_seconds=nvml.init_retry_seconds), nvml
        )

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the background thread; returns once it listens for XIDs (an XID NVML reports before that is
        not seen by anyone), or after LISTEN_WAIT_SECONDS if NVML is slow, or at once if NVML is unavailable."""
        self._stop.clear()
        listening = threading.Event()
        self._thread = threading.Thread(
            target=self._background, args=(listening,), name="nvml-events", daemon=True
        )
        self._thread.start()
        if not listening.wait(LISTEN_WAIT_SECONDS):
            log.info("NVML: GPUs not registered for XID events after %.0f s; going on", LISTEN_WAIT_SECONDS)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10 * XID_WAIT_SECONDS)
            self._thread = None
        self._backend.close()

    def _background(self, listening: threading.Event) -> None:
        """Count XID events as they come, sample PCIe throughput and refresh NVLink counters now and then; never
        dies."""
        try:
            self._backend.listen_for_xids()
        except Exception as error:  # NVML unavailable or broken: the loop below retries and logs
            log.debug("NVML: registering for XID events: %s", error)
        listening.set()
        interval = self._settings.pcie_throughput_interval_seconds
        next_pcie = 0.0
        next_nvlink = time.monotonic() + self._settings.nvlink_error_interval_seconds  # a first read reads them
        while not self._stop.is_set():
            try:
                if interval > 0 and time.monotonic() >= next_pcie:
                    sampled = self._sample_pcie()
                    next_pcie = time.monotonic() + (interval if sampled else 1.0)
                if time.monotonic() >= next_nvlink:
                    self._backend.refresh_nvlink_errors()
                    next_nvlink = time.monotonic() + self._settings.nvlink_error_interval_seconds
                event = self._backend.wait_for_xid(XID_WAIT_SECONDS)
            except NvmlUnavailable:
                self._stop.wait(max(self._settings.init_retry_seconds, XID_WAIT_SECONDS))
                continue
            except Exception:
                log.exception("NVML background thread: unexpected error; going on")
                self._stop.wait(1.0)
                continue
            if event is not None:
                total = self._xids.record(event)
                if math.log10(total).is_integer():  # the 1st, 10th, 100th ...: a storm does not flood the log
                    log.warning(
                        "XID %d on GPU %d (%s, %s): %d since the agent started",
                        event.code,
                        event.gpu.index,
                        event.gpu.uuid,
                        event.gpu.pci_bus_id,
                        total,
                    )

    def _sample_pcie(self) -> bool:
        samples = self._backend.read_pcie_throughput()
        now = time.monotonic()
        with self._lock:
            self._pcie = {uuid: (sample, now) for uuid, sample in samples.items()}
        return bool(samples)

    # -- reading ----------------------------------------------------------------------------------------------

    def _refresh(self) -> _Reading:
        """Read every GPU, update what was seen since when, and derive the hard signals."""
        with self._lock:
            try:
                snapshots = self._backend.read()
                driver_version = self._backend.driver_version()
            except NvmlUnavailable as error:
                self._note_status(f"NVML unavailable: {error}; the agent runs on without GPU metrics")
                raise SourceUnavailable(str(error)) from error
            self._note_status(
                f"NVML sees {len(snapshots)} GPUs" if snapshots else "NVML sees no GPUs on this node"
            )
            now = self._clock()
            present = {s.identity.uuid for s in snapshots}
            for snapshot in snapshots:
                if not snapshot.lost:
                    self._known[snapshot.identity.uuid] = snapshot.identity
            vanished = [gpu for uuid, gpu in self._known.items() if uuid not in present]
            conditions = self._conditions(snapshots, vanished)
            self._since = {key: self._since.get(key, now) for key in conditions}
            signals = [
                HardSignal(
                    kind=c.kind,
                    device=_device(c.gpu),
                    detail=c.detail,
                    count=c.count,
                    first_seen=self._since[key],
                    last_seen=now,
                )
                for key, c in conditions.items()
            ]
        return _Reading(
            snapshots=snapshots,
            vanished=vanished,
            signals=signals + self._xids.signals(now),
            driver_version=driver_version,
        )

    def _note_status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            log.info("%s", status)

    def _conditions(
        self, snapshots: list[GpuSnapshot], vanished: list[GpuIdentity]
    ) -> dict[tuple[str, str], _Condition]:
        found: list[_Condition] = [
            _Condition("gpu_lost", gpu, "vanished from NVML's device list (nvmlDeviceGetCount_v2)")
            for gpu in vanished
        ]
        reachable = [s for s in snapshots if not s.lost]
        found += [_Condition("gpu_lost", s.identity, s.lost_reason) for s in snapshots if s.lost]
        for s in reachable:
            self._links_seen_active |= {(s.identity.uuid, link.link) for link in s.nvlinks if link.active}
        active_links = {link.link for s in reachable for link in s.nvlinks if link.active}
        for s in reachable:
            found += self._gpu_conditions(s, active_links)
        return {(c.kind, _device(c.gpu)): c for c in found}

    def _gpu_conditions(self, s: GpuSnapshot, links_active_on_node: set[int]) -> list[_Condition]:
        gpu = s.identity
        found = []
        uncorrected = s.ecc_errors.get(("uncorrected", "volatile"), 0)
        if uncorrected:
            detail = f"{uncorrected} uncorrectable ECC errors since the driver loaded (nvmlDeviceGetTotalEccErrors)"
            found.append(_Condition("ecc_uncorrectable", gpu, detail, float(uncorrected)))
        if s.row_remap_failure:
            found.append(
                _Condition("row_remap_failure", gpu, "a row remap failed (nvmlDeviceGetRemappedRows)")
            )
        if s.row_remap_pending:
            detail = f"row remap pending until a GPU reset; {s.remapped_rows_uncorrectable} rows remapped for uncorrectable errors"
            found.append(_Condition("row_remap_pending", gpu, detail))
        if s.retired_pages_pending:
            found.append(
                _Condition("retired_pages_pending", gpu, "pages wait to be retired at the next GPU reset")
            )
        # A link is expected up if it was up before on this GPU or the same link is up on another GPU of the node;
        # GPUs without NVLink bridges report every link inactive and never raise this.
        down = [
            link.link
            for link in s.nvlinks
            if link.active is False
            and ((gpu.uuid, link.link) in self._links_seen_active or link.link in links_active_on_node)
        ]
        if down:
            detail = (
                f"NVLinks {', '.join(map(str, down))} inactive of {len(s.nvlinks)} (nvmlDeviceGetNvLinkState)"
            )
            found.append(_Condition("nvlink_down", gpu, detail, float(len(down))))
        if self._pcie_degraded(s):
            detail = (
                f"PCIe Gen{s.pcie_link_generation} x{s.pcie_link_width}, "
                f"capable of Gen{s.pcie_link_max_generation} x{s.pcie_link_max_width}"
            )
            found.append(_Condition("pcie_degraded", gpu, detail))
        if s.clock_event_reasons:
            for kind, reasons in throttle_kinds(active_reasons(s.clock_event_reasons)).items():
                found.append(_Condition(kind, gpu, f"clock event reasons: {', '.join(reasons)}{_context(s)}"))
        return found

    def _pcie_degraded(self, s: GpuSnapshot) -> bool:
        """Narrower than possible at any load; slower than possible only while busy (idle GPUs slow the link)."""
        if (
            s.pcie_link_width is not None
            and s.pcie_link_max_width is not None
            and s.pcie_link_width < s.pcie_link_max_width
        ):
            return True
        busy = (
            s.utilization_ratio is not None
            and s.utilization_ratio >= self._settings.pcie_busy_utilization_ratio
        )
        return (
            busy
            and s.pcie_link_generation is not None
            and s.pcie_link_max_generation is not None
            and s.pcie_link_generation < s.pcie_link_max_generation
        )

    # -- outputs ----------------------------------------------------------------------------------------------

    def evidence(self) -> EvidencePart:
        reading = self._refresh()
        unhealthy = {signal.device for signal in reading.signals if signal.kind != "xid"}
        gpus = [
            GpuEvidence(
                index=s.identity.index,
                uuid=s.identity.uuid,
                model=s.identity.model,
                pci_bus_id=s.identity.pci_bus_id,
                utilization_ratio=s.utilization_ratio,
                temperature_celsius=s.temperature_celsius,
                power_watts=s.power_watts,
                sm_clock_hertz=s.sm_clock_hertz,
                healthy=_device(s.identity) not in unhealthy,
            )
            for s in reading.snapshots
        ]
        gpus += [
            GpuEvidence(index=g.index, uuid=g.uuid, model=g.model, pci_bus_id=g.pci_bus_id, healthy=False)
            for g in reading.vanished
        ]
        return EvidencePart(gpus=gpus, hard_signals=reading.signals)

    def collect(self) -> Iterable[MetricFamily]:
        reading = self._refresh()
        count = GaugeFamily(
            "lockstep_gpus",
            "GPUs this agent reads: nvmlDeviceGetCount_v2 less those it has no permission to open.",
        )
        count.add_metric([], len(reading.snapshots))
        driver = GaugeFamily(
            "lockstep_nvml_driver_info",
            "The NVIDIA driver version (nvmlSystemGetDriverVersion); always 1.",
            labels=["driver_version"],
        )
        driver.add_metric([reading.driver_version], 1.0)
        lost = _gpu_family(
            GaugeFamily,
            "lockstep_gpu_lost",
            "1 if NVML cannot reach the GPU (NVML_ERROR_GPU_IS_LOST, no handle from nvmlDeviceGetHandleByIndex_v2) "
            "or it vanished from the device list since the agent started.",
        )
        gpus: list[_Gpu] = []
        for s in reading.snapshots:
            labels = _labels(s.identity)
            lost.add_metric(labels, float(s.lost))
            if not s.lost:
                gpus.append((labels, s))
        for gpu in reading.vanished:
            lost.add_metric(_labels(gpu), 1.0)
        families = [
            lost,
            *(
                _each_gpu(GaugeFamily, metric, help_text, gpus, attribute)
                for metric, attribute, help_text in _GAUGES
            ),
            *(
                _each_gpu(CounterFamily, metric, help_text, gpus, attribute)
                for metric, attribute, help_text in _COUNTERS
            ),
            *_health_families(gpus),
            *self._pcie_throughput_families(gpus),
            *_nvlink_families(gpus, self._nvlink_rows),
        ]
        return [count, driver, *(f for f in families if f.rows), *self._xid_families(), self._error_family()]

    def _pcie_throughput_families(self, gpus: list[_Gpu]) -> list[GaugeFamily]:
        """The background samples that are recent (a GPU that stopped answering leaves no stale rate behind)."""
        tx = _gpu_family(
            GaugeFamily,
            "lockstep_gpu_pcie_transmit_bytes_per_second",
            "PCIe transmit throughput over NVML's 20 ms measurement, taken in the background (nvmlDeviceGetPcieThroughput TX, KB/s x 1024).",
        )
        rx = _gpu_family(
            GaugeFamily,
            "lockstep_gpu_pcie_receive_bytes_per_second",
            "PCIe receive throughput over NVML's 20 ms measurement, taken in the background (nvmlDeviceGetPcieThroughput RX, KB/s x 1024).",
        )
        oldest = time.monotonic() - 3 * self._settings.pcie_throughput_interval_seconds
        with self._lock:
            samples = dict(self._pcie)
        for labels, s in gpus:
            sample, at = samples.get(s.identity.uuid, (None, 0.0))
            if sample is not None and at >= oldest:
                _add(tx, labels, sample.tx_bytes_per_second)
                _add(rx, labels, sample.rx_bytes_per_second)
        return [tx, rx]

    def _xid_families(self) -> list[MetricFamily]:
        xids = CounterFamily(
            "lockstep_gpu_xid_errors",
            "XID events by code since the agent started (nvmlEventSetWait, nvmlEventTypeXidCriticalError).",
            labels=("gpu", "uuid", "xid"),
        )
        for (index, uuid, code), total in sorted(self._xids.totals().items()):
            xids.add_metric([str(index), uuid, str(code)], total)
        return [xids]

    def _error_family(self) -> MetricFamily:
        errors = CounterFamily(
            "lockstep_nvml_call_errors",
            "NVML calls that failed with an unexpected error; the field was left out (pynvml NVMLError).",
            labels=("function", "error"),
        )
        for (function, error), total in sorted(self._backend.call_errors().items()):
            errors.add_metric([function, error], total)
        return errors


_F = TypeVar("_F", GaugeFamily, CounterFamily)
_Gpu = tuple[tuple[str, ...], GpuSnapshot]  # a reachable GPU's label values and snapshot


def _labels(gpu: GpuIdentity) -> tuple[str, ...]:
    return (str(gpu.index), gpu.uuid, gpu.model, gpu.pci_bus_id)


def _gpu_family(kind: type[_F], name: str, help_text: str, extra_labels: Sequence[str] = ()) -> _F:
    return kind(name, help_text, labels=[*GPU_LABELS, *extra_labels])


def _add(family: Family, labels: tuple[str, ...], value: float | bool | None) -> None:
    """Add a sample unless NVML had no value (never NaN: absent is absent)."""
    if value is not None and math.isfinite(value):
        family.add_metric(labels, value)


def _each_gpu(kind: type[_F], name: str, help_text: str, gpus: list[_Gpu], attribute: str) -> _F:
    """A family of one GpuSnapshot attribute, a series per GPU."""
    family = _gpu_family(kind, name, help_text)
    for labels, s in gpus:
        _add(family, labels, getattr(s, attribute))
    return family


def _health_families(gpus: list[_Gpu]) -> list[Family]:
    """Clock-event reasons, ECC errors, retired pages and remapped rows of each GPU."""
    reasons = _gpu_family(
        GaugeFamily,
        "lockstep_gpu_clock_event_reason_active",
        "1 while this reason holds the clocks down (nvmlDeviceGetCurrentClocksEventReasons).",
        ("reason",),
    )
    ecc = _gpu_family(
        CounterFamily,
        "lockstep_gpu_ecc_errors",
        "ECC errors; volatile since the driver loaded, aggregate over the GPU's life (nvmlDeviceGetTotalEccErrors).",
        ("error", "counter"),
    )
    retired = _gpu_family(
        GaugeFamily,
        "lockstep_gpu_retired_pages",
        "Retired memory pages by cause (nvmlDeviceGetRetiredPages).",
        ("cause",),
    )
    remapped = _gpu_family(
        GaugeFamily,
        "lockstep_gpu_remapped_rows",
        "Memory rows remapped, by the errors that caused it (nvmlDeviceGetRemappedRows).",
        ("cause",),
    )
    for labels, s in gpus:
        if s.clock_event_reasons is not None:
            for name, bit in CLOCK_EVENT_REASONS:
                reasons.add_metric((*labels, name), float(bool(s.clock_event_reasons & bit)))
        for (error, counter), value in s.ecc_errors.items():
            _add(ecc, (*labels, error, counter), value)
        for cause, pages in s.retired_pages.items():
            _add(retired, (*labels, cause), pages)
        _add(remapped, (*labels, "correctable"), s.remapped_rows_correctable)
        _add(remapped, (*labels, "uncorrectable"), s.remapped_rows_uncorrectable)
    return [reasons, ecc, retired, remapped]


_NvLinkRows = tuple[list[Row], list[Row], list[Row]]  # one GPU's rows of the three NVLink families


def _nvlink_families(gpus: list[_Gpu], made: dict[str, tuple[object, _NvLinkRows]]) -> list[Family]:
    """State per link; error counters per GPU, and per link only once a link has counted one: 18 links x 5
    counters of zeros per GPU would be most of a node's series (and millions in a large cluster). A GPU's rows are
    made again only when its links' snapshot differs from last time (`made`, by uuid): NVLink state and counters
    rarely change, and the backend then returns the same snapshot object."""
    families = _empty_nvlink_families()
    for labels, s in gpus:
        key = (s.nvlinks, labels)
        known = made.get(s.identity.uuid)
        if known is not None and known[0] == key:
            rows = known[1]
        else:
            rows = _nvlink_rows(labels, s)
            made[s.identity.uuid] = (key, rows)
        for family, gpu_rows in zip(families, rows, strict=True):
            family.rows += gpu_rows
    return list(families)


def _empty_nvlink_families() -> tuple[GaugeFamily, CounterFamily, CounterFamily]:
    up = _gpu_family(
        GaugeFamily,
        "lockstep_gpu_nvlink_up",
        "1 if the NVLink is active (nvmlDeviceGetNvLinkState).",
        ("link",),
    )
    totals = _gpu_family(
        CounterFamily,
        "lockstep_gpu_nvlink_errors",
        "NVLink data-link errors summed over the GPU's links, by counter (nvmlDeviceGetNvLinkErrorCounter).",
        ("counter",),
    )
    per_link = _gpu_family(
        CounterFamily,
        "lockstep_gpu_nvlink_link_errors",
        "NVLink data-link errors of one link, by counter, present once nonzero (nvmlDeviceGetNvLinkErrorCounter).",
        ("link", "counter"),
    )
    return up, totals, per_link


def _nvlink_rows(labels: tuple[str, ...], s: GpuSnapshot) -> _NvLinkRows:
    """One GPU's rows of the NVLink families."""
    up, totals, per_link = _empty_nvlink_families()
    summed: Counter[str] = Counter()
    for link in s.nvlinks:
        _add(up, (*labels, str(link.link)), link.active)
        for counter, value in link.errors.items():
            summed[counter] += value
            if value:
                per_link.add_metric((*labels, str(link.link), counter), value)
    for counter, value in summed.items():
        totals.add_metric((*labels, counter), value)
    return up.rows, totals.rows, per_link.rows
