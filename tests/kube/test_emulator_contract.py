"""Contract tests pinning the Kubernetes API emulator to the documented API, through the official client.

Sources: kubernetes.io "API Concepts" (resourceVersion, 409 Conflict on a stale resourceVersion, list/watch,
410 Gone for expired resource versions, Status objects), "Update API Objects in Place Using kubectl patch" (JSON
patch, merge patch, strategic merge patch: lists with a patch merge key merge, others are replaced), "Field
Selectors" and "Labels and Selectors" (supported operators and fields), "API-initiated Eviction".
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client, config, watch

from controller.kube_emulator import Emulator, Fault


@pytest.fixture
def core(emulator: Emulator, tmp_path: Any) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(str(tmp_path / "kubeconfig")))


def raw(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def error_of(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(client.ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)


MERGE, STRATEGIC, JSON_PATCH = ("application/merge-patch+json", "application/strategic-merge-patch+json",
                                "application/json-patch+json")


def test_every_write_gets_a_new_resource_version_and_the_uid_stays(emulator: Emulator, core: client.CoreV1Api) -> None:
    created = emulator.add_node("n1")
    patched = raw(core.patch_node("n1", {"metadata": {"labels": {"x": "1"}}}, _content_type=MERGE,
                                  _preload_content=False))
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert int(patched["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])


def test_a_stale_resource_version_is_a_409_conflict_status(emulator: Emulator, core: client.CoreV1Api) -> None:
    stale = emulator.add_node("n1")["metadata"]["resourceVersion"]
    emulator.patch_node("n1", lambda n: {**n, "spec": {"unschedulable": True}})
    code, status = error_of(lambda: core.patch_node(
        "n1", {"metadata": {"resourceVersion": stale}, "spec": {"unschedulable": False}}, _content_type=MERGE))
    assert code == 409 and status["kind"] == "Status" and status["reason"] == "Conflict"
    assert status["details"] == {"name": "n1", "group": "", "kind": "nodes"}
    node = client.V1Node.from_dict(emulator.node("n1"))
    node.metadata.resource_version = stale
    code, status = error_of(lambda: core.replace_node("n1", node))
    assert code == 409 and status["reason"] == "Conflict"
    assert emulator.node("n1")["spec"]["unschedulable"] is True


def test_a_write_without_resource_version_is_unconditional(emulator: Emulator, core: client.CoreV1Api) -> None:
    emulator.add_node("n1")
    emulator.patch_node("n1", lambda n: {**n, "spec": {"unschedulable": True}})
    core.patch_node("n1", {"spec": {"unschedulable": False}}, _content_type=MERGE)
    assert emulator.node("n1")["spec"]["unschedulable"] is False


def test_missing_objects_are_404_not_found_and_duplicates_409_already_exists(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    code, status = error_of(lambda: core.read_node("nope"))
    assert code == 404 and status["reason"] == "NotFound" and status["message"] == 'nodes "nope" not found'
    emulator.add_node("n1")
    code, status = error_of(lambda: core.create_node(client.V1Node.from_dict({"metadata": {"name": "n1"}})))
    assert code == 409 and status["reason"] == "AlreadyExists"


def test_merge_patch_replaces_lists_and_null_deletes_a_key(emulator: Emulator, core: client.CoreV1Api) -> None:
    emulator.add_node("n1", taints=[{"key": "a", "effect": "NoSchedule"}])
    emulator.patch_node("n1", lambda n: {**n, "metadata": {**n["metadata"], "annotations": {"keep": "1", "drop": "2"}}})
    core.patch_node("n1", {"metadata": {"annotations": {"drop": None, "new": "3"}},
                           "spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}, _content_type=MERGE)
    node = emulator.node("n1")
    assert node["metadata"]["annotations"] == {"keep": "1", "new": "3"}
    assert node["spec"]["taints"] == [{"key": "b", "effect": "NoSchedule"}]


def test_strategic_merge_patch_merges_conditions_by_type_and_replaces_atomic_taints(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    emulator.add_node("n1", taints=[{"key": "a", "effect": "NoSchedule"}])
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "LockstepHealthy", "status": "False"}]}},
                           _content_type=STRATEGIC)
    core.patch_node("n1", {"spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]}}, _content_type=STRATEGIC)
    node = emulator.node("n1")
    assert [c["type"] for c in node["status"]["conditions"]] == ["Ready", "LockstepHealthy"]
    assert node["spec"]["taints"] == [{"key": "b", "effect": "NoSchedule"}]
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "$patch": "delete"}]}},
                           _content_type=STRATEGIC)
    assert [c["type"] for c in emulator.node("n1")["status"]["conditions"]] == ["LockstepHealthy"]


def test_json_patch_applies_operations_in_order_and_a_failed_test_changes_nothing(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    emulator.add_node("n1", taints=[{"key": "a", "effect": "NoSchedule"}])
    core.patch_node("n1", [{"op": "add", "path": "/spec/taints/-", "value": {"key": "b", "effect": "NoSchedule"}},
                           {"op": "remove", "path": "/spec/taints/0"}], _content_type=JSON_PATCH)
    assert [t["key"] for t in emulator.node("n1")["spec"]["taints"]] == ["b"]
    code, _ = error_of(lambda: core.patch_node("n1", [
        {"op": "test", "path": "/spec/taints/0/key", "value": "zzz"},
        {"op": "replace", "path": "/spec/unschedulable", "value": True}], _content_type=JSON_PATCH))
    assert code == 422 and "unschedulable" not in emulator.node("n1")["spec"]


def test_the_main_resource_and_the_status_subresource_own_their_parts(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    emulator.add_node("n1")
    core.patch_node("n1", {"status": {"conditions": []}, "spec": {"unschedulable": True}}, _content_type=MERGE)
    core.patch_node_status("n1", {"spec": {"unschedulable": False}}, _content_type=MERGE)
    node = emulator.node("n1")
    assert node["spec"]["unschedulable"] is True and node["status"]["conditions"][0]["type"] == "Ready"


def test_label_and_field_selectors_filter_lists(emulator: Emulator, core: client.CoreV1Api) -> None:
    emulator.add_node("a", {"pool": "gpu", "zone": "z1"})
    emulator.add_node("b", {"pool": "gpu", "zone": "z2", "lockstep.dev/managed": "false"})
    emulator.add_node("c", {"pool": "cpu"})

    def names(**kwargs: Any) -> list[str]:
        return [n["metadata"]["name"] for n in raw(core.list_node(_preload_content=False, **kwargs))["items"]]

    assert names(label_selector="pool=gpu") == ["a", "b"]
    assert names(label_selector="pool==gpu,zone!=z2") == ["a"]
    assert names(label_selector="zone in (z1, z2)") == ["a", "b"]
    assert names(label_selector="zone notin (z1)") == ["b", "c"]
    assert names(label_selector="!lockstep.dev/managed,pool") == ["a", "c"]
    assert names(field_selector="metadata.name=c") == ["c"]
    emulator.add_pod("ns", "p1", "a", "10.0.0.1", {"app": "x"})
    emulator.add_pod("ns", "p2", "b", "10.0.0.2", {"app": "x"})
    pods = raw(core.list_namespaced_pod("ns", field_selector="spec.nodeName=b,status.phase=Running",
                                        _preload_content=False))["items"]
    assert [p["metadata"]["name"] for p in pods] == ["p2"]
    code, status = error_of(lambda: core.list_namespaced_pod("ns", field_selector="spec.hostname=x"))
    assert code == 400 and "field label not supported" in status["message"]


def test_watch_streams_changes_after_the_list_resource_version(emulator: Emulator, core: client.CoreV1Api) -> None:
    emulator.add_node("n1")
    listed = raw(core.list_node(_preload_content=False))["metadata"]["resourceVersion"]

    def change_later() -> None:
        time.sleep(0.3)
        emulator.patch_node("n1", lambda n: {**n, "spec": {"unschedulable": True}})
        emulator.add_node("n2")

    threading.Thread(target=change_later).start()
    seen = []
    for event in watch.Watch().stream(core.list_node, resource_version=listed, timeout_seconds=3):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            break
    assert seen == [("MODIFIED", "n1"), ("ADDED", "n2")]


def test_watch_from_an_expired_resource_version_is_410_gone(emulator: Emulator) -> None:
    for index in range(3):
        emulator.add_node(f"n{index}")
    del emulator.store.changes[:2]  # compacted history
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{emulator.url}/api/v1/nodes?watch=true&resourceVersion=1", timeout=5)
    assert caught.value.code == 410 and json.loads(caught.value.read())["reason"] == "Expired"


def test_eviction_deletes_the_pod(emulator: Emulator, core: client.CoreV1Api) -> None:
    emulator.add_pod("ns", "p1", "a", "10.0.0.1")
    core.create_namespaced_pod_eviction("p1", "ns", client.V1Eviction.from_dict({"metadata": {"name": "p1"}}))
    assert emulator.objects("pods", namespace="ns") == []


def test_injected_faults_hit_only_matching_requests_and_every_request_is_recorded(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    emulator.add_node("n1")
    emulator.inject(Fault(verb="get", resource="nodes", count=1, status=500))
    code, status = error_of(lambda: core.read_node("n1"))
    assert code == 500 and status["reason"] == "InternalError"
    assert core.list_node(_preload_content=False).status == 200
    assert core.read_node("n1", _preload_content=False).status == 200
    assert [(r.verb, r.resource) for r in emulator.store.requests] == [
        ("get", "nodes"), ("list", "nodes"), ("get", "nodes")]


def test_a_watch_with_a_selector_sees_an_object_that_stops_matching_as_deleted(
    emulator: Emulator, core: client.CoreV1Api
) -> None:
    emulator.add_node("n1", {"pool": "gpu"})
    listed = raw(core.list_node(_preload_content=False))["metadata"]["resourceVersion"]
    emulator.patch_node("n1", lambda n: {**n, "metadata": {**n["metadata"], "labels": {"pool": "cpu"}}})
    emulator.patch_node("n1", lambda n: {**n, "metadata": {**n["metadata"], "labels": {"pool": "gpu"}}})
    events = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_node, label_selector="pool=gpu", resource_version=listed, timeout_seconds=1)]
    assert events == [("DELETED", "n1"), ("ADDED", "n1")]
