"""Files of this checkout the demo uses: the fake NVML build, the chart's alert rules, the probe bootstrap."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FAKE_NVML_DIR = REPO / "build" / "fake-nvml"  # `make fake-nvml` builds libnvidia-ml.so.1 here
ALERT_RULES = REPO / "helm" / "lockstep" / "files" / "alerts.yaml"  # the chart's PrometheusRule source
PROBE_PTH = REPO / "agent" / "probe" / "lockstep-probe.pth"  # `pip install` puts it into site-packages
