"""Real interfaces: a veth pair into a network namespace made by the test; the agent's counters follow real traffic."""

from __future__ import annotations

import socket
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import VethPair, http_get, ip, wait_until

pytestmark = pytest.mark.root


def neighbour_state(veth: VethPair) -> bytes:
    return subprocess.run(
        ["ip", "neigh", "show", veth.peer_address, "dev", veth.host_side], capture_output=True, timeout=30
    ).stdout


def transmitted_bytes(url: str, interface: str) -> float:
    for family in text_string_to_metric_families(http_get(url + "/metrics")[2]):
        for sample in family.samples:
            if sample.name == "lockstep_net_transmit_bytes_total" and sample.labels["interface"] == interface:
                return sample.value
    raise AssertionError(f"{interface} not exported")


def test_bytes_sent_over_a_veth_show_up_in_the_agents_transmit_counter(start_agent, veth: VethPair) -> None:
    url = start_agent("--no-collector.nvml", "--node-name", "veth-test")
    payload, datagrams = b"x" * 1000, 500
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        # resolve the peer's address first: datagrams queued behind ARP beyond its small queue are dropped
        sender.sendto(b"warm-up", (veth.peer_address, 9))
        wait_until(lambda: b"REACHABLE" in neighbour_state(veth), timeout=10, what="ARP to resolve")
        before = transmitted_bytes(url, veth.host_side)
        for _ in range(datagrams):
            sender.sendto(payload, (veth.peer_address, 9))  # discard port; nobody needs to listen
    sent = len(payload) * datagrams
    after = transmitted_bytes(url, veth.host_side)
    assert after - before >= sent
    assert after - before < sent * 1.2, "headers add a little, not a lot"


def test_an_interface_deleted_while_the_agent_runs_disappears_from_its_metrics(start_agent, veth: VethPair) -> None:
    url = start_agent("--no-collector.nvml", "--node-name", "veth-test")
    assert transmitted_bytes(url, veth.host_side) >= 0
    ip("link", "del", veth.host_side)
    body = http_get(url + "/metrics")[2]
    network_lines = [line for line in body.splitlines() if line.startswith("lockstep_net_")]
    assert network_lines, "the other interfaces are still served"
    assert not [line for line in network_lines if veth.host_side in line]
    assert 'lockstep_collector_success{collector="network"} 1.0' in body


def tcp_retransmitted(url: str) -> float:
    for family in text_string_to_metric_families(http_get(url + "/metrics")[2]):
        for sample in family.samples:
            if sample.name == "lockstep_host_tcp_retransmitted_segments_total":
                return sample.value
    raise AssertionError("no TCP retransmit counter")


def test_a_link_shaped_with_tc_tbf_shows_up_as_tcp_retransmits(start_agent, veth: VethPair, python: str) -> None:
    """The demo's slow-link fault: a token bucket that drops what exceeds it makes TCP resend."""
    url = start_agent("--no-collector.nvml", "--node-name", "tbf-test")
    subprocess.run(
        ["tc", "qdisc", "add", "dev", veth.host_side, "root", "tbf", "rate", "2mbit", "burst", "8kb", "limit", "16kb"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = subprocess.Popen(
        ["ip", "netns", "exec", veth.namespace, python, "-c",
         "import socket; s = socket.create_server(('0.0.0.0', 5001)); c, _ = s.accept()\n"
         "while c.recv(65536): pass"],
    )  # fmt: skip
    try:
        before = tcp_retransmitted(url)
        connections: list[socket.socket] = []

        def connect() -> bool:
            try:
                connections.append(socket.create_connection((veth.peer_address, 5001), timeout=30))
            except ConnectionRefusedError:  # the server is still starting
                return False
            return True

        wait_until(connect, timeout=30, what="the server in the namespace to listen")
        with connections[0] as client:
            client.sendall(b"x" * 1_500_000)  # ~6 s at 2 Mbit/s, far more than the bucket holds
        wait_until(lambda: tcp_retransmitted(url) > before, timeout=30, what="TCP retransmits to rise")
    finally:
        server.kill()
        server.wait()
