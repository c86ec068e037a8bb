"""Slow egress whose peers trickle: in a collective paced by the slow node, every other path of the job carries
its data as it arrives (application-limited), and their smoothed RTT rises to the queue's level in some windows
(receivers' delayed ACKs, host scheduling), while their minimum RTT stays the fabric's. Figures from the demo
under CPU load (4 ranks, gloo ring n0 -> n3 -> n2 -> n1 -> n0, n1's egress shaped to 100 Mbit/s)."""

from __future__ import annotations

from agent.evidence import Evidence
from controller.detect import DetectionConfig, DetectionEngine
from controller.detect.egress import find_slow_egress, job_paths
from controller.model import Verdict
from tests.detect.helpers import TcpFigures, with_tcp_paths

NODES = ["n0", "n1", "n2", "n3"]
CONFIG = DetectionConfig()
MBIT = 1e6 / 8
APP = None  # application-limited: the sender waited for data, never for the network
VETH_MIN_RTT_MS = 0.004  # tcpi_min_rtt of every path on the demo's veth bridge
VETH_BURST = 130e9 / 8  # tcpi_delivery_rate of application-limited bursts on it


# A window in which the job's other paths trickle at the queue's level: n1's sends (7.9 ms) are not 3x the
# fastest path not touching n1 (n0 -> n3, 5.9 ms) by its smoothed RTT; n2 -> n1 waits for n1's queued ACKs.
INFLATED_PEERS: TcpFigures = {
    ("n1", "n0"): (7.9, 53.5 * MBIT),
    ("n0", "n3"): (5.93, APP),
    ("n3", "n2"): (5.95, APP),
    ("n2", "n1"): (10.95, APP),
}
# ... and one in which they do not (the windows before and after it).
QUIET_PEERS: TcpFigures = {
    ("n1", "n0"): (6.25, 90.8 * MBIT),
    ("n0", "n3"): (0.77, APP),
    ("n3", "n2"): (0.72, APP),
    ("n2", "n1"): (8.05, APP),
}


def evidence(
    paths: TcpFigures, t: float, min_rtt_ms: float | None = VETH_MIN_RTT_MS, burst: float | None = VETH_BURST
) -> dict[str, Evidence]:
    """The 4-node job at time t, each node sending along its paths with the given figures (two socket dumps)."""
    return with_tcp_paths(len(NODES), paths, t, samples=2, min_rtt_ms=min_rtt_ms, app_limited_rate=burst)


def blamed(
    paths: TcpFigures, min_rtt_ms: float | None = VETH_MIN_RTT_MS, burst: float | None = VETH_BURST
) -> list[str | None]:
    edges = job_paths(NODES, evidence(paths, 50.0, min_rtt_ms, burst), CONFIG.egress_min_samples)
    return [f.node for f in find_slow_egress("train", NODES, edges, CONFIG, None)]


def test_a_queue_is_found_while_the_other_paths_trickle_at_its_level() -> None:
    assert blamed(INFLATED_PEERS) == ["n1"]


def test_the_base_is_the_other_paths_minimum_rtt_not_the_queue_of_the_node_itself() -> None:
    # n1's own paths (its sends, and n2 -> n1 waiting for its ACKs) never set the base it is compared with.
    edges = job_paths(NODES, evidence(INFLATED_PEERS, 50.0), CONFIG.egress_min_samples)
    (finding,) = find_slow_egress("train", NODES, edges, CONFIG, None)
    assert finding.evidence["signals"]["egress_rtt_seconds"] == {
        "value": 0.0079,
        "base": VETH_MIN_RTT_MS / 1e3,
    }


def test_an_agent_without_minimum_rtts_or_burst_rates_keeps_the_smoothed_rtt_as_the_base() -> None:
    assert blamed(INFLATED_PEERS, min_rtt_ms=None, burst=None) == []
    assert blamed(QUIET_PEERS, min_rtt_ms=None, burst=None) == ["n1"]


def test_a_healthy_sender_the_network_paces_at_line_rate_is_not_slow_though_its_rtt_is_of_ms() -> None:
    # A loaded host: n0's bulk sends wait 2.5 ms for their ACKs while the veth paces them at 254 Gbit/s; the
    # other paths burst at 130 Gbit/s when they have data.
    line_rate = {("n0", "n3"): (2.5, 254e9 / 8), **{p: (0.4, APP) for p in INFLATED_PEERS if p[0] != "n0"}}
    assert blamed(line_rate) == []


def test_healthy_paths_that_trickle_with_rtts_of_ms_blame_nobody() -> None:
    # Host load: every path's smoothed RTT of ms, nothing network-limited.
    assert blamed({**INFLATED_PEERS, ("n1", "n0"): (7.9, APP)}) == []


def test_a_fabric_where_every_path_queues_blames_nobody_though_its_minimum_rtt_is_low() -> None:
    assert blamed(dict.fromkeys(INFLATED_PEERS, (8.0, 10 * MBIT))) == []


def test_two_queueing_nodes_blame_nobody_though_the_others_minimum_rtt_is_low() -> None:
    assert blamed({**INFLATED_PEERS, ("n3", "n2"): (9.0, 40 * MBIT)}) == []


def test_a_slow_egress_is_faulty_in_four_windows_though_its_peers_rise_to_its_queue_in_two_in_a_row() -> None:
    engine = DetectionEngine(CONFIG)
    windows = [QUIET_PEERS, INFLATED_PEERS, INFLATED_PEERS, QUIET_PEERS, INFLATED_PEERS]
    verdicts = []
    for cycle, paths in enumerate(windows):
        t = 50.0 + 5.0 * cycle
        verdicts.append(engine.step(dict(evidence(paths, t)), t).verdicts["n1"].verdict)
    assert verdicts[:4] == [Verdict.HEALTHY, Verdict.HEALTHY, Verdict.SUSPECT, Verdict.FAULTY]
    assert verdicts[4] is Verdict.FAULTY
    others = engine.step(dict(evidence(QUIET_PEERS, 80.0)), 80.0).verdicts
    assert {n: v.verdict for n, v in others.items() if n != "n1"} == dict.fromkeys(
        ["n0", "n2", "n3"], Verdict.HEALTHY
    )
