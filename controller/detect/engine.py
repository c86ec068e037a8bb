"""The detection engine: every cycle, the latest evidence of every node -> findings, node verdicts, job views.

Called by the controller loop (and by `lockstep simulate`) every few seconds. It keeps what detection needs
across cycles — when each node's evidence last changed, each rank's process and sequence number (to see
restarts), each job's baseline step period, and the verdict hysteresis — and runs the pure detectors in
between: hard faults per node, then per job: restart check, hang, straggler, slow link; then the fabric check.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from itertools import repeat
from typing import NamedTuple

import numpy as np

from agent.evidence import Evidence
from controller.detect.config import DetectionConfig
from controller.detect.egress import find_slow_egress, job_paths
from controller.detect.fabric import regroup_fabric
from controller.detect.hang import find_hang
from controller.detect.hard import hard_findings
from controller.detect.link import find_slow_links, link_figures
from controller.detect.ranks import JobKey, RankEntry, RankGroup, estimate_step_period, group_ranks
from controller.detect.straggler import StragglerReport, find_stragglers_many
from controller.detect.verdicts import VerdictKeeper
from controller.model import Finding, JobState, JobView, NodeVerdict, RankTable, Severity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectionResult:
    """One cycle's outcome: a verdict per node, every finding (fabric ones included), a view per job."""

    verdicts: dict[str, NodeVerdict]
    findings: tuple[Finding, ...]
    jobs: tuple[JobView, ...]


class _RankMemory(NamedTuple):
    pid: int
    world_size: int
    last_seq: int
    node: str
    seen_at: float  # controller time (s)


_new_memory = partial(tuple.__new__, _RankMemory)  # from a 5-tuple, without a Python-level call


@dataclass
class _JobMemory:
    restarted_at: float  # controller time of the last (re)start seen, or of first sight
    baseline_step_seconds: float | None = None


class DetectionEngine:
    """Stateful across calls; `step` is the only entry point."""

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config or DetectionConfig()
        self._verdicts = VerdictKeeper(self.config)
        self._freshness: dict[
            str, tuple[float, float]
        ] = {}  # node -> (collected_at, controller time it changed)
        self._ranks: dict[tuple[JobKey, str], dict[int, _RankMemory]] = {}  # (job, group) -> rank -> memory
        self._jobs: dict[JobKey, _JobMemory] = {}

    def step(
        self,
        evidence: Mapping[str, Evidence | None],
        now: float,
        topology: Mapping[str, str] | None = None,
    ) -> DetectionResult:
        """Run one detection cycle. `now` is the controller's clock (Unix s); `topology` maps node -> switch/rack."""
        # Millions of evidence objects are alive during a cycle; a full garbage collection triggered by the
        # cycle's own small allocations would cost more than the cycle. Nothing here makes reference cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._step(evidence, now, topology)
        finally:
            if collecting:
                gc.enable()

    def _step(
        self,
        evidence: Mapping[str, Evidence | None],
        now: float,
        topology: Mapping[str, str] | None,
    ) -> DetectionResult:
        usable, fresh = self._usable(evidence, now)
        findings: list[Finding] = []
        for document in usable.values():
            findings.extend(hard_findings(document, self.config))

        jobs, job_findings = self._jobs_cycle(usable, now)
        findings.extend(job_findings)
        findings = [f if f.observed_at else dataclasses.replace(f, observed_at=now) for f in findings]
        findings = regroup_fabric(findings, topology or {}, usable, self.config)

        per_node: dict[str, list[Finding]] = {}
        for f in findings:
            if f.severity is not Severity.FABRIC:
                per_node.setdefault(f.node, []).append(f)
        verdicts = {
            node: (
                self._verdicts.update(node, per_node.get(node, []), fresh[node], now)
                if node in usable
                else self._verdicts.unknown(node, now)
            )
            for node in evidence
        }
        self._verdicts.forget(set(evidence))
        for node in set(self._freshness) - set(evidence):
            del self._freshness[node]
        return DetectionResult(verdicts=verdicts, findings=tuple(findings), jobs=tuple(jobs))

    def _usable(
        self, evidence: Mapping[str, Evidence | None], now: float
    ) -> tuple[dict[str, Evidence], dict[str, bool]]:
        """Documents that are present and not stale, and whether each is a new window since last cycle."""
        usable: dict[str, Evidence] = {}
        fresh: dict[str, bool] = {}
        for node, document in evidence.items():
            if document is None:
                continue
            known = self._freshness.get(node)
            is_new = known is None or document.collected_at != known[0]
            if is_new:
                self._freshness[node] = (document.collected_at, now)
            elif now - known[1] > self.config.stale_after_seconds:  # type: ignore[index]
                continue
            usable[node] = document
            fresh[node] = is_new
        return usable, fresh

    def _jobs_cycle(self, usable: Mapping[str, Evidence], now: float) -> tuple[list[JobView], list[Finding]]:
        config = self.config
        jobs = group_ranks(usable)
        findings: list[Finding] = []
        plans: list[tuple[JobKey, dict[str, RankGroup], JobState, dict[str, float | None]]] = []
        to_compare: list[tuple[RankGroup, float | None]] = []
        for key, groups in jobs.items():
            restarting = self._note_ranks(key, groups, now)
            steps = {name: estimate_step_period(group) for name, group in groups.items()}
            state = JobState.RESTARTING if restarting else JobState.RUNNING
            if not restarting:
                for name, group in groups.items():
                    hang = find_hang(group, steps[name], config, self._vanished(key, group, usable, now))
                    if hang.hung:
                        state = JobState.HUNG
                        findings.extend(hang.findings)
                if state is JobState.RUNNING and self._idle(groups, steps):
                    state = JobState.IDLE
                if state is JobState.RUNNING:
                    to_compare.extend((group, steps[name]) for name, group in groups.items())
            plans.append((key, groups, state, steps))

        reports: dict[tuple[JobKey, str], StragglerReport] = {
            (group.job, group.process_group): report
            for (group, _), report in zip(to_compare, find_stragglers_many(to_compare, config), strict=True)
        }
        for report in reports.values():
            findings.extend(report.findings)

        looks: list[tuple[RankGroup, float | None, bool, list[str]]] = []  # main group, step, slow, nodes
        linked: list[tuple[str, list[str], dict[str, object]]] = []  # multi-node jobs: name, nodes, context
        for key, groups, state, steps in plans:
            main = _main_group(groups)
            step = steps.get(main.process_group)
            memory = self._jobs[key]
            slow = bool(
                step
                and memory.baseline_step_seconds
                and step >= config.job_slowdown_ratio * memory.baseline_step_seconds
            )
            if state is JobState.RUNNING and step and not slow:
                base = memory.baseline_step_seconds
                memory.baseline_step_seconds = (
                    step
                    if base is None
                    else (1 - config.baseline_alpha) * base + config.baseline_alpha * step
                )
            nodes = sorted({node for g in groups.values() for node in g.fields.nodes})
            looks.append((main, step, slow, nodes))
            if len(nodes) > 1:  # NIC counters do not depend on the job's warm-up: compared at once
                context: dict[str, object] = {
                    "step_period_seconds": step,
                    "baseline_step_period_seconds": memory.baseline_step_seconds,
                    "job_slower_than_baseline": slow,
                }
                linked.append((key[1], nodes, context))
        figures = {
            node: link_figures(usable[node], config)
            for node in dict.fromkeys(n for _, ns, _ in linked for n in ns)
        }
        slow_links = iter(find_slow_links(linked, figures, config))

        views: list[JobView] = []
        egress = iter(
            [
                find_slow_egress(name, nodes, job_paths(nodes, usable, config.egress_min_samples), config, context)
                for name, nodes, context in linked
            ]
        )
        for (key, groups, state, _), (main, step, slow, nodes) in zip(plans, looks, strict=True):
            if len(nodes) > 1:
                findings.extend(next(slow_links))
                findings.extend(next(egress))
            job_findings = [f for f in findings if f.job == key[1] and f.node]
            if state is JobState.RUNNING and (slow or job_findings):
                state = JobState.SLOW
            views.append(
                self._view(key, groups, main, nodes, state, step, self._jobs[key], job_findings, reports)
            )
        self._forget_old(now)
        return views, findings

    def _note_ranks(self, key: JobKey, groups: Mapping[str, RankGroup], now: float) -> bool:
        """Update rank memory; True while the job is (re)starting: new processes, sequence reset, new size."""
        memory = self._jobs.get(key)
        restarted = False
        for name, group in groups.items():  # whole columns of the ranks' fields: no per-rank statement
            f = group.fields
            known_ranks = self._ranks.setdefault((key, name), {})
            restarted |= len(set(f.world_sizes)) > 1
            known = list(map(known_ranks.get, f.numbers))
            restarted |= _restarted(known, f.pids, f.world_sizes, f.last_seqs)
            memories = map(_new_memory, zip(f.pids, f.world_sizes, f.last_seqs, f.nodes, repeat(now)))
            known_ranks.update(zip(f.numbers, memories, strict=True))
        if memory is None:
            # First sight (a new job, or a new controller after a failover): the grace runs from the job's
            # start as its youngest rank's collectives tell it, not from now.
            age = min((_age_seconds(e) for g in groups.values() for e in g.entries), default=0.0)
            memory = self._jobs[key] = _JobMemory(restarted_at=now - age)
        if restarted:
            if now - memory.restarted_at >= self.config.restart_grace_seconds:
                log.info(
                    "job %s/%s restarted or rescaled: comparisons pause for %.0f s",
                    *key,
                    self.config.restart_grace_seconds,
                )
            memory.restarted_at = now
            memory.baseline_step_seconds = None
        return now - memory.restarted_at < self.config.restart_grace_seconds

    def _vanished(
        self, key: JobKey, group: RankGroup, usable: Mapping[str, Evidence], now: float
    ) -> dict[int, str]:
        """Ranks this group had, gone from a node that still reports (their process died or was stopped)."""
        world = max(group.fields.world_sizes)
        if len(group.entries) >= world:
            return {}  # every rank reports
        present = set(group.fields.numbers)
        gone: dict[int, str] = {}
        for rank in range(world):
            if rank in present:
                continue
            known = self._ranks.get((key, group.process_group), {}).get(rank)
            if (
                known is not None
                and known.node in usable
                and now - known.seen_at <= self.config.stale_after_seconds
            ):
                gone[rank] = known.node
        return gone

    def _idle(self, groups: Mapping[str, RankGroup], steps: Mapping[str, float | None]) -> bool:
        """No rank of any group issued a collective for several step periods (at least `hang_min_seconds`),
        and none is waiting in one: a pause of the whole job (checkpoint, evaluation), not a fault."""
        for name, group in groups.items():
            quiet = max(
                self.config.idle_after_step_multiple * (steps[name] or 0.0), self.config.hang_min_seconds
            )
            for e in group.entries:
                if e.rank.pending_seq is not None or e.collected_at - e.rank.last_progress_at < quiet:
                    return False
        return True

    def _forget_old(self, now: float) -> None:
        horizon = max(self.config.stale_after_seconds, self.config.restart_grace_seconds)
        for group_key, known_ranks in list(self._ranks.items()):
            for rank in [r for r, m in known_ranks.items() if now - m.seen_at > horizon]:
                del known_ranks[rank]
            if not known_ranks:
                del self._ranks[group_key]
        live_jobs = {k[0] for k in self._ranks}
        for key in set(self._jobs) - live_jobs:
            del self._jobs[key]

    def _view(
        self,
        key: JobKey,
        groups: Mapping[str, RankGroup],
        main: RankGroup,
        nodes: list[str],
        state: JobState,
        step: float | None,
        memory: _JobMemory,
        job_findings: list[Finding],
        reports: Mapping[tuple[JobKey, str], StragglerReport],
    ) -> JobView:
        columns: tuple[list[object], ...] = tuple([] for _ in RankTable.FIELDS)
        numbers, where, names, last_seqs, pending, lateness, waits, gaps = columns
        for name, group in groups.items():  # columns joined from the groups' fields: no statement per rank
            report = reports.get((key, name))
            fields = group.fields
            numbers += fields.numbers
            where += fields.nodes
            names += [name] * len(fields.numbers)
            last_seqs += fields.last_seqs
            pending += fields.pending_seqs
            gaps += fields.compute_gaps
            if report is None:
                lateness += [None] * len(fields.numbers)
                waits += fields.wait_p50s
            else:
                lateness += map(report.lateness_seconds.get, fields.numbers)
                waits += map(report.wait_seconds.get, fields.numbers, fields.wait_p50s)
        return JobView(
            name=key[1],
            namespace=key[0],
            world_size=max(main.fields.world_sizes),
            state=state,
            rank_nodes=dict(zip(main.fields.numbers, main.fields.nodes, strict=True)),
            nodes=tuple(nodes),
            step_period_seconds=step,
            baseline_step_period_seconds=memory.baseline_step_seconds,
            suspects=tuple(sorted({f.node for f in job_findings})),
            ranks=RankTable(*columns),
        )


def _restarted(
    known: list[_RankMemory | None],
    pids: tuple[int, ...],
    sizes: tuple[int, ...],
    last_seqs: tuple[int, ...],
) -> bool:
    """Whether a rank seen before (`known`, in the order of the other columns) now has another process, another
    world size or an earlier sequence number."""
    if known and None not in known:  # the usual cycle: every rank seen before, compared column by column
        old_pids, old_sizes, old_seqs, _, _ = zip(*known, strict=True)
        if old_pids == pids and old_sizes == sizes:
            return any(map(operator.lt, last_seqs, old_seqs))
    return any(
        rank is not None
        and ((pid and rank.pid and pid != rank.pid) or size != rank.world_size or seq < rank.last_seq)
        for rank, pid, size, seq in zip(known, pids, sizes, last_seqs, strict=True)
    )


def _age_seconds(entry: RankEntry) -> float:
    """How long the rank's process has issued collectives at least (s): its samples' time span, and the
    collectives before its oldest sample at their pace (warm-up is slower: a lower bound); 0 without samples."""
    seq, arrival = entry.columns.seq, entry.columns.arrival
    if len(seq) < 2 or not np.isfinite(arrival[[0, -1]]).all() or seq[-1] <= seq[0]:
        return 0.0
    pace = (arrival[-1] - arrival[0]) / (seq[-1] - seq[0])  # s per collective
    return max(0.0, float(entry.collected_at - arrival[0] + max(int(seq[0]), 0) * pace))


def _main_group(groups: Mapping[str, RankGroup]) -> RankGroup:
    """The process group that describes the job: 'default' where present, else the widest."""
    if "default" in groups:
        return groups["default"]
    return max(groups.values(), key=lambda g: (len(g.entries), g.process_group))
