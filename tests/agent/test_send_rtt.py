"""TCP send RTT: sock_diag dumps of real sockets, and which flows count as the node's bulk sends."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.backends.sockdiag import SockDiag, SockDiagError, TcpFlow, parse_reply, tcp_flows
from agent.collectors.send_rtt import MIN_BYTES, SendRtt
from agent.evidence import TcpPath
from tests.agent.conftest import VethPair

PAYLOAD = 4 * 1024 * 1024


@pytest.fixture
def connected_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted


def test_a_dump_shows_an_established_socket_with_its_rtt_and_acknowledged_bytes(
    connected_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = connected_pair
    reader = threading.Thread(target=lambda: drain(accepted, PAYLOAD))
    reader.start()
    client.sendall(b"x" * PAYLOAD)
    reader.join(timeout=30)
    port = client.getsockname()[1]
    (flow,) = [f for f in tcp_flows() if f.local_port == port and f.remote_port == accepted.getsockname()[1]]
    assert (flow.local, flow.remote) == ("127.0.0.1", "127.0.0.1")
    assert flow.bytes_acked >= PAYLOAD  # the handshake's byte counts too
    assert 0 < flow.rtt_seconds < 1.0
    assert 0 < flow.min_rtt_seconds <= flow.rtt_seconds
    (back,) = [f for f in tcp_flows() if f.local_port == accepted.getsockname()[1] and f.remote_port == port]
    assert back.bytes_acked < PAYLOAD  # the receiving end sent next to nothing


@pytest.fixture
def ipv6_client_port() -> Iterator[int]:
    """The local port of an established IPv6 loopback connection."""
    with (
        socket.create_server(("::1", 0), family=socket.AF_INET6) as server,
        socket.create_connection(server.getsockname()[:2]) as client,
    ):
        accepted, _ = server.accept()
        with accepted:
            yield client.getsockname()[1]


def test_ipv6_sockets_are_dumped_too(ipv6_client_port: int) -> None:
    assert [f.remote for f in tcp_flows() if f.local_port == ipv6_client_port] == ["::1"]


def sockstat_dir(tmp_path: Path, tcp: int, tcp6: int) -> str:
    """A /proc/<pid>/net stand-in with only the socket counts SockDiag reads."""
    (tmp_path / "sockstat").write_text(f"sockets: used 9\nTCP: inuse {tcp} orphan 0 tw 0 alloc 3 mem 1\nUDP: inuse 0 mem 0\n")
    (tmp_path / "sockstat6").write_text(f"TCP6: inuse {tcp6}\nUDP6: inuse 0\n")
    return str(tmp_path)


def test_repeated_dumps_skip_a_family_the_kernel_counts_no_tcp_socket_of(tmp_path: Path, ipv6_client_port: int) -> None:
    port = ipv6_client_port
    real = SockDiag()
    for _ in range(2):  # the netlink socket is kept between dumps
        assert [f.remote for f in real.flows() if f.local_port == port] == ["::1"]
    real.close()
    assert [f.remote for f in real.flows() if f.local_port == port] == ["::1"]  # opened again
    real.close()
    told_none = SockDiag(sockstat_dir(tmp_path, tcp=1, tcp6=0))
    assert [f for f in told_none.flows() if f.local_port == port] == []  # IPv6 not dumped
    told_some = SockDiag(sockstat_dir(tmp_path, tcp=0, tcp6=2))
    assert [f.remote for f in told_some.flows() if f.local_port == port] == ["::1"]
    unreadable = SockDiag(str(tmp_path / "missing"))  # no counts: every family is dumped
    assert [f.remote for f in unreadable.flows() if f.local_port == port] == ["::1"]
    for dumper in (told_none, told_some, unreadable):
        dumper.close()


def test_repeated_dumps_skip_ipv4_when_the_kernel_counts_no_ipv4_tcp_socket(
    tmp_path: Path, connected_pair: tuple[socket.socket, socket.socket]
) -> None:
    port = connected_pair[0].getsockname()[1]
    seen = SockDiag(sockstat_dir(tmp_path, tcp=3, tcp6=0))
    assert [f.remote for f in seen.flows() if f.local_port == port] == ["127.0.0.1"]
    skipped = SockDiag(sockstat_dir(tmp_path, tcp=0, tcp6=0))
    assert skipped.flows() == []
    seen.close()
    skipped.close()


def test_an_ipv4_peer_of_a_dual_stack_socket_shows_as_ipv4() -> None:
    with (
        socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server,
        socket.create_connection(("127.0.0.1", server.getsockname()[1])) as client,
    ):
        accepted, _ = server.accept()
        with accepted:
            port = client.getsockname()[1]
            assert [f.local for f in tcp_flows() if f.remote_port == port] == ["127.0.0.1"]


def drain(sock: socket.socket, total: int) -> None:
    while total > 0:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        total -= len(chunk)


def test_a_netlink_error_or_truncated_reply_is_an_error_not_a_crash() -> None:
    error = (
        (36).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + bytes(10)
        + (-13).to_bytes(4, "little", signed=True)
    )
    with pytest.raises(SockDiagError, match="EACCES"):
        parse_reply(error + bytes(16))
    with pytest.raises(SockDiagError, match="malformed"):
        parse_reply((400).to_bytes(4, "little") + (20).to_bytes(2, "little") + bytes(30))


def flow(
    remote: str, cookie: int, acked: int, rtt_ms: float, local: str = "10.0.0.1", **state: float | bool
) -> TcpFlow:
    return TcpFlow(local, 40000 + cookie, remote, 29500, cookie, rtt_ms / 1e3, acked, **state)  # type: ignore[arg-type]


class Dumps:
    """Successive socket dumps, as the kernel would return them."""

    def __init__(self, *dumps: list[TcpFlow]) -> None:
        self.dumps = list(dumps)

    def __call__(self) -> list[TcpFlow]:
        return self.dumps.pop(0)


def test_only_the_busiest_flow_per_remote_address_counts_and_idle_and_loopback_flows_do_not() -> None:
    first = [
        flow("10.0.0.2", 1, 0, 5),
        flow("10.0.0.2", 2, 0, 0.3),
        flow("10.0.0.3", 3, 0, 9),
        flow("127.0.0.1", 4, 0, 7, "127.0.0.1"),
    ]
    second = [
        flow("10.0.0.2", 1, MIN_BYTES, 5),  # bulk, but less than the other flow to the same address
        flow("10.0.0.2", 2, 10 * MIN_BYTES, 0.3),
        flow("10.0.0.3", 3, MIN_BYTES // 2, 9),  # control traffic: not a bulk send
        flow("127.0.0.1", 4, 100 * MIN_BYTES, 7, "127.0.0.1"),
        flow("10.0.0.4", 5, 100 * MIN_BYTES, 7),  # new since the last dump: its bytes are not all recent
    ]
    rtt = SendRtt(Dumps(first, second), window_seconds=10.0)
    rtt.sample()
    assert rtt.paths() == []
    rtt.sample()
    (path,) = rtt.paths()
    assert (path.local_address, path.remote_address, path.rtt_seconds, path.samples) == (
        "10.0.0.1",
        "10.0.0.2",
        0.0003,
        1,
    )
    assert path.bytes_per_second == pytest.approx(10 * MIN_BYTES / 10.0)


def test_a_path_reports_the_lower_quartile_of_its_samples_and_forgets_samples_past_the_window() -> None:
    dumps = [[flow("10.0.0.2", 1, i * MIN_BYTES, rtt)] for i, rtt in enumerate([1, 1, 1, 1, 9])]
    rtt = SendRtt(Dumps(*dumps), window_seconds=10.0)
    for _ in dumps:
        rtt.sample()
    (path,) = rtt.paths()
    assert path.samples == 4 and path.rtt_seconds == pytest.approx(0.001)


def test_a_path_reports_the_lowest_minimum_rtt_of_its_samples_and_none_before_any_rtt_sample() -> None:
    dumps = [
        [flow("10.0.0.2", 1, i * MIN_BYTES, 9, min_rtt_seconds=m)] for i, m in enumerate([1e-4, 3e-5, 5e-5])
    ]
    rtt = SendRtt(Dumps(*dumps), window_seconds=10.0)
    for _ in dumps:
        rtt.sample()
    (path,) = rtt.paths()
    assert path.min_rtt_seconds == 3e-5
    unmeasured = SendRtt(Dumps([flow("10.0.0.2", 1, 0, 9)], [flow("10.0.0.2", 1, MIN_BYTES, 9)]))
    unmeasured.sample()
    unmeasured.sample()
    assert unmeasured.paths()[0].min_rtt_seconds is None


def test_only_sends_paced_by_the_network_report_a_delivery_rate() -> None:
    def rate_of(**state: float | bool) -> float | None:
        start = flow("10.0.0.2", 1, 0, 5, busy_seconds=10.0, receive_window_limited_seconds=1.0)
        rtt = SendRtt(Dumps([start], [flow("10.0.0.2", 1, MIN_BYTES, 5, **state)]))
        rtt.sample()
        rtt.sample()
        (path,) = rtt.paths()
        return path.delivery_bytes_per_second

    network = {
        "delivery_rate_bytes_per_second": 1e6,
        "busy_seconds": 11.0,
        "receive_window_limited_seconds": 1.1,
    }
    assert rate_of(**network, app_limited=False) == 1e6
    assert rate_of(**network, app_limited=True) is None  # the sender ran out of data
    # A slow reader: its receive window held the sender for most of the last second of sending.
    assert rate_of(**{**network, "receive_window_limited_seconds": 1.9}, app_limited=False) is None


def test_a_path_carries_at_least_its_highest_delivery_rate_however_limited() -> None:
    rates = [(3e9, True), (1e8, False), (2e9, True)]  # bursts out of data, one paced by the network
    dumps = [
        [flow("10.0.0.2", 1, i * MIN_BYTES, 1, delivery_rate_bytes_per_second=r, app_limited=app)]
        for i, (r, app) in enumerate([(0.0, True), *rates])
    ]
    rtt = SendRtt(Dumps(*dumps), window_seconds=10.0)
    for _ in dumps:
        rtt.sample()
    (path,) = rtt.paths()
    assert (path.delivery_bound_bytes_per_second, path.delivery_bytes_per_second) == (3e9, 1e8)


def test_samples_older_than_the_window_are_forgotten() -> None:
    rtt = SendRtt(Dumps([flow("10.0.0.2", 1, 0, 1)], [flow("10.0.0.2", 1, MIN_BYTES, 1)]), window_seconds=0.0)
    rtt.sample()
    rtt.sample()
    assert rtt.paths() == []


def send_and_sample(
    veth: VethPair, python: str, env: dict[str, str], reader: str, payload: int
) -> list[TcpPath]:
    """Send `payload` bytes to a server in the namespace (`reader`: its loop over the accepted socket `c`),
    dumping the sockets every 0.2 s; the bulk send paths seen."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", veth.namespace, python, "-c",
         "import socket, time; s = socket.create_server(('0.0.0.0', 0)); print(s.getsockname()[1], flush=True)\n"
         f"c, _ = s.accept()\n{reader}"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rtt = SendRtt(tcp_flows, window_seconds=60.0)
        with socket.create_connection((veth.peer_address, port), timeout=30) as client:
            sender = threading.Thread(target=client.sendall, args=(b"x" * payload,))
            sender.start()
            while sender.is_alive():
                rtt.sample()
                sender.join(timeout=0.2)
        return [p for p in rtt.paths() if p.remote_address == veth.peer_address]
    finally:
        server.kill()
        server.wait()


@pytest.mark.root
def test_a_shaped_egress_shows_as_a_network_limited_path_with_an_rtt_of_milliseconds(
    veth: VethPair, python: str, subprocess_env: dict[str, str]
) -> None:
    """The demo's slow link without loss: tc tbf queues what the node sends (20 Mbit/s, a 20 ms queue)."""
    argv = ["tc", "qdisc", "add", "dev", veth.host_side, "root", "tbf"]
    subprocess.run([*argv, "rate", "20mbit", "burst", "32kbit", "latency", "20ms"], check=True, timeout=30)
    # ~3 s at 20 Mbit/s
    (path,) = send_and_sample(veth, python, subprocess_env, "while c.recv(65536): pass", 8_000_000)
    assert path.rtt_seconds >= 0.002  # the queue: a veth alone answers in tens of microseconds ...
    assert path.min_rtt_seconds is not None and path.min_rtt_seconds < 0.001  # ... as it did before the queue
    assert path.delivery_bytes_per_second is not None  # the network, not the sender, set the pace ...
    assert path.delivery_bytes_per_second < 2 * 20e6 / 8  # ... at about the shaped rate


@pytest.mark.root
def test_a_slow_reader_does_not_make_its_sender_look_network_limited(
    veth: VethPair, python: str, subprocess_env: dict[str, str]
) -> None:
    """A receiver that reads slowly (a straggler) holds its sender by its receive window: no slow egress."""
    slow_reader = "while c.recv(16384): time.sleep(0.01)"  # ~1.6 MB/s
    (path,) = send_and_sample(veth, python, subprocess_env, slow_reader, 6_000_000)
    assert path.delivery_bytes_per_second is None
