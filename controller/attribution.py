"""Cross-check of rank evidence against the training pods, between fetch and detect (Kubernetes mode only).

Detection blames the node whose agent reported a rank. A rank that claims a pod (namespace and name, from the
probe's POD_NAMESPACE/POD_NAME) which Kubernetes runs on another node — or does not run at all — is not trusted:
it is dropped before detection, so a forged or misattributed rank can never get the reporting node cordoned.
Ranks without a namespace are not checked: their pod name may be the HOSTNAME fallback (host network, no
Kubernetes), which names the machine, not a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.evidence import Evidence

# The probe's wire format carries the first 64 bytes of the pod name (agent/probe/wire.py POD_BYTES): a claim
# that long may be a cut name and matches any pod of that namespace on the node whose name starts with it.
CLAIMED_POD_NAME_BYTES = 64

PodNodes = Mapping[tuple[str, str], str]  # (namespace, pod name) -> node of each running pod


@dataclass(frozen=True)
class MisattributedRank:
    """A rank the agent on `node` reported for a pod that Kubernetes runs on `pod_node` (None: runs nowhere)."""

    node: str
    job: str
    rank: int
    namespace: str
    pod: str
    pod_node: str | None

    def describe(self) -> str:
        where = f"runs on {self.pod_node}" if self.pod_node else "is not running"
        return (
            f"the agent on {self.node} reports rank {self.rank} of job {self.job} for pod "
            f"{self.namespace}/{self.pod}, which {where}"
        )


def check_ranks(
    evidence: Mapping[str, Evidence | None], pod_nodes: PodNodes
) -> tuple[dict[str, Evidence | None], list[MisattributedRank]]:
    """The evidence with every rank whose pod is not on the reporting node removed, and the removed ranks."""
    checked: dict[str, Evidence | None] = {}
    dropped: list[MisattributedRank] = []
    on_node: dict[tuple[str, str], list[str]] | None = None  # (namespace, node) -> pod names, built on demand
    for node, document in evidence.items():
        if document is None or not document.ranks:
            checked[node] = document
            continue
        kept = []
        for rank in document.ranks:
            if not rank.namespace or not rank.pod:
                kept.append(rank)
                continue
            pod_node = pod_nodes.get((rank.namespace, rank.pod))
            if pod_node is None and len(rank.pod.encode()) >= CLAIMED_POD_NAME_BYTES:
                if on_node is None:
                    on_node = {}
                    for (namespace, name), where in pod_nodes.items():
                        on_node.setdefault((namespace, where), []).append(name)
                if any(name.startswith(rank.pod) for name in on_node.get((rank.namespace, node), ())):
                    pod_node = node
            if pod_node == node:
                kept.append(rank)
            else:
                dropped.append(
                    MisattributedRank(node, rank.job, rank.rank, rank.namespace, rank.pod, pod_node)
                )
        checked[node] = (
            document if len(kept) == len(document.ranks) else document.model_copy(update={"ranks": kept})
        )
    return checked, dropped
