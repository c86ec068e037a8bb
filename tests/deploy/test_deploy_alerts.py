"""The alert rules: valid for Prometheus (promtool), each one tested firing and quiet, each with a runbook."""

from __future__ import annotations

import re
import subprocess

import yaml
from deploy_support import ALERT_TESTS, ALERTS, RUNBOOKS, alert_rules, all_rules

PROMTOOL = "/usr/bin/promtool"

# The alerts a platform team needs from Lockstep (issue: "at least ...").
REQUIRED_ALERTS = {
    "LockstepNodeCordoned",
    "LockstepNodeSuspect",
    "LockstepJobHang",
    "LockstepStraggler",
    "LockstepGpuCriticalXid",
    "LockstepGpuUncorrectableEcc",
    "LockstepGpuRowRemapFailure",
    "LockstepNicErrors",
    "LockstepNicLinkFlapping",
    "LockstepAgentDown",
    "LockstepAgentNotScraped",
    "LockstepControllerNoLeader",
    "LockstepBreakerOpen",
    "LockstepEvidenceStale",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_accepts_the_rules() -> None:
    result = run(PROMTOOL, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass_for_every_alert() -> None:
    result = run(PROMTOOL, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_would_catch_a_rule_that_never_fires(tmp_path) -> None:
    broken = yaml.safe_load(ALERTS.read_text())
    for group in broken["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "LockstepGpuLost":
                rule["expr"] = "max by (node, gpu) (lockstep_gpu_lost) == 2"
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(broken))
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    tests["rule_files"] = [str(tmp_path / "alerts.yaml")]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    result = run(PROMTOOL, "test", "rules", str(tmp_path / "test.yaml"))
    assert result.returncode != 0 and "LockstepGpuLost" in result.stdout + result.stderr


def test_every_alert_is_tested_both_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "never tested firing"
    assert names - quiet == set(), "never tested quiet"


def test_the_required_alerts_exist() -> None:
    assert {rule["alert"] for rule in alert_rules()} >= REQUIRED_ALERTS


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    sections = {m.lower() for m in re.findall(r"^## (\w+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE)}
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url = annotations["runbook_url"]
        assert url.endswith("docs/runbooks.md#" + rule["alert"].lower()), rule["alert"]
        assert rule["alert"].lower() in sections, f"docs/runbooks.md has no section for {rule['alert']}"


def test_every_runbook_section_belongs_to_an_alert() -> None:
    sections = set(re.findall(r"^## (\w+)\s*$", RUNBOOKS.read_text(), flags=re.MULTILINE))
    assert sections == {rule["alert"] for rule in alert_rules()}
