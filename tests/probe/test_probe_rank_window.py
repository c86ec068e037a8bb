"""Per-rank window statistics of the collective collector, on plain records."""

from __future__ import annotations

import numpy as np

from agent.collectors.rank_window import PERIOD_REUSE_SECONDS, RankWindow, repeat_length, signature
from agent.probe.identity import Identity
from agent.probe.wire import Kind, Op, Record, decode, encode

IDENTITY = Identity(job="j", rank=0, world_size=2, local_rank=0, pod="", namespace="")


def rec(seq: int, issued: float, wait: float | None, op: Op = Op.all_reduce, nbytes: int = 1000,
        kind: Kind = Kind.COMPLETE) -> Record:  # fmt: skip
    return Record(kind=kind, op=op, group="default", seq=seq, bytes=nbytes, issued_at=issued,
                  completed_at=None if wait is None else issued + wait)  # fmt: skip


def add(window: RankWindow, record: Record) -> None:
    """Feed one record the way the collector does: decoded from its datagram."""
    assert window.add(decode(encode(IDENTITY, [record])).records) == []


def ddp_like_window(steps: int, period: float, t0: float = 1000.0) -> RankWindow:
    """Three buckets per step (sizes 100, 200, 300) issued 10 ms apart, each waiting 5 ms."""
    window = RankWindow("j", 0, "default", max_samples=4096)
    seq = 0
    for step in range(steps):
        for bucket, size in enumerate((100, 200, 300)):
            add(window, rec(seq, t0 + step * period + bucket * 0.01, 0.005, nbytes=size))
            seq += 1
    return window


def test_step_period_is_the_repeat_of_the_collective_pattern_not_the_gap_between_buckets() -> None:
    window = ddp_like_window(steps=20, period=0.25)
    held = window.samples
    assert repeat_length(signature(np.array([s.op for s in held]), np.array([s.bytes for s in held]))) == 3
    evidence = window.evidence(now=1000.0 + 20 * 0.25, window_seconds=60, max_samples=10, dropped_records=0)
    assert evidence.step_period_seconds is not None and abs(evidence.step_period_seconds - 0.25) < 1e-6
    assert evidence.collectives_in_window == 60 and len(evidence.samples) == 10
    assert evidence.wait_seconds_p50 is not None and abs(evidence.wait_seconds_p50 - 0.005) < 1e-6
    assert evidence.compute_gap_seconds_p50 is not None and abs(evidence.compute_gap_seconds_p50 - 0.005) < 1e-6
    assert evidence.last_seq == 59 and evidence.pending_seq is None


def test_compute_gap_is_measured_after_the_timed_collectives_when_the_probe_times_a_sample() -> None:
    window = RankWindow("j", 0, "default", max_samples=4096)
    for seq in range(60):  # the DDP pattern above, completion timed for every 4th collective only
        step, bucket = divmod(seq, 3)
        add(window, rec(seq, 1000.0 + step * 0.25 + bucket * 0.01, 0.005 if seq % 4 == 0 else None))
    evidence = window.evidence(now=1000.0 + 20 * 0.25, window_seconds=60, max_samples=10, dropped_records=0)
    assert evidence.wait_seconds_p50 is not None and abs(evidence.wait_seconds_p50 - 0.005) < 1e-6
    assert evidence.compute_gap_seconds_p50 is not None and abs(evidence.compute_gap_seconds_p50 - 0.005) < 1e-6


def test_a_collective_pending_for_long_is_reported_until_it_or_a_later_one_completes() -> None:
    window = ddp_like_window(steps=2, period=0.25)
    add(window, rec(6, 2000.0, None, kind=Kind.ISSUE))
    evidence = window.evidence(now=2010.0, window_seconds=3600, max_samples=0, dropped_records=0)
    assert (evidence.pending_seq, evidence.pending_op, evidence.pending_since) == (6, "all_reduce", 2000.0)
    add(window, rec(7, 2011.0, 0.01))  # a later collective of the group completed: so did seq 6
    assert window.evidence(now=2012.0, window_seconds=3600, max_samples=0, dropped_records=0).pending_seq is None


def test_no_step_period_without_a_repeating_pattern() -> None:
    window = RankWindow("j", 0, "default", max_samples=64)
    for seq in range(20):
        add(window, rec(seq, 1000.0 + seq * 0.1, 0.001, nbytes=seq * 7 + 1))
    assert window.evidence(now=1003.0, window_seconds=60, max_samples=0, dropped_records=0).step_period_seconds is None


def test_window_memory_is_bounded_by_max_samples() -> None:
    window = RankWindow("j", 0, "default", max_samples=16)
    for seq in range(1000):
        add(window, rec(seq, 1000.0 + seq * 0.01, 0.001))
    assert len(window.samples) == 16 and window.count == 16
    assert window.knows(999) and not window.knows(100)


def test_zero_evidence_samples_sends_no_samples_not_all_of_them() -> None:
    window = ddp_like_window(steps=4, period=0.25)
    evidence = window.evidence(now=1001.0, window_seconds=60, max_samples=0, dropped_records=0)
    assert evidence.samples == []
    assert len(window.evidence(now=1001.0, window_seconds=60, max_samples=3, dropped_records=0).samples) == 3


def test_a_window_holding_fewer_collectives_than_evidence_samples_sends_all_of_them() -> None:
    # 40 steps x 3 buckets = 120 collectives in the window, 128 asked for: all 120, the newest last (a negative
    # slice start once sent only the last 128 - 120 = 8, and fewer than the controller's minimum near 128).
    window = ddp_like_window(steps=40, period=0.25)
    for asked in (128, 200, 239):
        samples = window.evidence(now=1010.0, window_seconds=60, max_samples=asked, dropped_records=0).samples
        assert [s.seq for s in samples] == list(range(120))


def test_a_collective_that_arrives_late_takes_its_place_in_sequence_order_while_the_ring_holds_it() -> None:
    window = RankWindow("j", 0, "default", max_samples=16)
    for seq in [0, 1, 2, 3, 4, 6, 7, 5]:  # 5 completes after 6 and 7
        add(window, rec(seq, 1000.0 + seq * 0.1, 0.001))
    evidence = window.evidence(now=1001.0, window_seconds=60, max_samples=16, dropped_records=0)
    assert [s.seq for s in evidence.samples] == list(range(8))
    for seq in range(8, 40):  # the late one is overwritten: arrival order is sequence order again
        add(window, rec(seq, 1000.0 + seq * 0.1, 0.001))
    evidence = window.evidence(now=1004.0, window_seconds=60, max_samples=16, dropped_records=0)
    assert [s.seq for s in evidence.samples] == list(range(24, 40))
    assert window.step_period_seconds(1004.0, 60) == evidence.step_period_seconds
    assert evidence.step_period_seconds is not None and abs(evidence.step_period_seconds - 0.1) < 1e-6


def test_a_step_period_found_is_reused_for_a_few_seconds_then_estimated_again() -> None:
    window = ddp_like_window(steps=20, period=0.25)  # steps at 1000.0 .. 1004.75
    first = window.step_period_seconds(1005.0, 60)
    assert first is not None and abs(first - 0.25) < 1e-6
    for step in range(20, 60):  # the job slows to 0.5 s steps, issued at 1005.0 .. 1024.5
        for bucket, size in enumerate((100, 200, 300)):
            add(window, rec(3 * step + bucket, 1005.0 + (step - 20) * 0.5 + bucket * 0.01, 0.005, nbytes=size))
    assert window.step_period_seconds(1005.0 + PERIOD_REUSE_SECONDS - 0.1, 15) == first  # new collectives, same period
    later = window.step_period_seconds(1025.0, 15)  # past the reuse time: estimated again, on the slow steps
    assert later is not None and abs(later - 0.5) < 1e-6


def test_the_background_estimates_a_period_again_sooner_than_reads_would() -> None:
    window = ddp_like_window(steps=20, period=0.25)  # steps at 1000.0 .. 1004.75
    first = window.step_period_seconds(1005.0, 60)
    for step in range(20, 60):  # the job slows to 0.5 s steps, issued at 1005.0 .. 1024.5
        for bucket, size in enumerate((100, 200, 300)):
            add(window, rec(3 * step + bucket, 1005.0 + (step - 20) * 0.5 + bucket * 0.01, 0.005, nbytes=size))
    assert window.step_period_seconds(1009.9, 4) == first  # a scrape within PERIOD_REUSE_SECONDS reuses it
    refreshed = window.step_period_seconds(1009.9, 4, reuse_seconds=0.0)  # the background, ahead of the scrapes
    assert refreshed is not None and abs(refreshed - 0.5) < 1e-6
    assert window.step_period_seconds(1012.0, 4) == refreshed  # what the next scrapes read


def test_no_step_period_found_yet_is_looked_for_again_as_soon_as_collectives_arrive() -> None:
    window = ddp_like_window(steps=1, period=0.25)  # one step: no repeat yet
    assert window.step_period_seconds(1000.1, 60) is None
    for step in range(1, 20):
        for bucket, size in enumerate((100, 200, 300)):
            add(window, rec(3 * step + bucket, 1000.0 + step * 0.25 + bucket * 0.01, 0.005, nbytes=size))
    period = window.step_period_seconds(1000.2, 60)  # well within PERIOD_REUSE_SECONDS of the first look
    assert period is not None and abs(period - 0.25) < 1e-6


def test_a_job_of_long_steps_sends_its_newest_collectives_from_before_the_window_too() -> None:
    # one collective every 5 s: a 30 s window holds 6, fewer than the controller needs to line ranks up over
    # windows; the evidence reaches back for the newest 32 (the window's summaries stay the window's)
    window = RankWindow("j", 0, "default", max_samples=4096)
    for seq in range(60):
        add(window, rec(seq, 1000.0 + 5.0 * seq, 0.01))
    evidence = window.evidence(now=1297.0, window_seconds=30, max_samples=128, dropped_records=0)
    assert evidence.collectives_in_window == 6
    assert [s.seq for s in evidence.samples] == list(range(28, 60))
    fewer = window.evidence(now=1297.0, window_seconds=30, max_samples=10, dropped_records=0)
    assert [s.seq for s in fewer.samples] == list(range(50, 60))
