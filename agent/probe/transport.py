"""The probe's sender: drains the recorder, packs datagrams (agent/probe/wire.py: the identity once in a header,
then short records) and sends them to the node's agent, from the training thread right after a collective launch
or, when the training thread launches none, from a thread of its own.

Sends are non-blocking Unix datagrams to `<socket_dir>/probe.sock`. A slow agent (its socket queue full) costs
a backlog the next flush sends first, bounded at `BACKLOG_RECORDS`; an absent or restarting agent costs dropped
records (counted, reported in every later datagram's header). Never a blocked or failing training step. Every
send names the socket path again, so a restarted agent is picked up without reconnect logic. At interpreter exit
the last flush retries a full queue for up to `FINAL_FLUSH_SECONDS`, so the job's last collectives are delivered
or counted.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections import deque

from agent.probe import wire
from agent.probe.identity import Identity
from agent.probe.recorder import Recorder

log = logging.getLogger(__name__)

SOCKET_NAME = "probe.sock"
BACKLOG_RECORDS = 4096  # records (~170 kB packed) held while the agent's queue is full
FINAL_FLUSH_SECONDS = 0.5  # how long the exit flush retries a full queue (training is over by then)
WATCHDOG_INTERVALS = 2  # the thread flushes when nothing flushed for this many flush intervals
_QUEUE_FULL = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
_COMPLETE, _ISSUE = int(wire.Kind.COMPLETE), int(wire.Kind.ISSUE)


class Sender:
    """Flushes the recorder: completes the untimed collectives whose Work has finished (Recorder.poll), sends
    completed collectives, collectives pending for longer than `pending_report_seconds` (the hang signal: an
    unfinished untimed one stays pending too), and a heartbeat (a datagram without records) when it sent nothing for
    `heartbeat_seconds`.

    While the job runs collectives the training thread flushes, at most every `flush_interval_seconds`, right after
    it launched one (Recorder.launched): that costs no thread wakeup and no GIL hand-off, and the flush overlaps the
    collective's transfer. A wake-up of a thread of its own costs 60-120 us of CPU on the 2-core development VM and
    takes the GIL from a computing training thread, so the sender's thread flushes only when nothing flushed for
    WATCHDOG_INTERVALS flush intervals: a hung training thread (whose hang must be reported), an idle one
    (heartbeats), one whose collectives the probe does not see or sees only in the compiled all-reduce kernel (which
    runs no Python: agent/probe/compiled.py); it sleeps until then."""

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
        self._packer = wire.Packer(identity)
        self._backlog: deque[tuple[bytes, int]] = deque()  # datagrams the agent's full queue did not take yet, records
        self._backlog_records = 0
        self._reported_pending: set[tuple[str, int]] = set()
        self._last_sent = 0.0  # Unix s of the last datagram packed: any datagram tells the agent the process lives
        self._flushing = threading.Lock()  # the training thread and this sender's thread both flush
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="lockstep-probe", daemon=True)

    @property
    def dropped(self) -> int:
        """Records lost so far: recorder queue full plus sends the agent did not take."""
        return self.recorder.dropped + self._dropped_in_transport

    @property
    def backlogged(self) -> int:
        """Records waiting for room in the agent's socket queue."""
        return self._backlog_records

    def start(self) -> None:
        """Flush from now on: on the training thread at its collective launches, on this sender's thread when they
        stop."""
        self.recorder.flusher = self._flush_unless_flushing
        self.recorder.flush_due = time.monotonic() + self.flush_interval_seconds
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last flush (called at interpreter exit)."""
        if self.recorder.flusher == self._flush_unless_flushing:
            self.recorder.flusher = None
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    @property
    def _last_flush(self) -> float:
        """When the last flush began (monotonic s): the recorder's next due time less one interval."""
        return self.recorder.flush_due - self.flush_interval_seconds

    def _run(self) -> None:
        watchdog_seconds = WATCHDOG_INTERVALS * self.flush_interval_seconds
        while not self._stop.wait(max(self._last_flush + watchdog_seconds - time.monotonic(), 0.0)):
            if time.monotonic() - self._last_flush >= watchdog_seconds:  # else the training thread flushed meanwhile
                self._flush_safely()
        self._flush_safely()
        deadline = time.monotonic() + FINAL_FLUSH_SECONDS
        while self._backlog and time.monotonic() < deadline:
            time.sleep(0.005)
            self._send_backlog()
        while self._backlog:
            self._drop(self._backlog.popleft()[1])
        self._sock.close()

    def _flush_safely(self, wait: bool = True) -> None:
        if not self._flushing.acquire(blocking=wait):
            return  # the other thread flushes right now
        try:
            self.flush()
        except Exception:  # the probe must never take the training process down
            log.debug("lockstep probe flush failed", exc_info=True)
        finally:
            self._flushing.release()

    def _flush_unless_flushing(self) -> None:
        """The training thread's flush (Recorder.launched): never waits for the sender's thread."""
        self._flush_safely(wait=False)

    def flush(self) -> None:
        """Send what the recorder holds now (a heartbeat datagram when it holds nothing and one is due)."""
        self.recorder.flush_due = time.monotonic() + self.flush_interval_seconds
        self.recorder.poll()
        now = time.time()
        rows: list[wire.Row] = []
        completed = self.recorder.completed
        while completed:
            token, completed_at = completed.popleft()
            rows.append((_COMPLETE, token, completed_at))
        pending = self.recorder.pending.copy()
        self._reported_pending &= pending.keys()
        newly_pending = []
        for key, token in pending.items():
            if key not in self._reported_pending and now - token[4] >= self.pending_report_seconds:
                newly_pending.append(key)
                rows.append((_ISSUE, token, 0.0))
        if rows or (not self._backlog and now - self._last_sent >= self.heartbeat_seconds):  # a backlog says it too
            self._last_sent = now
            for datagram, records in self._packer.pack(rows, self.dropped):
                self._backlog.append((datagram, records))
                self._backlog_records += records
        if self._send_backlog():  # else report them again next flush: a restarted agent still learns of the hang
            self._reported_pending.update(newly_pending)

    def _send_backlog(self) -> bool:
        """Send the backlog a datagram at a time; False if the agent is absent (those records are dropped).
        A full queue keeps the rest for the next flush, the oldest datagrams dropped beyond BACKLOG_RECORDS."""
        backlog = self._backlog
        try:
            while backlog:
                datagram, records = backlog[0]
                self._sock.sendto(datagram, self.path)
                backlog.popleft()
                self._backlog_records -= records
                self.sent_records += records
        except OSError as exc:  # agent absent (ENOENT, ECONNREFUSED), slow (EAGAIN), forbidden (EACCES)
            self.send_errors += 1
            if self.send_errors == 1:
                log.info("lockstep probe: agent socket %s unavailable (%s); counting dropped records", self.path, exc)
            if exc.errno in _QUEUE_FULL:
                while self._backlog_records > BACKLOG_RECORDS:
                    self._drop(backlog.popleft()[1])
                return True
            while backlog:
                self._drop(backlog.popleft()[1])
            return False
        return True

    def _drop(self, records: int) -> None:
        self._backlog_records -= records
        self._dropped_in_transport += records
