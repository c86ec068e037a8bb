"""Fabric: when the blame lands on a link between nodes or on many nodes behind one switch, it is the fabric.

Runs after the per-node detectors. Two rules turn node findings into one `Severity.FABRIC` finding (an alert
for people, never a cordon): (1) at least `fabric_min_nodes` nodes behind one switch/rack label, and
`fabric_min_share` of that label's reporting nodes, with network-type or straggler findings in the same
cycle; (2) two or more nodes of one job with a slow link — the fault sits on the path between them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.detect.config import DetectionConfig
from controller.detect.hard import NIC_REASONS
from controller.model import Finding, Severity

DETECTOR = "fabric"
SWITCH_PRONE_REASONS = NIC_REASONS | {"SlowLink", "Straggler"}
"""Findings that a switch or rack problem raises on every node behind it."""


def regroup_fabric(
    findings: Iterable[Finding],
    topology: Mapping[str, str],
    reporting_nodes: Iterable[str],
    config: DetectionConfig,
) -> list[Finding]:
    """The same findings, with those explained by the fabric replaced by fabric findings."""
    findings = list(findings)
    fabric: list[Finding] = []
    absorbed: set[int] = set()

    label_nodes: dict[str, set[str]] = {}
    for node in reporting_nodes:
        if node in topology:
            label_nodes.setdefault(topology[node], set()).add(node)
    by_label: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        if f.reason in SWITCH_PRONE_REASONS and f.node in topology:
            by_label.setdefault(topology[f.node], []).append(i)
    for label, indices in sorted(by_label.items()):
        suspects = {findings[i].node for i in indices}
        if len(suspects) >= config.fabric_min_nodes and len(suspects) >= config.fabric_min_share * len(
            label_nodes.get(label, suspects)
        ):
            absorbed.update(indices)
            fabric.append(
                _fabric_finding(
                    "SwitchFault", f"switch/rack {label}", [findings[i] for i in indices], label=label
                )
            )

    slow_by_job: dict[str, list[int]] = {}
    for i, f in enumerate(findings):
        if f.reason == "SlowLink" and f.job is not None and i not in absorbed:
            slow_by_job.setdefault(f.job, []).append(i)
    for job, indices in sorted(slow_by_job.items()):
        if len({findings[i].node for i in indices}) >= 2:
            absorbed.update(indices)
            fabric.append(
                _fabric_finding("FabricLink", f"job {job}", [findings[i] for i in indices], job=job)
            )

    return [f for i, f in enumerate(findings) if i not in absorbed] + fabric


def _fabric_finding(
    reason: str, where: str, parts: list[Finding], job: str | None = None, label: str | None = None
) -> Finding:
    nodes = tuple(sorted({f.node for f in parts}))
    return Finding(
        detector=DETECTOR,
        reason=reason,
        node="",
        severity=Severity.FABRIC,
        summary=f"{where}: {len(nodes)} nodes affected together ({', '.join(nodes[:8])}{', ...' if len(nodes) > 8 else ''}): the fabric, not the nodes",
        confidence=max(f.confidence for f in parts),
        job=job,
        nodes=nodes,
        evidence={
            "signal": "several nodes blamed together",
            "label": label,
            "node_findings": [{"node": f.node, "reason": f.reason, "summary": f.summary} for f in parts],
        },
        observed_at=max(f.observed_at for f in parts),
    )
