"""Kubernetes API EMULATOR (not a real kube-apiserver) for tests and the local demo.

An HTTP server the official `kubernetes` client talks to, as `lockstep-controller` would talk to a cluster: nodes
(+status), pods (+status, eviction), events, configmaps and coordination.k8s.io Leases, with resourceVersion and
uid, 409 Conflict on stale writes, JSON / merge / strategic-merge patch, label and field selectors, list + watch
(chunked stream) and Status objects for errors. It records every request (verb, resource, subresource, namespace)
and injects faults (next N matching requests fail with a code, hang, or meet a concurrent writer), in process
or over HTTP (`POST /_emulator/faults`, `GET /_emulator/requests`).
Simplifications: no authentication or admission; objects keep the status they are created with (there is no
kubelet to fill in a pod's phase and IP); resourceVersion history for watches holds the last 10,000 changes.

Run: `python -m controller.kube_emulator --listen 127.0.0.1:0 --kubeconfig-out FILE` (prints the kubeconfig path).
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import contextlib
import copy
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

log = logging.getLogger(__name__)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    """One resource type the emulator serves."""

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    field_labels: tuple[str, ...]  # the field selectors the real apiserver supports for it
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource


_META = ("metadata.name", "metadata.namespace")
KINDS = {
    (k.group, k.resource): k
    for k in (
        Kind("", "v1", "nodes", "Node", False, ("metadata.name", "spec.unschedulable"), ("status",)),
        Kind(
            "",
            "v1",
            "pods",
            "Pod",
            True,
            (
                *_META,
                "spec.nodeName",
                "status.phase",
                "status.podIP",
                "spec.schedulerName",
                "spec.restartPolicy",
            ),
            ("status", "eviction"),
        ),
        Kind(
            "",
            "v1",
            "events",
            "Event",
            True,
            (
                *_META,
                "involvedObject.kind",
                "involvedObject.name",
                "involvedObject.namespace",
                "involvedObject.uid",
                "reason",
                "type",
                "source",
                "reportingComponent",
            ),
        ),
        Kind("", "v1", "configmaps", "ConfigMap", True, _META),
        Kind("coordination.k8s.io", "v1", "leases", "Lease", True, _META),
    )
}

# Strategic merge patch: lists merged by key (patchStrategy=merge, patchMergeKey); every other list is atomic
# (replaced whole), as NodeSpec.taints is (`+listType=atomic`).
MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("spec", "containers"): "name",
    ("metadata", "ownerReferences"): "uid",
}


class ApiError(Exception):
    """An error the emulator answers with a `Status` object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


@dataclass(frozen=True)
class Request:
    """One recorded request, in Kubernetes RBAC terms."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    content_type: str = ""


@dataclass
class Fault:
    """Make the next `count` requests matching verb/resource/subresource/name misbehave.

    `status`: answer with this HTTP code before doing anything; `hang_seconds`: sleep first (a client with a
    shorter timeout gives up; the request is then carried out, as a slow apiserver would); `before`: call this
    (e.g. a concurrent writer) just before the request is carried out.
    """

    verb: str = "*"
    resource: str = "*"
    subresource: str = "*"
    name: str = "*"
    count: int = 1
    status: int | None = None
    hang_seconds: float = 0.0
    before: Callable[[], None] | None = None

    def matches(self, request: Request) -> bool:
        return all(
            want in ("*", got)
            for want, got in (
                (self.verb, request.verb),
                (self.resource, request.resource),
                (self.subresource, request.subresource),
                (self.name, request.name),
            )
        )


# ---------------------------------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, everything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Kubernetes strategic merge patch for the lists in MERGE_KEYS; other lists are atomic (replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        here = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and here in MERGE_KEYS:
            result[key] = _merge_list(result.get(key) or [], value, MERGE_KEYS[here], here)
        else:
            result[key] = strategic_merge_patch(result.get(key), value, here)
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str, path: tuple[str, ...]) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(422, "Invalid", f"{'.'.join(path)}: every item needs its merge key {merge_key!r}")
        index = next((i for i, old in enumerate(merged) if old.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item, path)
    return merged


def json_patch(target: Any, operations: list[Obj]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(target)
    for op in operations:
        kind, path = op.get("op"), op.get("path", "")
        if kind == "test":
            if _pointer_get(doc, path) != op.get("value"):
                raise ApiError(422, "Invalid", f"the test operation on {path} failed")
        elif kind == "remove":
            _pointer_remove(doc, path)
        elif kind in ("add", "replace"):
            if kind == "replace":
                _pointer_get(doc, path)
            doc = _pointer_add(doc, path, copy.deepcopy(op.get("value")), replace=kind == "replace")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_pointer_get(doc, op.get("from", "")))
            if kind == "move":
                _pointer_remove(doc, op.get("from", ""))
            doc = _pointer_add(doc, path, value, replace=False)
        else:
            raise ApiError(400, "BadRequest", f"unknown JSON patch op {kind!r}")
    return doc


def _pointer_parts(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(400, "BadRequest", f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _step(doc: Any, part: str, path: str) -> Any:
    try:
        return doc[int(part)] if isinstance(doc, list) else doc[part]
    except (KeyError, IndexError, ValueError, TypeError):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} does not exist") from None


def _pointer_get(doc: Any, path: str) -> Any:
    for part in _pointer_parts(path):
        doc = _step(doc, part, path)
    return doc


def _pointer_remove(doc: Any, path: str) -> None:
    parts = _pointer_parts(path)
    parent = _pointer_get(doc, "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts[:-1]))
    _step(parent, parts[-1], path)
    if isinstance(parent, list):
        parent.pop(int(parts[-1]))
    else:
        del parent[parts[-1]]


def _pointer_add(doc: Any, path: str, value: Any, replace: bool) -> Any:
    parts = _pointer_parts(path)
    if not parts:
        return value
    parent = doc
    for part in parts[:-1]:
        parent = _step(parent, part, path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if replace:
            parent[index] = value
        elif 0 <= index <= len(parent):
            parent.insert(index, value)
        else:
            raise ApiError(422, "Invalid", f"JSON pointer {path!r} is out of range")
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} does not name a container")
    return doc


# --------------------------------------------------------------------------------------------------- selectors

_LABEL_TERM = re.compile(
    r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """Parse a Kubernetes label selector (=, ==, !=, in, notin, key, !key) into a predicate on labels."""
    requirements: list[tuple[str, str, frozenset[str]]] = []  # (key, operator, values)
    for term in _split_terms(selector):
        match = _LABEL_TERM.match(term)
        if not match:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")
        negate, key, op, value, set_op, values = match.groups()
        if op:
            requirements.append((key, "!=" if op == "!=" else "=", frozenset({value})))
        elif set_op:
            requirements.append((key, set_op, frozenset(v.strip() for v in values.split(",") if v.strip())))
        else:
            requirements.append((key, "!exists" if negate else "exists", frozenset()))

    def matches(labels: dict[str, str]) -> bool:
        for key, op, values in requirements:
            present, value = key in labels, labels.get(key)
            ok = {
                "=": present and value in values,
                "in": present and value in values,
                "!=": not present or value not in values,
                "notin": not present or value not in values,
                "exists": present,
                "!exists": not present,
            }[op]
            if not ok:
                return False
        return True

    return matches


def field_selector(selector: str, kind: Kind) -> Callable[[Obj], bool]:
    """Parse a field selector (=, ==, !=) on the fields the real apiserver supports for this kind."""
    requirements: list[tuple[str, bool, str]] = []  # (field path, equal?, value)
    for term in _split_terms(selector):
        match = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        path, op, value = match.groups()
        if path not in kind.field_labels:
            raise ApiError(400, "BadRequest", f'field label not supported: {path} for "{kind.kind}"')
        requirements.append((path, op != "!=", value))
    return lambda obj: all((_field_value(obj, path) == value) == equal for path, equal, value in requirements)


def _field_value(obj: Obj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


# ------------------------------------------------------------------------------------------------------- store


class Store:
    """Objects with resourceVersion and uid, a change log for watches, request records and faults. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._revision = 0
        # (rv, ADDED|MODIFIED|DELETED, kind, object, the object before the change or None)
        self.changes: list[tuple[int, str, Kind, Obj, Obj | None]] = []
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # --- objects -------------------------------------------------------------------------------------------
    def get(self, kind: Kind, namespace: str, name: str) -> Obj:
        with self._lock:
            obj = self._objects.get((kind.group, kind.resource, namespace, name))
            if obj is None:
                raise ApiError(
                    404, "NotFound", f'{kind.qualified} "{name}" not found', self._details(kind, name)
                )
            return copy.deepcopy(obj)

    def list(self, kind: Kind, namespace: str = "") -> tuple[builtins.list[Obj], str]:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (group, resource, ns, _), obj in sorted(self._objects.items())
                if (group, resource) == (kind.group, kind.resource) and (not namespace or ns == namespace)
            ]
            return items, str(self._revision)

    def create(self, kind: Kind, namespace: str, obj: Obj) -> Obj:
        with self._lock:
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value")
            key = (kind.group, kind.resource, namespace, name)
            if key in self._objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{kind.qualified} "{name}" already exists',
                    self._details(kind, name),
                )
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now_rfc3339())
            if kind.namespaced:
                meta["namespace"] = namespace
            obj.update(apiVersion=kind.api_version, kind=kind.kind)
            return self._commit(kind, key, obj, "ADDED")

    def update(
        self, kind: Kind, namespace: str, name: str, change: Callable[[Obj], Obj], subresource: str = ""
    ) -> Obj:
        """Apply `change` to the stored object; 409 if the result carries a resourceVersion that is not current."""
        with self._lock:
            current = self.get(kind, namespace, name)
            new = change(copy.deepcopy(current))
            wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
                    "please apply your changes to the latest version and try again",
                    self._details(kind, name),
                )
            if (new.get("metadata") or {}).get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name in the URL")
            # The main resource and its status subresource each own their part (NodeStrategy.PrepareForUpdate).
            if subresource == "status":
                merged = {**current, "status": new.get("status", {})}
            elif "status" in kind.subresources:
                merged = {**new, "status": current.get("status", {})}
            else:
                merged = new
            immutable = {
                k: current["metadata"][k]
                for k in ("uid", "creationTimestamp", "namespace", "name")
                if k in current["metadata"]
            }
            merged["metadata"] = {**(merged.get("metadata") or {}), **immutable}
            merged.update(apiVersion=kind.api_version, kind=kind.kind)
            comparable = (
                {**merged, "metadata": {**merged["metadata"], "resourceVersion": None}},
                {**current, "metadata": {**current["metadata"], "resourceVersion": None}},
            )
            if comparable[0] == comparable[1]:
                return current  # a no-op write does not bump resourceVersion
            return self._commit(
                kind, (kind.group, kind.resource, namespace, name), merged, "MODIFIED", current
            )

    def delete(self, kind: Kind, namespace: str, name: str) -> Obj:
        with self._lock:
            obj = self.get(kind, namespace, name)
            del self._objects[(kind.group, kind.resource, namespace, name)]
            self._revision += 1
            obj["metadata"]["resourceVersion"] = str(self._revision)
            self._record_change("DELETED", kind, obj, obj)
            return obj

    def _commit(
        self, kind: Kind, key: tuple[str, str, str, str], obj: Obj, change: str, before: Obj | None = None
    ) -> Obj:
        self._revision += 1
        obj["metadata"]["resourceVersion"] = str(self._revision)
        self._objects[key] = copy.deepcopy(obj)
        self._record_change(change, kind, obj, before)
        return copy.deepcopy(obj)

    def _record_change(self, change: str, kind: Kind, obj: Obj, before: Obj | None) -> None:
        self.changes.append((self._revision, change, kind, copy.deepcopy(obj), before))
        del self.changes[:-10_000]
        for loop, event in self._waiters:
            loop.call_soon_threadsafe(event.set)

    @staticmethod
    def _details(kind: Kind, name: str) -> Obj:
        return {"name": name, "group": kind.group, "kind": kind.resource}

    def changes_after(self, revision: int) -> builtins.list[tuple[int, str, Kind, Obj, Obj | None]]:
        with self._lock:
            if self.changes and revision < self.changes[0][0] - 1:
                raise ApiError(
                    410, "Expired", f"too old resource version: {revision} ({self.changes[0][0] - 1})"
                )
            return [change for change in self.changes if change[0] > revision]

    def waiter(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), event))
        return event

    def drop_waiter(self, event: asyncio.Event) -> None:
        with self._lock:
            self._waiters = [(loop, e) for loop, e in self._waiters if e is not event]

    # --- requests and faults -------------------------------------------------------------------------------
    def record(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests.append(request)
            for fault in self.faults:
                if fault.count > 0 and fault.matches(request):
                    fault.count -= 1
                    return fault
            return None


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------------------------------------------- HTTP

_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}


def _route(path: str) -> tuple[Kind, str, str, str]:
    """URL path -> (kind, namespace, name, subresource)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    namespace = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        namespace, rest = rest[1], rest[2:]
    kind = KINDS.get((group, rest[0] if rest else ""))
    if kind is None or len(rest) > 3 or (len(rest) == 3 and rest[2] not in kind.subresources):
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    if kind.namespaced and len(rest) > 1 and not namespace:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    return kind, namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""


class Emulator:
    """The emulator: a Store served over HTTP from a background thread (or from `serve()` in the CLI)."""

    def __init__(self) -> None:
        self.store = Store()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- test-facing helpers -------------------------------------------------------------------------------
    def add_node(self, name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
        node = {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]},
        }
        return self.store.create(KINDS[("", "nodes")], "", node)

    def add_pod(
        self,
        namespace: str,
        name: str,
        node: str,
        ip: str,
        labels: dict[str, str] | None = None,
        port: int = 9445,
    ) -> Obj:
        pod = {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "main", "ports": [{"name": "http", "containerPort": port}]}],
            },
            "status": {"phase": "Running", "podIP": ip},
        }
        return self.store.create(KINDS[("", "pods")], namespace, pod)

    def node(self, name: str) -> Obj:
        return self.store.get(KINDS[("", "nodes")], "", name)

    def objects(self, resource: str, group: str = "", namespace: str = "") -> list[Obj]:
        return self.store.list(KINDS[(group, resource)], namespace)[0]

    def change(
        self,
        resource: str,
        name: str,
        change: Callable[[Obj], Obj],
        namespace: str = "",
        group: str = "",
        subresource: str = "",
    ) -> Obj:
        """Another writer: change a stored object as another client would (bumps resourceVersion)."""
        return self.store.update(KINDS[(group, resource)], namespace, name, change, subresource)

    def patch_node(self, name: str, change: Callable[[Obj], Obj]) -> Obj:
        return self.change("nodes", name, change)

    def inject(self, fault: Fault) -> Fault:
        with self.store._lock:
            self.store.faults.append(fault)
        return fault

    def writes(self) -> list[Request]:
        return [r for r in self.store.requests if r.verb not in ("get", "list", "watch")]

    def kubeconfig(self) -> Obj:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
            "current-context": "emulator",
        }

    def write_kubeconfig(self, path: str) -> str:
        """Written whole or not at all (temp file + rename): a reader polling for the file never sees half of it."""
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            yaml.safe_dump(self.kubeconfig(), handle)
        os.replace(temporary, path)
        return path

    # --- serving -------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/version", self._version)
        app.router.add_get("/_emulator/requests", self._requests)
        app.router.add_post("/_emulator/faults", self._add_fault)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start_in_thread(self) -> str:
        """Serve from a daemon thread with its own event loop (for tests in the same process)."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())

        self._thread = threading.Thread(target=run, name="kube-emulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-lockstep-emulator"})

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.__dict__ for r in self.store.requests])

    async def _add_fault(self, request: web.Request) -> web.Response:
        """Fault injection for an emulator in another process: POST a JSON Fault (without `before`)."""
        try:
            body = await request.json()
            fault = Fault(**{k: v for k, v in body.items() if k != "before"})
        except (json.JSONDecodeError, TypeError) as error:
            return web.json_response(ApiError(400, "BadRequest", str(error)).status(), status=400)
        self.inject(fault)
        return web.json_response({"injected": body}, status=201)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            kind, namespace, name, subresource = _route(request.path)
            watch = request.query.get("watch") in ("true", "1")
            verb = _verb(request.method, bool(name), watch)
            record = Request(
                verb,
                kind.group,
                kind.resource,
                subresource,
                namespace,
                name,
                request.headers.get("Content-Type", "").split(";")[0] if request.can_read_body else "",
            )
            fault = self.store.record(record)
            if fault is not None:
                if fault.hang_seconds:
                    await asyncio.sleep(fault.hang_seconds)
                if fault.status is not None:
                    raise ApiError(fault.status, "InternalError", f"injected fault: HTTP {fault.status}")
                if fault.before is not None:
                    fault.before()
            if watch:
                return await self._watch(request, kind, namespace)
            body = await request.json() if request.can_read_body else None
            code, result = self._dispatch(request, verb, kind, namespace, name, subresource, body)
            return web.json_response(result, status=code)
        except ApiError as error:
            return web.json_response(error.status(), status=error.code)
        except json.JSONDecodeError as error:
            return web.json_response(
                ApiError(400, "BadRequest", f"invalid JSON: {error}").status(), status=400
            )

    def _dispatch(
        self,
        request: web.Request,
        verb: str,
        kind: Kind,
        namespace: str,
        name: str,
        subresource: str,
        body: Any,
    ) -> tuple[int, Obj]:
        store = self.store
        if verb == "list":
            labels = label_selector(request.query.get("labelSelector", ""))
            fields = field_selector(request.query.get("fieldSelector", ""), kind)
            items, revision = store.list(kind, namespace)
            items = [o for o in items if labels(o["metadata"].get("labels") or {}) and fields(o)]
            return 200, {
                "kind": f"{kind.kind}List",
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": revision},
                "items": items,
            }
        if verb == "get":
            return 200, store.get(kind, namespace, name)
        if verb == "create" and subresource == "eviction":
            store.get(kind, namespace, name)
            store.delete(kind, namespace, name)
            return 201, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            }
        if not isinstance(body, (dict, list)):
            raise ApiError(400, "BadRequest", "the request needs a JSON body")
        if verb == "create":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "create needs an object")
            return 201, store.create(kind, namespace, body)
        if verb == "update":
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "update needs an object")
            return 200, store.update(kind, namespace, name, lambda _: body, subresource)
        if verb == "patch":
            patch_type = _PATCH_TYPES.get(request.headers.get("Content-Type", "").split(";")[0])
            if patch_type is None:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {request.content_type}")
            return 200, store.update(
                kind, namespace, name, lambda obj: _apply_patch(patch_type, obj, body), subresource
            )
        if verb == "delete":
            return 200, store.delete(kind, namespace, name)
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def _watch(self, request: web.Request, kind: Kind, namespace: str) -> web.StreamResponse:
        labels = label_selector(request.query.get("labelSelector", ""))
        fields = field_selector(request.query.get("fieldSelector", ""), kind)
        timeout_seconds = float(request.query.get("timeoutSeconds", "1800"))
        revision = int(request.query.get("resourceVersion") or 0)
        initial: list[tuple[str, Obj]] = []
        if not request.query.get("resourceVersion"):
            items, current = self.store.list(kind, namespace)
            initial, revision = [("ADDED", o) for o in items], int(current)
        self.store.changes_after(revision)  # 410 Gone before the stream starts if history is compacted
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        deadline = time.monotonic() + timeout_seconds
        event = self.store.waiter()
        try:
            for change, obj in initial:
                await response.write(json.dumps({"type": change, "object": obj}).encode() + b"\n")
            while time.monotonic() < deadline:
                event.clear()
                for rv, change, changed_kind, obj, before in self.store.changes_after(revision):
                    revision = rv
                    if changed_kind != kind or (namespace and obj["metadata"].get("namespace") != namespace):
                        continue
                    # With selectors, an object that starts or stops matching is ADDED or DELETED for this watch.
                    now = change != "DELETED" and labels(obj["metadata"].get("labels") or {}) and fields(obj)
                    was = (
                        before is not None
                        and labels(before["metadata"].get("labels") or {})
                        and fields(before)
                    )
                    seen = {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}.get(
                        (now, was)
                    )
                    if seen is not None:
                        await response.write(json.dumps({"type": seen, "object": obj}).encode() + b"\n")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), max(0.0, min(1.0, deadline - time.monotonic())))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.drop_waiter(event)
        await response.write_eof()
        return response


def _verb(method: str, named: bool, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if named else "list")
    verbs = {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }
    if method not in verbs:
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
    return verbs[method]


def _apply_patch(patch_type: str, obj: Obj, body: Any) -> Obj:
    if patch_type == "json":
        if not isinstance(body, list):
            raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
        result = json_patch(obj, body)
    elif not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "a merge patch is an object")
    else:
        result = merge_patch(obj, body) if patch_type == "merge" else strategic_merge_patch(obj, body)
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the patched object is not an object")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.kube_emulator",
        description="Kubernetes API EMULATOR for tests and the demo (not a real apiserver): nodes, pods, events, "
        "configmaps, leases; resourceVersion, 409s, patches, selectors, watch.",
    )
    parser.add_argument(
        "--listen", default="127.0.0.1:0", help="HOST:PORT to bind (port 0 picks a free port)"
    )
    parser.add_argument(
        "--kubeconfig-out", default="", help="write a kubeconfig pointing at the emulator here"
    )
    parser.add_argument("--nodes", type=int, default=0, help="create this many nodes named node-0.. at start")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.listen.rpartition(":")
    emulator = Emulator()
    for index in range(args.nodes):
        emulator.add_node(f"node-{index}")

    async def serve() -> None:
        url = await emulator.start(host or "127.0.0.1", int(port or 0))
        if args.kubeconfig_out:
            emulator.write_kubeconfig(args.kubeconfig_out)
        print(
            f"kubernetes API emulator listening on {url}; kubeconfig: {args.kubeconfig_out or '(not written)'}",
            flush=True,
        )
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
