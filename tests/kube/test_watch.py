"""Nodes and agent pods kept by list + watch (the informer), against the emulator: no relisting every cycle,
changes seen, and recovery from 410 Gone and watch errors by listing again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from controller.kube import Kube
from controller.kube_emulator import Emulator, Fault


def eventually(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def watching(kube: Kube, emulator: Emulator) -> Iterator[Kube]:
    emulator.add_node("n1")
    emulator.add_pod("lockstep", "agent-n1", "n1", "10.0.0.1", {"app.kubernetes.io/name": "lockstep-agent"})
    stop = threading.Event()
    threads = kube.watch(stop, watch_seconds=1)
    assert kube._nodes is not None and kube._agents is not None
    eventually(lambda: kube._nodes.synced and kube._agents.synced)  # type: ignore[union-attr]
    yield kube
    stop.set()
    for thread in threads:
        thread.join(10)


def lists(emulator: Emulator, resource: str) -> int:
    return sum(1 for r in emulator.store.requests if r.verb == "list" and r.resource == resource)


def test_cycles_read_the_cache_and_see_changes_without_listing_again(watching: Kube, emulator: Emulator) -> None:
    assert list(watching.cluster().nodes) == ["n1"]
    emulator.add_node("n2")
    emulator.patch_node("n1", lambda n: {**n, "spec": {"unschedulable": True}})
    emulator.add_pod("lockstep", "agent-n2", "n2", "10.0.0.2", {"app.kubernetes.io/name": "lockstep-agent"})
    eventually(lambda: sorted(watching.cluster().nodes) == ["n1", "n2"])
    eventually(lambda: watching.cluster().nodes["n1"].unschedulable)
    eventually(lambda: [a.node for a in watching.agents()] == ["n1", "n2"])
    emulator.add_pod("ml", "train-0", "n2", "10.0.0.9")
    eventually(lambda: watching.cluster().pods == {("lockstep", "agent-n1"): "n1", ("lockstep", "agent-n2"): "n2",
                                                   ("ml", "train-0"): "n2"})  # fmt: skip
    for _ in range(5):
        watching.cluster()
        watching.agents()
    assert lists(emulator, "nodes") == 1 and lists(emulator, "pods") == 2  # agent pods; every running pod
    assert any(r.verb == "watch" and r.resource == "nodes" for r in emulator.store.requests)


def test_an_agent_pod_that_stops_running_leaves_the_cache(watching: Kube, emulator: Emulator) -> None:
    eventually(lambda: [a.node for a in watching.agents()] == ["n1"])
    emulator.change("pods", "agent-n1", lambda p: {**p, "status": {**p["status"], "phase": "Failed"}},
                    namespace="lockstep", subresource="status")
    eventually(lambda: watching.agents() == [])


def test_expired_history_and_watch_errors_lead_to_a_fresh_list(watching: Kube, emulator: Emulator) -> None:
    assert watching._nodes is not None
    emulator.inject(Fault(verb="watch", resource="nodes", count=2, status=500))
    for index in range(3):
        emulator.add_node(f"x{index}")
    del emulator.store.changes[:]  # compacted: resuming from the old version is 410 Gone
    emulator.add_node("late")
    eventually(lambda: watching._nodes.relists >= 2)  # type: ignore[union-attr]
    eventually(lambda: sorted(watching.cluster().nodes) == ["late", "n1", "x0", "x1", "x2"])
    assert watching.stats.errors[("watch nodes", "500")] >= 1
