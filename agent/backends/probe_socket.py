"""The probe's Unix datagram socket on the agent side, with the kernel's word on who sent each datagram.

SO_PASSCRED makes the kernel attach the sender's pid/uid/gid (SCM_CREDENTIALS) to every datagram; a
process cannot forge them (only root may claim another pid). The directory is created root-owned and not
writable by others, so nobody else can replace the socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CREDENTIALS = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Datagram:
    data: bytes | memoryview  # from ProbeSocket.receive: a view of its buffer, valid until the next receive
    pid: int | None  # None: the kernel attached no credentials
    uid: int | None
    truncated: bool


class ProbeSocket:
    """Bound, credential-passing datagram socket at `<directory>/probe.sock`."""

    def __init__(self, directory: str, socket_mode: int = 0o666, directory_mode: int = 0o755,
                 receive_buffer_bytes: int = 4 << 20, max_datagram_bytes: int = 65536) -> None:  # fmt: skip
        self.path = os.path.join(directory, "probe.sock")
        self.max_datagram_bytes = max_datagram_bytes
        os.makedirs(directory, mode=directory_mode, exist_ok=True)
        info = os.stat(directory)
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            os.chmod(directory, stat.S_IMODE(info.st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
            log.warning("socket directory %s was group/world-writable: tightened it", directory)
        if os.path.lexists(self.path):
            os.unlink(self.path)  # a stale socket from a previous agent
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
        except OSError:
            log.debug("cannot set SO_RCVBUF to %d", receive_buffer_bytes)
        self.sock.bind(self.path)
        os.chmod(self.path, socket_mode)
        self.sock.setblocking(False)
        # One buffer for every datagram, lent to the caller until the next receive (the collector copies the datagram
        # into its sender's queue): recvmsg would allocate max_datagram_bytes per datagram and shrink it.
        self._buffer = bytearray(max_datagram_bytes)
        self._ancillary_bytes = socket.CMSG_SPACE(_CREDENTIALS.size)

    def receive(self) -> Datagram | None:
        """The next queued datagram, or None if none is queued (never blocks). Its data is a view of this socket's
        buffer: use it before the next call."""
        try:
            size, ancillary, flags, _ = self.sock.recvmsg_into([self._buffer], self._ancillary_bytes)
        except BlockingIOError:
            return None
        pid = uid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDENTIALS.size:
                pid, uid, _gid = _CREDENTIALS.unpack_from(payload)
        return Datagram(memoryview(self._buffer)[:size], pid, uid, bool(flags & socket.MSG_TRUNC))

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
