"""The evidence document is the contract between agent and controller: it must round-trip through JSON."""

from __future__ import annotations

from agent.evidence import SCHEMA_VERSION, CollectiveSample, Evidence, HardSignal, RankEvidence


def test_evidence_round_trips_through_json_with_its_schema_version() -> None:
    doc = Evidence(
        node="gpu-node-1",
        collected_at=1_700_000_000.0,
        hard_signals=[HardSignal(kind="xid", device="GPU-1", xid=79, first_seen=1.0, last_seen=2.0)],
        ranks=[
            RankEvidence(
                job="default/llama",
                rank=3,
                world_size=8,
                window_seconds=30.0,
                last_progress_at=1_700_000_000.0,
                samples=[CollectiveSample(seq=7, op="allreduce", bytes=1024, arrival=1.5, wait_seconds=0.2)],
            )
        ],
    )
    back = Evidence.model_validate_json(doc.model_dump_json())
    assert back == doc
    assert back.schema_version == SCHEMA_VERSION


def test_unknown_fields_from_a_newer_agent_are_ignored() -> None:
    doc = Evidence.model_validate({"node": "n", "collected_at": 1.0, "something_new": [1, 2]})
    assert doc.node == "n"
