"""Fixtures for the NVML tests: the fake libnvidia-ml.so.1 built in this session, its config, and collectors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.backends.nvml import NvmlBackend
from agent.collectors.nvml import NvmlCollector
from agent.settings import AgentSettings, NvmlSettings

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def fake_nvml_library() -> Path:
    """Build the fake NVML with `make fake-nvml` (as CI and the demo do) and return its path."""
    subprocess.run(
        ["make", "-C", str(REPO), "fake-nvml", f"PYTHON={sys.executable}"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    library = REPO / "build" / "fake-nvml" / "libnvidia-ml.so.1"
    assert library.is_file()
    return library


class FakeNvmlConfig:
    """The fault-injection file the fake re-reads when it changes (tools/fake-nvml/README.md)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, config: dict[str, Any]) -> None:
        """Replace the file atomically, so the fake never reads half a document."""
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(config))
        os.replace(partial, self.path)


@pytest.fixture
def fake_nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_nvml_library: Path) -> FakeNvmlConfig:
    """A fresh config file (8 healthy GPUs) named by FAKE_NVML_CONFIG for this test."""
    config = FakeNvmlConfig(tmp_path / "fake-nvml.json")
    config.write({})
    monkeypatch.setenv("FAKE_NVML_CONFIG", str(config.path))
    return config


@pytest.fixture
def make_collector(
    fake_nvml: FakeNvmlConfig, fake_nvml_library: Path
) -> Iterator[Callable[..., NvmlCollector]]:
    """Build NVML collectors on the fake (through the agent's settings tree); closed after the test."""
    made: list[NvmlCollector] = []

    def make(clock: Callable[[], float] | None = None, start: bool = False, **settings: Any) -> NvmlCollector:
        nvml = {"library_path": str(fake_nvml_library), "init_retry_seconds": 0, **settings}
        if clock is None:
            collector = NvmlCollector.from_settings(AgentSettings(nvml=NvmlSettings(**nvml)))
        else:
            section = NvmlSettings(**nvml)
            backend = NvmlBackend(library_path=section.library_path, init_retry_seconds=0, clock=clock)
            collector = NvmlCollector(backend, section, clock=clock)
        made.append(collector)
        if start:
            collector.start()
        return collector

    yield make
    for collector in made:
        collector.close()
