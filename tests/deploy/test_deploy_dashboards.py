"""The Grafana dashboards: generated from one table, valid dashboard JSON, every query parsed by Prometheus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from deploy_support import (
    DASHBOARDS,
    EXTERNAL_METRICS,
    dashboard_queries,
    dashboards,
    grafana_to_promql,
    panels,
    referenced_metrics,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana units of the dashboards (Grafana's unit ids).
GRAFANA_UNITS = {
    "none",
    "s",
    "bytes",
    "Bps",
    "bps",
    "celsius",
    "watt",
    "hertz",
    "percentunit",
    "ops",
    "pps",
    "bool_yes_no",
}


def test_committed_dashboards_are_what_the_generator_writes(python: str) -> None:
    result = subprocess.run(
        [python, str(DASHBOARDS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generator_check_notices_a_hand_edited_dashboard(python: str, tmp_path: Path) -> None:
    copy = tmp_path / "dashboards"
    shutil.copytree(DASHBOARDS, copy)
    (copy / "lockstep-node.json").write_text(
        (copy / "lockstep-node.json").read_text().replace('"celsius"', '"fahrenheit"')
    )
    result = subprocess.run(
        [python, str(copy / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1 and "lockstep-node.json" in result.stdout


def test_the_four_dashboards_cover_cluster_node_jobs_and_network() -> None:
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == {
        "lockstep-cluster",
        "lockstep-node",
        "lockstep-jobs",
        "lockstep-network",
    }
    assert len({b["title"] for b in boards.values()}) == len(boards)


def test_every_dashboard_has_a_datasource_variable_and_node_or_job_variables() -> None:
    wanted = {
        "lockstep-cluster": set(),
        "lockstep-node": {"node"},
        "lockstep-jobs": {"job"},
        "lockstep-network": {"node"},
    }
    for board in dashboards().values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert (
            variables["datasource"]["type"] == "datasource"
            and variables["datasource"]["query"] == "prometheus"
        )
        assert wanted[board["uid"]] <= set(variables)
        for name in wanted[board["uid"]]:
            assert variables[name]["datasource"] == DATASOURCE and variables[name]["includeAll"] is True


def test_every_panel_uses_the_datasource_variable_and_sets_a_unit() -> None:
    for name, board in dashboards().items():
        for panel in panels(board):
            where = f"{name}: {panel['title']}"
            assert panel["datasource"] == DATASOURCE, where
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), where
            assert panel["fieldConfig"]["defaults"]["unit"] in GRAFANA_UNITS, where
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), where


def test_panels_stay_inside_the_grid_and_never_overlap() -> None:
    for name, board in dashboards().items():
        taken: set[tuple[int, int]] = set()
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{name}: {panel['title']}"
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, f"{name}: {panel['title']} overlaps"
            taken |= cells


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard_query_{i}", "expr": grafana_to_promql(expr)}
                    for i, (_, _, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["/usr/bin/promtool", "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_every_name_the_dashboards_and_rules_use_follows_the_metric_conventions() -> None:
    used = referenced_metrics()
    assert "lockstep_node_verdict" in used and "up" in used
    for name in used:
        if name == "up" or name in EXTERNAL_METRICS:
            continue
        assert name.startswith("lockstep_") and name == name.lower()
        assert not name.endswith(("_milliseconds", "_percent", "_celcius", "_kilobytes")), name


def test_data_links_lead_to_a_shipped_dashboard_and_its_variable() -> None:
    boards = {b["uid"]: b for b in dashboards().values()}
    links = [
        (panel, link)
        for board in boards.values()
        for panel in panels(board)
        for link in panel["fieldConfig"]["defaults"].get("links", [])
    ]
    assert links, "tables of nodes link to the node dashboard"
    for panel, link in links:
        uid = link["url"].split("/d/", 1)[1].split("/", 1)[0]
        assert uid in boards, link
        variable = link["url"].split("var-", 1)[1].split("=", 1)[0]
        assert variable in {v["name"] for v in boards[uid]["templating"]["list"]}, link
        assert "by (node" in panel["targets"][0]["expr"], panel["title"]  # each row carries a node field
