"""Which Kubernetes pod a process belongs to, from /proc/<pid>/cgroup (needs the host pid namespace).

kubelet puts each pod in a cgroup named after its uid: cgroupfs `.../kubepods/burstable/pod<uid>/<container>`,
systemd `.../kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`.
"""

from __future__ import annotations

import os
import re

_POD_UID = re.compile(r"kubepods.*?[/-]pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12})")


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod uid named in a /proc/<pid>/cgroup text, dashed, or None for a process outside any pod."""
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-").lower() if match else None


def pod_uid(pid: int, proc_root: str = "/proc") -> str | None:
    """The pod uid of process `pid`, or None (not in a pod, or the process is gone)."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup")) as f:
            return pod_uid_from_cgroup(f.read())
    except OSError:
        return None
