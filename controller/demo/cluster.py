"""The demo's nodes: one network namespace per node on a private bridge (as root), or plain localhost ports.

Everything made here carries the run's unique prefix (`lsdemo-` + a short random id) and is removed by
`Cluster.teardown()`, which is safe to call twice and after a half-built cluster.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from controller.demo.stale import NETNS_ETC, record_owner

log = logging.getLogger(__name__)

NAME_PREFIX = "lsdemo-"
AGENT_PORT = 9445  # the agent's default port; each namespace has its own port space


class ClusterError(RuntimeError):
    """The cluster could not be built (a missing tool, a failed `ip` command)."""


@dataclass(frozen=True)
class Node:
    """One demo node: its Kubernetes name, where its agent listens, and its private files."""

    name: str
    index: int
    ip: str
    agent_port: int
    netns: str | None  # None when nodes are localhost ports (not root)
    interface: str  # the node's interface carrying the job's traffic (eth0 in a namespace, lo otherwise)
    host_interface: str | None  # the bridge side of the node's veth pair
    directory: Path  # socket dir, fake-NVML config, slowdown file

    @property
    def agent_url(self) -> str:
        return f"http://{self.ip}:{self.agent_port}"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "run"

    @property
    def nvml_config(self) -> Path:
        return self.directory / "fake-nvml.json"

    def exec_prefix(self) -> list[str]:
        """Argv prefix that runs a command on this node (inside its namespace)."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.stdout.strip()}")


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    networks = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            networks.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return networks


def _pick_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no interface on this machine uses (concurrent runs pick different ones)."""
    used = _used_networks()
    for _ in range(200):
        candidate = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise ClusterError("no free 10.x.y.0/24 subnet for the demo bridge")


@dataclass
class Cluster:
    """A set of demo nodes and the bridge joining them; `build()` then `teardown()`."""

    node_count: int
    work_dir: Path
    use_namespaces: bool
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    nodes: list[Node] = field(default_factory=list)
    bridge: str | None = None
    subnet: ipaddress.IPv4Network | None = None
    _made_namespaces: list[str] = field(default_factory=list)
    _made_links: list[str] = field(default_factory=list)
    _made_etc: list[Path] = field(default_factory=list)
    _owner_record: Path | None = None

    @property
    def prefix(self) -> str:
        return f"{NAME_PREFIX}{self.run_id}"

    @property
    def gateway_ip(self) -> str:
        """Address of the machine itself as the nodes see it (where the controller and Prometheus live)."""
        return str(next(self.subnet.hosts())) if self.subnet else "127.0.0.1"

    def build(self) -> None:
        if self.use_namespaces:
            for tool in ("ip", "tc"):
                if shutil.which(tool) is None:
                    raise ClusterError(f"`{tool}` not found: install the Debian package iproute2")
            self._owner_record = record_owner(self.prefix, self.work_dir)
            self._build_bridge()
        for index in range(self.node_count):
            self.nodes.append(self._build_node(index))

    def _build_bridge(self) -> None:
        self.subnet = _pick_subnet()
        bridge = f"{self.prefix}-br"
        _run(["ip", "link", "add", bridge, "type", "bridge"])
        self._made_links.append(bridge)
        self.bridge = bridge
        # With br_netfilter loaded, bridged frames would traverse the host's iptables; keep the demo out of it.
        subprocess.run(
            ["ip", "link", "set", bridge, "type", "bridge", "nf_call_iptables", "0"], capture_output=True
        )
        _run(["ip", "addr", "add", f"{self.gateway_ip}/{self.subnet.prefixlen}", "dev", bridge])
        _run(["ip", "link", "set", bridge, "up"])

    def _build_node(self, index: int) -> Node:
        name = f"{self.prefix}-node{index}"
        directory = self.work_dir / f"node{index}"
        (directory / "run").mkdir(parents=True, exist_ok=True)
        os.chmod(directory / "run", 0o700)
        if not self.use_namespaces:
            return Node(name, index, "127.0.0.1", free_port(), None, "lo", None, directory)
        assert self.subnet is not None and self.bridge is not None
        ip = self._node_ip(index)
        host_side, node_side = f"{self.prefix}-v{index}", f"{self.prefix}-p{index}"
        _run(["ip", "netns", "add", name])
        self._made_namespaces.append(name)
        self._write_netns_etc(name)
        _run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", node_side])
        self._made_links.append(host_side)
        _run(["ip", "link", "set", node_side, "netns", name])
        _run(["ip", "-n", name, "link", "set", node_side, "name", "eth0"])
        _run(["ip", "-n", name, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", name, "link", "set", "eth0", "up"])
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        _run(["ip", "-n", name, "route", "add", "default", "via", self.gateway_ip])
        _run(["ip", "link", "set", host_side, "master", self.bridge])
        _run(["ip", "link", "set", host_side, "up"])
        return Node(name, index, ip, AGENT_PORT, name, "eth0", host_side, directory)

    def _node_ip(self, index: int) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 2 + index)

    def _write_netns_etc(self, netns: str) -> None:
        """Name resolution inside the namespace (`ip netns exec` bind-mounts /etc/netns/NAME/*): no DNS server
        is reachable from the bridge, and gloo's reverse lookups would wait for its timeout."""
        etc = NETNS_ETC / netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            "# lockstep demo: no DNS inside the demo namespaces\noptions timeout:1 attempts:1\n"
        )
        hosts = ["127.0.0.1 localhost"] + [
            f"{self._node_ip(i)} {self.prefix}-node{i}" for i in range(self.node_count)
        ]
        (etc / "hosts").write_text("\n".join(hosts) + "\n")
        self._made_etc.append(etc)

    def teardown(self) -> list[str]:
        """Remove every namespace and link this cluster made; returns what could not be removed."""
        leftovers = []
        for netns in reversed(self._made_namespaces):
            # Deleting the namespace deletes the veth pair and any qdisc on it.
            if subprocess.run(["ip", "netns", "del", netns], capture_output=True).returncode != 0:
                leftovers.append(f"netns {netns}")
        self._made_namespaces.clear()
        for link in reversed(self._made_links):
            exists = subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0
            if exists and subprocess.run(["ip", "link", "del", link], capture_output=True).returncode != 0:
                leftovers.append(f"link {link}")
        self._made_links.clear()
        for etc in self._made_etc:
            shutil.rmtree(etc, ignore_errors=True)
        self._made_etc.clear()
        if self._owner_record is not None and not leftovers:
            self._owner_record.unlink(missing_ok=True)
            self._owner_record = None
        return leftovers
