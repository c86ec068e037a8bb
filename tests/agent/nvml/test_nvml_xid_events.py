"""XIDs arrive through NVML's event set in the collector's background thread: counted per code, kept in a window."""

from __future__ import annotations

import threading
from collections.abc import Callable

from agent.backends.nvml import GpuIdentity, XidEvent
from agent.collectors.nvml import NvmlCollector, XidLog
from tests.agent.nvml.conftest import FakeNvmlConfig
from tests.agent.nvml.nvml_support import scrape, wait_until

UUID3 = "GPU-5f0e6a3c-1003-4b1d-8e2f-a1b2c3d40003"


def xid_totals(collector: NvmlCollector) -> dict[tuple[str, str], float]:
    return {
        (labels["gpu"], labels["xid"]): value
        for labels, value in scrape(collector).samples("lockstep_gpu_xid_errors_total")
    }


def test_xids_injected_into_a_running_collector_are_counted_per_gpu_and_code(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector(start=True)
    assert xid_totals(collector) == {}
    fake_nvml.write({"gpus": {"3": {"xid": [79, 48, 48]}, "5": {"xid": [13]}}})
    totals = wait_until(lambda: (t := xid_totals(collector)) and sum(t.values()) == 4 and t, what="4 XIDs")
    assert totals == {("3", "79"): 1, ("3", "48"): 2, ("5", "13"): 1}
    labels, _ = scrape(collector).samples("lockstep_gpu_xid_errors_total", xid="79")[0]
    assert labels == {"gpu": "3", "uuid": UUID3, "xid": "79"}  # the code is a label, never a value


def test_xids_become_hard_signals_with_count_and_first_and_last_seen(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector(start=True)
    scrape(collector)
    fake_nvml.write({"gpus": {"3": {"xid": [48]}}})
    wait_until(lambda: xid_totals(collector), what="the first XID")
    fake_nvml.write({"gpus": {"3": {"xid": [48, 48, 79]}}})  # the log is append-only: two more events
    wait_until(lambda: sum(xid_totals(collector).values()) == 3, what="3 XIDs")
    signals = {s.xid: s for s in collector.evidence().hard_signals if s.kind == "xid"}
    assert set(signals) == {48, 79}
    assert signals[48].device == UUID3 and signals[48].count == 2
    assert signals[48].first_seen < signals[48].last_seen
    assert signals[79].count == 1 and "XID 79" in signals[79].detail
    assert [g.healthy for g in collector.evidence().gpus] == [True] * 8  # XIDs are judged by the controller


def test_xids_leave_the_evidence_after_the_window_but_stay_in_the_counter(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    now = [1000.0]
    collector = make_collector(clock=lambda: now[0], start=True, xid_window_seconds=60)
    fake_nvml.write(
        {"gpus": {"3": {"xid": [31]}}}
    )  # before the event set exists: held for the first listener
    wait_until(lambda: xid_totals(collector), what="the XID")
    now[0] = 1059.0
    assert [s.xid for s in collector.evidence().hard_signals] == [31]
    now[0] = 1061.0
    assert collector.evidence().hard_signals == []
    assert xid_totals(collector) == {("3", "31"): 1}


def test_xid_on_a_gpu_that_then_falls_off_the_bus_is_kept_and_events_go_on_for_the_others(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    collector = make_collector(start=True)
    scrape(collector)
    fake_nvml.write({"gpus": {"3": {"xid": [79], "lost": True}}})
    wait_until(lambda: xid_totals(collector), what="XID 79")
    scrape(collector)  # sees GPU 3 lost; the event thread registers the GPUs that are left
    fake_nvml.write({"gpus": {"3": {"xid": [79], "lost": True}, "6": {"xid": [94]}}})
    totals = wait_until(
        lambda: len(t := xid_totals(collector)) == 2 and t, what="XID 94 after GPU 3 was lost"
    )
    assert totals == {("3", "79"): 1, ("6", "94"): 1}
    kinds = {(s.kind, s.device) for s in collector.evidence().hard_signals}
    assert ("gpu_lost", UUID3) in kinds and ("xid", UUID3) in kinds


def test_close_stops_the_event_thread_promptly(make_collector: Callable[..., NvmlCollector]) -> None:
    def event_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "nvml-events"]

    before = set(event_threads())
    collector = make_collector(start=True)
    scrape(collector)
    [thread] = set(event_threads()) - before
    collector.close()
    assert not thread.is_alive()


def test_an_xid_storm_is_counted_exactly_and_ages_out_of_the_window_by_the_second() -> None:
    gpu = GpuIdentity(index=3, uuid=UUID3, pci_bus_id="00000000:5D:00.0")
    xids = XidLog(window_seconds=60)
    for i in range(20_000):  # 10,000 per second for two seconds
        xids.record(XidEvent(gpu=gpu, code=13, at=1000.0 + i / 10_000))
    [storm] = xids.signals(now=1002.0)
    assert (
        storm.count == 20_000 and storm.first_seen == 1000.0 and storm.last_seen == 1000.0 + 19_999 / 10_000
    )
    [tail] = xids.signals(now=1061.5)  # the first second has left the window
    assert tail.count == 10_000 and tail.first_seen == 1001.0
    assert xids.signals(now=1062.5) == []
    assert xids.totals() == {(3, UUID3, 13): 20_000}


def test_a_gpu_that_cannot_register_for_events_does_not_cost_the_others_their_xids(
    fake_nvml: FakeNvmlConfig, make_collector: Callable[..., NvmlCollector]
) -> None:
    no_events = {"errors": {"nvmlDeviceRegisterEvents": "NOT_SUPPORTED"}}
    fake_nvml.write({"gpus": {"2": no_events}})
    collector = make_collector(start=True)
    scrape(collector)
    fake_nvml.write({"gpus": {"2": {**no_events, "xid": [48]}, "3": {"xid": [48]}}})
    wait_until(lambda: xid_totals(collector), what="the XID of GPU 3")
    assert xid_totals(collector) == {("3", "48"): 1}
    assert scrape(collector).value("lockstep_gpus") == 8
