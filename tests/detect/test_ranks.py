"""Ranks of every job gathered from all nodes' documents: grouping, rank order and duplicates."""

from __future__ import annotations

from agent.evidence import Evidence
from controller.detect.ranks import group_ranks
from tests.detect.helpers import lockstep_ranks


def _document(node: str, t: float, ranks: list) -> Evidence:
    return Evidence(node=node, collected_at=t, ranks=ranks)


def test_a_rank_reported_by_two_nodes_keeps_the_newest_report() -> None:
    ranks = lockstep_ranks(2, 2, 30.0)
    moved = ranks[0][1].model_copy(update={"pid": 999})
    evidence = {
        "n0": _document("n0", 30.0, ranks[0]),
        "n1": _document("n1", 31.0, [moved, *ranks[1]]),
        "n2": _document("n2", 29.0, [ranks[0][1].model_copy(update={"pid": 5})]),
    }
    [group] = group_ranks(evidence)[("", "train")].values()
    assert [e.rank.rank for e in group.entries] == [0, 1, 2, 3]
    assert (group.entries[1].node, group.entries[1].rank.pid) == ("n1", 999)


def test_a_rank_reported_twice_in_one_document_keeps_the_first() -> None:
    ranks = lockstep_ranks(1, 2, 30.0)[0]
    again = ranks[0].model_copy(update={"pid": 999})
    [group] = group_ranks({"n0": _document("n0", 30.0, [*ranks, again])})[("", "train")].values()
    assert [(e.rank.rank, e.rank.pid) for e in group.entries] == [(0, ranks[0].pid), (1, ranks[1].pid)]


def test_one_document_with_ranks_of_two_jobs_and_groups_is_split_by_job_then_group() -> None:
    ranks = lockstep_ranks(1, 2, 30.0)[0]
    other = [r.model_copy(update={"job": "other"}) for r in ranks]
    side = [r.model_copy(update={"process_group": "pp"}) for r in ranks]
    jobs = group_ranks({"n0": _document("n0", 30.0, [*side, *other, *reversed(ranks)])})
    assert {key: list(groups) for key, groups in jobs.items()} == {
        ("", "train"): ["default", "pp"],
        ("", "other"): ["default"],
    }
    assert [e.rank.rank for e in jobs[("", "train")]["default"].entries] == [0, 1]
