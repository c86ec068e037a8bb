"""Documents kept as sample columns only (what the fetcher holds) are judged exactly like full documents."""

from __future__ import annotations

from controller.detect import DetectionEngine
from controller.detect.columns import sample_columns, without_samples
from tests.detect.helpers import documents, lockstep_ranks


def test_straggler_verdicts_are_the_same_from_documents_without_sample_objects() -> None:
    full_engine, lean_engine = DetectionEngine(), DetectionEngine()
    for i in range(1, 17):
        t = 5.0 * i
        full = documents(lockstep_ranks(4, 8, t, late_node=2, late_seconds=0.2, seed=1), t, 4)
        lean = {node: without_samples(d) if d is not None else None for node, d in full.items()}
        assert all(not r.samples for d in lean.values() if d is not None for r in d.ranks)
        expected, got = full_engine.step(full, t), lean_engine.step(lean, t)
    assert got.verdicts == expected.verdicts
    assert got.findings == expected.findings and got.jobs == expected.jobs
    assert got.verdicts["n2"].reason == "Straggler"


def test_columns_follow_the_samples_and_unknown_waits_are_nan() -> None:
    document = documents(lockstep_ranks(2, 1, 30.0, seed=2), 30.0, 2)["n0"]
    assert document is not None
    columns = sample_columns(document)
    assert sample_columns(document) is columns  # decoded once
    for rank, column in zip(document.ranks, columns, strict=True):
        assert column.seq.tolist() == [s.seq for s in rank.samples]
        assert column.arrival.tolist() == [s.arrival for s in rank.samples]
        assert [w if w == w else None for w in column.wait.tolist()] == [s.wait_seconds for s in rank.samples]
