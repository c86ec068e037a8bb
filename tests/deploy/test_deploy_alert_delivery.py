"""An alert travels for real: Prometheus evaluates the shipped rules, fires to Alertmanager, which delivers to a
webhook; when the fault clears, the resolution travels the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_support import ALERTS
from live import (
    Daemon,
    Webhook,
    query,
    serve_metrics,
    start_alertmanager,
    start_prometheus,
    start_webhook,
    wait_for,
)

pytestmark = pytest.mark.slow


class Exporter:
    """A scrape target whose exposition text the test changes (the fault appears, then clears)."""

    def __init__(self) -> None:
        self.text = ""
        self.server, self.address = serve_metrics(lambda: self.text)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Exporter, Webhook, str, str]]:
    daemons: list[Daemon] = []
    webhook = start_webhook()
    exporter = Exporter()
    try:
        alertmanager, alertmanager_url = start_alertmanager(tmp_path, webhook.url)
        daemons.append(alertmanager)
        prometheus, prometheus_url = start_prometheus(
            tmp_path,
            {"lockstep-agent": [{"targets": [exporter.address], "labels": {"node": "gpu-7"}}]},
            [ALERTS],
            alertmanager=alertmanager_url,
        )
        daemons.append(prometheus)
        yield exporter, webhook, prometheus_url, alertmanager_url
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        exporter.close()
        webhook.close()


HEALTHY = """# HELP lockstep_gpu_lost 1 if NVML cannot reach the GPU (nvmlDeviceGetHandleByIndex).
# TYPE lockstep_gpu_lost gauge
lockstep_gpu_lost{gpu="0",uuid="GPU-0"} 0
lockstep_gpu_lost{gpu="1",uuid="GPU-1"} 0
"""


def test_lost_gpu_alert_reaches_the_webhook_with_its_labels_and_runbook_then_resolves(stack) -> None:
    exporter, webhook, prometheus, _ = stack
    exporter.text = HEALTHY
    wait_for(lambda: query(prometheus, "lockstep_gpu_lost")["result"], 60, "first scrape")
    assert query(prometheus, 'ALERTS{alertname="LockstepGpuLost"}')["result"] == []

    exporter.text = HEALTHY.replace('uuid="GPU-1"} 0', 'uuid="GPU-1"} 1')
    firing = wait_for(
        lambda: [
            a
            for a in webhook.alerts()
            if a["labels"]["alertname"] == "LockstepGpuLost" and a["status"] == "firing"
        ],
        120,
        "LockstepGpuLost delivered to the webhook",
    )
    alert = firing[0]
    assert alert["labels"] == {
        "alertname": "LockstepGpuLost",
        "severity": "critical",
        "node": "gpu-7",
        "gpu": "1",
    }
    assert alert["annotations"]["summary"] == "GPU 1 on gpu-7 is lost"
    assert alert["annotations"]["runbook_url"].endswith("docs/runbooks.md#lockstepgpulost")
    assert all(a["labels"].get("gpu") != "0" for a in webhook.alerts()), "the healthy GPU must not alert"

    exporter.text = HEALTHY
    wait_for(
        lambda: [
            a
            for a in webhook.alerts()
            if a["labels"]["alertname"] == "LockstepGpuLost" and a["status"] == "resolved"
        ],
        180,
        "the resolution delivered to the webhook",
    )
