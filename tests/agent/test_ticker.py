"""The agent's shared background thread (agent/collectors/ticker.py): jobs keep their own cadence, share wakeups,
survive each other's failures, and are not running once removed."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from agent.collectors.ticker import MAX_DEFER_SECONDS, Ticker


def _thread_named(name: str) -> threading.Thread | None:
    return next((thread for thread in threading.enumerate() if thread.name == name), None)


def _voluntary_switches(thread: threading.Thread) -> int:
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(re.search(r"voluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("sampler_seconds", "phase_seconds"),
    [(0.05, 0.013), (0.1, 0.07)],  # the sampler at 20 Hz, or at 10 Hz and out of phase by more than the slack
)
def test_a_job_with_slack_shares_the_wakeups_of_another(sampler_seconds: float, phase_seconds: float) -> None:
    ticker = Ticker("test-ticker-share")
    runs = {"sampler": 0, "drain": 0}
    ticker.add("sampler", lambda: runs.__setitem__("sampler", runs["sampler"] + 1), sampler_seconds)
    time.sleep(phase_seconds)  # out of phase with the sampler
    ticker.add("drain", lambda: runs.__setitem__("drain", runs["drain"] + 1), 0.1, slack_seconds=0.05)
    time.sleep(0.3)
    thread = _thread_named("test-ticker-share")
    assert thread is not None
    before, switches_before = dict(runs), _voluntary_switches(thread)
    time.sleep(3.0)
    switches = _voluntary_switches(thread) - switches_before
    sampled, drained = runs["sampler"] - before["sampler"], runs["drain"] - before["drain"]
    ticker.remove("sampler")
    ticker.remove("drain")
    expected = round(3.0 / sampler_seconds)
    assert (
        expected - 10 <= sampled <= expected + 1 and 25 <= drained <= 31
    )  # each keeps its cadence (the drain 10/s)
    assert switches <= sampled + 6  # one wakeup per sampling tick: the drain rides along (was +drained apart)


def test_a_failing_job_is_logged_and_the_others_go_on(caplog) -> None:  # noqa: ANN001 - pytest fixture
    ticker = Ticker("test-ticker-fail")
    done = threading.Event()

    def broken() -> None:
        raise OSError("socket gone")

    ticker.add("broken", broken, 0.01)
    ticker.add("healthy", done.set, 0.01)
    time.sleep(0.1)
    done.clear()
    assert done.wait(2.0)  # still running after the broken job raised many times
    ticker.remove("broken")
    ticker.remove("healthy")
    assert "background job" in caplog.text and "socket gone" in caplog.text


def test_remove_returns_only_when_the_job_is_not_running_and_the_thread_ends_with_the_last_job() -> None:
    ticker = Ticker("test-ticker-remove")
    started, running = threading.Event(), threading.Event()

    def slow() -> None:
        running.set()
        started.set()
        time.sleep(0.2)
        running.clear()

    ticker.add("slow", slow, 0.01)
    assert started.wait(2.0)
    while not running.is_set():
        time.sleep(0.001)
    ticker.remove("slow")
    assert not running.is_set()  # remove waited for the run in progress
    deadline = time.monotonic() + 2.0
    while _thread_named("test-ticker-remove") is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _thread_named("test-ticker-remove") is None


def test_a_job_asking_to_run_again_at_once_is_not_held_to_its_interval() -> None:
    ticker = Ticker("test-ticker-again")
    runs: list[float] = []

    def busy() -> float | None:
        runs.append(time.monotonic())
        return 0.0 if len(runs) < 5 else None  # a busy socket: drain again at once, then back to the interval

    ticker.add("busy", busy, 1.0)
    deadline = time.monotonic() + 2.0
    while len(runs) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    ticker.remove("busy")
    assert len(runs) == 5 and runs[4] - runs[0] < 0.5  # five runs well inside one interval of 1 s


def test_jobs_that_fall_due_while_a_request_is_answered_run_once_it_is_answered() -> None:
    ticker = Ticker("test-ticker-serving")
    runs: list[float] = []
    ticker.add("job", lambda: runs.append(time.monotonic()), 0.02)
    time.sleep(0.1)
    with ticker.serving():
        answering_from = time.monotonic()
        held = len(runs)
        time.sleep(0.15)  # a long scrape: the job falls due several times meanwhile
        assert len(runs) == held, "no job runs while a request is answered"
        answered_at = time.monotonic()
    time.sleep(0.1)
    ticker.remove("job")
    assert not [t for t in runs if answering_from < t < answered_at]
    after = [t for t in runs if t >= answered_at]
    assert after and after[0] - answered_at < 0.02, "the due job runs as soon as the answer is out"


def test_a_request_that_never_ends_defers_the_jobs_only_so_long() -> None:
    ticker = Ticker("test-ticker-defer")
    runs: list[float] = []
    ticker.add("job", lambda: runs.append(time.monotonic()), 0.02)
    with ticker.serving(), ticker.serving():  # two scrapers at once, one stuck
        time.sleep(1.0)
        during = len(runs)
    ticker.remove("job")
    assert 2 <= during <= 1.0 / MAX_DEFER_SECONDS + 2  # every MAX_DEFER_SECONDS, not every 0.02 s
