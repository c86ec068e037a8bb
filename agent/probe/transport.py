"""The probe's sender thread: drains the recorder, packs wire records and sends them to the node's agent.

Sends are non-blocking Unix datagrams to `<socket_dir>/probe.sock`. A slow agent (its socket queue full) costs
a backlog the next flush sends first, bounded at `BACKLOG_RECORDS`; an absent or restarting agent costs dropped
records (counted, reported in every later record). Never a blocked or failing training step. Every send names the
socket path again, so a restarted agent is picked up without reconnect logic. At interpreter exit the last flush
retries a full queue for up to `FINAL_FLUSH_SECONDS`, so the job's last collectives are delivered or counted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time

from agent.probe import wire
from agent.probe.identity import Identity
from agent.probe.recorder import Recorder, Token

log = logging.getLogger(__name__)

SOCKET_NAME = "probe.sock"
BACKLOG_RECORDS = 4096  # ~1.2 MB of packed records held while the agent's queue is full
FINAL_FLUSH_SECONDS = 0.5  # how long the exit flush retries a full queue (training is over by then)
_QUEUE_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


class Sender:
    """Background thread: every `flush_interval_seconds` it sends completed collectives, collectives pending
    for longer than `pending_report_seconds` (the hang signal), and a heartbeat every `heartbeat_seconds`.

    Each flush wakes the thread and takes the GIL from the training thread (0.2-0.3 ms of this thread's CPU per
    flush on the 2-core development VM, mostly the wakeup, not the records), so it flushes every 0.5 s: records
    reach the agent within half a second, which applies them in batches anyway (at its reads, or after
    agent/collectors/collective.py INGEST_SECONDS)."""

    def __init__(
        self,
        recorder: Recorder,
        identity: Identity,
        socket_dir: str,
        flush_interval_seconds: float = 0.5,
        pending_report_seconds: float = 0.2,
        heartbeat_seconds: float = 1.0,
    ) -> None:
        self.recorder = recorder
        self.identity = identity
        self.path = os.path.join(socket_dir, SOCKET_NAME)
        self.flush_interval_seconds = flush_interval_seconds
        self.pending_report_seconds = pending_report_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.sent_records = 0
        self.send_errors = 0
        self._dropped_in_transport = 0
        self._backlog: list[bytes] = []  # packed records the agent's full queue did not take yet
        self._reported_pending: set[tuple[str, int]] = set()
        self._last_heartbeat = 0.0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._ident = (
            wire.encode_text(identity.job, wire.JOB_BYTES),
            wire.encode_text(identity.pod, wire.POD_BYTES),
            wire.encode_text(identity.namespace, wire.NAMESPACE_BYTES),
        )
        self._thread = threading.Thread(target=self._run, name="lockstep-probe", daemon=True)

    @property
    def dropped(self) -> int:
        """Records lost so far: recorder queue full plus sends the agent did not take."""
        return self.recorder.dropped + self._dropped_in_transport

    @property
    def backlogged(self) -> int:
        """Records waiting for room in the agent's socket queue."""
        return len(self._backlog)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last flush (called at interpreter exit)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_seconds):
            self._flush_safely()
        self._flush_safely()
        deadline = time.monotonic() + FINAL_FLUSH_SECONDS
        while self._backlog and time.monotonic() < deadline:
            time.sleep(0.005)
            self._send_backlog()
        self._dropped_in_transport += len(self._backlog)
        self._sock.close()

    def _flush_safely(self) -> None:
        try:
            self.flush()
        except Exception:  # the probe must never take the training process down
            log.debug("lockstep probe flush failed", exc_info=True)

    def _pack(self, kind: wire.Kind, token: Token, completed_at: float) -> bytes:
        group, seq, op, nbytes, issued_at = token
        ident = self.identity
        job, pod, namespace = self._ident
        return wire.RECORD.pack(
            wire.MAGIC, wire.VERSION, kind, op, ident.rank, ident.world_size,
            -1 if ident.local_rank is None else ident.local_rank, seq, nbytes, issued_at, completed_at,
            self.dropped & 0xFFFFFFFF, 0, job, wire.encode_text(group, wire.GROUP_BYTES), pod, namespace,
        )  # fmt: skip

    def flush(self) -> None:
        """Send what the recorder holds now; one datagram per MAX_RECORDS_PER_DATAGRAM records."""
        now = time.time()
        records: list[bytes] = []
        completed = self.recorder.completed
        while completed:
            token, completed_at = completed.popleft()
            records.append(self._pack(wire.Kind.COMPLETE, token, completed_at))
        pending = self.recorder.pending.copy()
        self._reported_pending &= pending.keys()
        newly_pending = []
        for key, token in pending.items():
            if key not in self._reported_pending and now - token[4] >= self.pending_report_seconds:
                newly_pending.append(key)
                records.append(self._pack(wire.Kind.ISSUE, token, 0.0))
        if now - self._last_heartbeat >= self.heartbeat_seconds:
            self._last_heartbeat = now
            records.append(self._pack(wire.Kind.HEARTBEAT, ("", 0, wire.Op.unknown, 0, now), 0.0))
        self._backlog += records
        if self._send_backlog():  # else report them again next flush: a restarted agent still learns of the hang
            self._reported_pending.update(newly_pending)

    def _send_backlog(self) -> bool:
        """Send the backlog a datagram at a time; False if the agent is absent (those records are dropped).
        A full queue keeps the rest for the next flush, the oldest dropped beyond BACKLOG_RECORDS."""
        step = wire.MAX_RECORDS_PER_DATAGRAM
        backlog = self._backlog
        sent = 0
        try:
            while sent < len(backlog):
                chunk = backlog[sent : sent + step]
                self._sock.sendto(b"".join(chunk), self.path)
                sent += len(chunk)
                self.sent_records += len(chunk)
        except OSError as exc:  # agent absent (ENOENT, ECONNREFUSED), slow (EAGAIN), forbidden (EACCES)
            self.send_errors += 1
            if self.send_errors == 1:
                log.info("lockstep probe: agent socket %s unavailable (%s); counting dropped records", self.path, exc)
            if exc.errno in _QUEUE_FULL:
                rest = backlog[sent:]
                overflow = max(0, len(rest) - BACKLOG_RECORDS)
                self._dropped_in_transport += overflow
                self._backlog = rest[overflow:]
                return True
            self._dropped_in_transport += len(backlog) - sent
            self._backlog = []
            return False
        self._backlog = []
        return True
