"""The Helm chart rendered by the real Helm engine: lint, Kubernetes schema validation, safe defaults, RBAC."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from deploy_support import (
    ALERTS,
    ALL_FEATURES,
    CHART,
    DASHBOARDS,
    NAMESPACE,
    POD_MONITORS,
    REPO,
    by_kind,
    objects,
    render,
)

from agent import cli as agent_cli
from agent.settings import load_settings
from controller import __main__ as controller_main
from controller import settings as controller_settings

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())
OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

CASES = {"default values": None, "every optional feature on": ALL_FEATURES, "pod monitors": POD_MONITORS}


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_chart_lints_clean_in_strict_mode(values: dict[str, Any] | None) -> None:
    report = helm.lint(CHART, values=values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == [], report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_every_core_object_is_valid_kubernetes_in_strict_mode(
    values: dict[str, Any] | None, version: str
) -> None:
    core = [o for o in objects(values) if o["kind"] not in OPERATOR_KINDS]
    assert core
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {error.message} at {list(error.path)}"
            )


# The prometheus-operator CRD schemas are not shipped here: the custom resources are checked for the
# structure the operator requires (monitoring.coreos.com/v1, the fields its CRDs mark required and their types).
def test_prometheus_operator_resources_have_the_structure_the_operator_requires() -> None:
    objs = objects(ALL_FEATURES)
    service_monitors, pod_monitors = (
        by_kind(objs, "ServiceMonitor"),
        by_kind(objects(POD_MONITORS), "PodMonitor"),
    )
    for monitors in (service_monitors, pod_monitors):
        assert {m["metadata"]["name"] for m in monitors} == {"lockstep-agent", "lockstep-controller"}
    monitors = service_monitors + pod_monitors
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        endpoints = spec["endpoints"] if monitor["kind"] == "ServiceMonitor" else spec["podMetricsEndpoints"]
        assert set(spec) == {
            "jobLabel",
            "selector",
            "namespaceSelector",
            ("endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"),
        }
        assert spec["jobLabel"] == "lockstep.dev/scrape-job"
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        for endpoint in endpoints:
            assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
            assert isinstance(endpoint["honorLabels"], bool)
            assert all(
                isinstance(r["sourceLabels"], list) and r["targetLabel"] for r in endpoint["relabelings"]
            )

    (rule,) = by_kind(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
            assert isinstance(r["expr"], str)
            assert all(
                isinstance(v, str) for v in {**r.get("labels", {}), **r.get("annotations", {})}.values()
            )


def test_monitors_name_the_scrape_jobs_the_rules_and_dashboards_expect() -> None:
    objs = objects(ALL_FEATURES)
    for kind in ("Service", "DaemonSet", "Deployment"):
        for obj in by_kind(objs, kind):
            component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
            labels = (
                obj["metadata"]["labels"]
                if kind == "Service"
                else obj["spec"]["template"]["metadata"]["labels"]
            )
            assert labels["lockstep.dev/scrape-job"] == f"lockstep-{component}"
    assert 'job="lockstep-agent"' in ALERTS.read_text() and 'job="lockstep-controller"' in ALERTS.read_text()


def test_prometheus_rule_carries_exactly_the_alerts_file_with_the_chosen_runbook_url() -> None:
    base = "https://runbooks.example.com/lockstep.md"
    (rule,) = by_kind(
        objects({"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}), "PrometheusRule"
    )
    expected = yaml.safe_load(
        ALERTS.read_text().replace(
            "https://github.com/lockstep-dev/lockstep/blob/main/docs/runbooks.md", base
        )
    )
    assert rule["spec"] == expected
    urls = [
        r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r
    ]
    assert urls and all(u.startswith(base + "#") for u in urls)


def test_dashboards_ship_as_configmaps_labelled_for_the_grafana_sidecar() -> None:
    maps = [o for o in by_kind(objects(), "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
    shipped = {key: json.loads(text) for m in maps for key, text in m["data"].items()}
    files = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
    assert len(files) >= 4 and shipped == files
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["annotations"]["grafana_folder"] == "Lockstep"
    assert not [
        o
        for o in by_kind(objects({"dashboards": {"enabled": False}}), "ConfigMap")
        if "grafana_dashboard" in o["metadata"]["labels"]
    ]


def test_safe_defaults_dry_run_two_replicas_with_a_disruption_budget() -> None:
    objs = objects()
    (deployment,) = by_kind(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--dry-run" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    config = yaml.safe_load(
        next(c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"] == "lockstep-controller")["data"][
            "controller.yaml"
        ]
    )
    assert config["dry_run"] is True
    assert config["safety"]["max_cordoned_nodes"] >= 1 and 0 < config["safety"]["max_cordoned_ratio"] <= 0.1
    assert config["safety"]["auto_release_after_seconds"] is None
    assert config["leader"]["enabled"] is True and config["kube"]["namespace"] == NAMESPACE

    acting = by_kind(objects({"controller": {"dryRun": False}}), "Deployment")[0]
    assert "--dry-run" not in acting["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_single_replica_gets_no_disruption_budget_that_would_block_node_drains() -> None:
    assert by_kind(objects({"controller": {"replicas": 1}}), "PodDisruptionBudget") == []


def test_agent_sees_gpus_without_requesting_them_and_keeps_running_on_nodes_lockstep_tainted() -> None:
    (daemonset,) = by_kind(objects(), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all" and env["LOCKSTEP_SOCKET_DIR"] == "/run/lockstep"
    assert {"key": "lockstep.dev/unhealthy", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert container["args"] == [
        "--listen=0.0.0.0:9445",
        "--config=/etc/lockstep/agent.yaml",
        "--node-name=$(NODE_NAME)",
    ]


def test_agent_mounts_what_collectors_read_read_only_and_the_probe_socket_dir_from_the_host() -> None:
    (daemonset,) = by_kind(objects(), "DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["socket-dir"]["hostPath"] == {"path": "/run/lockstep", "type": "DirectoryOrCreate"}
    assert mounts["socket-dir"]["mountPath"] == "/run/lockstep" and not mounts["socket-dir"].get("readOnly")
    for host in ("host-sys", "host-proc", "config"):
        assert mounts[host]["readOnly"] is True
    security = pod["containers"][0]["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert "privileged" not in security
    assert pod["automountServiceAccountToken"] is False


def test_controller_runs_as_non_root_without_capabilities() -> None:
    (deployment,) = by_kind(objects(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


# The verbs lockstep-controller uses, recorded by the Kubernetes API emulator (pinned by tests/kube/test_rbac_verbs.py).
RBAC_VERBS = REPO / "controller" / "rbac_verbs.json"
NAMESPACED = {
    ("coordination.k8s.io", "leases"),
    ("", "configmaps"),
}  # the Lease and the breaker, release namespace


def recorded(who: str) -> dict[tuple[str, str], set[str]]:
    return granted({"rules": json.loads(RBAC_VERBS.read_text())[who]})


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    verbs: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs.setdefault((group, resource), set()).update(rule["verbs"])
    return verbs


def test_rbac_grants_exactly_the_verbs_the_controller_was_recorded_using() -> None:
    objs = objects()
    (cluster_role,) = by_kind(objs, "ClusterRole")
    (role,) = by_kind(objs, "Role")
    used = recorded("controller")
    assert granted(cluster_role) == {key: verbs for key, verbs in used.items() if key not in NAMESPACED}
    assert granted(role) == {key: verbs for key, verbs in used.items() if key in NAMESPACED}
    assert role["metadata"]["namespace"] == NAMESPACE
    (binding,) = by_kind(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "lockstep-controller", "namespace": NAMESPACE}
    ]
    assert "*" not in json.dumps([cluster_role["rules"], role["rules"]])
    assert not by_kind(objects({"rbac": {"create": False}}), "ClusterRole")


def test_the_lease_and_breaker_the_role_covers_live_in_the_namespace_the_controller_uses() -> None:
    objs = objects()
    (role,) = by_kind(objs, "Role")
    config_map = next(c for c in by_kind(objs, "ConfigMap") if c["metadata"]["name"] == "lockstep-controller")
    config = yaml.safe_load(config_map["data"]["controller.yaml"])
    assert config["kube"]["namespace"] == role["metadata"]["namespace"] == NAMESPACE
    assert config["kube"]["agent_namespace"] == NAMESPACE


def test_network_policy_admits_only_prometheus_and_the_controller_to_the_agents() -> None:
    policies = {
        p["metadata"]["name"]: p
        for p in by_kind(objects({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    }
    agent_sources = policies["lockstep-agent"]["spec"]["ingress"][0]["from"]
    assert any(
        s.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "controller"
        for s in agent_sources
    )
    controller_sources = policies["lockstep-controller"]["spec"]["ingress"][0]["from"]
    assert len(controller_sources) == 1 and "namespaceSelector" in controller_sources[0]


def test_long_release_names_keep_every_object_name_within_kubernetes_limits() -> None:
    release = "a-very-long-release-name-for-gpu-health-in-prod-eu1"
    for obj in objects(ALL_FEATURES, release=release):
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    names = {
        o["metadata"]["name"]
        for o in by_kind(objects(release=release), "DaemonSet")
        + by_kind(objects(release=release), "Deployment")
    }
    assert len(names) == 2


def test_config_checksum_rolls_the_pods_when_settings_change() -> None:
    def checksums(values: dict[str, Any] | None) -> tuple[str, str]:
        objs = objects(values)
        return (
            by_kind(objs, "DaemonSet")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
            by_kind(objs, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        )

    agent, controller = checksums(None)
    assert checksums({"agent": {"config": {"nvml": {"enabled": False}}}})[0] != agent
    assert checksums({"controller": {"safety": {"maxCordonedNodes": 1}}})[1] != controller


def test_controller_config_merges_extra_settings_over_the_first_class_safety_values() -> None:
    values = {
        "controller": {"config": {"safety": {"max_cordoned_nodes": 7}, "fetch": {"timeout_seconds": 3.0}}}
    }
    config_map = next(
        c for c in by_kind(objects(values), "ConfigMap") if c["metadata"]["name"] == "lockstep-controller"
    )
    config = yaml.safe_load(config_map["data"]["controller.yaml"])
    assert config["safety"]["max_cordoned_nodes"] == 7 and config["safety"]["breaker_nodes"] == 3
    assert config["fetch"] == {"timeout_seconds": 3.0}


BAD_VALUES = [
    ({"controller": {"replicas": 0}}, "/controller/replicas", "minimum"),
    ({"controller": {"dryRun": "yes"}}, "/controller/dryRun", "boolean"),
    ({"agent": {"hostnetwork": True}}, "/agent", "'hostnetwork' not allowed"),
    (
        {"controller": {"logLevel": "chatty"}},
        "/controller/logLevel",
        "'DEBUG', 'INFO', 'WARNING', 'ERROR'",
    ),
    (
        {"controller": {"safety": {"maxCordonedRatio": 1.5}}},
        "/controller/safety/maxCordonedRatio",
        "maximum",
    ),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "one of"),
    ({"serviceMonitor": {"interval": "fast"}}, "/serviceMonitor/interval", "pattern"),
    ({"agent": {"port": 70000}}, "/agent/port", "maximum"),
]


@pytest.mark.parametrize(("values", "where", "why"), BAD_VALUES, ids=[w for _, w, _ in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_key_and_the_constraint(
    values: dict[str, Any], where: str, why: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as error:
        render(values)
    assert where in str(error.value) and why in str(error.value)


def test_schema_describes_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}.{key} has no schema"
            child = node["properties"][key]
            assert child.get("description") or child.get("type") == "object" or "pattern" in child, (
                f"{path}.{key} undescribed"
            )
            if isinstance(value, dict) and child.get("properties"):
                walk(value, child, f"{path}.{key}")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


def test_notes_tell_what_to_do_next() -> None:
    notes = render()["lockstep/templates/NOTES.txt"]
    for step in (
        "kubectl -n gpu-health get daemonset lockstep-agent",
        "lockstep status --controller",
        "LOCKSTEP_PROBE",
        "(nodes labelled nvidia.com/gpu.present=true):",
        "DRY RUN",
        "controller.dryRun=false",
        "serviceMonitor.enabled=true",
    ):
        assert step in notes
    acting = render(ALL_FEATURES)["lockstep/templates/NOTES.txt"]
    assert (
        "DRY RUN" not in acting
        and "lockstep release --breaker" in acting
        and "lockstep.dev/managed=false" in acting
    )


@pytest.mark.parametrize("values", CASES.values(), ids=CASES.keys())
def test_rendered_settings_files_are_accepted_by_the_real_agent_and_controller(
    values: dict[str, Any] | None, tmp_path: Path
) -> None:
    maps = {c["metadata"]["name"]: c["data"] for c in by_kind(objects(values), "ConfigMap")}
    agent_file = yaml.safe_load(maps["lockstep-agent"]["agent.yaml"])
    agent = load_settings(agent_file, {"node_name": "gpu-1"})
    assert agent.network.sysfs_root == Path("/host/sys") and agent.host.procfs_root == Path("/host/proc")
    assert agent.collective.socket_dir == "/run/lockstep" and agent.collective.proc_root == "/host/proc"
    assert agent.periodicity.sysfs_net == "/host/sys/class/net"
    # TCP counters of the node: from the host's init unless the agent shares the node's network namespace.
    host_network = (values or {}).get("agent", {}).get("hostNetwork", False)
    assert agent.host.tcp_namespace_pid == ("self" if host_network else "1")

    (tmp_path / "controller.yaml").write_text(maps["lockstep-controller"]["controller.yaml"])
    controller = controller_settings.load(str(tmp_path / "controller.yaml"))
    assert controller.kube.namespace == NAMESPACE and controller.leader.enabled
    assert controller.safety.max_cordoned_nodes == 2 and controller.safety.breaker_nodes == 3
    assert controller.dry_run is (values or {}).get("controller", {}).get("dryRun", True)


def test_a_typo_in_agent_config_fails_the_agent_with_the_setting_named() -> None:
    config = yaml.safe_load(
        next(
            c
            for c in by_kind(objects({"agent": {"config": {"nvml": {"enabeld": False}}}}), "ConfigMap")
            if c["metadata"]["name"] == "lockstep-agent"
        )["data"]["agent.yaml"]
    )
    with pytest.raises(ValueError, match="nvml.enabeld"):
        load_settings(config, {})


def test_the_daemons_accept_the_flags_the_chart_passes() -> None:
    (daemonset,) = by_kind(objects(ALL_FEATURES), "DaemonSet")
    (deployment,) = by_kind(objects(), "Deployment")
    agent_args = [
        a.replace("$(NODE_NAME)", "gpu-1")
        for a in daemonset["spec"]["template"]["spec"]["containers"][0]["args"]
    ]
    parsed = agent_cli.build_parser().parse_args(agent_args)
    assert (
        parsed.config == Path("/etc/lockstep/agent.yaml") or str(parsed.config) == "/etc/lockstep/agent.yaml"
    )
    controller_args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = controller_main.build_parser().parse_args(controller_args)
    assert parsed.dry_run is True and parsed.config == "/etc/lockstep/controller.yaml"


def test_both_kinds_of_monitor_at_once_fail_with_the_fix_named() -> None:
    with pytest.raises(helm.HelmError, match="enable one, or Prometheus scrapes every agent twice"):
        render({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}})


def test_a_renew_deadline_not_shorter_than_the_lease_fails() -> None:
    with pytest.raises(helm.HelmError, match="must be shorter than leaseDurationSeconds"):
        render({"controller": {"leaderElection": {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10}}})


def test_operator_roles_grant_what_lockstep_release_was_recorded_using_and_are_bound_to_no_one() -> None:
    objs = objects({"rbac": {"operatorRole": True}})
    roles = [
        o
        for o in objs
        if o["kind"] in ("ClusterRole", "Role") and o["metadata"]["name"] == "lockstep-operator"
    ]
    grants: dict[tuple[str, str], set[str]] = {}
    for role in roles:
        for key, verbs in granted(role).items():
            grants.setdefault(key, set()).update(verbs)
    assert grants == recorded("operator")
    bindings = by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding")
    assert all(b["roleRef"]["name"] != "lockstep-operator" for b in bindings)
    assert not [o for o in objects() if o["metadata"]["name"] == "lockstep-operator"]


def test_packaged_chart_carries_dashboards_and_rules_but_not_the_generator(tmp_path: Path) -> None:
    archive = helm.package(CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {
        "lockstep/files/alerts.yaml",
        "lockstep/values.schema.json",
        "lockstep/templates/NOTES.txt",
    } <= names
    assert {f"lockstep/dashboards/{p.name}" for p in DASHBOARDS.glob("*.json")} <= names
    assert not [n for n in names if n.endswith(".py")]
    with helm.Chart.load(archive) as chart:
        assert chart.render(name="lockstep", namespace=NAMESPACE)[
            "lockstep/templates/dashboards.yaml"
        ].strip()
