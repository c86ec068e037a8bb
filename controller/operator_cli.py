"""`lockstep status`, `lockstep explain NODE`, `lockstep release NODE`, `lockstep release --breaker`.

status and explain read the controller's read-only API (`--controller URL`); release goes through the Kubernetes
API with the operator's own kubeconfig, so Kubernetes RBAC decides who may do it and the audit log records it; the
controller picks the change up from the cluster on its next cycle.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

DEFAULT_CONTROLLER = "http://127.0.0.1:9446"


def register(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser("status", help="table of nodes and jobs with their verdicts")
    status.add_argument(
        "--controller", default=DEFAULT_CONTROLLER, help=f"controller URL (default {DEFAULT_CONTROLLER})"
    )
    status.set_defaults(handler=run_status)

    explain = subparsers.add_parser(
        "explain", help="why a node has its verdict: the evidence chain in plain words"
    )
    explain.add_argument("node", help="node name")
    explain.add_argument(
        "--controller", default=DEFAULT_CONTROLLER, help=f"controller URL (default {DEFAULT_CONTROLLER})"
    )
    explain.set_defaults(handler=run_explain)

    release = subparsers.add_parser(
        "release",
        help="release a node Lockstep holds, or reset the circuit breaker (with YOUR kubeconfig)",
        description="Release a node Lockstep cordoned (remove its taint and annotations, uncordon it if Lockstep "
        "cordoned it, and remember the reason so Lockstep does not cordon it again for the same finding), or reset "
        "the circuit breaker with --breaker. Uses your own Kubernetes credentials.",
    )
    release.add_argument("node", nargs="?", help="node to release")
    release.add_argument("--breaker", action="store_true", help="reset (close) the circuit breaker")
    release.add_argument(
        "--kubeconfig", default="", help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    release.add_argument(
        "--namespace", default="lockstep", help="the controller's namespace (breaker ConfigMap)"
    )
    release.add_argument(
        "--breaker-configmap", default="lockstep-breaker", help="name of the breaker ConfigMap"
    )
    release.add_argument("--event-namespace", default="default", help="namespace of node Events")
    release.set_defaults(handler=run_release)


def _get(controller: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(controller.rstrip("/") + path, timeout=10) as response:
        document = json.loads(response.read())
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return document


def _fetch(args: argparse.Namespace, *paths: str) -> list[dict[str, Any]] | None:
    try:
        return [_get(args.controller, path) for path in paths]
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"lockstep: cannot read the controller at {args.controller}: {error}", file=sys.stderr)
        return None


def _when(unix_seconds: Any) -> str:
    if not unix_seconds:
        return "-"
    return dt.datetime.fromtimestamp(float(unix_seconds), dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _kube_state(node: dict[str, Any]) -> str:
    state = node.get("kubernetes")
    if state is None:
        return "not managed (no node or not selected)"
    if not state.get("managed", True):
        return "lockstep.dev/managed=false: never touched"
    if node.get("held_by_lockstep"):
        return "cordoned+tainted by Lockstep"
    if state.get("released_reason"):
        return f"released by a person ({state['released_reason']})"
    return "cordoned (not by Lockstep)" if state.get("unschedulable") else "schedulable"


def run_status(args: argparse.Namespace) -> int:
    fetched = _fetch(args, "/api/v1/nodes", "/api/v1/jobs")
    if fetched is None:
        return 1
    nodes, jobs = fetched
    breaker = nodes.get("breaker") or {}
    flags = [f"last cycle {_when(nodes.get('completed_at'))}"]
    flags += ["DRY-RUN"] if nodes.get("dry_run") else []
    flags += ["leader" if nodes.get("leader") else "standby (not the leader)"]
    flags += (
        [f"CIRCUIT BREAKER OPEN: {breaker.get('reason', '')}"] if breaker.get("open") else ["breaker closed"]
    )
    flags += [f"WARNING {nodes['error']}"] if nodes.get("error") else []
    print("controller: " + "; ".join(flags))
    rows = []
    for node in nodes.get("nodes") or []:
        note = node.get("blocked") or node.get("planned") or node.get("agent_error") or ""
        age = node.get("evidence_age_seconds")
        rows.append(
            [
                node["node"],
                node["verdict"].upper() if node["verdict"] in ("faulty", "suspect") else node["verdict"],
                f"{node.get('confidence', 0):.2f}",
                node.get("reason") or "-",
                _kube_state(node),
                "-" if age is None else f"{age:.1f}s",
                note,
            ]
        )
    print(
        _table(["NODE", "VERDICT", "CONF", "REASON", "KUBERNETES", "EVIDENCE AGE", "NOTE"], rows)
        if rows
        else "no nodes"
    )
    print()
    job_rows = []
    for job in jobs.get("jobs") or []:
        period = next((v for k, v in job.items() if "period" in k and isinstance(v, (int, float))), None)
        job_rows.append(
            [
                str(job.get("name", "?")),
                str(job.get("state", "-")),
                str(job.get("world_size") or len(job.get("rank_nodes") or job.get("ranks") or [])),
                "-" if period is None else f"{period:.3f}s",
                ", ".join(str(s) for s in job.get("suspects") or []) or "-",
            ]
        )
    print(_table(["JOB", "STATE", "RANKS", "STEP PERIOD", "SUSPECTS"], job_rows) if job_rows else "no jobs")
    return 0


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [
            item
            for key, sub in value.items()
            for item in _flatten(sub, f"{prefix}.{key}" if prefix else str(key))
        ]
    if isinstance(value, list) and len(value) > 8:
        value = [*value[:8], f"... {len(value) - 8} more"]
    if isinstance(value, float):
        return [(prefix, f"{value:.4g}")]
    return [(prefix, json.dumps(value) if isinstance(value, (list, dict)) else str(value))]


def explain(node: dict[str, Any]) -> str:
    """The evidence chain behind a node's verdict, in plain words."""
    lines = [
        f"node {node['node']}: {node['verdict'].upper()} (confidence {node.get('confidence', 0):.2f}) "
        f"since {_when(node.get('since'))}" + (f", reason {node['reason']}" if node.get("reason") else ""),
        f"Kubernetes: {_kube_state(node)}",
    ]
    if node.get("blocked"):
        lines.append(f"Not cordoned although faulty: {node['blocked']}")
    if node.get("planned"):
        lines.append(f"Action this cycle: {node['planned']}")
    agent = node.get("agent_url") or "unknown agent"
    age = node.get("evidence_age_seconds")
    lines.append(
        f"Agent: {agent}"
        + ("" if age is None else f", evidence {age:.1f} s old")
        + (f", last error: {node['agent_error']}" if node.get("agent_error") else "")
    )
    for rank in node.get("misattributed_ranks") or []:
        lines.append(f"Not trusted, left out of detection: {rank}")
    findings = node.get("findings") or []
    if not findings:
        lines.append(
            "No findings: the node has no evidence (agent unreachable or no data), which is never a fault."
            if node["verdict"] == "unknown"
            else "No findings: every signal of this node agrees with its peers and its own history."
        )
    for number, finding in enumerate(findings, 1):
        severity = {
            "hard": "hard evidence (acts at once)",
            "statistical": "statistical evidence (acts only when it persists)",
            "fabric": "fabric evidence (between nodes or behind a switch: alert, never cordon)",
        }.get(finding.get("severity", ""), finding.get("severity", ""))
        where = f" in job {finding['job']}" if finding.get("job") else ""
        lines.append(
            f"{number}. {finding.get('reason', '?')}{where}: {severity}; detector {finding.get('detector', '?')}, "
            f"confidence {finding.get('confidence', 0):.2f}, observed {_when(finding.get('observed_at'))}"
        )
        evidence = dict(finding.get("evidence") or {})
        if finding.get("summary"):
            lines.append(f"   What was seen: {finding['summary']}")
        if evidence.get("signal"):
            lines.append(f"   Signal: {evidence.pop('signal')}")
        peers = evidence.pop("peers", None) or [n for n in finding.get("nodes") or [] if n != node["node"]]
        if peers:
            lines.append(f"   Peers compared: {', '.join(map(str, peers))}")
        details = _flatten(evidence)
        if details:
            lines.append("   Windows and figures:")
            lines += [f"     {key}: {value}" for key, value in details]
    return "\n".join(lines)


def run_explain(args: argparse.Namespace) -> int:
    fetched = _fetch(args, "/api/v1/nodes")
    if fetched is None:
        return 1
    for node in fetched[0].get("nodes") or []:
        if node.get("node") == args.node:
            print(explain(node))
            return 0
    print(f"lockstep: the controller knows no node {args.node!r}", file=sys.stderr)
    return 1


def run_release(args: argparse.Namespace) -> int:
    if bool(args.node) == bool(args.breaker):
        print("lockstep release: give a NODE or --breaker (not both)", file=sys.stderr)
        return 2
    from controller.kube import Kube, KubeError, kubeconfig_user, load_api_client
    from controller.settings import KubeSettings

    settings = KubeSettings(
        kubeconfig=args.kubeconfig,
        namespace=args.namespace,
        breaker_configmap=args.breaker_configmap,
        event_namespace=args.event_namespace,
    )
    try:
        kube = Kube(load_api_client(args.kubeconfig), settings)
        who = kubeconfig_user(args.kubeconfig)
        if args.breaker:
            kube.reset_breaker(who, time.time())
            print(f"circuit breaker reset by {who}; the controller may cordon again from its next cycle")
            return 0
        reason = kube.release(args.node, lambda: True, remember=True, uncordon=True)
        if reason is None:
            print(f"node {args.node}: Lockstep holds nothing there; nothing changed")
            return 0
        kube.event(
            args.node,
            "LockstepReleased",
            f"released by {who} (lockstep release); held for {reason}",
            False,
            lambda: True,
        )
    except KubeError as error:
        print(f"lockstep release: {error}", file=sys.stderr)
        return 1
    print(
        f"node {args.node} released (was held for {reason}); Lockstep will not cordon it again for {reason} "
        "until it has been healthy for a while"
    )
    return 0
