"""The probe's sender thread: drains the recorder, packs wire records and sends them to the node's agent.

Sends are non-blocking Unix datagrams to `<socket_dir>/probe.sock`. An absent, restarting or slow agent
costs dropped records (counted, reported in every later record), never a blocked or failing training step;
every send names the socket path again, so a restarted agent is picked up without reconnect logic.
"""

from __future__ import annotations

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


class Sender:
    """Background thread: every `flush_interval_seconds` it sends completed collectives, collectives pending
    for longer than `pending_report_seconds` (the hang signal), and a heartbeat every `heartbeat_seconds`."""

    def __init__(
        self,
        recorder: Recorder,
        identity: Identity,
        socket_dir: str,
        flush_interval_seconds: float = 0.05,
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
        step = wire.MAX_RECORDS_PER_DATAGRAM
        delivered = [self._send(records[start : start + step]) for start in range(0, len(records), step)]
        if all(delivered):  # else report them again next flush: a restarted agent still learns of the hang
            self._reported_pending.update(newly_pending)

    def _send(self, records: list[bytes]) -> bool:
        try:
            self._sock.sendto(b"".join(records), self.path)
            self.sent_records += len(records)
            return True
        except OSError as exc:  # agent absent (ENOENT, ECONNREFUSED), slow (EAGAIN), forbidden (EACCES)
            self.send_errors += 1
            self._dropped_in_transport += len(records)
            if self.send_errors == 1:
                log.info("lockstep probe: agent socket %s unavailable (%s); counting dropped records", self.path, exc)
            return False
