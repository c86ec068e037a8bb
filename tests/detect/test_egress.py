"""Slow egress from the bulk TCP paths between a job's nodes: the node whose sends queue, and only it, is blamed."""

from __future__ import annotations

import math

from agent.evidence import Evidence
from controller.detect import DetectionConfig, DetectionEngine
from controller.detect.egress import find_slow_egress, job_paths
from tests.detect.helpers import TcpFigures, with_tcp_paths

NODES = ["n0", "n1", "n2", "n3"]
CONFIG = DetectionConfig()
MB = 1e6
APP = None  # application-limited: the sender waited for data, never for the network


def with_paths(paths: TcpFigures, *, t: float = 50.0, samples: int = 5) -> dict[str, Evidence]:
    """The 4-node job of the helpers, each node sending bulk data along the given (sender, receiver) paths,
    each with its RTT in ms and its network-limited delivery rate."""
    return with_tcp_paths(len(NODES), paths, t, samples=samples)


def blamed(
    paths: TcpFigures,
    config: DetectionConfig = CONFIG,
    samples: int = 5,
) -> list[str | None]:
    docs = with_paths(paths, samples=samples)
    edges = job_paths(NODES, docs, config.egress_min_samples)
    return [f.node for f in find_slow_egress("train", NODES, edges, config, None)]


# gloo's ring as seen in the demo with n3's egress shaped to 100 Mbit/s: n3's sends are network-limited; n0's
# sends into n3 wait for n3's queued ACKs; n2 forwards what n3 sends as it comes (application-limited, at times
# with an RTT of ms too); n1 -> n0 is untouched.
SHAPED_RING = {
    ("n0", "n3"): (10.5, APP),
    ("n3", "n2"): (7.6, 10.8 * MB),
    ("n2", "n1"): (1.5, APP),
    ("n1", "n0"): (0.4, APP),
}


def test_a_node_whose_sends_queue_and_are_network_limited_is_blamed() -> None:
    assert blamed(SHAPED_RING) == ["n3"]


def test_the_receiver_of_a_slow_sender_is_not_blamed_even_when_its_sends_wait_too() -> None:
    assert blamed({**SHAPED_RING, ("n2", "n1"): (6.1, APP)}) == ["n3"]


def test_the_sender_to_a_slow_reader_is_not_blamed() -> None:
    # A straggling reader's window fills: its sender is network-limited (receive window) but nothing queues.
    reader = {
        ("n0", "n3"): (0.6, 20 * MB),
        ("n3", "n2"): (0.4, APP),
        ("n2", "n1"): (0.3, APP),
        ("n1", "n0"): (0.4, APP),
    }
    assert blamed(reader) == []


def test_sub_millisecond_jitter_blames_nobody_whatever_the_ratio() -> None:
    jitter = {
        ("n0", "n3"): (0.9, APP),
        ("n3", "n2"): (0.8, 1 * MB),
        ("n2", "n1"): (0.05, APP),
        ("n1", "n0"): (0.04, APP),
    }
    assert blamed(jitter) == []


def test_a_slow_fabric_where_every_path_waits_blames_nobody() -> None:
    assert blamed(dict.fromkeys(SHAPED_RING, (8.0, 10 * MB))) == []


def test_a_queue_that_is_not_network_limited_blames_nobody() -> None:
    assert blamed({**SHAPED_RING, ("n3", "n2"): (7.6, APP)}) == []


def test_two_nodes_that_both_look_slow_blame_nobody() -> None:
    # n1 shaped as well: its sends queue and n2's sends into it wait for its ACKs.
    assert blamed({**SHAPED_RING, ("n2", "n1"): (8.0, APP), ("n1", "n0"): (7.0, 10 * MB)}) == []


def test_a_one_off_burst_seen_in_a_single_socket_dump_is_no_queue() -> None:
    assert blamed(SHAPED_RING, samples=1) == []


def test_a_slow_upload_to_remote_storage_is_ignored() -> None:
    healthy = dict.fromkeys(SHAPED_RING, (0.4, APP))
    uploads = {("n3", "192.0.2.80"): (40.0, 5 * MB), ("n0", "198.51.100.7"): (25.0, 5 * MB)}
    assert {p.rtt_seconds for p in job_paths(NODES, with_paths({**healthy, **uploads})).values()} == {0.0004}
    assert blamed({**healthy, **uploads}) == []


def test_non_finite_figures_from_a_broken_agent_blame_nobody() -> None:
    assert blamed({**SHAPED_RING, ("n3", "n2"): (math.inf, 10 * MB)}) == []
    assert blamed({**SHAPED_RING, ("n3", "n2"): (math.nan, 10 * MB)}) == []
    assert blamed({**SHAPED_RING, ("n3", "n2"): (7.6, math.nan)}) == []


def test_the_rule_can_be_switched_off() -> None:
    assert blamed(SHAPED_RING, DetectionConfig(egress_rtt_enabled=False)) == []


def test_the_engine_reports_the_slow_egress_as_a_slow_link() -> None:
    result = DetectionEngine(CONFIG).step(dict(with_paths(SHAPED_RING)), 50.0)
    (finding,) = result.findings
    assert (finding.reason, finding.node) == ("SlowLink", "n3")
    assert finding.evidence["paths"]["n3->n2"] == {
        "rtt_seconds": 0.0076,
        "delivery_bytes_per_second": 10.8 * MB,
    }
