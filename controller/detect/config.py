"""Detection thresholds: data, each with the reason for its default. Loaded from the controller's config.

Every statistical threshold is relative (a share of the job's step period, a multiple of the peers' median)
so it holds for a 100 ms step and a 10 s step alike; absolute floors only keep noise-sized numbers out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DetectionConfig:
    """Thresholds of every detector and of the verdict hysteresis (seconds, ratios, counts)."""

    # --- straggler -------------------------------------------------------------------------------------
    samples_per_rank: int = 32
    """Most recent collectives per rank lined up each cycle: a robust median even for one slow GPU among many
    (measured gloo jitter is large per collective; the median over 32 tames it)."""
    samples_per_rank_at_scale: int = 16
    """... and above `scale_ranks` ranks in the cycle, to keep one cycle within its CPU budget (the pooled
    per-node test keeps node-wide stragglers visible; a single slow GPU needs more windows)."""
    scale_ranks: int = 20_000
    """Ranks compared in one cycle above which `samples_per_rank_at_scale` applies."""
    samples_within_seconds: float = 16.0
    """... and only those of them issued in the last 16 s (at least `min_collectives`): a straggler turns the
    window's median late once it fills ~60% of the window, so older collectives only delay the finding. 32
    collectives are 8 s of a job issuing 4 a second, but 64 s of a 2 s step with one gradient bucket."""
    min_collectives: int = 6
    """Collectives seen by every compared rank before any comparison: fewer is one noisy moment, not a trend."""
    min_timed_collectives: int = 4
    """Compared collectives whose wait every rank measured before the wait statistics count (the wait-share check
    and the clock-free form): two in each half of the window. The probe times one collective in 3
    (agent/probe/recorder.py TIMED_EVERY), so a window of 16 holds 5."""
    straggler_lateness_step_ratio: float = 0.04
    """A culprit arrives later than its peers' median by at least this share of the step period. A 20%
    straggler is late by ~20% of its compute; measured gloo noise is <1% of a step on a window median."""
    straggler_lateness_floor_seconds: float = 0.002
    """Lateness below 2 ms is clock and scheduler noise (NTP-synced clocks agree within ~1 ms)."""
    straggler_noise_multiple: float = 4.0
    """Lateness must also exceed this many robust spreads (1.4826·MAD) of the on-time ranks' lateness."""
    straggler_persistent_noise_multiple: float = 8.0
    """Before a verdict, a streak's new late collectives put the median lateness this many standard errors
    (1.25 jitter / sqrt(collectives)) above the per-collective jitter: twice the one-window test. A 20%
    straggler is late by ~20 jitters, so `min_collectives` settle it; lateness near the noise needs more, never
    more than the `suspect_windows` / `faulty_windows` windows of half-new collectives (verdicts.py)."""
    straggler_consistency_ratio: float = 0.6
    """Share of the collectives on which the culprit is late, in each half of the window: a straggler is late
    again and again, a transient (a checkpoint write, a GC pause) fills one part of the window."""
    straggler_wait_share: float = 0.5
    """The culprit waits less than its peers by at least this share of its lateness (it arrives last, so the
    others waited for it). A rank whose clock is ahead looks late but waits as long as everyone: not blamed."""
    max_culprit_share: float = 0.5
    """If more than half of a group's nodes look late (or never entered a hung collective), there is no
    healthy majority to compare with: the whole group is slow or paused, and nobody is blamed. (Two nodes:
    one may be blamed.)"""

    # --- hang ------------------------------------------------------------------------------------------
    hang_step_multiple: float = 5.0
    """Peers waiting in one collective for this many step periods means progress stopped; a healthy wait is
    a fraction of one step."""
    hang_min_seconds: float = 8.0
    """Never call a hang sooner: a garbage-collection pause, a slow data batch or a log flush last seconds."""
    hang_max_seconds: float = 20.0
    """Always call a hang by this time (plus one cycle), whatever the step period: the target is 30 s. Counted
    from the stalled rank's last progress (at least two steps), as its peers may block a step later."""
    hang_busy_write_bytes_per_second: float = 1e6
    """A rank behind its waiting peers whose process writes this fast (its agent's `process_write_bytes_per_second`)
    is busy, not hung: one rank saving a checkpoint while the others wait at the next collective. A stopped or stuck
    process writes nothing; logs are kilobytes a second."""
    hang_busy_max_seconds: float = 600.0
    """A busy rank that made no progress for this long is called hung all the same (PyTorch's NCCL timeout is
    10 minutes: a job waiting longer fails anyway)."""

    # --- slow link / NIC ---------------------------------------------------------------------------------
    link_peer_multiple: float = 10.0
    """A NIC counter rate (errors, drops, retransmits) this many times the job's other nodes' median is the
    node's own link, not the job's traffic pattern."""
    link_error_rate_floor_per_second: float = 5.0
    """Error / drop / retransmit rates below this are background noise on any busy link."""
    tcp_retransmit_ratio: float = 0.01
    """TCP retransmitted / sent segments above 1% on one node (peers near zero) is a lossy or shaped link."""
    xmit_wait_ratio: float = 0.2
    """Port had data and no credits 20% of the time: congestion or a slow peer port (InfiniBand/RoCE)."""
    link_speed_ratio: float = 0.75
    """Link speed below 75% of the job's other nodes' median speed: a port trained down (e.g. 400G -> 200G)."""
    burst_bandwidth_ratio: float = 0.6
    """Collective burst throughput below 60% of the job's other nodes' median: this node's path is slower."""
    periodicity_min_regularity: float = 0.5
    """Only trust burst bandwidth where the traffic is clearly periodic (collectives, not other traffic)."""
    egress_rtt_enabled: bool = True
    """Report a slow egress without loss from the bulk TCP paths between a job's nodes (controller/detect/egress)."""
    egress_rtt_floor_seconds: float = 0.002
    """A node's bulk sends all wait at least 2 ms: a real queue; a healthy data-centre path is sub-ms."""
    egress_rtt_base_multiple: float = 3.0
    """... and 3x the fabric's base RTT: the lowest minimum RTT (tcpi_min_rtt) of the job's paths that do not touch
    it (their smoothed RTT is no base: paced by the slow node, they trickle, and delayed ACKs lift it)."""
    egress_min_samples: int = 2
    """A path counts once it carried bulk data in two of the agent's socket dumps of its window (scrapes and
    evidence pulls): a one-off burst, like the model's broadcast at start, is no queue."""
    egress_delivery_ratio: float = 0.5
    """... and the network lets them through at most at half the median of what the job's other paths carry: their
    highest delivery rate, application-limited or not (a lower bound: they waited for data, not for the network;
    unlimited where the agent does not report it)."""
    job_slowdown_ratio: float = 1.15
    """The whole job is 'slow' when its step period is 15% above its own baseline."""
    baseline_alpha: float = 0.05
    """Weight of a new cycle in the job's baseline step period (exponential average over ~20 cycles)."""

    # --- fabric ------------------------------------------------------------------------------------------
    fabric_min_nodes: int = 3
    """This many suspects behind one switch/rack label in one cycle is the switch, not the nodes."""
    fabric_min_share: float = 0.5
    """... and they are at least this share of that label's nodes that report evidence."""

    # --- hard faults ------------------------------------------------------------------------------------
    thermal_throttle_seconds: float = 60.0
    """Thermal slowdown continuously for a minute: a cooling fault, not a transient hot spot."""
    power_throttle_seconds: float = 300.0
    """Power brake for five minutes: power caps are often set on purpose, so only a long one is reported."""
    hard_hold_seconds: float = 120.0
    """Keep a hard verdict this long after its signal left the agent's window (the policy decides release)."""

    # --- hysteresis and freshness -----------------------------------------------------------------------
    suspect_windows: int = 3
    """Fresh evidence windows in a row with a statistical finding before the node is 'suspect' (for a finding
    that names its collectives: windows with new ones)."""
    faulty_windows: int = 4
    """... and before it is 'faulty' (one noisy window, even two, never makes a verdict)."""
    faulty_min_seconds: float = 15.0
    """... spanning at least this long, so fast cycles (1 s) do not shorten the persistence in time. For a
    finding that names its collectives: the job's time its late collectives span after the first window that
    showed it (verdicts.py), so a straggler is found as fast in a job issuing one collective a second as in
    one issuing fifty, and a one-rank transient (a checkpoint write, a GC pause, a slow batch) must fill most
    of both halves of a window and then last 15 s more to make 'faulty'."""
    suspect_min_seconds: float = 8.0
    """... and, as `faulty_min_seconds`, before 'suspect': longer than a garbage-collection pause, a slow data
    batch or a log flush."""
    miss_tolerance: int = 1
    """Windows without the finding tolerated inside a streak (a straggler hidden by one noisy window), forgiven
    after `faulty_windows` windows with it in a row: a transient seen in every other window never adds up."""
    stale_after_seconds: float = 45.0
    """Evidence whose `collected_at` has not advanced for this long (controller time) is missing: unknown."""
    restart_grace_seconds: float = 30.0
    """After a job starts, restarts or rescales, compare its ranks only after this long: warm-up is uneven. A
    job first seen by this controller (a new one after a failover) counts from its start as its youngest
    rank's collectives tell it, so a failover does not blind the detectors for 30 s."""
    idle_after_step_multiple: float = 3.0
    """No rank issued a collective for this many step periods (and at least `hang_min_seconds`): the job is
    idle (checkpoint, evaluation)."""

    confidence_floor: float = 0.5
    """Confidence of a statistical finding that just passes its thresholds; stronger evidence scores higher."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DetectionConfig:
        """Build from a mapping (e.g. the `detection:` section of the controller's YAML); unknown keys fail."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown detection settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        defaults = cls()
        converted: dict[str, Any] = {}
        for name, value in values.items():
            default = getattr(defaults, name)
            if isinstance(default, bool) or not isinstance(default, (int, float)):
                converted[name] = value
            elif isinstance(default, int):
                converted[name] = int(value)
            else:
                converted[name] = float(value)
        return dataclasses.replace(defaults, **converted)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DetectionConfig:
        """Load from a YAML file holding a mapping of the fields above (all optional)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: detection settings must be a mapping, got {type(data).__name__}")
        return cls.from_mapping(data)
