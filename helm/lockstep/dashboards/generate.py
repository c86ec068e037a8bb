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
# Agent metrics carry the node as a target label (the monitors' relabeling); collective metrics carry the
# training job as `job` (kept by honor_labels; see the chart's serviceMonitor).
NODE = 'node=~"$node"'
JOB = 'job=~"$job"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str
    kind: str = "timeseries"  # timeseries | stat | table
    description: str = ""
    width: int = 12
    height: int = 8
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    overrides: list[dict[str, object]] = field(default_factory=list)
    node_links: bool = False  # table rows link to the node's detail dashboard


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


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
    instant = panel.kind in ("stat", "table")  # the latest value; time series query a range
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + i),
            "instant": instant,
            "range": not instant,
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
                "links": [NODE_DETAIL_LINK] if panel.node_links else [],
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


# A data link from a table row with a `node` field to that node's detail dashboard.
NODE_DETAIL_LINK = {
    "title": "Node detail",
    "url": "/d/lockstep-node/lockstep-node-detail?${__url_time_range}&var-node=${__data.fields.node}",
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
        "Nodes by verdict, cordons and why, GPUs by health, XIDs, the circuit breaker and the controller.",
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
                        (q("max(lockstep_controller_breaker_open)", "open"),),
                        "bool_yes_no",
                        kind="stat",
                        width=4,
                        thresholds=RED_AT_1,
                        description="Open: the controller stopped acting because too many nodes turned bad at once. "
                        "Reset with `lockstep release --breaker`.",
                    ),
                    Panel(
                        "Controller leaders",
                        (q("sum(lockstep_controller_leader)", "leaders"),),
                        "none",
                        kind="stat",
                        width=4,
                        thresholds=(("red", None), ("green", 1.0)),
                        description="Replicas that may act (hold the Lease). In dry-run every replica reports 1 and none writes.",
                    ),
                    Panel(
                        "Agents reachable",
                        (
                            q("max(lockstep_controller_agents_reachable)", "reachable"),
                            q("max(lockstep_controller_agents)", "known"),
                        ),
                        "none",
                        kind="stat",
                        width=4,
                    ),
                    Panel(
                        "Faulty nodes held back by safety limits",
                        (q("max(lockstep_controller_blocked_nodes)", "blocked"),),
                        "none",
                        kind="stat",
                        width=4,
                        thresholds=RED_AT_1,
                    ),
                    Panel(
                        "Nodes that are not healthy",
                        (
                            q(
                                'max by (node, verdict) (lockstep_node_verdict{verdict!="healthy"}) == 1',
                                "{{node}} {{verdict}}",
                            ),
                        ),
                        "none",
                        kind="table",
                        width=12,
                        description="Every node whose verdict is suspect, faulty or unknown; `lockstep explain NODE` says why.",
                        node_links=True,
                    ),
                    Panel(
                        "Nodes cordoned by Lockstep, and why",
                        (q("max by (node, reason) (lockstep_node_cordoned) == 1", "{{node}}: {{reason}}"),),
                        "none",
                        kind="table",
                        width=12,
                        node_links=True,
                        description="Every node Lockstep holds cordoned and tainted now, as the controller reads the "
                        "cluster; the reason is also the value of the lockstep.dev/unhealthy taint. "
                        "Repair the node, then `lockstep release NODE`.",
                    ),
                    Panel(
                        "Nodes tainted by Lockstep, and why (kube-state-metrics)",
                        (
                            q(
                                'max by (node, value) (kube_node_spec_taint{key="lockstep.dev/unhealthy"})',
                                "{{node}}: {{value}}",
                            ),
                        ),
                        "none",
                        kind="table",
                        width=12,
                        node_links=True,
                        description="The same nodes seen by kube-state-metrics (part of kube-prometheus-stack), which "
                        "also shows a taint left behind while no controller runs. Empty without it.",
                    ),
                    Panel(
                        "Verdicts and cordoned nodes over time",
                        (
                            q("sum by (verdict) (lockstep_node_verdict)", "{{verdict}}"),
                            q("sum by (reason) (max by (node, reason) (lockstep_node_cordoned))", "cordoned {{reason}}"),
                        ),
                        "none",
                        width=12,
                        overrides=VERDICT_COLORS,
                    ),
                    Panel(
                        "Cordons, releases and events",
                        (
                            q(
                                "sum by (reason) (increase(lockstep_controller_cordons_total[$__rate_interval]))",
                                "cordon {{reason}}",
                            ),
                            q(
                                "sum by (cause) (increase(lockstep_controller_releases_total[$__rate_interval]))",
                                "release {{cause}}",
                            ),
                            q(
                                "sum by (reason) (increase(lockstep_controller_events_total[$__rate_interval]))",
                                "event {{reason}}",
                            ),
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
                            q("count(lockstep_gpu_lost == 0)", "reachable"),
                            q("sum(lockstep_gpu_lost)", "lost"),
                            q("sum(lockstep_gpu_row_remap_failure)", "row-remap failure"),
                            q("sum(lockstep_gpu_row_remap_pending)", "row remap pending"),
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
                        width=12,
                    ),
                    Panel(
                        "GPUs with XIDs (last hour)",
                        (
                            q(
                                "topk(20, sum by (node, gpu, xid) (increase(lockstep_gpu_xid_errors_total[1h])))",
                                "{{node}} GPU {{gpu}} XID {{xid}}",
                            ),
                        ),
                        "none",
                        kind="table",
                        width=12,
                        node_links=True,
                    ),
                    Panel(
                        "GPU utilisation across the cluster",
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
                        "Cycle duration by phase",
                        (q("max by (phase) (lockstep_controller_cycle_duration_seconds)", "{{phase}}"),),
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Evidence age (oldest nodes)",
                        (
                            q(
                                "topk(10, max by (node) (lockstep_controller_evidence_age_seconds))",
                                "{{node}}",
                            ),
                        ),
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Evidence pulls failing and API errors",
                        (
                            q(
                                "sum by (kind) (rate(lockstep_controller_fetch_errors_total[$__rate_interval]))",
                                "fetch {{kind}}",
                            ),
                            q(
                                "sum by (verb, code) (rate(lockstep_controller_api_errors_total[$__rate_interval]))",
                                "API {{verb}} {{code}}",
                            ),
                        ),
                        "ops",
                        width=8,
                    ),
                ],
            ),
        ],
    )


def node_detail() -> dict[str, object]:
    sel = f"{{{NODE}}}"
    gpu = "{{node}} GPU {{gpu}}"
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
                        (
                            q(
                                f"min by (node, collector) (lockstep_collector_success{sel})",
                                "{{node}} {{collector}}",
                            ),
                        ),
                        "bool_yes_no",
                        kind="stat",
                        width=12,
                        thresholds=(("red", None), ("green", 1.0)),
                    ),
                    Panel(
                        "Collector duration",
                        (
                            q(
                                f"max by (node, collector) (lockstep_collector_duration_seconds{sel})",
                                "{{node}} {{collector}}",
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
                        "GPU utilisation", (q(f"lockstep_gpu_utilization_ratio{sel}", gpu),), "percentunit"
                    ),
                    Panel("GPU memory used", (q(f"lockstep_gpu_memory_used_bytes{sel}", gpu),), "bytes"),
                    Panel(
                        "Temperature",
                        (
                            q(f"lockstep_gpu_temperature_celsius{sel}", gpu),
                            q(f"lockstep_gpu_memory_temperature_celsius{sel}", gpu + " memory"),
                        ),
                        "celsius",
                    ),
                    Panel(
                        "Power draw and limit",
                        (
                            q(f"lockstep_gpu_power_watts{sel}", gpu),
                            q(f"lockstep_gpu_power_limit_watts{sel}", gpu + " limit"),
                        ),
                        "watt",
                    ),
                    Panel(
                        "Energy rate",
                        (q(f"rate(lockstep_gpu_energy_joules_total{sel}[$__rate_interval])", gpu),),
                        "watt",
                        description="Average power from the energy counter (nvmlDeviceGetTotalEnergyConsumption).",
                    ),
                    Panel(
                        "Clocks",
                        (
                            q(f"lockstep_gpu_sm_clock_hertz{sel}", gpu + " SM"),
                            q(f"lockstep_gpu_memory_clock_hertz{sel}", gpu + " memory"),
                        ),
                        "hertz",
                    ),
                    Panel(
                        "Clock event (throttle) reasons active",
                        (q(f"lockstep_gpu_clock_event_reason_active{sel} == 1", gpu + " {{reason}}"),),
                        "none",
                        description="Thermal and power-brake slowdowns are hard evidence; sw_power_cap is normal under load.",
                    ),
                    Panel(
                        "ECC errors (volatile, rate)",
                        (
                            q(
                                f'sum by (node, gpu, error) (rate(lockstep_gpu_ecc_errors_total{{{NODE},counter="volatile"}}[$__rate_interval]))',
                                gpu + " {{error}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Remapped rows and remap state",
                        (
                            q(f"lockstep_gpu_remapped_rows{sel}", gpu + " {{cause}}"),
                            q(f"lockstep_gpu_row_remap_pending{sel}", gpu + " pending"),
                            q(f"lockstep_gpu_row_remap_failure{sel}", gpu + " failure"),
                        ),
                        "none",
                    ),
                    Panel(
                        "XID errors",
                        (
                            q(
                                f"sum by (node, gpu, xid) (increase(lockstep_gpu_xid_errors_total{sel}[$__rate_interval]))",
                                gpu + " XID {{xid}}",
                            ),
                        ),
                        "none",
                    ),
                    Panel(
                        "GPU lost", (q(f"lockstep_gpu_lost{sel}", gpu),), "bool_yes_no", thresholds=RED_AT_1
                    ),
                    Panel(
                        "PCIe link width (current vs max)",
                        (
                            q(f"lockstep_gpu_pcie_link_width{sel}", gpu),
                            q(f"lockstep_gpu_pcie_link_max_width{sel}", gpu + " max"),
                        ),
                        "none",
                        description="A width below the maximum is a degraded PCIe link.",
                    ),
                    Panel(
                        "PCIe throughput",
                        (
                            q(f"lockstep_gpu_pcie_transmit_bytes_per_second{sel}", gpu + " tx"),
                            q(f"lockstep_gpu_pcie_receive_bytes_per_second{sel}", gpu + " rx"),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "PCIe replays (rate)",
                        (q(f"rate(lockstep_gpu_pcie_replays_total{sel}[$__rate_interval])", gpu),),
                        "ops",
                    ),
                    Panel(
                        "NVLink links up",
                        (q(f"sum by (node, gpu) (lockstep_gpu_nvlink_up{sel})", gpu),),
                        "none",
                    ),
                    Panel(
                        "NVLink errors (rate)",
                        (
                            q(
                                f"sum by (node, gpu, counter) (rate(lockstep_gpu_nvlink_errors_total{sel}[$__rate_interval]))",
                                gpu + " {{counter}}",
                            ),
                        ),
                        "ops",
                    ),
                ],
            ),
            (
                "NICs and host",
                [
                    Panel(
                        "Interface throughput",
                        (
                            q(
                                f"rate(lockstep_net_receive_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_net_transmit_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Interface errors",
                        (
                            q(
                                f"rate(lockstep_net_receive_errors_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_net_transmit_errors_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "pps",
                    ),
                    Panel(
                        "Carrier changes",
                        (
                            q(
                                f"increase(lockstep_net_carrier_changes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}}",
                            ),
                        ),
                        "none",
                    ),
                    Panel(
                        "Link speed",
                        (q(f"lockstep_net_link_speed_bytes_per_second{sel}", "{{node}} {{interface}}"),),
                        "Bps",
                    ),
                    Panel(
                        "TCP retransmissions",
                        (
                            q(
                                f"rate(lockstep_host_tcp_retransmitted_segments_total{sel}[$__rate_interval])",
                                "{{node}}",
                            ),
                        ),
                        "pps",
                        width=24,
                    ),
                ],
            ),
        ],
    )


def job_collectives() -> dict[str, object]:
    sel = f"{{{JOB}}}"
    rank = "{{job}} rank {{rank}}"
    return dashboard(
        "lockstep-jobs",
        "Lockstep / Job collective health",
        "Per-rank view of each training job's collectives (the in-process probe): the straggler arrives late and "
        "waits little while its peers wait long; a hang shows as time since progress growing and a rank whose "
        "sequence number lags.",
        ["job"],
        [
            (
                "Lockstep",
                [
                    Panel(
                        "Step period by rank",
                        (q(f"lockstep_collective_step_period_seconds{sel}", rank + " pg {{process_group}}"),),
                        "s",
                        description="Period of the job's collective pattern (one training step), per rank.",
                    ),
                    Panel(
                        "Collectives per second by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_collectives_total{sel}[$__rate_interval]))",
                                rank,
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Wait share by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_wait_seconds_sum{sel}[$__rate_interval]))",
                                rank,
                            ),
                        ),
                        "percentunit",
                        description="Share of time a rank waits inside collectives for its peers. The straggler waits least.",
                    ),
                    Panel(
                        "Mean wait per collective by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_wait_seconds_sum{sel}[$__rate_interval])) / "
                                f"sum by (job, rank) (rate(lockstep_collective_wait_seconds_count{sel}[$__rate_interval]))",
                                rank,
                            ),
                        ),
                        "s",
                    ),
                    Panel(
                        "Wait p90 by rank",
                        (
                            q(
                                f"histogram_quantile(0.9, sum by (job, rank, le) (rate(lockstep_collective_wait_seconds_bucket{sel}[$__rate_interval])))",
                                rank,
                            ),
                        ),
                        "s",
                    ),
                    Panel(
                        "Collective bytes per second by rank",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_bytes_total{sel}[$__rate_interval]))",
                                rank,
                            ),
                        ),
                        "Bps",
                    ),
                ],
            ),
            (
                "Stalls",
                [
                    Panel(
                        "Seconds since progress by rank",
                        (q(f"lockstep_collective_seconds_since_progress{sel}", rank),),
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Oldest pending collective by rank",
                        (q(f"lockstep_collective_pending_age_seconds{sel}", rank),),
                        "s",
                        width=8,
                    ),
                    Panel(
                        "Sequence lag behind the leading rank",
                        (
                            q(
                                f"max by (job, process_group) (lockstep_collective_last_seq{sel}) - on (job, process_group) group_right "
                                f"lockstep_collective_last_seq{sel}",
                                rank + " pg {{process_group}}",
                            ),
                        ),
                        "none",
                        width=8,
                        description="In a hang, the ranks whose sequence number lags are the suspects.",
                    ),
                    Panel(
                        "Probe records dropped",
                        (
                            q(
                                f"sum by (job, rank) (rate(lockstep_collective_probe_dropped_records_total{sel}[$__rate_interval]))",
                                rank,
                            ),
                        ),
                        "ops",
                        width=24,
                        description="Records the probe could not hand to the agent (agent away or too slow).",
                    ),
                ],
            ),
        ],
    )


def network() -> dict[str, object]:
    sel = f"{{{NODE}}}"
    port = "{{node}} {{device}}/{{port}}"
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
                                port + " rx",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_transmit_bytes_total{sel}[$__rate_interval])",
                                port + " tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Transmit wait (congestion)",
                        (
                            q(
                                f"rate(lockstep_rdma_port_transmit_wait_ticks_total{sel}[$__rate_interval])",
                                port,
                            ),
                        ),
                        "none",
                        description="Ticks the port had data to send but no credits (counters/port_xmit_wait), per second.",
                    ),
                    Panel(
                        "Link errors",
                        (
                            q(
                                f"rate(lockstep_rdma_port_symbol_errors_total{sel}[$__rate_interval])",
                                port + " symbol",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_link_error_recoveries_total{sel}[$__rate_interval])",
                                port + " recovery",
                            ),
                            q(
                                f"rate(lockstep_rdma_port_receive_errors_total{sel}[$__rate_interval])",
                                port + " receive",
                            ),
                            q(
                                f"increase(lockstep_rdma_port_link_downed_total{sel}[$__rate_interval])",
                                port + " link downed",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "RoCE congestion notifications",
                        (
                            q(
                                f'sum by (node, device, port, counter) (rate(lockstep_rdma_port_transport_events_total{{{NODE},counter=~"np_cnp_sent|rp_cnp_handled|np_ecn_marked_roce_packets"}}[$__rate_interval]))',
                                port + " {{counter}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Retransmissions and timeouts",
                        (
                            q(
                                f'sum by (node, device, port, counter) (rate(lockstep_rdma_port_transport_events_total{{{NODE},counter=~"local_ack_timeout_err|packet_seq_err|implied_nak_seq_err|roce_adp_retrans|out_of_sequence|rnr_nak_retry_err"}}[$__rate_interval]))',
                                port + " {{counter}}",
                            ),
                        ),
                        "ops",
                    ),
                    Panel(
                        "Port rate and state",
                        (q(f"lockstep_rdma_port_rate_bytes_per_second{sel}", port),),
                        "Bps",
                        description="Negotiated rate (rate); a drop below its peers' is a degraded link.",
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
                                f"rate(lockstep_net_receive_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_net_transmit_bytes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "Bps",
                    ),
                    Panel(
                        "Drops",
                        (
                            q(
                                f"rate(lockstep_net_receive_drops_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} rx",
                            ),
                            q(
                                f"rate(lockstep_net_transmit_drops_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}} tx",
                            ),
                        ),
                        "pps",
                    ),
                    Panel(
                        "Interfaces up",
                        (q(f"lockstep_net_up{sel}", "{{node}} {{interface}}"),),
                        "bool_yes_no",
                    ),
                    Panel(
                        "Carrier changes",
                        (
                            q(
                                f"increase(lockstep_net_carrier_changes_total{sel}[$__rate_interval])",
                                "{{node}} {{interface}}",
                            ),
                        ),
                        "none",
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
