"""The only code talking to the Kubernetes API (official `kubernetes` client), behind a narrow interface.

Reads: the selected nodes (as policy `NodeState`s), the agent pods (where to pull evidence), the running pods'
nodes (to check the ranks agents report) — listed, or kept by a watch — the circuit breaker, the leader Lease.
Writes: one conditional merge patch per node change (cordon + taint + annotations land together or not at all,
guarded by resourceVersion and retried on 409), the LockstepHealthy condition, Events, the breaker ConfigMap and
the Lease. Every API call has a timeout, retries 5xx/429/timeouts with backoff, and is counted.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from controller.policy import BreakerState, NodeState
from controller.settings import KubeSettings

log = logging.getLogger(__name__)

TAINT_KEY = "lockstep.dev/unhealthy"
TAINT_EFFECT = "NoSchedule"
ANNOTATION_REASON = "lockstep.dev/reason"
ANNOTATION_EVIDENCE = "lockstep.dev/evidence"
ANNOTATION_SINCE = "lockstep.dev/since"
ANNOTATION_CORDONED = (
    "lockstep.dev/cordoned"  # "true": Lockstep set spec.unschedulable; "false": it was cordoned already
)
ANNOTATION_RELEASED_REASON = (
    "lockstep.dev/released-reason"  # a person released the node while held for this reason
)
OWNED_ANNOTATIONS = (ANNOTATION_REASON, ANNOTATION_EVIDENCE, ANNOTATION_SINCE, ANNOTATION_CORDONED)
LABEL_MANAGED = "lockstep.dev/managed"
CONDITION_TYPE = "LockstepHealthy"
COMPONENT = "lockstep-controller"

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

Obj = dict[str, Any]
T = TypeVar("T")


class KubeError(Exception):
    """An API call failed for good (after retries); the caller logs it and tries again next cycle."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status, None for timeouts and connection errors


class Conflict(KubeError):
    """409: someone else wrote the object first (stale resourceVersion, or it already exists).

    `after_timeout`: an earlier attempt of the same call timed out, so the "someone else" may be that attempt."""

    after_timeout = False


class NotLeader(Exception):
    """The write guard said no: this replica must not act (lost the lease, or dry-run)."""


@dataclass
class ApiStats:
    """Counts of API errors (by verb and HTTP code or 'timeout') and retries, for metrics. Thread-safe enough."""

    errors: Counter[tuple[str, str]]
    retries: Counter[str]
    conflicts: Counter[str]

    def __init__(self) -> None:
        self.errors, self.retries, self.conflicts = Counter(), Counter(), Counter()


@dataclass(frozen=True)
class AgentEndpoint:
    node: str
    url: str


@dataclass(frozen=True)
class ClusterView:
    """The selected nodes as policy sees them, each node's topology group (for fabric detection) and, when rank
    checking is on, the node of every running pod: (namespace, name) -> node."""

    nodes: dict[str, NodeState]
    topology: dict[str, str]
    pods: dict[tuple[str, str], str] | None = (
        None  # None: not read (no Kubernetes, or kube.check_rank_pods off)
    )


def rfc3339(unix_seconds: float) -> str:
    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def taint_value(reason: str) -> str:
    """A taint value must be a label value: <= 63 characters of [A-Za-z0-9._-], alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]", "", reason)[:63].strip("._-")
    return value or "Unhealthy"


def node_state(node: Obj) -> NodeState:
    """Parse a Node object into what policy needs."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
    condition: Obj = next(
        (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION_TYPE), {}
    )
    return NodeState(
        name=meta["name"],
        managed=labels.get(LABEL_MANAGED) != "false",
        unschedulable=bool(spec.get("unschedulable")),
        tainted=any(t.get("key") == TAINT_KEY for t in spec.get("taints") or []),
        owned_reason=annotations.get(ANNOTATION_REASON, ""),
        cordoned_by_lockstep=annotations.get(ANNOTATION_CORDONED) == "true",
        owned_since=parse_time(annotations.get(ANNOTATION_SINCE)),
        released_reason=annotations.get(ANNOTATION_RELEASED_REASON, ""),
        condition_healthy=condition.get("status", ""),
    )


def load_api_client(kubeconfig: str = "") -> client.ApiClient:
    """An ApiClient from a kubeconfig file, else the in-cluster service account, else ~/.kube/config.

    urllib3's own retries are off: this module retries, counts, and bounds the time spent.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as error:
        raise KubeError(f"cannot load Kubernetes credentials: {error}") from error
    configuration.retries = False
    return client.ApiClient(configuration)


def kubeconfig_user(kubeconfig: str = "") -> str:
    """Who acts, for events and the breaker record: the kubeconfig context's user and the local login name."""
    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig or None)
        user = str(((active or {}).get("context") or {}).get("user") or "unknown")
    except (config.ConfigException, OSError, ValueError):
        user = "in-cluster"
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return f"{login} (kubeconfig user {user})"


class Kube:
    """Narrow interface over the Kubernetes API for the loop, the leader elector and the operator CLI."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: KubeSettings,
        stats: ApiStats | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.stats = stats or ApiStats()
        self._core = client.CoreV1Api(api)
        self._coordination = client.CoordinationV1Api(api)
        self._sleep = sleep
        self._nodes: Informer[tuple[NodeState, str | None]] | None = None
        self._agents: Informer[AgentEndpoint | None] | None = None
        self._pods: Informer[tuple[str, str, str] | None] | None = None

    # --------------------------------------------------------------------------------------------- plumbing
    def _call(self, verb: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """Call the API; retry 5xx, 429, timeouts and connection errors with backoff; return the JSON body."""
        delay = self.settings.api_backoff_seconds
        timed_out = False
        for attempt in range(1, self.settings.api_attempts + 1):
            try:
                response = method(
                    *args,
                    _request_timeout=self.settings.api_timeout_seconds,
                    _preload_content=False,
                    **kwargs,
                )
                return json.loads(response.data or b"{}")
            except ApiException as error:
                code = error.status or 0
                if code == 409:
                    self.stats.conflicts[verb] += 1
                    conflict = Conflict(f"{verb}: 409 {_message(error)}", 409)
                    conflict.after_timeout = timed_out
                    raise conflict from error
                self.stats.errors[(verb, str(code))] += 1
                if code not in RETRYABLE_STATUS:
                    raise KubeError(f"{verb}: HTTP {code} {_message(error)}", code) from error
                failure, status = f"HTTP {code}", code
            except (urllib3.exceptions.HTTPError, OSError) as error:
                self.stats.errors[(verb, "timeout")] += 1
                failure, status, timed_out = f"{type(error).__name__}: {error}", None, True
            if attempt == self.settings.api_attempts:
                raise KubeError(f"{verb}: {failure} after {attempt} attempts", status)
            self.stats.retries[verb] += 1
            log.warning("kubernetes API %s failed (%s); retry %d in %.1f s", verb, failure, attempt, delay)
            self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _modify_node(self, name: str, change: Callable[[Obj], Obj | None], guard: Callable[[], bool]) -> bool:
        """Read-modify-write: `change(node)` returns a merge patch (or None: nothing to do), which is sent with the
        node's resourceVersion so it lands only on the state it was computed from; on 409 read again.
        True if the change was made (also when a timed-out attempt turns out to have made it)."""
        maybe_ours = False
        for _ in range(self.settings.conflict_attempts):
            node = self._call("get nodes", self._core.read_node, name)
            patch = change(node)
            if patch is None:
                return maybe_ours
            patch.setdefault("metadata", {})["resourceVersion"] = node["metadata"]["resourceVersion"]
            if not guard():
                raise NotLeader(f"not acting on node {name}: not the leader")
            try:
                self._call("patch nodes", self._core.patch_node, name, patch, _content_type=MERGE_PATCH)
                return True
            except Conflict as conflict:
                maybe_ours = conflict.after_timeout
                log.info("node %s changed while we wrote it (409); reading it again", name)
        raise KubeError(f"node {name}: still conflicting after {self.settings.conflict_attempts} attempts")

    # ------------------------------------------------------------------------------------------------ reads
    def _node_list(self) -> tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """The list call for the selected nodes. resourceVersion "0": served from the apiserver's watch cache, not
        etcd; slightly stale is fine because every write re-reads the node and is conditional on its version."""
        kwargs = {"label_selector": self.settings.node_selector or None, "resource_version": "0"}
        return "nodes", self._core.list_node, (), kwargs

    def _agent_list(self) -> tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        kwargs = {
            "label_selector": self.settings.agent_label_selector,
            "field_selector": "status.phase=Running",
            "resource_version": "0",
        }
        if self.settings.agent_namespace:
            return "pods", self._core.list_namespaced_pod, (self.settings.agent_namespace,), kwargs
        return "pods", self._core.list_pod_for_all_namespaces, (), kwargs

    def _pod_list(self) -> tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """Running pods in every namespace (the training pods among them): the same list/watch verbs as the agents."""
        kwargs = {"field_selector": "status.phase=Running", "resource_version": "0"}
        return "pods", self._core.list_pod_for_all_namespaces, (), kwargs

    def _node_entry(self, node: Obj) -> tuple[NodeState, str | None]:
        group = ((node.get("metadata") or {}).get("labels") or {}).get(self.settings.topology_label)
        return node_state(node), group

    def _agent_entry(self, pod: Obj) -> AgentEndpoint | None:
        """Node name and pod IP give the agent's URL; the port is the container port named 'http'."""
        node = (pod.get("spec") or {}).get("nodeName")
        ip = (pod.get("status") or {}).get("podIP")
        if not node or not ip:
            return None
        port = next(
            (
                p.get("containerPort")
                for c in (pod.get("spec") or {}).get("containers") or []
                for p in c.get("ports") or []
                if p.get("name") == "http"
            ),
            self.settings.agent_port,
        )
        host = f"[{ip}]" if ":" in ip else ip
        return AgentEndpoint(node, f"http://{host}:{port}")

    @staticmethod
    def _pod_entry(pod: Obj) -> tuple[str, str, str] | None:
        meta, node = pod.get("metadata") or {}, (pod.get("spec") or {}).get("nodeName")
        return (meta.get("namespace", ""), meta["name"], node) if node else None

    def _items(self, listing: tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> list[Obj]:
        resource, method, args, kwargs = listing
        return list(self._call(f"list {resource}", method, *args, **kwargs).get("items") or [])

    def cluster(self) -> ClusterView:
        """The nodes selected by the node label selector (from the watch cache once `watch()` runs)."""
        entries = self._nodes.entries() if self._nodes is not None else None
        if entries is None:
            entries = [self._node_entry(item) for item in self._items(self._node_list())]
        nodes = {state.name: state for state, _ in entries}
        topology = {state.name: group for state, group in entries if group}
        return ClusterView(nodes, topology, self.pods() if self.settings.check_rank_pods else None)

    def pods(self) -> dict[tuple[str, str], str]:
        """(namespace, name) -> node of every running pod (from the watch cache once `watch()` runs)."""
        entries = self._pods.entries() if self._pods is not None else None
        if entries is None:
            entries = [self._pod_entry(pod) for pod in self._items(self._pod_list())]
        return {(namespace, name): node for namespace, name, node in filter(None, entries)}

    def agents(self) -> list[AgentEndpoint]:
        """The running pods of the agent DaemonSet (from the watch cache once `watch()` runs)."""
        entries = self._agents.entries() if self._agents is not None else None
        if entries is None:
            entries = [self._agent_entry(pod) for pod in self._items(self._agent_list())]
        return sorted((e for e in entries if e is not None), key=lambda e: e.node)

    def watch(self, stop: threading.Event, watch_seconds: float = 300.0) -> list[threading.Thread]:
        """Keep nodes, agent pods (and running pods, when rank checking is on) in memory (list once, then watch)
        instead of listing them every cycle."""
        self._nodes = Informer(self, self._node_list(), self._node_entry, watch_seconds)
        self._agents = Informer(self, self._agent_list(), self._agent_entry, watch_seconds)
        informers: list[Informer[Any]] = [self._nodes, self._agents]
        if self.settings.check_rank_pods:
            self._pods = Informer(self, self._pod_list(), self._pod_entry, watch_seconds)
            informers.append(self._pods)
        threads = [
            threading.Thread(
                target=informer.run, args=(stop,), name=f"watch-{informer.resource}", daemon=True
            )
            for informer in informers
        ]
        for thread in threads:
            thread.start()
        return threads

    def breaker(self) -> BreakerState:
        try:
            data = (
                self._call(
                    "get configmaps",
                    self._core.read_namespaced_config_map,
                    self.settings.breaker_configmap,
                    self.settings.namespace,
                ).get("data")
                or {}
            )
        except KubeError as error:
            if error.status == 404:
                return BreakerState()
            raise
        return BreakerState(
            open=data.get("state") == "open",
            opened_at=parse_time(data.get("openedAt")),
            reason=data.get("reason", ""),
            nodes=tuple(n for n in data.get("nodes", "").split(",") if n),
            reset_at=parse_time(data.get("resetAt")),
        )

    # ----------------------------------------------------------------------------------------------- writes
    def cordon(self, name: str, reason: str, evidence: str, since: float, guard: Callable[[], bool]) -> bool:
        """Cordon, taint and annotate the node in one conditional write. False if there was nothing to do."""

        def change(node: Obj) -> Obj | None:
            meta, spec = node.get("metadata") or {}, node.get("spec") or {}
            annotations = meta.get("annotations") or {}
            if (meta.get("labels") or {}).get(LABEL_MANAGED) == "false":
                log.warning("node %s is labelled %s=false: not touching it", name, LABEL_MANAGED)
                return None
            if ANNOTATION_REASON in annotations or annotations.get(ANNOTATION_RELEASED_REASON) == reason:
                return None  # held already, or a person released it for this reason
            taints = [t for t in spec.get("taints") or [] if t.get("key") != TAINT_KEY]
            taints.append(
                {
                    "key": TAINT_KEY,
                    "value": taint_value(reason),
                    "effect": TAINT_EFFECT,
                    "timeAdded": rfc3339(time.time()).split(".")[0] + "Z",
                }
            )
            return {
                "metadata": {
                    "annotations": {
                        ANNOTATION_REASON: reason,
                        ANNOTATION_EVIDENCE: evidence,
                        ANNOTATION_SINCE: rfc3339(since),
                        ANNOTATION_CORDONED: "false" if spec.get("unschedulable") else "true",
                    }
                },
                "spec": {"unschedulable": True, "taints": taints},
            }

        return self._modify_node(name, change, guard)

    def release(
        self, name: str, guard: Callable[[], bool], remember: bool, uncordon: bool = True
    ) -> str | None:
        """Take off what Lockstep put on the node (taint, annotations; the cordon only if Lockstep set it).

        `remember`: a person released it, so mark the reason as released (no re-cordon for it). Returns the reason
        the node was held for, or None if Lockstep held nothing there.
        """
        released: list[str] = []

        def change(node: Obj) -> Obj | None:
            meta, spec = node.get("metadata") or {}, node.get("spec") or {}
            annotations = meta.get("annotations") or {}
            if ANNOTATION_REASON not in annotations:
                return None
            released[:] = [annotations[ANNOTATION_REASON]]
            patch: Obj = {"metadata": {"annotations": dict.fromkeys(OWNED_ANNOTATIONS)}, "spec": {}}
            if remember:
                patch["metadata"]["annotations"][ANNOTATION_RELEASED_REASON] = annotations[ANNOTATION_REASON]
            taints = spec.get("taints") or []
            if any(t.get("key") == TAINT_KEY for t in taints):
                patch["spec"]["taints"] = [t for t in taints if t.get("key") != TAINT_KEY] or None
            if uncordon and annotations.get(ANNOTATION_CORDONED) == "true" and spec.get("unschedulable"):
                patch["spec"]["unschedulable"] = None
            return patch

        self._modify_node(name, change, guard)
        return released[0] if released else None

    def forget_release(self, name: str, guard: Callable[[], bool]) -> bool:
        def change(node: Obj) -> Obj | None:
            annotations = (node.get("metadata") or {}).get("annotations") or {}
            if ANNOTATION_RELEASED_REASON not in annotations:
                return None
            return {"metadata": {"annotations": {ANNOTATION_RELEASED_REASON: None}}}

        return self._modify_node(name, change, guard)

    def set_condition(
        self, name: str, healthy: bool, reason: str, message: str, guard: Callable[[], bool]
    ) -> None:
        """Set the LockstepHealthy node condition (strategic merge by condition type: others' conditions stay)."""
        now = rfc3339(time.time()).split(".")[0] + "Z"
        condition = {
            "type": CONDITION_TYPE,
            "status": "True" if healthy else "False",
            "reason": reason,
            "message": message[:1024],
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }
        if not guard():
            raise NotLeader(f"not setting the condition of {name}: not the leader")
        self._call(
            "patch nodes/status",
            self._core.patch_node_status,
            name,
            {"status": {"conditions": [condition]}},
            _content_type=STRATEGIC_MERGE_PATCH,
        )

    def event(self, node: str, reason: str, message: str, warning: bool, guard: Callable[[], bool]) -> None:
        """A core/v1 Event about the node (`kubectl describe node` shows it)."""
        now = rfc3339(time.time())
        body = client.CoreV1Event.from_dict(
            {
                "metadata": {
                    "name": f"{node}.{uuid.uuid4().hex[:16]}",
                    "namespace": self.settings.event_namespace,
                },
                # uid = node name, as the kubelet does for node events; `kubectl describe node` looks them up so.
                "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node},
                "reason": reason,
                "message": message[:1024],
                "type": "Warning" if warning else "Normal",
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": socket.gethostname(),
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
        )
        if not guard():
            raise NotLeader(f"not emitting {reason} for {node}: not the leader")
        self._call("create events", self._core.create_namespaced_event, self.settings.event_namespace, body)

    def write_breaker(self, data: dict[str, str], guard: Callable[[], bool]) -> None:
        """Merge `data` into the breaker ConfigMap, creating it if absent."""
        if not guard():
            raise NotLeader("not writing the breaker: not the leader")
        name, namespace = self.settings.breaker_configmap, self.settings.namespace
        try:
            self._call(
                "patch configmaps",
                self._core.patch_namespaced_config_map,
                name,
                namespace,
                {"data": data},
                _content_type=MERGE_PATCH,
            )
        except KubeError as error:
            if error.status != 404:
                raise
            body = client.V1ConfigMap.from_dict(
                {"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "lockstep"}}, "data": data}
            )
            self._call("create configmaps", self._core.create_namespaced_config_map, namespace, body)

    def open_breaker(
        self, reason: str, nodes: tuple[str, ...], now: float, guard: Callable[[], bool]
    ) -> None:
        self.write_breaker(
            {"state": "open", "openedAt": rfc3339(now), "reason": reason, "nodes": ",".join(nodes)}, guard
        )

    def reset_breaker(self, by: str, now: float) -> None:
        """A person closes the breaker (`lockstep release --breaker`, with their own credentials)."""
        self.write_breaker(
            {"state": "closed", "resetAt": rfc3339(now), "resetBy": by, "reason": "", "nodes": ""},
            lambda: True,
        )

    # ----------------------------------------------------------------------------------------------- leases
    def read_lease(self, name: str) -> Obj | None:
        try:
            return self._call(
                "get leases", self._coordination.read_namespaced_lease, name, self.settings.namespace
            )
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def write_lease(self, name: str, spec: Obj, resource_version: str | None) -> Obj:
        """Create the Lease (resource_version None) or replace it conditionally. Raises Conflict if we lost a race."""
        body = client.V1Lease.from_dict(
            {"metadata": {"name": name, "resourceVersion": resource_version}, "spec": spec}
        )
        if resource_version is None:
            return self._call(
                "create leases", self._coordination.create_namespaced_lease, self.settings.namespace, body
            )
        return self._call(
            "update leases", self._coordination.replace_namespaced_lease, name, self.settings.namespace, body
        )


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message", error.reason))
    except (ValueError, AttributeError):
        return str(error.reason)


class Informer(Generic[T]):
    """List once, then watch from the list's resourceVersion; relist after 410 Gone or an error. Keeps
    `transform(object)` per object, so a cycle reads the current state of a big cluster without listing it."""

    def __init__(
        self,
        kube: Kube,
        listing: tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]],
        transform: Callable[[Obj], T],
        watch_seconds: float,
    ) -> None:
        self.kube = kube
        self.resource, self._method, self._args, self._kwargs = listing
        self._transform = transform
        self._watch_seconds = watch_seconds
        self._lock = threading.Lock()
        self._entries: dict[str, T] = {}
        self._version: str | None = None  # resourceVersion to watch from; None = list first
        self.synced = False
        self.relists = 0

    def entries(self) -> list[T] | None:
        """The current entries, or None before the first list succeeded (callers then list themselves)."""
        with self._lock:
            return list(self._entries.values()) if self.synced else None

    def run(self, stop: threading.Event) -> None:
        delay = self.kube.settings.api_backoff_seconds
        while not stop.is_set():
            try:
                if self._version is None:
                    self._relist()
                self._watch(stop)
                delay = self.kube.settings.api_backoff_seconds
            except (
                KubeError,
                ApiException,
                urllib3.exceptions.HTTPError,
                OSError,
                ValueError,
                KeyError,
            ) as error:
                status = getattr(error, "status", None)
                self.kube.stats.errors[(f"watch {self.resource}", str(status or "timeout"))] += 1
                log.log(
                    logging.INFO if status == 410 else logging.WARNING,
                    "watch of %s ended (%s); listing again in %.1f s",
                    self.resource,
                    error,
                    delay,
                )
                self._version = None
                stop.wait(delay)
                delay = min(delay * 2, 30.0)

    def _relist(self) -> None:
        listing = self.kube._call(f"list {self.resource}", self._method, *self._args, **self._kwargs)
        entries = {_key(item): self._transform(item) for item in listing.get("items") or []}
        with self._lock:
            self._entries, self.synced = entries, True
        self._version = str((listing.get("metadata") or {}).get("resourceVersion") or "") or None
        self.relists += 1

    def _watch(self, stop: threading.Event) -> None:
        kwargs = {
            **self._kwargs,
            "resource_version": self._version,
            "timeout_seconds": int(self._watch_seconds),
        }
        stream = watch.Watch().stream(
            self._method, *self._args, deserialize=False, _request_timeout=self._watch_seconds + 30, **kwargs
        )
        for event in stream:
            obj = event["object"]
            with self._lock:
                if event["type"] == "DELETED":
                    self._entries.pop(_key(obj), None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._entries[_key(obj)] = self._transform(obj)
            self._version = obj["metadata"]["resourceVersion"]
            if stop.is_set():
                return


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"
