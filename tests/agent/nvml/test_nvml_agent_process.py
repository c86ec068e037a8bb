"""The real agent process on the fake NVML: GPU metrics on /metrics, hard signals on /api/v1/evidence, faults
injected while it runs, and an agent without NVML that serves on and says so once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.evidence import Evidence
from tests.agent.conftest import http_get, wait_until
from tests.agent.nvml.conftest import FakeNvmlConfig

pytestmark = pytest.mark.slow

ONLY_NVML = (
    "--no-collector.network",
    "--no-collector.host",
    "--no-collector.collective",
    "--no-collector.periodicity",
    "--node-name",
    "gpu-node-1",
)
UUID3 = "GPU-5f0e6a3c-1003-4b1d-8e2f-a1b2c3d40003"


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = http_get(url + "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def evidence(url: str) -> Evidence:
    status, _, body = http_get(url + "/api/v1/evidence")
    assert status == 200
    return Evidence.model_validate_json(body)


def nvml_success(url: str) -> float | None:
    return metrics(url).get(("lockstep_collector_success", (("collector", "nvml"),)))


def test_agent_on_the_fake_library_serves_gpu_metrics_and_faults_injected_while_it_runs(
    start_agent: Callable[..., str],
    subprocess_env: dict[str, str],
    fake_nvml: FakeNvmlConfig,
    fake_nvml_library: Path,
) -> None:
    subprocess_env["LD_LIBRARY_PATH"] = str(fake_nvml_library.parent)
    subprocess_env["FAKE_NVML_CONFIG"] = str(fake_nvml.path)
    url = start_agent(*ONLY_NVML)
    values = metrics(url)
    assert values[("lockstep_gpus", ())] == 8
    assert nvml_success(url) == 1
    assert len([k for k in values if k[0] == "lockstep_gpu_power_watts"]) == 8
    healthy = evidence(url)
    assert healthy.node == "gpu-node-1" and healthy.collectors["nvml"] is True
    assert len(healthy.gpus) == 8 and healthy.hard_signals == []

    fake_nvml.write(
        {
            "gpus": {
                "3": {"xid": [79]},
                "5": {"ecc": {"volatile_uncorrected": 1}, "remapped_rows": {"pending": True}},
                "6": {"lost": True},
            }
        }
    )
    faulty = wait_until_evidence(url, lambda doc: any(s.kind == "xid" for s in doc.hard_signals))
    kinds = {(s.kind, s.device) for s in faulty.hard_signals}
    assert ("xid", UUID3) in kinds
    assert ("ecc_uncorrectable", "GPU-5f0e6a3c-1005-4b1d-8e2f-a1b2c3d40005") in kinds
    assert ("row_remap_pending", "GPU-5f0e6a3c-1005-4b1d-8e2f-a1b2c3d40005") in kinds
    assert ("gpu_lost", "GPU-5f0e6a3c-1006-4b1d-8e2f-a1b2c3d40006") in kinds
    [xid] = [s for s in faulty.hard_signals if s.kind == "xid"]
    assert xid.xid == 79 and xid.count == 1
    values = metrics(url)
    assert values[("lockstep_gpu_xid_errors_total", (("gpu", "3"), ("uuid", UUID3), ("xid", "79")))] == 1
    lost = [
        v for (name, labels), v in values.items() if name == "lockstep_gpu_lost" and ("gpu", "6") in labels
    ]
    assert lost == [1]


def wait_until_evidence(url: str, check: Callable[[Evidence], bool]) -> Evidence:
    found: list[Evidence] = []

    def ready() -> bool:
        doc = evidence(url)
        found[:] = [doc]
        return check(doc)

    wait_until(ready, what="the evidence to show the fault")
    return found[0]


def test_agent_without_nvml_serves_on_reports_success_0_and_logs_it_once(
    start_agent: Callable[..., str], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    subprocess_env.pop("LD_LIBRARY_PATH", None)
    subprocess_env.pop("FAKE_NVML_CONFIG", None)
    url = start_agent(*ONLY_NVML)
    for _ in range(3):
        assert nvml_success(url) == 0
    doc = evidence(url)
    assert doc.collectors["nvml"] is False and doc.gpus == []
    [log] = tmp_path.glob("agent-*.log")
    text = log.read_text()
    assert text.count("NVML unavailable") == 1, text
    assert "not found" in text and "Traceback" not in text


def test_agent_picks_up_a_driver_that_loads_after_it_started(
    start_agent: Callable[..., str],
    subprocess_env: dict[str, str],
    fake_nvml: FakeNvmlConfig,
    fake_nvml_library: Path,
) -> None:
    subprocess_env["FAKE_NVML_CONFIG"] = str(fake_nvml.path)
    fake_nvml.write({"init_error": "DRIVER_NOT_LOADED"})
    url = start_agent(
        *ONLY_NVML, "--nvml.library-path", str(fake_nvml_library), "--nvml.init-retry-seconds", "0"
    )
    assert nvml_success(url) == 0
    fake_nvml.write({})
    wait_until(lambda: nvml_success(url) == 1, what="NVML to come up")
    assert metrics(url)[("lockstep_gpus", ())] == 8
