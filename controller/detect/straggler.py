"""Straggler: the rank that arrives late at the collectives of its process group and waits little.

Physics of a blocking collective: it completes when the last rank has arrived, so the slow rank (the culprit)
arrives late and waits only for the transfer, while its peers (the victims) arrive on time and wait for it.
For every collective seen by all ranks of the group (lined up by sequence number) a rank's lateness is its
arrival minus the median arrival of the *other* ranks (so a two-rank job still has a reference). Each collective
that blocks lines the ranks up again, so a slow rank's lateness shows on the collectives right after its extra
compute: on every one in a job issuing one a step, on one of several in a step of FSDP's all-gathers and
reduce-scatters or of DDP's gradients and a logged loss. A culprit is late by a share of the step period, on
most collectives or (several collectives a step) by the most it is late within each step's run of them
(`step_lateness`), beyond the measured jitter, AND waits less than its peers by a good part of its lateness on
the collectives it is late at. The wait condition rejects a rank whose clock runs ahead. The
clock-free form uses wait times alone (and the compute gap where known): the culprit waits much less than its
peers. Waits count on the collectives every rank timed (the probe times one in TIMED_EVERY, the same seqs on
every rank), arrivals on all of them. Input: a `RankGroup` with samples attached; output: findings per culprit node and per-rank figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from controller.detect.align import Stack, align
from controller.detect.config import DetectionConfig
from controller.detect.ranks import RankGroup
from controller.model import Finding, Severity

DETECTOR = "straggler"
MAD_TO_SIGMA = 1.4826  # robust standard deviation from the median absolute deviation (normal data)
MEDIAN_STANDARD_ERROR = 1.2533  # standard error of a median is ~1.25 sigma / sqrt(n)
LEAVE_ONE_OUT_BELOW_RANKS = 8  # from 8 ranks on, leaving the rank itself out of the median changes ~nothing
LEAVE_ONE_NODE_OUT_BELOW_NODES = 8  # ... and from 8 nodes on, leaving a node's ranks out of it (see _judge_nodes)
JITTER_RANKS = 16  # ranks sampled per group to estimate its per-collective jitter
STEPS_PER_WINDOW = 4
"""A group issuing more collectives a step than half of `samples_per_rank` is compared over this many steps of
them (as many as its agents sent: 128 by default): the per-step test needs whole steps in each half of the
window. Not above `scale_ranks` ranks, where the window is held for the cycle's CPU budget."""


Median = Callable[..., np.ndarray]  # median_along or nanmedian_along


@dataclass(frozen=True)
class _Culprit:
    node: str
    strength_seconds: float  # how late it arrives (or how much less it waits, clock-free)
    ranks: tuple[int, ...]
    detail: dict[str, object]


@dataclass
class StragglerReport:
    findings: list[Finding] = field(default_factory=list)
    lateness_seconds: dict[int, float] = field(default_factory=dict)  # rank -> median lateness
    wait_seconds: dict[int, float] = field(default_factory=dict)  # rank -> median wait


def median_along(values: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """`np.median(values, axis, keepdims=...)` by a full sort: numpy's vectorised sort of the short axes here
    (16-80 values) is ~8x faster than the partition `np.median` uses. The same numbers: the mean of the middle
    one or two, nan where the axis holds a nan (a sort puts nans last, as the partition does)."""
    ordered = np.sort(values, axis=axis)
    axis %= ordered.ndim
    size = ordered.shape[axis]
    indexer: list[slice] = [slice(None)] * ordered.ndim
    indexer[axis] = slice(size // 2, size // 2 + 1) if size % 2 else slice(size // 2 - 1, size // 2 + 1)
    middle = ordered[tuple(indexer)].mean(axis=axis, keepdims=keepdims)
    return np.where(np.isnan(np.take(ordered, [-1] if keepdims else -1, axis=axis)), np.nan, middle)


def nanmedian_along(values: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """`median_along` leaving nans out: each slice's median of its other values (nan where it has none). The same
    numbers as `median_along` where a slice has no nan (the half-sum of the middle one or two)."""
    ordered = np.sort(values, axis=axis)  # nans last
    count = np.sum(~np.isnan(values), axis=axis, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=axis)
    high = np.take_along_axis(ordered, np.minimum(count // 2, ordered.shape[axis] - 1), axis=axis)
    middle = np.where(count > 0, 0.5 * (low + high), np.nan)
    return middle if keepdims else np.squeeze(middle, axis=axis)


def leave_one_out_median(values: np.ndarray) -> np.ndarray:
    """For a (..., ranks, collectives) array, each element's median over the other ranks (same collective)."""
    ranks = values.shape[-2]
    order = np.argsort(values, axis=-2, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-2)
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(ranks)[:, None], order.shape), axis=-2)

    def kth_of_others(k: int) -> np.ndarray:
        # The k-th smallest of the column without this element: skip over the element's own position.
        above = min(k + 1, ranks - 1)
        return np.where(position > k, ordered[..., k : k + 1, :], ordered[..., above : above + 1, :])

    others = ranks - 1
    if others % 2 == 1:
        return kth_of_others(others // 2)
    return 0.5 * (kth_of_others(others // 2 - 1) + kth_of_others(others // 2))


def peer_median(values: np.ndarray) -> np.ndarray:
    """Reference of each rank on a (..., ranks, collectives) array: the median of the other ranks where there
    are few (two ranks still have a reference), the median of all where one more makes no difference."""
    if values.shape[-2] < LEAVE_ONE_OUT_BELOW_RANKS:
        return leave_one_out_median(values)
    return median_along(values, axis=-2, keepdims=True)


def jitter_of(deviation: np.ndarray, median: Median = median_along) -> np.ndarray:
    """Per group of a (G, R, C) array: robust per-collective spread (1.4826 x the ranks' median absolute
    deviation, from up to `JITTER_RANKS` ranks: the noise is the group's, more ranks only cost time).
    `median`: `nanmedian_along` where nan pads a group's row (see `timed_waits`)."""
    sample = deviation[:, :JITTER_RANKS, :]
    spread = median(np.abs(sample - median(sample, axis=-1, keepdims=True)), axis=-1)
    return MAD_TO_SIGMA * median_along(spread, axis=-1, keepdims=True)


def _late_beyond_noise(
    deviation: np.ndarray,
    threshold: np.ndarray,
    jitter: np.ndarray,
    config: DetectionConfig,
    sampled: bool = False,
    per_step: np.ndarray | int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (group, row) of a (G, R, C) array: median deviation, whether it exceeds the threshold and the
    median's standard error under the group's jitter, and on what share of the collectives it is over half
    the threshold. `sampled`: nan marks collectives without a measurement, left out of each statistic.
    `per_step` (G, 1): collectives a value spans (`step_lateness`): the values of one step are one measurement."""
    over = deviation > threshold[..., None] / 2
    half = over.shape[-1] // 2  # late in both halves of the window: a transient fills one part of it
    if sampled:
        known = ~np.isnan(deviation)
        median = nanmedian_along(deviation, axis=-1)
        standard_error = MEDIAN_STANDARD_ERROR * jitter / np.sqrt(known.sum(axis=-1))
        consistency = np.minimum(
            over[..., :half].sum(axis=-1) / known[..., :half].sum(axis=-1),
            over[..., half:].sum(axis=-1) / known[..., half:].sum(axis=-1),
        )
    else:
        median = median_along(deviation, axis=-1)
        standard_error = MEDIAN_STANDARD_ERROR * jitter / np.sqrt(deviation.shape[-1] / per_step)
        consistency = np.minimum(over[..., :half].mean(axis=-1), over[..., half:].mean(axis=-1))
    late = (
        (median >= threshold)
        & (median > config.straggler_noise_multiple * standard_error)
        & (consistency >= config.straggler_consistency_ratio)
    )
    return median, late, consistency


@dataclass(frozen=True)
class _Judgement:
    lateness: np.ndarray  # (G, R) median lateness (s)
    deficit: np.ndarray  # (G, R) median wait deficit vs peers (s); nan without waits
    late: np.ndarray
    method: np.ndarray
    consistency: np.ndarray
    needed: np.ndarray  # (G, R) late collectives that settle the finding beyond the jitter (count)

    def strength(self, g: int, i: int) -> float:
        return float(self.deficit[g, i] if self.method[g, i] == "clock-free" else self.lateness[g, i])

    def either(self, other: _Judgement, groups: np.ndarray) -> _Judgement:
        """Per (group, row): this judgement where it blames, else `other`'s, which judged `groups` of them."""
        mine = self.late[groups] | ~other.late
        columns = []
        for name in (f.name for f in dataclasses.fields(self)):
            theirs = getattr(other, name)
            column = getattr(self, name).astype(np.promote_types(getattr(self, name).dtype, theirs.dtype))
            column[groups] = np.where(mine, column[groups], theirs)
            columns.append(column)
        return _Judgement(*columns)

    def detail(self, g: int, i: int) -> dict[str, object]:
        deficit = float(self.deficit[g, i])
        return {
            "method": str(self.method[g, i]),
            "lateness_seconds": round(float(self.lateness[g, i]), 6),
            "wait_deficit_seconds": None if np.isnan(deficit) else round(deficit, 6),
            "consistency": round(float(self.consistency[g, i]), 3),
            "collectives_needed": int(self.needed[g, i]),
        }


def _judge(
    lateness: np.ndarray,
    deficit: np.ndarray,
    timed_lateness: np.ndarray,
    waits_known: np.ndarray,
    timed_share: np.ndarray,
    gaps_ok: np.ndarray,
    threshold: np.ndarray,
    jitters: tuple[np.ndarray, np.ndarray],
    config: DetectionConfig,
    per_step: np.ndarray | None = None,
) -> _Judgement:
    """Late by arrival and (where waits are known) waiting less by a good part of it; or clock-free: waiting
    much less than the peers (and computing longer, where compute gaps are known). `lateness`: per collective,
    or with `per_step` (G, 1) per step (`step_lateness`, each value spanning that many collectives; method
    "arrival per step", never clock-free: the waits are the same). `deficit` and `timed_lateness` hold the
    timed collectives only, per collective (see `timed_columns`; nan pads a group with fewer): the wait share is
    taken of the lateness on the timed collectives the rank is late at (lateness differs by gradient bucket and by
    position in a step). A rank late on none of its timed collectives cannot be a clock running ahead (that
    shifts every arrival): its arrivals are judged alone. `timed_share` (G, 1): their share of the compared
    collectives. `jitters`: per-step noise of lateness and per-collective noise of the wait deficit, per group."""
    spans = 1 if per_step is None else per_step
    late_median, late, consistency = _late_beyond_noise(
        lateness, threshold, jitters[0], config, per_step=spans
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        padded = bool(np.isnan(deficit).any())
        deficit_median, waits_less, _ = _late_beyond_noise(deficit, threshold, jitters[1], config, padded)
        deficit_median = np.where(waits_known, deficit_median, np.nan)
        late &= ~waits_known | _waits_less_where_late(
            late, deficit, timed_lateness, threshold, config.straggler_wait_share
        )
    clock_free = waits_known & waits_less & ~late & gaps_ok & (per_step is None)
    arrival = "arrival" if per_step is None else "arrival per step"
    method = np.where(late, arrival, np.where(clock_free, "clock-free", ""))
    strength, jitter = np.where(late, late_median, deficit_median), np.where(late, *jitters)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Arrival counts steps of `per_step` collectives, clock-free counts timed collectives: both scaled to all.
        counted_share = np.where(late, 1.0 / spans, timed_share)
        needed = np.ceil(
            np.square(config.straggler_persistent_noise_multiple * MEDIAN_STANDARD_ERROR * jitter / strength)
            / counted_share
        )
    needed = np.where(late | clock_free, np.nan_to_num(needed, nan=0.0, posinf=0.0), 0.0)
    return _Judgement(late_median, deficit_median, late | clock_free, method, consistency, needed)


def _waits_less_where_late(
    late: np.ndarray, deficit: np.ndarray, timed_lateness: np.ndarray, threshold: np.ndarray, share: float
) -> np.ndarray:
    """Per (group, row): on the timed collectives the rank is late at (by over half the threshold), its median
    wait deficit is at least `share` of its median lateness there; True where it is late at none of them.
    Worked out only for the groups with a `late` row (a cycle has few)."""
    out = np.ones(late.shape, dtype=bool)
    groups = np.flatnonzero(late.any(axis=1))
    if not len(groups):
        return out
    lateness = timed_lateness[groups]
    late_at = lateness > threshold[groups][..., None] / 2
    deficit_there = nanmedian_along(np.where(late_at, deficit[groups], np.nan), axis=-1)
    lateness_there = nanmedian_along(np.where(late_at, lateness, np.nan), axis=-1)
    with np.errstate(invalid="ignore"):
        out[groups] = ~late_at.any(axis=-1) | (deficit_there >= share * lateness_there)
    return out


def find_stragglers(group: RankGroup, step_period: float | None, config: DetectionConfig) -> StragglerReport:
    """Culprit nodes of one process group (see `find_stragglers_many`)."""
    return find_stragglers_many([(group, step_period)], config)[0]


def find_stragglers_many(
    groups: Sequence[tuple[RankGroup, float | None]], config: DetectionConfig
) -> list[StragglerReport]:
    """Culprit nodes of each process group, from arrivals and waits of the collectives its ranks share.

    Judged per rank (one slow GPU) and per node, pooling the node's ranks (a slow host makes all of its ranks
    late together, and pooling eight ranks cuts the jitter of the median by ~3x). Groups without samples
    to line up fall back to the clock-free form on the agents' window summaries.
    """
    reports = [StragglerReport() for _ in groups]
    steps = np.array([step or 0.0 for _, step in groups], dtype=np.float64)
    thresholds = np.maximum(
        config.straggler_lateness_floor_seconds, config.straggler_lateness_step_ratio * steps
    )
    comparable = [i for i, (group, _) in enumerate(groups) if steps[i] > 0 and len(group.entries) >= 2]
    ranks = sum(len(groups[i][0].entries) for i in comparable)
    window = config.samples_per_rank if ranks <= config.scale_ranks else config.samples_per_rank_at_scale
    by_window: dict[int, list[int]] = {}
    for i in comparable:
        width = _window_for(groups[i][0], steps[i], window) if ranks <= config.scale_ranks else window
        by_window.setdefault(width, []).append(i)
    stacks = [
        (stack, indices)
        for width, indices in by_window.items()
        for stack in align(
            [groups[i][0] for i in indices], width, config.min_collectives, config.samples_within_seconds
        )
    ]
    aligned: set[int] = set()
    for stack, indices in stacks:
        members = [indices[g] for g in stack.groups]
        aligned.update(members)
        _judge_stack(
            stack,
            [groups[i][0] for i in members],
            steps[members],
            thresholds[members],
            config,
            [reports[i] for i in members],
        )
    for i in comparable:
        if i not in aligned:
            reports[i] = _from_summaries(groups[i][0], float(thresholds[i]), config)
    return reports


def _window_for(group: RankGroup, step: float, window: int) -> int:
    """Collectives to compare for `group`: `window`, or `STEPS_PER_WINDOW` steps of them where a step holds more
    than half of it (the step period over the mean time between its first rank's collectives)."""
    arrival = group.entries[0].columns.arrival
    if len(arrival) < 2 or not arrival[-1] > arrival[0]:
        return window
    per_step = round(step * (len(arrival) - 1) / float(arrival[-1] - arrival[0]))
    return window if 2 * per_step <= window else STEPS_PER_WINDOW * per_step


def _judge_stack(
    stack: Stack,
    groups: list[RankGroup],
    steps: np.ndarray,
    thresholds: np.ndarray,
    config: DetectionConfig,
    reports: list[StragglerReport],
) -> None:
    threshold = thresholds[:, None]
    timed, timed_count = timed_columns(stack.wait)
    wait = timed(stack.wait)
    waits_known = timed_count >= max(config.min_timed_collectives, 1)
    median_of_waits = nanmedian_along if np.isnan(wait).any() else median_along
    lateness = stack.arrival - peer_median(stack.arrival)
    timed_lateness = timed(lateness)
    spacing = seconds_per_collective(stack, steps)
    per_step = collectives_per_step(steps, spacing, lateness.shape[-1])
    deficit = peer_median(wait) - wait  # how much less than its peers each rank waited
    jitters = (jitter_of(lateness), jitter_of(deficit, median_of_waits))
    timed_share = timed_count / stack.arrival.shape[-1]
    gaps = stack.compute_gaps
    gaps_known = ~np.isnan(gaps).any(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        excess = gaps - peer_median(gaps[..., None])[..., 0]
        gaps_ok = ~gaps_known | (excess >= config.straggler_lateness_floor_seconds)
    verdict = _judge(
        lateness, deficit, timed_lateness, waits_known, timed_share, gaps_ok, threshold, jitters, config
    )
    stepwise = step_lateness(lateness, per_step)
    if stepwise is not lateness:
        # judged again per step only where a rank is late by its median per step and not blamed already
        again = np.flatnonzero(((median_along(stepwise, axis=-1) >= threshold) & ~verdict.late).any(axis=1))
        if len(again):
            by_step = _judge(
                stepwise[again],
                deficit[again],
                timed_lateness[again],
                waits_known[again],
                timed_share[again],
                gaps_ok[again],
                threshold[again],
                (jitter_of(stepwise[again]), jitters[1][again]),
                config,
                per_step[again, None],
            )
            verdict = verdict.either(by_step, again)
    wait_median = median_of_waits(wait, axis=-1)
    pooled = _judge_nodes(
        stack, (lateness, deficit, timed_lateness), wait, timed, waits_known, timed_share, threshold, jitters, config
    )
    rank_lists = stack.ranks.tolist()
    for g, (group, report, rank_ids) in enumerate(zip(groups, reports, rank_lists, strict=True)):
        report.lateness_seconds = dict(zip(rank_ids, verdict.lateness[g].tolist(), strict=True))
        if waits_known[g, 0]:
            report.wait_seconds = dict(zip(rank_ids, wait_median[g].tolist(), strict=True))
        culprits = [
            _Culprit(
                stack.node_names[stack.node_codes[g, i]],
                verdict.strength(g, i),
                (rank_ids[i],),
                {"rank": rank_ids[i], **verdict.detail(g, i)},
            )
            for i in np.flatnonzero(verdict.late[g]).tolist()
        ]
        culprits.extend(pooled.get(g, []))
        if culprits:
            report.findings = _node_findings(
                group,
                culprits,
                float(thresholds[g]),
                float(steps[g]),
                config,
                {
                    "collectives": [int(stack.first_seq[g]), int(stack.last_seq[g])],
                    "compared_collectives": int(stack.arrival.shape[-1]),
                    "seconds_per_collective": round(float(spacing[g]), 6),
                    "peer_wait_seconds": float(np.median(wait_median[g])) if waits_known[g, 0] else None,
                },
            )


def timed_columns(wait: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """The collectives of a (G, R, C) stack whose wait every rank of the group timed (the probe times one in
    TIMED_EVERY, the same seqs on every rank): a function picking them out of a (G, R, C) array, in seq order,
    nan-padded to the most any group has (G, R, W), and how many each group has (G, 1). When every wait is known it
    returns its input unchanged; sampled, the wait statistics sort TIMED_EVERY times fewer values."""
    timed = ~np.isnan(wait).any(axis=1)  # (G, C)
    count = timed.sum(axis=1, keepdims=True)
    if count.min() == wait.shape[-1]:
        return (lambda values: values), count
    width = max(int(count.max()), 2)  # a column in each half of the window, if only nan
    columns = np.argsort(~timed, axis=1, kind="stable")[:, None, :width]  # the timed ones first, in seq order
    filled = (np.arange(width) < count)[:, None, :]

    def pick(values: np.ndarray) -> np.ndarray:
        return np.where(filled, np.take_along_axis(values, columns, axis=2), np.nan)

    return pick, count


def collectives_per_step(steps: np.ndarray, spacing: np.ndarray, compared: int) -> np.ndarray:
    """Per group: collectives in one training step (the step period over the time per collective), at least 1
    and at most half the `compared` collectives, so that each half of the window holds a step."""
    with np.errstate(divide="ignore", invalid="ignore"):
        count = np.rint(steps / spacing)
    return np.clip(np.nan_to_num(count, nan=1.0, posinf=1.0), 1, max(1, compared // 2)).astype(np.int64)


def step_lateness(lateness: np.ndarray, per_step: np.ndarray) -> np.ndarray:
    """A (G, R, C) lateness array as the most each rank is late within the `per_step` (G,) collectives up to
    each one (the first ones: within the first step), less its peers' median of that (the most of several
    values is biased up by their jitter): a rank's lateness per step wherever in the step it shows. Unchanged
    where a step holds one collective."""
    if (per_step == 1).all():
        return lateness
    out = lateness.copy()
    for k in np.unique(per_step[per_step > 1]).tolist():
        members = np.flatnonzero(per_step == k)
        values = lateness[members]
        most = values[..., k - 1 :].copy()
        for shift in range(1, k):
            np.maximum(most, values[..., k - 1 - shift : values.shape[-1] - shift], out=most)
        most = np.concatenate([np.repeat(most[..., :1], k - 1, axis=-1), most], axis=-1)
        out[members] = most - peer_median(most)
    return out


def seconds_per_collective(stack: Stack, steps: np.ndarray) -> np.ndarray:
    """Per group of the stack: the job's time per collective over its window (s). A gap between two collectives
    counts at most two step periods per collective: a data-parallel job issues one at least every step, so a
    longer gap is a pause (checkpoint, evaluation) that is no evidence of anything."""
    gaps = np.minimum(np.diff(stack.clock, axis=1), 2 * steps[:, None] * np.diff(stack.seq, axis=1))
    return np.maximum(gaps, 0.0).sum(axis=1) / np.maximum(stack.seq[:, -1] - stack.seq[:, 0], 1)


def other_nodes_median(values: np.ndarray, per_node: int) -> np.ndarray:
    """For a (G, R, C) array whose ranks sit `per_node` to a node, consecutively: each element's median over the
    ranks of the other nodes (same collective; nans left out)."""
    groups, ranks, width = values.shape
    nodes = ranks // per_node
    blocks = values.reshape(groups, nodes, per_node, width)
    median = nanmedian_along if np.isnan(values).any() else median_along
    out = np.empty_like(blocks)
    for node in range(nodes):
        others = np.delete(blocks, node, axis=1).reshape(groups, (nodes - 1) * per_node, width)
        out[:, node] = median(others, axis=1, keepdims=True)
    return out.reshape(values.shape)


def _judge_nodes(
    stack: Stack,
    by_rank: tuple[np.ndarray, np.ndarray, np.ndarray],
    wait: np.ndarray,
    timed: Callable[[np.ndarray], np.ndarray],
    waits_known: np.ndarray,
    timed_share: np.ndarray,
    threshold: np.ndarray,
    jitters: tuple[np.ndarray, np.ndarray],
    config: DetectionConfig,
) -> dict[int, list[_Culprit]]:
    """Pool each node's ranks into one row, for groups whose nodes each hold the same number (>1) of
    consecutive ranks (the usual layout); returns culprit nodes per group index. `by_rank`: lateness, wait deficit
    and timed lateness against the median of all ranks. Where the nodes are fewer than
    `LEAVE_ONE_NODE_OUT_BELOW_NODES`, a node is measured against the other nodes' ranks instead: the median of all
    would hold the node's own late ranks (half of them with two nodes: a node-wide straggler would look half as
    late, and its peers half as early)."""
    lateness, deficit, timed_lateness = by_rank
    groups, ranks, width = lateness.shape
    codes = stack.node_codes
    differs = codes != codes[:, :1]
    run = np.where(differs.any(axis=1), np.argmax(differs, axis=1), ranks)  # ranks on the first node
    out: dict[int, list[_Culprit]] = {}
    for k in np.unique(run).tolist():
        if k < 2 or ranks % k or ranks // k < 2:
            continue
        members = np.flatnonzero(run == k)
        blocks = codes[members].reshape(len(members), ranks // k, k)
        members = members[(blocks == blocks[..., :1]).all(axis=(1, 2))]
        if not len(members):
            continue
        shape = (len(members), ranks // k, k * width)
        node_lateness, node_deficit, node_timed_lateness = lateness, deficit, timed_lateness
        if ranks // k < LEAVE_ONE_NODE_OUT_BELOW_NODES:
            node_lateness = lateness.copy()
            node_lateness[members] = stack.arrival[members] - other_nodes_median(stack.arrival[members], k)
            node_deficit = deficit.copy()
            node_deficit[members] = other_nodes_median(wait[members], k) - wait[members]
            node_timed_lateness = timed(node_lateness)
        pooled_lateness = node_lateness[members].reshape(shape)
        pooled = _judge(
            pooled_lateness,
            node_deficit[members].reshape(len(members), ranks // k, -1),
            pooled_lateness
            if node_timed_lateness is node_lateness
            else node_timed_lateness[members].reshape(len(members), ranks // k, -1),
            waits_known[members],
            timed_share[members],
            np.ones(shape[:2], dtype=bool),
            threshold[members],
            (jitters[0][members], jitters[1][members]),
            config,
        )
        for j, i in zip(*np.nonzero(pooled.late), strict=True):
            g = int(members[j])
            ranks_of_node = tuple(stack.ranks[g, i * k : (i + 1) * k].tolist())
            detail = {"ranks": list(ranks_of_node), "pooled": True, **pooled.detail(int(j), int(i))}
            node = stack.node_names[stack.node_codes[g, i * k]]
            out.setdefault(g, []).append(
                _Culprit(node, pooled.strength(int(j), int(i)), ranks_of_node, detail)
            )
    return out


def _from_summaries(group: RankGroup, threshold: float, config: DetectionConfig) -> StragglerReport:
    """Clock-free form on the agents' window summaries, for ranks that send no samples."""
    report = StragglerReport()
    waits = [entry.rank.wait_seconds_p50 for entry in group.entries]
    if any(wait is None for wait in waits) or any(
        e.rank.collectives_in_window < config.min_collectives for e in group.entries
    ):
        return report
    values = np.array(waits, dtype=np.float64)
    deficit = leave_one_out_median(values[:, None])[:, 0] - values
    rows = np.arange(len(values))
    gaps = [entry.rank.compute_gap_seconds_p50 for entry in group.entries]
    late = deficit >= threshold
    if all(gap is not None for gap in gaps):
        gap_values = np.array(gaps, dtype=np.float64)
        late &= (
            gap_values - leave_one_out_median(gap_values[:, None])[:, 0]
            >= config.straggler_lateness_floor_seconds
        )
    for row, entry in enumerate(group.entries):
        report.wait_seconds[entry.rank.rank] = float(values[row])
    culprits = [
        _Culprit(
            group.entries[row].node,
            float(deficit[row]),
            (group.entries[row].rank.rank,),
            {
                "rank": group.entries[row].rank.rank,
                "method": "clock-free-summary",
                "wait_seconds": round(float(values[row]), 6),
                "wait_deficit_seconds": round(float(deficit[row]), 6),
            },
        )
        for row in rows
        if late[row]
    ]
    step = next((e.rank.step_period_seconds for e in group.entries if e.rank.step_period_seconds), None)
    report.findings = _node_findings(
        group, culprits, threshold, step or 0.0, config, {"peer_wait_seconds": float(np.median(values))}
    )
    return report


def _node_findings(
    group: RankGroup,
    culprits: list[_Culprit],
    threshold: float,
    step_period: float,
    config: DetectionConfig,
    window: dict[str, object],
) -> list[Finding]:
    """One finding per culprit node, unless so many nodes look late that the whole group is the problem."""
    nodes = group.nodes
    culprit_nodes = sorted({c.node for c in culprits})
    if not culprit_nodes:
        return []
    if len(nodes) > 1 and len(culprit_nodes) > config.max_culprit_share * len(nodes):
        return []
    late_ranks = {r for c in culprits for r in c.ranks}
    if len(nodes) == 1 and len(late_ranks) > config.max_culprit_share * len(group.entries):
        return []  # a one-node job: compare its GPUs; all of them late is the job, not the node
    namespace, job = group.job
    findings = []
    for node in culprit_nodes:
        ranks = [c.detail for c in culprits if c.node == node]
        rank_ids = sorted({r for c in culprits if c.node == node for r in c.ranks})
        pooled = any(c.detail.get("pooled") for c in culprits if c.node == node)
        strength = max(c.strength_seconds for c in culprits if c.node == node)
        per_step = all(c.detail.get("method") == "arrival per step" for c in culprits if c.node == node)
        needed = [
            n for c in culprits if c.node == node and isinstance(n := c.detail.get("collectives_needed"), int)
        ]
        confidence = min(
            0.99,
            config.confidence_floor
            + (1 - config.confidence_floor) * (1 - threshold / max(strength, threshold)),
        )
        share = strength / step_period if step_period else None
        findings.append(
            Finding(
                detector=DETECTOR,
                reason="Straggler",
                node=node,
                severity=Severity.STATISTICAL,
                summary=(
                    f"rank {', '.join(map(str, rank_ids))} of job {job} arrives "
                    f"{strength * 1000:.0f} ms late"
                    + (" once a step" if per_step else "")
                    + (f" ({share:.0%} of a {step_period:.2f} s step)" if share is not None else "")
                    + " and waits less than its peers"
                ),
                confidence=round(confidence, 3),
                job=job,
                nodes=(node,),
                evidence={
                    "signal": "collective lateness and wait",
                    "namespace": namespace,
                    "process_group": group.process_group,
                    "ranks": rank_ids,
                    # What must stay late window after window for the verdict: the node's pooled ranks, or
                    # the same rank(s) (noise makes a different rank the latest in each window).
                    "subject": "node" if pooled else "ranks " + ",".join(map(str, rank_ids)),
                    "culprits": ranks,
                    "peers": [n for n in nodes if n != node],
                    "threshold_seconds": round(threshold, 6),
                    **({"collectives_needed": min(needed)} if needed else {}),
                    "step_period_seconds": round(step_period, 6) if step_period else None,
                    **window,
                },
            )
        )
    return findings
