"""The only code that reads per-socket TCP state: a sock_diag netlink dump of the established TCP sockets.

One dump (AF_INET and AF_INET6, `INET_DIAG_INFO`: the kernel's `struct tcp_info`) lists the sockets of the
network namespace the netlink socket was made in, i.e. the agent's own (the node's with hostNetwork). Pure
struct parsing of `linux/inet_diag.h` and `linux/tcp.h`; nothing touches the sockets themselves. A dump that
fails raises SockDiagError.

A dump costs per bucket of the kernel's TCP hash table, not per socket: ~0.5 ms of kernel time per address family
on a VM with 24 GB (the table grows with RAM), even with no socket in it. `SockDiag` skips the family whose TCP
sockets in use are 0 (`/proc/self/net/sockstat6`: on most nodes IPv6) and keeps its netlink socket open.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import socket
import struct
import threading
from typing import NamedTuple

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
TCP_ESTABLISHED = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBBI48s")  # family, protocol, ext, pad, states, inet_diag_sockid (zeros: all)
_MSG = struct.Struct("=B3x2s2s16s16s4xQ20x")  # inet_diag_msg: family, ports and addresses (big-endian), cookie
_RTATTR = struct.Struct("=HH")
# struct tcp_info (linux/tcp.h) up to tcpi_rwnd_limited, kernel >= 4.10: byte 7 bit 0 delivery_rate_app_limited,
# u32 rtt (us) at 68, u64 bytes_acked at 120, u32 min_rtt (us) at 148, u64 delivery_rate (bytes/s) at 160, u64
# busy_time and rwnd_limited (us) at 168 and 176. Sockets of older kernels (a shorter struct) are left out.
_TCP_INFO = struct.Struct("=7xB60xI48xQ20xI8xQQQ")
_NO_RTT = 0xFFFFFFFF  # tcpi_min_rtt before the first RTT sample
_V4_MAPPED = bytes(10) + b"\xff\xff"
_RECV_BYTES = 1 << 16  # one dump datagram is at most a page or two; the kernel never splits a message


class SockDiagError(Exception):
    """The netlink dump failed (no sock_diag in the kernel, not allowed, a malformed reply)."""


class TcpFlow(NamedTuple):
    """One established TCP socket as the kernel sees it at the moment of the dump (a tuple: dumps are big)."""

    local: str  # address, as text
    local_port: int
    remote: str
    remote_port: int
    cookie: int  # the kernel's socket cookie: tells a reused 4-tuple from the old socket
    rtt_seconds: float  # smoothed RTT of what this socket sent (tcpi_rtt)
    bytes_acked: int  # bytes this socket sent that the peer acknowledged (tcpi_bytes_acked), cumulative
    delivery_rate_bytes_per_second: float = 0.0  # of the latest ACKed interval (tcpi_delivery_rate)
    app_limited: bool = True  # that interval ran out of data to send, so its rate is only a lower bound
    busy_seconds: float = 0.0  # cumulative time with data in flight (tcpi_busy_time)
    receive_window_limited_seconds: float = (
        0.0  # ... of which the peer's receive window held it (tcpi_rwnd_limited)
    )
    min_rtt_seconds: float = (
        math.inf  # lowest RTT over net.ipv4.tcp_min_rtt_wlen (5 min), delayed ACKs left out (tcpi_min_rtt)
    )


def tcp_flows() -> list[TcpFlow]:
    """All established TCP sockets (IPv4 and IPv6) of the calling thread's network namespace: one dump."""
    dumper = SockDiag()
    try:
        return dumper.flows()
    finally:
        dumper.close()


# per family: the /proc/self/net file that counts its sockets, and the line of TCP's ("TCP: inuse 3 ...")
SOCKSTAT: dict[int, tuple[str, re.Pattern[bytes]]] = {
    socket.AF_INET: ("sockstat", re.compile(rb"^TCP: inuse (\d+)", re.M)),
    socket.AF_INET6: ("sockstat6", re.compile(rb"^TCP6: inuse (\d+)", re.M)),
}
SOCKSTAT_BYTES = 4096  # more than either file holds


class SockDiag:
    """Repeated dumps: one netlink socket kept open (made again after a failed dump, which may have left replies
    unread), and no dump of a family the kernel counts no TCP socket of (a socket established between the count and
    the dump is seen at the next dump). `proc_net` is the namespace's /proc/<pid>/net. One dump at a time (a scrape
    and an evidence pull may ask at once)."""

    def __init__(self, proc_net: str = "/proc/self/net") -> None:
        self._proc_net = proc_net
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._counts: dict[int, int] = {}  # family -> descriptor of its sockstat file, -1: unreadable

    def flows(self) -> list[TcpFlow]:
        with self._lock:
            if self._sock is None:
                try:
                    self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
                except OSError as error:
                    raise SockDiagError(f"sock_diag dump: {error.strerror or error}") from None
            try:
                return [flow for family in SOCKSTAT if self._in_use(family) for flow in _dump(self._sock, family)]
            except SockDiagError:
                self._close_socket()
                raise
            except OSError as error:
                self._close_socket()
                raise SockDiagError(f"sock_diag dump: {error.strerror or error}") from None

    def _in_use(self, family: int) -> bool:
        """Whether the kernel counts TCP sockets of `family` in use (True when it cannot be read)."""
        name, pattern = SOCKSTAT[family]
        fd = self._counts.get(family)
        if fd is None:
            try:
                fd = os.open(os.path.join(self._proc_net, name), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            self._counts[family] = fd
        if fd < 0:
            return True
        try:
            found = pattern.search(os.pread(fd, SOCKSTAT_BYTES, 0))
        except OSError:
            return True
        return found is None or int(found.group(1)) > 0

    def close(self) -> None:
        with self._lock:
            self._close_socket()
            for fd in self._counts.values():
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._counts.clear()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _dump(sock: socket.socket, family: int) -> list[TcpFlow]:
    request = _REQ_V2.pack(
        family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0, 1 << TCP_ESTABLISHED, b""
    )
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
    )
    sock.send(header + request)
    flows: list[TcpFlow] = []
    while True:
        part, done = parse_reply(sock.recv(_RECV_BYTES))
        flows += part
        if done:
            return flows


def parse_reply(data: bytes) -> tuple[list[TcpFlow], bool]:
    """The flows in one netlink datagram of a dump, and whether it ended the dump (NLMSG_DONE)."""
    flows: list[TcpFlow] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise SockDiagError(f"malformed netlink message (length {length} at {offset} of {len(data)})")
        body = data[offset + _NLMSGHDR.size : offset + length]
        if kind == NLMSG_DONE:
            return flows, True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            raise SockDiagError(f"netlink error: {errno.errorcode.get(code, code)}")
        if kind == SOCK_DIAG_BY_FAMILY:
            flow = _flow(body)
            if flow is not None:
                flows.append(flow)
        offset += (length + 3) & ~3
    return flows, False


def _flow(body: bytes) -> TcpFlow | None:
    """One inet_diag_msg and its attributes; None without a usable tcp_info."""
    if len(body) < _MSG.size:
        raise SockDiagError(f"short inet_diag_msg ({len(body)} bytes)")
    family, sport, dport, src, dst, cookie = _MSG.unpack_from(body)
    info = _attribute(body[_MSG.size :], INET_DIAG_INFO)
    if info is None or len(info) < _TCP_INFO.size:
        return None
    flags, rtt_us, acked, min_rtt_us, delivery, busy_us, rwnd_us = _TCP_INFO.unpack_from(info)
    return TcpFlow(
        _address(family, src),
        int.from_bytes(sport, "big"),
        _address(family, dst),
        int.from_bytes(dport, "big"),
        cookie,
        rtt_us / 1e6,
        acked,
        float(delivery),
        bool(flags & 1),
        busy_us / 1e6,
        rwnd_us / 1e6,
        math.inf if min_rtt_us == _NO_RTT else min_rtt_us / 1e6,
    )


def _address(family: int, raw: bytes) -> str:
    """An address as text; an IPv4-mapped IPv6 one (a dual-stack socket) as IPv4, as its peer sees it."""
    if family == socket.AF_INET:
        return socket.inet_ntop(family, raw[:4])
    if raw.startswith(_V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(family, raw)


def _attribute(data: bytes, wanted: int) -> bytes | None:
    """The payload of the first rtattr of type `wanted` in `data`."""
    offset = 0
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            return None
        if kind == wanted:
            return data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return None
