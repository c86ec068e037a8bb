"""NVML collector cost on 8 fake GPUs, against its peer: the bare pynvml calls for the same data, in the same process.

Prints CPU ms per call of: the bare pynvml loop (the individual calls for every value on every read, no error
handling, no snapshot objects), the same data with the backend's field batch through pynvml's own
nvmlDeviceGetFieldValues wrapper, the backend's read(), the collector's collect(), collect() encoded as the agent
serves /metrics, and evidence(); and each as a ratio to the bare loop. The backend's read() makes fewer calls than
the bare loop (identity and widest PCIe link kept, NVLink CRC and ECC data counters refreshed in the background:
agent/backends/nvml.py), so it can come out below it. Builds the fake NVML first (`make fake-nvml`). The fake
answers a call in ~1 us; NVIDIA's library goes to the driver for most, so real calls cost more and saving them saves
more.

    python benchmarks/nvml_collector.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAKE_NVML = REPO / "build" / "fake-nvml" / "libnvidia-ml.so.1"


def cpu_ms_per_call(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(3):
        fn()
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) / rounds * 1e3


def calls_without_a_field(n: Any, h: Any) -> None:
    """The calls for data NVML has no field for: made one by one with or without the field batch."""
    n.nvmlDeviceGetPciInfo(h)
    n.nvmlDeviceGetUUID(h)
    n.nvmlDeviceGetName(h)
    n.nvmlDeviceGetUtilizationRates(h)
    n.nvmlDeviceGetMemoryInfo(h)
    n.nvmlDeviceGetTemperatureV(h, n.NVML_TEMPERATURE_GPU)
    n.nvmlDeviceGetPowerUsage(h)
    n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)
    n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)
    n.nvmlDeviceGetCurrentClocksEventReasons(h)
    n.nvmlDeviceGetCurrPcieLinkGeneration(h)
    n.nvmlDeviceGetMaxPcieLinkGeneration(h)
    n.nvmlDeviceGetCurrPcieLinkWidth(h)
    n.nvmlDeviceGetMaxPcieLinkWidth(h)


def bare_pynvml_read() -> None:
    """The data the backend reads for 8 GPUs with 18 NVLinks each, one call per value, straight through pynvml."""
    import pynvml as n

    for index in range(n.nvmlDeviceGetCount()):
        h = n.nvmlDeviceGetHandleByIndex(index)
        calls_without_a_field(n, h)
        n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_MEMORY_TEMP])
        n.nvmlDeviceGetEnforcedPowerLimit(h)
        n.nvmlDeviceGetTotalEnergyConsumption(h)
        for error_type in (0, 1):
            for counter_type in (0, 1):
                n.nvmlDeviceGetTotalEccErrors(h, error_type, counter_type)
        n.nvmlDeviceGetRetiredPages(h, 0)
        n.nvmlDeviceGetRetiredPages(h, 1)
        n.nvmlDeviceGetRetiredPagesPendingStatus(h)
        n.nvmlDeviceGetRemappedRows(h)
        n.nvmlDeviceGetPcieReplayCounter(h)
        for link in range(18):
            n.nvmlDeviceGetNvLinkState(h, link)
            for counter in range(5):
                n.nvmlDeviceGetNvLinkErrorCounter(h, link, counter)


def bare_pynvml_batched_read() -> None:
    """The same data with the backend's one nvmlDeviceGetFieldValues per GPU, through pynvml's own wrapper."""
    import pynvml as n

    from agent.backends.nvml import DEVICE_FIELDS, NVLINK_COUNTER_FIELDS

    per_link = (n.NVML_FI_DEV_NVLINK_GET_STATE, *NVLINK_COUNTER_FIELDS.values())
    request = [*DEVICE_FIELDS, *((field, link) for link in range(18) for field in per_link)]
    for index in range(n.nvmlDeviceGetCount()):
        h = n.nvmlDeviceGetHandleByIndex(index)
        calls_without_a_field(n, h)
        [(v.nvmlReturn, v.value.ullVal) for v in n.nvmlDeviceGetFieldValues(h, request)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=200, help="calls measured per line")
    args = parser.parse_args()
    subprocess.run(
        ["make", "-C", str(REPO), "fake-nvml", f"PYTHON={sys.executable}"], check=True, capture_output=True
    )

    import pynvml

    from agent.backends.nvml import NvmlBackend
    from agent.collectors.nvml import NvmlCollector
    from agent.exposition import encode_text
    from agent.settings import NvmlSettings

    ctypes.CDLL(str(FAKE_NVML))
    pynvml.nvmlInit()
    settings = NvmlSettings(library_path=str(FAKE_NVML), pcie_throughput_interval_seconds=0)
    backend = NvmlBackend(library_path=settings.library_path)
    collector = NvmlCollector(backend, settings)

    series = sum(1 for line in encode_text(collector).decode().splitlines() if not line.startswith("#"))

    bare = cpu_ms_per_call(bare_pynvml_read, args.rounds)
    rows = [
        ("bare pynvml calls (peer)", bare),
        ("bare, fields batched", cpu_ms_per_call(bare_pynvml_batched_read, args.rounds)),
        ("backend.read()", cpu_ms_per_call(backend.read, args.rounds)),
        ("collector.collect()", cpu_ms_per_call(lambda: list(collector.collect()), args.rounds)),
        ("collect + /metrics encoding", cpu_ms_per_call(lambda: encode_text(collector), args.rounds)),
        ("collector.evidence()", cpu_ms_per_call(collector.evidence, args.rounds)),
    ]
    print(
        f"NVML collector, 8 fake H100s x 18 NVLinks, {series} series, CPU ms per call over {args.rounds} calls"
    )
    print(f"{'':28s} {'CPU ms':>8s} {'x peer':>8s}")
    for name, ms in rows:
        print(f"{name:28s} {ms:8.2f} {ms / bare:8.2f}")
    collector.close()
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
