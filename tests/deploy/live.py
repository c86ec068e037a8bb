"""Real Prometheus and Alertmanager (Debian packages) for the deploy tests: free ports, temp dirs, short
intervals, and a tiny webhook receiver that records what Alertmanager delivers."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.processes import stop_process

PROMETHEUS = "/usr/bin/prometheus"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout_s: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll until `condition()` is truthy; fail with `what` after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as error:  # the server may not be up yet
            last_error = error
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last_error})")


@dataclass
class Daemon:
    """A process started by a test; `stop()` ends it and returns its log tail."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_process(self.process)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> Daemon:
    handle = log.open("wb")
    process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    return Daemon(process, log)


@dataclass
class Webhook:
    """An HTTP server that records every Alertmanager webhook payload it receives."""

    url: str
    payloads: list[dict[str, Any]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for payload in list(self.payloads) for alert in payload["alerts"]]

    def close(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def start_webhook() -> Webhook:
    webhook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            webhook.payloads.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook.server = server
    webhook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    return webhook


def start_alertmanager(workdir: Path, webhook_url: str) -> tuple[Daemon, str]:
    port = free_port()
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    (workdir / "alertmanager-data").mkdir()
    daemon = start(
        [
            ALERTMANAGER,
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        workdir / "alertmanager.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 60, "alertmanager ready"
    )
    return daemon, url


def start_prometheus(
    workdir: Path,
    scrape_jobs: dict[str, list[dict[str, Any]]],
    rule_files: list[Path],
    alertmanager: str | None = None,
) -> tuple[Daemon, str]:
    """Prometheus scraping `scrape_jobs` (job name -> static_configs) every second, evaluating rules every second."""
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "honor_labels": True, "static_configs": targets}
            for job, targets in scrape_jobs.items()
        ],
    }
    if alertmanager:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": [urllib.parse.urlparse(alertmanager).netloc]}]}]
        }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    daemon = start(
        [
            PROMETHEUS,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--rules.alert.resend-delay=1s",
        ],
        workdir / "prometheus.log",
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200, 60, "prometheus ready"
    )
    return daemon, url


def query(prometheus: str, expr: str) -> dict[str, Any]:
    """Instant query; returns Prometheus's `data` (fails on a query error)."""
    answer = get_json(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert answer["status"] == "success", answer
    return dict(answer["data"])


def serve_metrics(exposition: Callable[[], str]) -> tuple[ThreadingHTTPServer, str]:
    """A /metrics endpoint serving `exposition()` (Prometheus text format) on each scrape; returns (server, host:port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"
