"""Writes the Grafana dashboards (`*.json` beside this file) that the Helm chart ships as ConfigMaps.

Panels are data here so every one gets the same datasource variable, units and layout; run
`python dashboards/generate.py` after editing and commit the JSON (`--check` tells whether it is up to date).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The training job label on collective metrics (kept as `job` by honor_labels; see the chart's serviceMonitor).
NODE = 'node=~"$node"'
JOB = 'job=~"$job"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str
    kind: str = "timeseries"  # timeseries | stat | table | bargauge
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    overrides: list[dict[str, object]] = field(default_factory=list)


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(expr, legend, instant)


def _datasource_variable() -> dict[str, object]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }


def _query_variable(name: str, label: str, query: str) -> dict[str, object]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, object]:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + i),
            "instant": query.instant or panel.kind in ("stat", "table", "bargauge"),
            "range": not (query.instant or panel.kind in ("stat", "table", "bargauge")),
        }
        for i, query in enumerate(panel.queries)
    ]
    body: dict[str, object] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": color, "value": value} for color, value in panel.thresholds],
                },
            },
            "overrides": panel.overrides,
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}
        },
    }
    if panel.kind == "table":
        body["transformations"] = [{"id": "merge", "options": {}}]
        body["options"] = {"showHeader": True}
    if panel.kind == "stat":
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
    return body


def dashboard(
    uid: str, title: str, description: str, variables: list[str], rows: list[tuple[str, list[Panel]]]
) -> dict[str, object]:
    """A Grafana dashboard: `variables` from "node", "job"; rows of panels laid out 24 columns wide."""
    templating: list[dict[str, object]] = [_datasource_variable()]
    if "node" in variables:
        templating.append(_query_variable("node", "Node", "label_values(lockstep_collector_success, node)"))
    if "job" in variables:
        templating.append(
            _query_variable(
                "job", "Training job", "label_values(lockstep_collective_step_period_seconds, job)"
            )
        )
    panels: list[dict[str, object]] = []
    panel_id, y = 1, 0
    for row_title, row_panels in rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row_panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lockstep", "gpu"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "templating": {"list": templating},
        "annotations": {"list": []},
        "links": [{"title": "Lockstep", "type": "dashboards", "tags": ["lockstep"], "asDropdown": True}],
        "panels": panels,
    }


RED_AT_1 = (("green", None), ("red", 1.0))
VERDICT_COLORS = [
    {
        "matcher": {"id": "byName", "options": verdict},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}],
    }
    for verdict, color in (
        ("healthy", "green"),
        ("suspect", "orange"),
        ("faulty", "red"),
        ("unknown", "gray"),
    )
]


def cluster_overview() -> dict[str, object]:
    return dashboard(
        "lockstep-cluster",
        "Lockstep / Cluster overview",
        "Nodes by verdict, cordoned nodes and why, GPUs by health, XIDs, the circuit breaker and the controller.",
        [],
        [
            (
                "Verdicts",
                [
                    Panel(
                        "Nodes by verdict",
                        (q("sum by (verdict) (lockstep_node_verdict)", "{{verdict}}"),),
                        "none",
                        kind="stat",
                        width=8,
                        overrides=VERDICT_COLORS,
                    ),
                    Panel(
                        "Circuit breaker open",
                        (q("max(lockstep_breaker_open)", "open"),),
                        "bool_yes_no",
                        kind="stat",
                        width=4,
                        thresholds=RED_AT_1,
                        description="Open: the controller stopped acting because too many nodes turned bad at once. "
                        "Reset with `lockstep release --breaker`.",
                    ),
                    Panel(
                        "Controller leader",
                        (q("sum(lockstep_controller_leader)", "leaders"),),
                        "none",
                        kind="stat",
                        width=4,
                        thresholds=(("red", None), ("green", 1.0), ("red", 2.0)),
                    ),
                    Panel(
                        "Agents reachable",
                        (q("sum(lockstep_agents_reachable)", "reachable"),),
                        "none",
                        kind="stat",
                        width=4,
                    ),
                    Panel(
                        "Nodes cordoned by Lockstep",
                        (q("sum(lockstep_node_cordoned)", "cordoned"),),
                        "none",
                        kind="stat",
                        width=4,
                        thresholds=RED_AT_1,
                    ),
                    Panel(
                        "Non-healthy nodes and why",
                        (
                            q('max by (node, verdict) (lockstep_node_verdict{verdict!="healthy"}) == 1', ""),
                            q("max by (node, reason) (lockstep_node_cordoned) == 1", ""),
                        ),
                        "none",
                        kind="table",
                        width=24,
                        description="Every node whose verdict is not healthy, and the reason Lockstep cordoned it.",
                    ),
                    Panel(
                        "Verdicts over time",
                        (q("sum by (verdict) (lockstep_node_verdict)", "{{verdict}}"),),
                        "none",
                        width=12,
                        overrides=VERDICT_COLORS,
                    ),
                    Panel(
                        "Cordons and releases",
                        (
                            q(
                                "sum by (reason) (increase(lockstep_cordons_total[$__rate_interval]))",
                                "cordon {{reason}}",
                            ),
                            q("sum(increase(lockstep_releases_total[$__rate_interval]))", "releases"),
                        ),
                        "none",
                        width=12,
                    ),
                ],
            ),
            (
                "GPUs",
                [
                    Panel(
                        "GPUs by health",
                        (
                            q("count(lockstep_gpu_temperature_celsius)", "reporting"),
                            q("sum(lockstep_gpu_lost)", "lost"),
                            q('count(lockstep_gpu_remapped_rows{state="failure"} > 0)', "row-remap failure"),
                        ),
                        "none",
                        kind="stat",
                        width=12,
                    ),
                    Panel(
                        "XID errors by code",
                        (
                            q(
                                "sum by (xid) (increase(lockstep_gpu_xid_errors_total[$__rate_interval]))",
                                "XID {{xid}}",
                            ),
                        ),
                        "none",
                        kind="timeseries",
                        width=12,
                    ),
                    Panel(
                        "Top XID nodes (last hour)",
                        (
                            q(
                                "topk(10, sum by (node, xid) (increase(lockstep_gpu_xid_errors_total[1h]))) > 0",
                                "",
                            ),
                        ),
                        "none",
                        kind="table",
                        width=12,
                    ),
                    Panel(
                        "GPU utilisation (cluster mean)",
                        (
                            q("avg(lockstep_gpu_utilization_ratio)", "mean"),
                            q("min(lockstep_gpu_utilization_ratio)", "min"),
                        ),
                        "percentunit",
                        width=12,
                    ),
                ],
            ),
            (
                "Controller",
                [
                    Panel(
                        "Detection cycle duration",
                        (q("max(lockstep_cycle_duration_seconds)", "cycle"),),
                        "s",
                        width=12,
                    ),
                    Panel(
                        "Evidence age (oldest per node)",
                        (q("topk(10, max by (node) (lockstep_evidence_age_seconds))", "{{node}}"),),
                        "s",
                        width=12,
                    ),
                ],
            ),
        ],
    )


def node_detail() -> dict[str, object]:
    gpu = f"{{{NODE}}}"
    return dashboard(
        "lockstep-node",
        "Lockstep / Node detail",
        "One node's GPUs (NVML) and NICs (sysfs) as the Lockstep agent sees them.",
        ["node"],
        [
            (
                "Agent",
                [
                    Panel(
                        "Collectors succeeding",
                        (q(f"min by (collector) (lockstep_collector_success{gpu})", "{{collector}}"),),
                        "bool_yes_no",
                        kind="stat",
                        width=12,
                        thresholds=(("red", None), ("green", 1.0)),
                    ),
                    Panel(
                        "Collector duration",
                        (
                            q(
                                f"max by (collector) (lockstep_collector_duration_seconds{gpu})",
                                "{{collector}}",
                            ),
                        ),
                        "s",
                        width=12,
                    ),
                ],
            ),
            (
                "GPUs",
                [
                    Panel(
                        "GPU utilisation",
                        (q(f"lockstep_gpu_utilization_ratio{gpu}", "{{node}} GPU {{gpu}}"),),
                        "percentunit",
                    ),
                    Panel(
                        "GPU memory used",
                        (q(f"lockstep_gpu_memory_used_bytes{gpu}", "{{node}} GPU {{gpu}}"),),
                        "bytes",
                    ),
                    Panel(
                        "GPU temperature",
                        (q(f"lockstep_gpu_temperature_celsius{gpu}", "{{node}} GPU {{gpu}}"),),
                        "celsius",
                    ),
                    Panel(
                        "Power draw", (q(f"lockstep_gpu_power_watts{gpu}", "{{node}} GPU {{gpu}}"),), "watt"
                    ),
                    Panel(
                        "Energy rate",
                        (
                            q(
                                f"rate(lockstep_gpu_energy_joules_total{gpu}[$__rate_interval])",
                                "{{node}} GPU {{gpu}}",
                            ),
                        ),
                        "watt",
                    ),
                    Panel(
                        "SM clock", (q(f"lockstep_gpu_sm_clock_hertz{gpu}", "{{node}} GPU {{gpu}}"),), "hertz"
                    ),
                    Panel(
                        "Throttle (clock event) reasons",
                        (q(f"lockstep_gpu_clock_event_active{gpu} == 1", "{{node}} GPU {{gpu}} {{reason}}"),),
                        "none",
                    ),
                    Panel(
                        "ECC errors (rate)",
                        (
                            q(
                                f"sum by (node, gpu, type) (rate(lockstep_gpu_ecc_errors_total{gpu}[$__rate_interval]))",
                                "{{node}} GPU {{gpu}} {{type}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Remapped rows",
                        (q(f"lockstep_gpu_remapped_rows{gpu}", "{{node}} GPU {{gpu}} {{state}}"),),
                        "none",
                    ),
                    Panel(
                        "XID errors",
                        (
                            q(
                                f"sum by (node, gpu, xid) (increase(lockstep_gpu_xid_errors_total{gpu}[$__rate_interval]))",
                                "{{node}} GPU {{gpu}} XID {{xid}}",
                            ),
                        ),
                        "none",
                    ),
                    Panel(
                        "PCIe link width",
                        (q(f"lockstep_gpu_pcie_link_width{gpu}", "{{node}} GPU {{gpu}}"),),
                        "none",
                    ),
                    Panel(
                        "PCIe replays (rate)",
                        (
                            q(
                                f"rate(lockstep_gpu_pcie_replays_total{gpu}[$__rate_interval])",
                                "{{node}} GPU {{gpu}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "NVLink links up",
                        (q(f"sum by (node, gpu) (lockstep_gpu_nvlink_up{gpu})", "{{node}} GPU {{gpu}}"),),
                        "none",
                    ),
                ],
            ),
            (
                "NICs",
                [
                    Panel(
                        "Interface throughput",
                        (
                            q(
                                f"rate(lockstep_network_receive_bytes_total{gpu}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_network_transmit_bytes_total{gpu}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Interface errors and drops",
                        (
                            q(
                                f"rate(lockstep_network_receive_errors_total{gpu}[$__rate_interval])",
                                "{{node}} {{interface}} rx errors",
                            ),
                            q(
                                f"rate(lockstep_network_transmit_errors_total{gpu}[$__rate_interval])",
                                "{{node}} {{interface}} tx errors",
                            ),
                        ),
                        "pps",
                    ),
                    Panel(
                        "Carrier changes",
                        (
                            q(
                                f"increase(lockstep_network_carrier_changes_total{gpu}[$__rate_interval])",
                                "{{node}} {{interface}}",
                            ),
                        ),
                        "none",
                    ),
                    Panel(
                        "Link speed",
                        (q(f"lockstep_network_speed_bits_per_second{gpu}", "{{node}} {{interface}}"),),
                        "bps",
                    ),
                ],
            ),
        ],
    )


def job_collectives() -> dict[str, object]:
    sel = f"{{{JOB}}}"
    return dashboard(
        "lockstep-jobs",
        "Lockstep / Job collective health",
        "Per-rank view of each training job's collectives: the rank that arrives late and waits little is the "
        "straggler; its peers arrive early and wait long. A hang shows as time since progress growing on every rank.",
        ["job"],
        [
            (
                "Lockstep",
                [
                    Panel(
                        "Step period by rank",
                        (q(f"lockstep_collective_step_period_seconds{sel}", "{{job}} rank {{rank}}"),),
                        "s",
                        description="Period of the job's collective pattern (one training step), per rank.",
                    ),
                    Panel(
                        "Collectives per second by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collectives_total{sel}[$__rate_interval]))",
                                "{{job}} rank {{rank}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Wait share by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_wait_seconds_total{sel}[$__rate_interval]))",
                                "{{job}} rank {{rank}}",
                            ),
                        ),
                        "percentunit",
                        description="Share of time a rank spends waiting inside collectives for its peers. The straggler waits least.",
                    ),
                    Panel(
                        "Lateness by rank",
                        (
                            q(
                                f"max by (job, rank) (lockstep_collective_lateness_seconds{sel})",
                                "{{job}} rank {{rank}}",
                            ),
                        ),
                        "s",
                        description="How late a rank arrives at a collective behind the first rank of the same sequence number.",
                    ),
                ],
            ),
            (
                "Stalls",
                [
                    Panel(
                        "Seconds since progress by rank",
                        (q(f"lockstep_collective_seconds_since_progress{sel}", "{{job}} rank {{rank}}"),),
                        "s",
                    ),
                    Panel(
                        "Oldest pending collective by rank",
                        (q(f"lockstep_collective_pending_age_seconds{sel}", "{{job}} rank {{rank}}"),),
                        "s",
                    ),
                ],
            ),
        ],
    )


def network() -> dict[str, object]:
    sel = f"{{{NODE}}}"
    return dashboard(
        "lockstep-network",
        "Lockstep / Network",
        "Ethernet, RoCE and InfiniBand: throughput, errors, congestion and retransmission counters per node and port.",
        ["node"],
        [
            (
                "RDMA ports",
                [
                    Panel(
                        "RDMA throughput",
                        (
                            q(
                                f"rate(lockstep_rdma_port_receive_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} rx",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_transmit_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Transmit wait (congestion)",
                        (
                            q(
                                f"rate(lockstep_rdma_port_transmit_wait_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Link errors",
                        (
                            q(
                                f"rate(lockstep_rdma_port_symbol_errors_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} symbol",
                            ),
                            q(
                                f"increase(lockstep_rdma_port_link_downed_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} link downed",
                            ),
                        ),
                        "none",
                    ),
                    Panel(
                        "RoCE congestion notifications",
                        (
                            q(
                                f"rate(lockstep_rdma_port_cnp_sent_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} CNP sent",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_cnp_handled_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} CNP handled",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Retransmissions and timeouts",
                        (
                            q(
                                f"rate(lockstep_rdma_port_out_of_sequence_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} out of sequence",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_local_ack_timeout_errors_total{sel}[$__rate_interval])",
                                "{{node}} {{device}}/{{port}} ack timeout",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Port rate",
                        (q(f"lockstep_rdma_port_rate_bits_per_second{sel}", "{{node}} {{device}}/{{port}}"),),
                        "bps",
                    ),
                ],
            ),
            (
                "Interfaces",
                [
                    Panel(
                        "Interface throughput",
                        (
                            q(
                                f"rate(lockstep_network_receive_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_network_transmit_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Drops",
                        (
                            q(
                                f"rate(lockstep_network_receive_drops_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_network_transmit_drops_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "pps",
                    ),
                ],
            ),
        ],
    )


DASHBOARDS = {
    "lockstep-cluster.json": cluster_overview,
    "lockstep-node.json": node_detail,
    "lockstep-jobs.json": job_collectives,
    "lockstep-network.json": network,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    """Write the dashboards; with `--check`, only report (exit 1) those whose committed JSON is stale."""
    stale = [
        name
        for name, text in render().items()
        if not (HERE / name).exists() or (HERE / name).read_text() != text
    ]
    if "--check" in argv:
        for name in stale:
            print(f"stale: {HERE / name} (run python dashboards/generate.py)")
        return 1 if stale else 0
    for name, text in render().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
