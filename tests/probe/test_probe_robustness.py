"""The probe never fails or blocks training: agent absent, restarted, socket directory unusable, collective flood."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .jobs import ranks_by_number, start_collector, wait_for

pytestmark = pytest.mark.slow


def test_job_started_before_the_agent_is_seen_once_it_starts_and_again_after_it_restarts(
    ddp_job, socket_dir: Path
) -> None:
    job = ddp_job("--nproc", "2", "--steps", "0", "--step-seconds", "0.05", "--log-every", "20")
    assert job.proc.stdout is not None
    for line in job.proc.stdout:  # both ranks train 20 steps (1 s, two of the probe's flushes) with no agent listening
        if '"event": "step"' in line:
            break
    collector = start_collector(socket_dir)
    try:
        wait_for(lambda: len(ranks_by_number(collector)) == 2, 60, "both ranks after the agent started")
        wait_for(lambda: all(r.dropped_records > 0 for r in ranks_by_number(collector).values()), 30,
                 "the records lost while the agent was away to be reported")  # fmt: skip
        seen = max(r.last_seq for r in ranks_by_number(collector).values())
    finally:
        collector.close()  # the agent goes away mid-job ...
    assert job.proc.poll() is None
    collector = start_collector(socket_dir)  # ... and comes back
    try:
        wait_for(lambda: len(ranks_by_number(collector)) == 2
                 and min(r.last_seq for r in ranks_by_number(collector).values()) > seen, 60,
                 "progress after the agent restarted")  # fmt: skip
    finally:
        collector.close()
    assert job.proc.poll() is None  # still training


@pytest.mark.parametrize("unusable", ["missing", "a_file"])
def test_training_finishes_when_the_socket_directory_is_unusable(
    ddp_job, probe_env: dict[str, str], tmp_path: Path, unusable: str
) -> None:
    if unusable == "missing":
        socket_dir = tmp_path / "no" / "such" / "dir"
    else:
        socket_dir = tmp_path / "file"
        socket_dir.write_text("not a directory")
    env = {**probe_env, "LOCKSTEP_SOCKET_DIR": str(socket_dir)}
    out = ddp_job("--nproc", "2", "--steps", "30", "--extra-allreduces", "5", env=env).finish()
    done = json.loads(out.strip().splitlines()[-1])
    assert done["event"] == "done" and done["steps"] == 30


def test_flood_of_tiny_collectives_finishes_and_every_collective_is_delivered_or_counted(
    ddp_job, collector
) -> None:
    out = ddp_job("--nproc", "2", "--steps", "20", "--extra-allreduces", "400").finish()
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 20
    issued = 20 * (1 + 400) + 1  # per step one DDP bucket and 400 tiny all-reduces, then the final barrier
    wait_for(lambda: len(ranks_by_number(collector)) == 2
             and all(r.last_seq == issued - 1 for r in ranks_by_number(collector).values()), 30,
             "the final barrier of both ranks")  # fmt: skip
    for rank, ev in ranks_by_number(collector).items():
        delivered = sum(t.collectives for t in collector.state.windows[(ev.job, rank, "default")].totals.values())
        assert delivered <= issued <= delivered + ev.dropped_records  # drops may include reports of pending ones
