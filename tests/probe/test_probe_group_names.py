"""Process groups are named as records carry them ("default" or their c10d name): never a stale name for a new group
(at a freed group's address, or made after one was destroyed), nor for the default group after a new one comes up."""

from __future__ import annotations

from agent.probe.patch import GroupNames


class FakeGroup:
    def __init__(self, name: str) -> None:
        self.group_name = name


def test_a_group_made_after_another_died_gets_its_own_name_even_at_the_same_address() -> None:
    groups = GroupNames()
    names = []
    for index in range(50):  # CPython reuses the address of a freed object of the same size
        group = FakeGroup(f"group-{index}")
        names.append(groups.name(group))
        del group
    assert names == [f"group-{index}" for index in range(50)]


def test_a_new_default_group_renames_a_group_seen_before() -> None:
    groups = GroupNames()
    first, second = FakeGroup("0"), FakeGroup("1")
    assert (groups.name(first), groups.name(second)) == ("default", "1")
    groups.default_name = "1"
    assert (groups.name(first), groups.name(second)) == ("0", "default")


def test_non_groups_and_groups_not_named_yet_are_not_recorded() -> None:
    groups = GroupNames()
    unnamed = FakeGroup("")
    assert groups.name(object()) is None and groups.name(unnamed) is None
    unnamed.group_name = "7"  # c10d names a group once, before its first collective
    assert groups.name(unnamed) == "7" and groups.name(None) == "default"
