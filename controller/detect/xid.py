"""The XID table: which NVIDIA driver XID codes mean a node fault, which mean 'watch it', which are the job's own.

Data with a reason per code, after NVIDIA's Xid catalog (docs.nvidia.com/deploy/xid-errors, resolution buckets
RESET_GPU / RESTART_BM / CONTACT_SUPPORT vs RESTART_APP / CHECK_APP). Codes not listed are ignored: an unknown
code is not evidence enough to take a node out of service. The finding's reason is `CriticalXid` (or
`XidWarning` for a warning sign) whatever the code, so taints and alerts say where the evidence came from; the
code and its meaning travel in the evidence.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class XidAction(str, enum.Enum):
    FAULTY = "faulty"  # the node needs a GPU reset, a reboot or hardware service: cordon now
    SUSPECT = "suspect"  # a warning sign (rising correctable errors, a remap to apply): report, do not cordon
    APPLICATION = "application"  # the workload's own error or its teardown: never a node verdict


@dataclass(frozen=True)
class XidClass:
    code: int
    action: XidAction
    why: str


XID_TABLE: dict[int, XidClass] = {
    entry.code: entry
    for entry in (
        XidClass(13, XidAction.APPLICATION, "usually an application bug (bad kernel)"),
        XidClass(31, XidAction.APPLICATION, "illegal memory access by the workload"),
        XidClass(43, XidAction.APPLICATION, "channel aborted after a workload error"),
        XidClass(45, XidAction.APPLICATION, "channel teardown when processes exit or are killed"),
        XidClass(68, XidAction.APPLICATION, "NVDEC exception, workload side"),
        XidClass(48, XidAction.FAULTY, "double-bit ECC error: uncorrectable memory error"),
        XidClass(61, XidAction.FAULTY, "internal micro-controller breakpoint: GPU reset needed"),
        XidClass(62, XidAction.FAULTY, "internal micro-controller halt: GPU reset needed"),
        XidClass(63, XidAction.SUSPECT, "ECC page retirement or row remap recorded; reset to apply"),
        XidClass(64, XidAction.FAULTY, "ECC page retirement or row remap failed"),
        XidClass(74, XidAction.FAULTY, "NVLink error: link or NVSwitch fault"),
        XidClass(79, XidAction.FAULTY, "GPU has fallen off the bus"),
        XidClass(92, XidAction.SUSPECT, "correctable ECC error rate high: predicts failure"),
        XidClass(94, XidAction.FAULTY, "contained uncorrectable ECC error: GPU reset needed"),
        XidClass(95, XidAction.FAULTY, "uncontained uncorrectable ECC error: node reset"),
        XidClass(109, XidAction.FAULTY, "context switch timeout: GPU reset needed"),
        XidClass(119, XidAction.FAULTY, "GSP RPC timeout: GPU wedged, reset needed"),
        XidClass(120, XidAction.FAULTY, "GSP error: GPU reset needed"),
        XidClass(140, XidAction.FAULTY, "unrecovered ECC error"),
        XidClass(154, XidAction.FAULTY, "GPU recovery action changed: reset or reboot required"),
    )
}
