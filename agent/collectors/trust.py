"""Who may speak for a rank: the collective collector's trust policy for probe records.

A datagram's header claims a job and a rank for all its records (agent/probe/wire.py); a forged straggler could
get an innocent node cordoned, so each (job, rank) is bound to the first sender that claims it — its pod (pod uid
from the sender's cgroup, kernel-verified pid via SO_PASSCRED) or, outside Kubernetes, its process — until that
sender's process is gone. The collector asks once per sender and identity in each batch of datagrams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

TrustMode = Literal["auto", "pod", "process"]


@dataclass
class Claim:
    owner: str  # "pod:<uid>" or "pid:<pid>"
    pid: int


class Trust:
    """Binds (job, rank) to a sender. Modes: `pod` accepts only processes in a Kubernetes pod and binds ranks
    to pods; `process` binds ranks to processes; `auto` binds to the pod when the sender is in one, else to
    the process."""

    def __init__(self, mode: TrustMode, pod_uid: Callable[[int], str | None], alive: Callable[[int], bool]) -> None:
        self.mode = mode
        self.pod_uid = pod_uid
        self.alive = alive
        self.claims: dict[tuple[str, int], Claim] = {}
        self._owners: dict[int, str | None] = {}  # pid -> owner: one cgroup read per process, not per record

    def owner(self, pid: int) -> str | None:
        """The sender's identity under this policy, or None when the policy rejects it."""
        if self.mode == "process":
            return f"pid:{pid}"
        if pid in self._owners:
            return self._owners[pid]
        uid = self.pod_uid(pid)
        owner = f"pod:{uid}" if uid is not None else (None if self.mode == "pod" else f"pid:{pid}")
        if len(self._owners) >= 4096:
            self._owners.clear()
        self._owners[pid] = owner
        return owner

    def admit(self, job: str, rank: int, pid: int | None) -> tuple[str | None, bool]:
        """(reason to reject or None, whether the rank changed hands: its old state must be forgotten)."""
        if pid is None:
            return "no_credentials", False
        owner = self.owner(pid)
        if owner is None:
            return "not_a_pod", False
        key = (job, rank)
        claim = self.claims.get(key)
        if claim is None:
            self.claims[key] = Claim(owner, pid)
            return None, False
        if claim.owner == owner:
            claim.pid = pid  # a restarted container of the same pod
            return None, False
        if self.alive(claim.pid):
            return "rank_claimed_by_other", False
        self._owners.pop(claim.pid, None)
        self.claims[key] = Claim(owner, pid)
        return None, True

    def forget(self, job: str, rank: int) -> None:
        self.claims.pop((job, rank), None)
