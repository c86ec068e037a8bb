"""The straggler detector on evidence measured in real demo runs (`tests/fixtures/evidence/`), not synthesised."""

from __future__ import annotations

import json
from pathlib import Path

from agent.evidence import Evidence
from controller.detect import DetectionConfig
from controller.detect.ranks import estimate_step_period, group_ranks
from controller.detect.straggler import find_stragglers
from controller.model import Finding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evidence"


def _findings(fixture: str, moment: str) -> list[Finding]:
    rounds = json.loads((FIXTURES / fixture).read_text())
    documents = {d["node"]: Evidence.model_validate(d) for d in rounds[moment]}
    groups = [g for job in group_ranks(documents).values() for g in job.values()]
    config = DetectionConfig()
    return [f for g in groups for f in find_stragglers(g, estimate_step_period(g), config).findings]


# fsdp-straggler-demo.json: `lockstep demo --parallel fsdp --straggler-slowdown 1.25` (4 nodes, FSDP2 over gloo,
# 6 collectives a step of 0.27 s), one polling round of the agents' evidence (last 40 samples per rank) 8 s
# before and 26 s after rank 3's compute slowed: it is ~50 ms late at the one all-gather after its compute,
# on time at the five others, where every rank lines up again.


def test_fsdp_straggler_late_at_one_collective_a_step_is_blamed() -> None:
    findings = _findings("fsdp-straggler-demo.json", "straggler")
    assert [f.node for f in findings] == ["lsdemo-2d67-node3"]
    culprit = findings[0].evidence["culprits"][0]
    assert culprit["method"] == "arrival per step" and culprit["lateness_seconds"] > 0.03
    assert "ms late once a step" in findings[0].summary


def test_healthy_fsdp_job_blames_nobody() -> None:
    assert _findings("fsdp-straggler-demo.json", "healthy") == []
