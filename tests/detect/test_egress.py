"""Slow egress from the RTT of bulk TCP paths between a job's nodes: the queueing node, and only it, is blamed."""

from __future__ import annotations

import math

from agent.evidence import Evidence, HostEvidence, TcpPath
from controller.detect import DetectionConfig, DetectionEngine
from controller.detect.egress import find_slow_egress, job_paths
from tests.detect.helpers import documents, lockstep_ranks

NODES = ["n0", "n1", "n2", "n3"]
CONFIG = DetectionConfig(egress_rtt_enabled=True)


def address(node: str) -> str:
    return f"10.0.0.{NODES.index(node) + 2}" if node in NODES else node


def with_paths(rtt_ms: dict[tuple[str, str], float], *, t: float = 50.0) -> dict[str, Evidence]:
    """The 4-node job of the helpers, each node sending bulk data along the given (sender, receiver) paths."""
    docs = documents(lockstep_ranks(4, 1, t), t, 4)
    out = {}
    for name, doc in docs.items():
        assert doc is not None
        paths = [
            TcpPath(
                local_address=address(src),
                remote_address=address(dst),
                rtt_seconds=ms / 1e3,
                bytes_per_second=3e6,
                samples=5,
            )
            for (src, dst), ms in rtt_ms.items()
            if src == name
        ]
        out[name] = doc.model_copy(update={"host": HostEvidence(tcp_paths=paths)})
    return out


def blamed(rtt_ms: dict[tuple[str, str], float], config: DetectionConfig = CONFIG) -> list[str | None]:
    docs = with_paths(rtt_ms)
    return [f.node for f in find_slow_egress("train", NODES, job_paths(NODES, docs), config, None)]


RING = [("n0", "n3"), ("n3", "n2"), ("n2", "n1"), ("n1", "n0")]  # gloo's ring as seen in the demo


def test_a_node_whose_sends_and_returned_acks_queue_is_blamed() -> None:
    # n3's egress queues: its data to n2 and its ACKs to n0's data both wait; n2 -> n1 lags a little.
    assert blamed({("n0", "n3"): 10.5, ("n3", "n2"): 7.6, ("n2", "n1"): 1.5, ("n1", "n0"): 0.4}) == ["n3"]


def test_the_receiver_of_a_slow_sender_is_not_blamed() -> None:
    # n2 receives n3's slow data, but its own path to n1 is fast: it does not explain all the slow paths.
    rtt = {("n0", "n3"): 10.5, ("n3", "n2"): 7.6, ("n2", "n1"): 0.5, ("n1", "n0"): 0.4}
    assert "n2" not in blamed(rtt)


def test_a_chain_of_slow_paths_that_two_nodes_explain_alike_blames_nobody() -> None:
    assert blamed({("n0", "n3"): 10.5, ("n3", "n2"): 7.6, ("n2", "n1"): 6.1, ("n1", "n0"): 0.4}) == []


def test_sub_millisecond_jitter_blames_nobody_whatever_the_ratio() -> None:
    assert blamed({("n0", "n3"): 0.9, ("n3", "n2"): 0.8, ("n2", "n1"): 0.05, ("n1", "n0"): 0.04}) == []


def test_a_slow_fabric_where_every_path_waits_blames_nobody() -> None:
    assert blamed(dict.fromkeys(RING, 8.0)) == []


def test_a_node_that_only_sends_is_not_compared() -> None:
    # No path into n3 is measured (nobody sends to it in bulk): its slow sends alone could be its receiver's.
    assert blamed({("n3", "n2"): 9.0, ("n2", "n1"): 0.4, ("n1", "n0"): 0.4}) == []


def test_a_slow_upload_to_remote_storage_is_ignored() -> None:
    rtt = {**dict.fromkeys(RING, 0.4), ("n3", "192.0.2.80"): 40.0, ("n0", "198.51.100.7"): 25.0}
    docs = with_paths(rtt)
    assert set(job_paths(NODES, docs).values()) == {0.0004}
    assert blamed(rtt) == []


def test_non_finite_rtt_from_a_broken_agent_blames_nobody() -> None:
    assert (
        blamed({("n0", "n3"): math.inf, ("n3", "n2"): math.inf, ("n2", "n1"): 0.4, ("n1", "n0"): 0.4}) == []
    )


def test_the_rule_is_off_by_default() -> None:
    off = DetectionConfig()
    assert blamed({("n0", "n3"): 10.5, ("n3", "n2"): 7.6, ("n2", "n1"): 0.5, ("n1", "n0"): 0.4}, off) == []


def test_the_engine_reports_the_slow_egress_as_a_slow_link() -> None:
    docs = with_paths({("n0", "n3"): 10.5, ("n3", "n2"): 7.6, ("n2", "n1"): 0.5, ("n1", "n0"): 0.4})
    result = DetectionEngine(CONFIG).step(dict(docs), 50.0)
    (finding,) = result.findings
    assert (finding.reason, finding.node) == ("SlowLink", "n3")
    assert finding.evidence["paths_rtt_seconds"]["n0->n3"] == 0.0105
