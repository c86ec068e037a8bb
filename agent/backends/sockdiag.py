"""The only code that reads per-socket TCP state: a sock_diag netlink dump of the established TCP sockets.

One dump (AF_INET and AF_INET6, `INET_DIAG_INFO`: the kernel's `struct tcp_info`) lists the sockets of the
network namespace the netlink socket was made in, i.e. the agent's own (the node's with hostNetwork). Pure
struct parsing of `linux/inet_diag.h` and `linux/tcp.h`; nothing touches the sockets themselves. A dump that
fails raises SockDiagError.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass

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
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")  # inet_diag_msg: ports and addresses are big-endian bytes
_RTATTR = struct.Struct("=HH")
# struct tcp_info offsets (linux/tcp.h): u32 rtt/rttvar (us) at 68/72, u64 bytes_acked/bytes_received at 120/128,
# u32 min_rtt (us) at 148, u64 delivery_rate (bytes/s) at 160 (kernel >= 4.9; older kernels send a shorter struct);
# u64 busy_time and rwnd_limited (us) at 168/176 (kernel >= 4.10); bit 0 of byte 7 is
# tcpi_delivery_rate_app_limited.
_RTT = struct.Struct("=II")
_BYTES = struct.Struct("=QQ")
_MIN_RTT = struct.Struct("=I")
_DELIVERY_RATE = struct.Struct("=Q")
_BUSY = struct.Struct("=QQ")
_TCP_INFO_MIN_LEN = 136
_RECV_BYTES = 1 << 16  # one dump datagram is at most a page or two; the kernel never splits a message


class SockDiagError(Exception):
    """The netlink dump failed (no sock_diag in the kernel, not allowed, a malformed reply)."""


@dataclass(frozen=True)
class TcpFlow:
    """One established TCP socket as the kernel sees it at the moment of the dump."""

    local: str  # address, as text
    local_port: int
    remote: str
    remote_port: int
    cookie: int  # the kernel's socket cookie: tells a reused 4-tuple from the old socket
    rtt_seconds: float  # smoothed RTT of what this socket sent (tcpi_rtt)
    min_rtt_seconds: float | None  # lowest RTT seen on the socket (tcpi_min_rtt); None on old kernels
    bytes_acked: int  # bytes this socket sent that the peer acknowledged (tcpi_bytes_acked), cumulative
    bytes_received: int  # cumulative (tcpi_bytes_received)
    delivery_rate_bytes_per_second: float | None = None  # of the latest ACKed interval (tcpi_delivery_rate)
    app_limited: bool = True  # that interval ran out of data to send, so its rate is only a lower bound
    busy_seconds: float = 0.0  # cumulative time with data in flight (tcpi_busy_time); 0 on old kernels
    receive_window_limited_seconds: float = (
        0.0  # ... of which the peer's receive window held it (tcpi_rwnd_limited)
    )


def tcp_flows() -> list[TcpFlow]:
    """All established TCP sockets (IPv4 and IPv6) of the calling thread's network namespace."""
    try:
        with socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG
        ) as sock:
            return [flow for family in (socket.AF_INET, socket.AF_INET6) for flow in _dump(sock, family)]
    except OSError as error:
        raise SockDiagError(f"sock_diag dump: {error.strerror or error}") from None


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
    family, _, _, _, sport, dport, src, dst, _, cookie, *_ = _MSG.unpack_from(body)
    info = _attribute(body[_MSG.size :], INET_DIAG_INFO)
    if info is None or len(info) < _TCP_INFO_MIN_LEN:
        return None
    rtt_us, _ = _RTT.unpack_from(info, 68)
    acked, received = _BYTES.unpack_from(info, 120)
    min_rtt = _MIN_RTT.unpack_from(info, 148)[0] / 1e6 if len(info) >= 152 else None
    delivery = float(_DELIVERY_RATE.unpack_from(info, 160)[0]) if len(info) >= 168 else None
    busy_us, rwnd_us = _BUSY.unpack_from(info, 168) if len(info) >= 184 else (0, 0)
    width = 4 if family == socket.AF_INET else 16
    return TcpFlow(
        local=str(ipaddress.ip_address(src[:width])),
        local_port=int.from_bytes(sport, "big"),
        remote=str(ipaddress.ip_address(dst[:width])),
        remote_port=int.from_bytes(dport, "big"),
        cookie=int.from_bytes(cookie, "little"),
        rtt_seconds=rtt_us / 1e6,
        min_rtt_seconds=min_rtt,
        bytes_acked=acked,
        bytes_received=received,
        delivery_rate_bytes_per_second=delivery,
        app_limited=delivery is None or bool(info[7] & 1),
        busy_seconds=busy_us / 1e6,
        receive_window_limited_seconds=rwnd_us / 1e6,
    )


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
