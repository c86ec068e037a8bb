"""One demo run, end to end: build the cluster and its daemons, start the job, watch it healthy, inject a
fault, watch the verdict and the cordon arrive, tear everything down. `make demo` and `tests/e2e` both
drive this class, so the tests exercise exactly what the demo shows."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from kubernetes import client as kube_client
from kubernetes import config as kube_config

from controller.demo.cluster import Cluster
from controller.demo.faults import Fault, write_nvml_config
from controller.demo.http import get_json
from controller.demo.job import TrainingJob, probe_bootstrap_env
from controller.demo.observe import Observer
from controller.demo.paths import FAKE_NVML_DIR, REPO
from controller.demo.processes import ProcessSet
from controller.demo.services import (
    Controller,
    Emulator,
    Prometheus,
    prometheus_binary,
    start_agent,
    start_controller,
    start_emulator,
    start_prometheus,
    wait_ready,
)
from controller.demo.stale import sweep_stale_runs
from controller.demo.timeline import Timeline

log = logging.getLogger(__name__)

POLL_INTERVAL_SECONDS = 0.5
STOP_REQUESTED = threading.Event()
"""Set by the demo's stop-signal handler: every wait (`DemoRun.observe`) ends the run at its next poll, even if the
handler's KeyboardInterrupt was swallowed (a SIGTERM once left the demo training on for a minute in CI)."""
AGENT_NAMESPACE = "lockstep"  # where the controller looks for agent pods by default (controller.settings)
AGENT_POD_LABELS = {"app.kubernetes.io/name": "lockstep-agent"}


class PrerequisiteError(RuntimeError):
    """Something the demo needs is not installed; the message says what to install."""


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo; the CLI flags map one to one onto these fields."""

    nodes: int = 4
    idle_nodes: int = 0  # nodes with an agent but no rank (a negative control)
    use_namespaces: bool = True  # False: localhost ports (also the automatic choice when not root)
    prometheus: bool = True  # when installed
    compute_seconds: float = 0.2  # device compute per training step, s
    parallel: str = "ddp"  # how the job shards its model: "ddp" or "fsdp" (FSDP2)
    startup_timeout_seconds: float = 90.0
    keep_work_dir: bool = False


@dataclass(frozen=True)
class Detection:
    """What happened after a fault was injected, times in seconds since the injection."""

    fault: str
    target: str | None
    injected_at_seconds: float
    first_suspect_seconds: float | None = None
    faulty_seconds: float | None = None
    cordoned_seconds: float | None = None
    tainted_seconds: float | None = None
    taint: str | None = None
    reason: str = ""
    innocent_blamed: tuple[str, ...] = ()
    innocent_suspects: tuple[str, ...] = ()
    budget_seconds: float = 0.0

    @property
    def time_to_detect_seconds(self) -> float | None:
        """Time until the target was acted on: faulty verdict, cordoned and tainted (the last of the three)."""
        steps = (self.faulty_seconds, self.cordoned_seconds, self.tainted_seconds)
        return None if any(s is None for s in steps) else max(s for s in steps if s is not None)

    @property
    def found(self) -> bool:
        return self.target is not None and self.time_to_detect_seconds is not None

    @property
    def within_budget(self) -> bool:
        ttd = self.time_to_detect_seconds
        return ttd is not None and ttd <= self.budget_seconds

    @property
    def passed(self) -> bool:
        if self.innocent_blamed:
            return False
        return self.found if self.target is not None else True


def check_prerequisites(options: DemoOptions) -> list[str]:
    """Raise PrerequisiteError naming what to install; return notes on optional parts that are missing."""
    problems = []
    if importlib.util.find_spec("torch") is None:
        problems.append(
            "PyTorch is not installed: `pip install torch==2.13.0` (the CPU build) or `make install`"
        )
    if not (FAKE_NVML_DIR / "libnvidia-ml.so.1").exists():
        problems.append(
            f"the fake NVML library is missing: run `make fake-nvml` (needs gcc and pip nvidia-nvml-dev) to build {FAKE_NVML_DIR}/libnvidia-ml.so.1"
        )
    for module in ("agent.__main__", "controller.__main__", "controller.kube_emulator"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"Lockstep module `{module}` is missing from this checkout ({REPO})")
    if options.use_namespaces:
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` not found: `apt-get install iproute2`")
    if problems:
        raise PrerequisiteError("the demo cannot run:\n  - " + "\n  - ".join(problems))
    notes = []
    if options.prometheus and prometheus_binary() is None:
        notes.append(
            "Prometheus is not installed (`apt-get install prometheus`): alert states will not be shown"
        )
    return notes


@dataclass
class DemoRun:
    """A running demo cluster; use as a context manager so that everything is torn down."""

    options: DemoOptions
    timeline: Timeline = field(default_factory=Timeline)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lsdemo-")))
    cluster: Cluster | None = None
    job: TrainingJob | None = None
    emulator: Emulator | None = None
    controller: Controller | None = None
    prometheus: Prometheus | None = None
    observer: Observer | None = None
    faults: list[Fault] = field(default_factory=list)
    step_period_seconds: float | None = None
    exited_pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.processes = ProcessSet(self.work_dir)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        self.env["PYTHONUNBUFFERED"] = "1"

    def __enter__(self) -> DemoRun:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    # --- building ---------------------------------------------------------------------------------------

    def build(self) -> None:
        options = self.options
        for note in check_prerequisites(options):
            self.timeline.say(f"note: {note}")
        if options.use_namespaces:
            for prefix in sweep_stale_runs():
                self.timeline.say(f"note: removed what the killed demo run {prefix} left behind")
        self.cluster = Cluster(options.nodes, self.work_dir, options.use_namespaces)
        self.cluster.build()
        cluster = self.cluster
        if options.use_namespaces:
            where = f"network namespaces {cluster.prefix}-node0..{options.nodes - 1} on bridge {cluster.bridge} ({cluster.subnet})"
        else:
            where = "localhost ports (no network namespaces: not root, or --localhost)"
        self.timeline.add("cluster", f"{options.nodes} nodes built: {where}")
        for node in cluster.nodes:
            write_nvml_config(node)
        agents = [start_agent(self.processes, node, self.env) for node in cluster.nodes]
        for child, node in zip(agents, cluster.nodes, strict=True):
            wait_ready(child, f"{node.agent_url}/healthz", options.startup_timeout_seconds)
        self.timeline.add(
            "agents", f"{len(agents)} agents serving: " + ", ".join(n.agent_url for n in cluster.nodes)
        )
        self.emulator = start_emulator(
            self.processes, self.work_dir, self.env, options.startup_timeout_seconds
        )
        self._register_nodes()
        self.timeline.add(
            "kubernetes",
            f"Kubernetes API emulator (an HTTP stand-in, not a real kube-apiserver): {len(cluster.nodes)} Nodes, "
            f"an agent pod on each; kubeconfig {self.emulator.kubeconfig}",
        )
        self.controller = start_controller(
            self.processes, self.emulator.kubeconfig, self.env, options.startup_timeout_seconds
        )
        self.timeline.add(
            "controller", f"controller acting on the emulator (not dry-run), status API {self.controller.url}"
        )
        if options.prometheus and prometheus_binary() is not None:
            self.prometheus = start_prometheus(
                self.processes, cluster, self.controller.url, self.work_dir, options.startup_timeout_seconds
            )
            rules = ", ".join(p.name for p in self.prometheus.rule_files) or "no alert rules found"
            self.timeline.add(
                "prometheus", f"Prometheus {self.prometheus.url} scraping agents and controller ({rules})"
            )
        self.observer = Observer(
            self.timeline,
            self.controller.url,
            self.emulator.kubeconfig,
            [n.name for n in cluster.nodes],
            self.prometheus.url if self.prometheus else None,
        )

    def _register_nodes(self) -> None:
        """A Node object per demo node and, on it, a pod of the agent DaemonSet (how the controller finds agents)."""
        assert self.cluster is not None and self.emulator is not None
        api = kube_client.CoreV1Api(
            kube_config.new_client_from_config(config_file=str(self.emulator.kubeconfig))
        )
        for node in self.cluster.nodes:
            api.create_node(
                kube_client.V1Node(
                    metadata=kube_client.V1ObjectMeta(
                        name=node.name,
                        labels={
                            "kubernetes.io/hostname": node.name,
                            "lockstep.dev/demo": self.cluster.run_id,
                        },
                    ),
                    status=kube_client.V1NodeStatus(
                        addresses=[kube_client.V1NodeAddress(type="InternalIP", address=node.ip)],
                        conditions=[
                            kube_client.V1NodeCondition(type="Ready", status="True", reason="KubeletReady")
                        ],
                    ),
                )
            )
            port = kube_client.V1ContainerPort(name="http", container_port=node.agent_port)
            api.create_namespaced_pod(
                AGENT_NAMESPACE,
                kube_client.V1Pod(
                    metadata=kube_client.V1ObjectMeta(
                        name=f"lockstep-agent-{node.index}", labels=AGENT_POD_LABELS
                    ),
                    spec=kube_client.V1PodSpec(
                        node_name=node.name,
                        containers=[
                            kube_client.V1Container(name="agent", image="lockstep:demo", ports=[port])
                        ],
                    ),
                    status=kube_client.V1PodStatus(phase="Running", pod_ip=node.ip),
                ),
            )

    # --- the job ------------------------------------------------------------------------------------------

    def start_job(self) -> None:
        assert self.cluster is not None
        ranked = self.cluster.nodes[: self.options.nodes - self.options.idle_nodes]
        job_env = dict(self.env)
        probe = probe_bootstrap_env(job_env, self.work_dir)
        self.job = TrainingJob(
            f"{self.cluster.prefix}-ddp",
            ranked,
            self.processes,
            job_env,
            self.options.compute_seconds,
            self.options.parallel,
        )
        self.job.start()
        self.timeline.add(
            "job",
            f"{self.options.parallel.upper()} job {self.job.name} started: {self.job.world_size} ranks (torch.distributed, gloo, CPU), rank r on "
            f"node r, MASTER_ADDR {ranked[0].ip}; probe on (LOCKSTEP_PROBE=1, {probe})",
        )
        if self.options.idle_nodes:
            idle = ", ".join(n.name for n in self.cluster.nodes[len(ranked) :])
            self.timeline.add("idle", f"no rank on {idle} (idle node control)")
        self.wait_for_job_in_evidence()

    def wait_for_job_in_evidence(self) -> None:
        """Wait until every rank of the job reports through its node's agent, then print the step period."""
        assert self.job is not None
        deadline = time.monotonic() + self.options.startup_timeout_seconds
        while True:
            periods = self._rank_step_periods()
            if len(periods) == self.job.world_size and all(p is not None for p in periods.values()):
                break
            if failed := self.job.failed_ranks():
                child = self.job.ranks[failed[0]]
                raise RuntimeError(
                    f"rank {failed[0]} exited with {child.popen.returncode}:\n{child.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(periods)} of {self.job.world_size} ranks visible in agent evidence"
                )
            self.observe(1.0)
        values = [p for p in periods.values() if p is not None]
        self.step_period_seconds = statistics.median(values)
        self.timeline.add(
            "steps",
            f"all {len(values)} ranks report through their agents; step period {self.step_period_seconds:.2f} s",
        )

    def _rank_step_periods(self) -> dict[int, float | None]:
        assert self.job is not None
        periods: dict[int, float | None] = {}
        for node in self.job.nodes:
            try:
                evidence = get_json(f"{node.agent_url}/api/v1/evidence")
            except (OSError, ValueError):
                continue
            for rank in evidence.get("ranks", []):
                if rank.get("job") == self.job.name:
                    periods[int(rank["rank"])] = rank.get("step_period_seconds")
        return periods

    # --- watching and faults ------------------------------------------------------------------------------

    def observe(self, seconds: float) -> None:
        """Poll the controller, the API and Prometheus for `seconds`, recording changes on the timeline."""
        assert self.observer is not None
        end = time.monotonic() + seconds
        while True:
            if STOP_REQUESTED.is_set():  # the signal's KeyboardInterrupt was lost inside a library call
                raise KeyboardInterrupt("stop requested")
            self.observer.poll()
            self._report_exited_ranks()
            if time.monotonic() >= end:
                return
            time.sleep(min(POLL_INTERVAL_SECONDS, max(0.0, end - time.monotonic())))

    def _report_exited_ranks(self) -> None:
        if self.job is None:
            return
        for rank in self.job.failed_ranks():
            child = self.job.ranks[rank]
            if child.pid not in self.exited_pids:
                self.exited_pids.add(child.pid)
                self.timeline.add(
                    "job", f"rank {rank} exited with code {child.popen.returncode} (log {child.log_path})"
                )

    def inject(self, fault: Fault) -> float:
        """Inject `fault` now; returns the timeline time of the injection."""
        assert self.cluster is not None and self.job is not None
        what = fault.inject(self.cluster, self.job)
        self.faults.append(fault)
        target = fault.target_node(self.job)
        return self.timeline.add(
            "fault", f"{fault.name}: {what}", node=target.name if target else None
        ).at_seconds

    def watch_fault(self, fault: Fault, injected_at: float, timeout_seconds: float) -> Detection:
        """Watch until the target is faulty, cordoned and tainted (or `timeout_seconds` pass) and report."""
        assert self.observer is not None and self.job is not None
        target_node = fault.target_node(self.job) if fault.blames_a_node else None
        target = target_node.name if target_node else None
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.observe(POLL_INTERVAL_SECONDS)
            if target is not None and self._acted_on(target):
                break
        return self.detection(fault, injected_at)

    def watch_alerts(self, timeout_seconds: float) -> None:
        """With Prometheus running, keep watching until an alert starts firing (rules evaluate every 2 s)."""
        if self.prometheus is None:
            return
        fired_before = sum(1 for e in self.timeline.events if e.kind == "alert")
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            self.observe(POLL_INTERVAL_SECONDS)
            if sum(1 for e in self.timeline.events if e.kind == "alert") > fired_before:
                return

    def _acted_on(self, node: str) -> bool:
        assert self.observer is not None
        view = self.observer.views[node]
        return view.verdict == "faulty" and view.cordoned and view.taint is not None

    def detection(self, fault: Fault, injected_at: float) -> Detection:
        """Summarise the timeline since `injected_at` for `fault`."""
        assert self.observer is not None and self.job is not None
        target_node = fault.target_node(self.job) if fault.blames_a_node else None
        target = target_node.name if target_node else None

        def since(kind: str, node: str | None) -> float | None:
            event = next(
                (
                    e
                    for e in self.timeline.events
                    if e.kind == kind and e.node == node and e.at_seconds >= injected_at
                ),
                None,
            )
            return round(event.at_seconds - injected_at, 1) if event else None

        innocent = sorted(n for n in self.observer.ever_blamed if n != target)
        suspects = sorted(n for n in self.observer.ever_suspect if n != target)
        view = self.observer.views.get(target) if target else None
        return Detection(
            fault=fault.name,
            target=target,
            injected_at_seconds=injected_at,
            first_suspect_seconds=since("suspect", target) if target else None,
            faulty_seconds=since("faulty", target) if target else None,
            cordoned_seconds=since("cordoned", target) if target else None,
            tainted_seconds=since("tainted", target) if target else None,
            taint=view.taint if view else None,
            reason=view.reason if view else "",
            innocent_blamed=tuple(innocent),
            innocent_suspects=tuple(suspects),
            budget_seconds=fault.budget_seconds,
        )

    # --- teardown -----------------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Undo the faults, stop every process, remove every namespace and link; safe to call twice."""
        for fault in self.faults:
            if self.cluster is not None and self.job is not None:
                try:
                    fault.clear(self.cluster, self.job)
                except OSError as error:
                    log.debug("clearing %s: %s", fault.name, error)
        self.faults.clear()
        self.processes.stop_all()
        leftovers = self.cluster.teardown() if self.cluster is not None else []
        for leftover in leftovers:
            self.timeline.say(f"warning: could not remove {leftover}")
        if self.options.keep_work_dir:
            self.timeline.say(f"logs kept in {self.work_dir}")
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)
