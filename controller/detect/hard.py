"""Hard faults: an agent's `hard_signals` -> findings that act at once (no statistics, no persistence).

Throttling is the exception: the agent reports since when it has been active, and only a long one counts.
Application XIDs (a job's own errors and its teardown: 13, 31, 43, 45, ...) never make a finding.
"""

from __future__ import annotations

from agent.evidence import Evidence, HardSignal
from controller.detect.config import DetectionConfig
from controller.detect.xid import XID_TABLE, XidAction
from controller.model import Finding, Severity

DETECTOR = "hard"

WATCH_CONFIDENCE = 0.5
"""Confidence of a hard warning sign (a node to watch, not to cordon); the verdict maps it to 'suspect'."""

# Signal kind -> (reason, what it means). XIDs and throttling are decided below.
SIGNAL_REASONS: dict[str, tuple[str, str]] = {
    "ecc_uncorrectable": ("UncorrectableEcc", "uncorrectable ECC errors: memory returns wrong data"),
    "row_remap_failure": ("RowRemapFailure", "a row remap failed: the GPU needs replacing"),
    "row_remap_pending": ("RowRemapPending", "a row remap waits for a GPU reset"),
    "retired_pages_pending": ("RetiredPagesPending", "retired pages wait for a GPU reset"),
    "gpu_lost": ("GpuLost", "the GPU is gone from the bus or from NVML"),
    "nvlink_down": ("NvlinkDown", "an NVLink is down: collectives fall back or fail"),
    "pcie_degraded": ("PcieDegraded", "PCIe link trained below its maximum while busy"),
    "nic_link_down": ("NicLinkDown", "a NIC port that carried traffic is down"),
    "nic_link_flap": ("NicLinkFlap", "a NIC port went down and up within the window"),
    "nic_speed_degraded": ("NicSpeedDegraded", "a NIC port runs below its usual speed"),
}

NIC_REASONS = frozenset({"NicLinkDown", "NicLinkFlap", "NicSpeedDegraded"})
"""Hard reasons that a switch fault raises on every node behind it (so the fabric check looks at them)."""


def hard_findings(evidence: Evidence, config: DetectionConfig) -> list[Finding]:
    """Findings from one node's hard signals, one per (reason, device)."""
    findings: dict[tuple[str, str], Finding] = {}
    for signal in evidence.hard_signals:
        finding = _finding(evidence, signal, config)
        if finding is not None:
            key = (finding.reason, signal.device)
            kept = findings.get(key)
            if kept is None or finding.confidence > kept.confidence:
                findings[key] = finding
    return list(findings.values())


def _finding(evidence: Evidence, signal: HardSignal, config: DetectionConfig) -> Finding | None:
    confidence = 1.0
    detail: dict[str, object] = {}
    if signal.kind == "xid":
        entry = XID_TABLE.get(signal.xid) if signal.xid is not None else None
        if entry is None or entry.action is XidAction.APPLICATION:
            return None
        reason, why = "CriticalXid", f"XID {entry.code}: {entry.why}"
        detail["xid"] = entry.code
        if entry.action is XidAction.SUSPECT:
            reason, confidence = "XidWarning", WATCH_CONFIDENCE
    elif signal.kind in ("thermal_throttle", "power_throttle"):
        active_seconds = evidence.collected_at - signal.first_seen
        limit = (
            config.thermal_throttle_seconds
            if signal.kind == "thermal_throttle"
            else config.power_throttle_seconds
        )
        if active_seconds < limit:
            return None
        reason = "ThermalThrottle" if signal.kind == "thermal_throttle" else "PowerThrottle"
        why = f"{signal.kind.replace('_', ' ')} active for {active_seconds:.0f} s (limit {limit:.0f} s)"
        detail["active_seconds"] = round(active_seconds, 1)
        if signal.kind == "power_throttle":
            confidence = WATCH_CONFIDENCE
    elif signal.kind in SIGNAL_REASONS:
        reason, why = SIGNAL_REASONS[signal.kind]
    else:
        return None
    return Finding(
        detector=DETECTOR,
        reason=reason,
        node=evidence.node,
        severity=Severity.HARD,
        summary=f"{evidence.node} {signal.device}: {signal.detail or why}",
        confidence=confidence,
        nodes=(evidence.node,),
        evidence={
            "signal": signal.kind,
            "device": signal.device,
            "why": why,
            "detail": signal.detail,
            "count": signal.count,
            "first_seen": signal.first_seen,
            "last_seen": signal.last_seen,
            **detail,
        },
        observed_at=evidence.collected_at,
    )
