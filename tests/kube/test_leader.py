"""Leader election on a coordination.k8s.io Lease, against the emulator: one replica acts, a loser stops."""

from __future__ import annotations

from typing import Any

from controller.kube import Kube
from controller.kube_emulator import Emulator, Fault
from controller.leader import LeaderElector
from controller.settings import LeaderSettings

from .conftest import Cluster


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(kube: Kube, identity: str, clock: Clock) -> LeaderElector:
    settings = LeaderSettings(identity=identity, lease_duration_seconds=15, renew_deadline_seconds=10,
                              retry_period_seconds=2)
    return LeaderElector(kube, settings, monotonic=clock)


def lease(emulator: Emulator) -> dict[str, Any]:
    return emulator.objects("leases", group="coordination.k8s.io", namespace="lockstep")[0]


def take_lease(emulator: Emulator, holder: str) -> None:
    emulator.change("leases", "lockstep-controller", lambda obj: {**obj, "spec": {**obj["spec"], "holderIdentity": holder}},
                    namespace="lockstep", group="coordination.k8s.io")


def test_of_two_replicas_exactly_one_leads(kube: Kube, emulator: Emulator) -> None:
    clock = Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    for _ in range(3):
        a.step()
        b.step()
        clock.now += 2
    assert a.is_leader() and not b.is_leader()
    assert lease(emulator)["spec"]["holderIdentity"] == "a"


def test_a_follower_takes_over_only_after_the_lease_expires_on_its_own_clock(kube: Kube, emulator: Emulator) -> None:
    clock = Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    a.step()
    b.step()
    clock.now += 14  # a stopped renewing (crashed); 14 s < 15 s lease duration
    assert not b.step()
    clock.now += 2
    assert b.step(), "the lease expired: b takes it"
    assert lease(emulator)["spec"]["holderIdentity"] == "b"
    assert lease(emulator)["spec"]["leaseTransitions"] == 1


def test_a_leader_whose_lease_is_taken_stops_at_its_next_renewal(kube: Kube, emulator: Emulator) -> None:
    clock = Clock()
    a = elector(kube, "a", clock)
    assert a.step()
    take_lease(emulator, "b")  # another replica took the lease (e.g. after a long pause of ours)
    clock.now += 2
    assert not a.step()
    assert not a.is_leader()


def test_a_leader_that_cannot_reach_the_api_stops_within_the_renew_deadline(kube: Kube, emulator: Emulator) -> None:
    clock = Clock()
    a = elector(kube, "a", clock)
    assert a.step()
    emulator.inject(Fault(resource="leases", count=1000, status=503))
    clock.now += 2
    a.step()
    assert a.is_leader(), "one failed renewal within the deadline keeps leadership"
    clock.now += 9
    a.step()
    assert not a.is_leader(), "no renewal for 11 s > 10 s renew deadline: stop acting"


def test_a_released_lease_is_taken_over_at_once(kube: Kube, emulator: Emulator) -> None:
    clock = Clock()
    a, b = elector(kube, "a", clock), elector(kube, "b", clock)
    a.step()
    b.step()
    a.release()
    assert not a.is_leader()
    assert b.step()


async def test_a_replica_that_loses_its_lease_stops_acting(cluster: Cluster) -> None:
    await cluster.add_nodes(4)
    first = cluster.loop(leader=True, identity="first", max_cordoned_ratio=1.0)
    second = cluster.loop(leader=True, identity="second", max_cordoned_ratio=1.0)
    assert first.leader is not None and second.leader is not None
    first.leader.step()
    second.leader.step()
    cluster.agents.break_gpu("node-1")
    await first.cycle()
    await second.cycle()
    writers = {r.name for r in cluster.emulator.writes() if r.resource == "nodes"}
    assert writers == {"node-1"}

    # first loses the lease to second (taken over after expiry): from its next renewal it writes nothing.
    take_lease(cluster.emulator, "second")
    first.leader.step()
    before = len(cluster.emulator.writes())
    cluster.agents.break_gpu("node-2")
    await first.cycle()
    assert len(cluster.emulator.writes()) == before
    assert not first.may_write()
    second.leader.step()
    await second.cycle()
    assert cluster.emulator.node("node-2")["spec"]["unschedulable"] is True
