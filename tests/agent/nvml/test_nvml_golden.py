"""The NVML collector's exposition for a fixed node, pinned in a golden file (names, HELP, labels, values).

Dashboards and alert rules are written against these names. Regenerate with
`LOCKSTEP_UPDATE_GOLDEN=1 python -m pytest tests/agent/nvml/test_nvml_golden.py`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from agent.collectors.nvml import NvmlCollector
from tests.agent.nvml.conftest import FakeNvmlConfig
from tests.agent.nvml.nvml_support import scrape

GOLDEN = Path(__file__).resolve().parent / "golden" / "nvml-node.metrics"

# A node with one of most things: the clock behind total energy is frozen so the output is stable.
FIXED_NODE = {
    "time_seconds": 3600,
    "gpus": {
        "1": {"thermal_throttle": True},
        "2": {"nvlink_down": [7], "nvlink_errors": {"7": {"crc_flit": 40, "recovery": 2}}},
        "4": {"ecc": {"volatile_corrected": 3, "aggregate_corrected": 9}, "pcie": {"replay_counter": 5}},
        "5": {"remapped_rows": {"uncorrectable": 1, "pending": True}},
        "6": {"lost": True},
    },
}


def test_the_nvml_exposition_of_a_fixed_node_matches_the_golden_file(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector()
    scrape(collector)  # GPU 6 known before it is lost, as on a real node
    fake_nvml.write(FIXED_NODE)
    collector._backend.refresh_nvlink_errors()  # as the background thread does every nvlink_error_interval_seconds
    text = scrape(collector).text
    if os.environ.get("LOCKSTEP_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with LOCKSTEP_UPDATE_GOLDEN=1 to accept the new output"
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
