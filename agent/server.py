"""The agent's HTTP face: `/metrics` for Prometheus, `/api/v1/evidence` for the controller, health probes.

`build_app` takes a CollectorRunner, so tests can serve any collectors in-process; `serve` binds it and returns
the bound port (port 0 picks a free one). The standard library's threading HTTP server, not aiohttp: the agent
answers a scrape and an evidence pull every few seconds, and aiohttp with asyncio cost ~10 MB of its RSS budget.
Each connection has its own thread, so collector work never blocks another request, and its own `/metrics`
answers, made ahead of its scrapes once they are steady (agent/scrape_ahead.py). `/metrics` serves the `Registry`:
the runner's families, how scrapes were answered, `process_*` and `python_info`, without prometheus_client (whose
package loads OpenSSL; see agent/__main__.py).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.collectors.runner import CollectorRunner
from agent.collectors.ticker import TICKER
from agent.exposition import negotiate
from agent.families import MetricFamily, MetricSource
from agent.process_metrics import ProcessMetrics, python_info
from agent.scrape_ahead import ConnectionScrapes, Preparer, ScrapeStats

log = logging.getLogger(__name__)

IDLE_CONNECTION_SECONDS = 120.0  # a keep-alive connection silent this long is closed (Prometheus scrapes more often)


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


class AgentApp:
    """What the server answers, by path. Ready (`/readyz` 200) once the collectors are started and the first
    collection ran; `start` and `close` run and stop the collectors. A connection's `/metrics` answers are made
    `scrape_ahead_seconds` before its scrapes once they are steady (agent/scrape_ahead.py; 0 = at the scrape)."""

    def __init__(self, runner: CollectorRunner, scrape_ahead_seconds: float = 0.0) -> None:
        self.runner = runner
        self.scrape_ahead_seconds = scrape_ahead_seconds
        self.scrape_stats = ScrapeStats()
        self._preparer = Preparer()
        sources: list[MetricSource] = [runner, self.scrape_stats]
        try:
            sources.append(ProcessMetrics())
        except OSError as error:  # no /proc (or not readable): the agent's own process_* metrics are left out
            log.warning("process_* metrics left out: %s", error)
        sources.append(_Static([python_info()]))
        self.registry = Registry(sources)
        self.ready = threading.Event()

    def start(self) -> None:
        self.runner.start()
        threading.Thread(target=self._first_collection, name="first-collection", daemon=True).start()

    def _first_collection(self) -> None:
        list(self.runner.collect())
        self.ready.set()
        log.info("ready: collectors %s", ", ".join(sorted(self.runner.collectors)) or "(none)")

    def close(self) -> None:
        self._preparer.close()
        self.runner.close()

    def connection_scrapes(self) -> ConnectionScrapes[Response]:
        """The `/metrics` answers of a new connection."""
        return ConnectionScrapes(self.metrics, self._preparer, self.scrape_ahead_seconds, self.scrape_stats)

    def metrics(self, accept: str) -> Response:
        """`/metrics` collected now, in the format `accept` asks for."""
        encoder, content_type = negotiate(accept)
        with TICKER.serving():  # background jobs wait: they would add to the scrape's latency
            return Response(200, content_type, encoder(self.registry))

    def respond(self, path: str, accept: str, scrapes: ConnectionScrapes[Response] | None = None) -> Response:
        """The answer to a GET of `path`; `/metrics` through the connection's `scrapes` if given."""
        if path == "/metrics":
            if scrapes is None:
                self.scrape_stats.count("collected")
                return self.metrics(accept)
            return scrapes.answer(accept)
        if path == "/api/v1/evidence":
            with TICKER.serving():
                return Response(200, "application/json", self.runner.evidence().model_dump_json().encode())
        if path == "/healthz":
            return Response(200, "text/plain; charset=utf-8", b"ok\n")
        if path == "/readyz":
            if self.ready.is_set():
                return Response(200, "text/plain; charset=utf-8", b"ready\n")
            return Response(503, "text/plain; charset=utf-8", b"starting: first collection not done\n")
        return Response(404, "text/plain; charset=utf-8", b"404: Not Found\n")


class Registry:
    """The families of every source, in order: what `/metrics` serves."""

    def __init__(self, sources: list[MetricSource]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[MetricFamily]:
        for source in self.sources:
            yield from source.collect()


@dataclass(frozen=True)
class _Static:
    families: list[MetricFamily]

    def collect(self) -> list[MetricFamily]:
        return self.families


def build_app(runner: CollectorRunner, scrape_ahead_seconds: float = 0.0) -> AgentApp:
    """The application serving `runner`; the server starts its collectors and closes them when it stops."""
    return AgentApp(runner, scrape_ahead_seconds)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a Prometheus connection is one thread for all its scrapes
    timeout = IDLE_CONNECTION_SECONDS
    server: _Server
    scrapes: ConnectionScrapes[Response]

    def setup(self) -> None:
        super().setup()
        self.scrapes = self.server.app.connection_scrapes()

    def finish(self) -> None:
        self.scrapes.close()
        super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(with_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        try:
            path, accept = self.path.partition("?")[0], self.headers.get("Accept", "")
            response = self.server.app.respond(path, accept, self.scrapes)
        except Exception:
            log.exception("%s failed", self.path)
            response = Response(500, "text/plain; charset=utf-8", b"500: Internal Server Error\n")
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - no access log
        pass


class _Server(ThreadingHTTPServer):
    """Accepts connections until `stop`, waking only for a connection or `stop` (serve_forever polls twice a second
    to notice shutdown: two thread wakeups a second for nothing)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app: AgentApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        super().__init__((host, port), _Handler)
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._stopped = threading.Event()

    def accept_until_stopped(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._wake_read, selectors.EVENT_READ)
                while not self._stopping:
                    if any(key.fileobj is self for key, _ in selector.select()) and not self._stopping:
                        self.handle_request()  # the connection is there: accepts it without waiting
        finally:
            self._stopped.set()

    def stop(self) -> None:
        """Stop accepting; returns once the accept loop has ended (connections in progress finish on their own)."""
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_write, b"x")
        self._stopped.wait(timeout=5.0)
        os.close(self._wake_read)
        os.close(self._wake_write)


@dataclass
class RunningServer:
    """A started server: the port it is bound to; `stop` closes it and the collectors."""

    server: _Server
    host: str
    port: int

    def stop(self) -> None:
        self.server.stop()
        self.server.server_close()
        self.server.app.close()


def serve(app: AgentApp, host: str, port: int) -> RunningServer:
    """Bind `app` on host:port (0 = a free port), start its collectors and serve in a background thread; raises
    OSError if the bind fails (before any collector starts)."""
    server = _Server(host, port, app)
    app.start()
    threading.Thread(target=server.accept_until_stopped, name="http", daemon=True).start()
    bound = server.server_address[1]
    log.info("serving on http://%s:%d (/metrics, /api/v1/evidence, /healthz, /readyz)", host, bound)
    return RunningServer(server=server, host=host, port=bound)
