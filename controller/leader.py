"""Leader election on a coordination.k8s.io Lease: of the controller replicas, only the holder acts.

Follows client-go's leaderelection: a lease is expired when its record has not changed for leaseDurationSeconds
as observed on OUR monotonic clock (no trust in other clocks); the holder renews every retry period and stops
acting as soon as a renewal is refused or `renew_deadline_seconds` pass without a successful one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from controller.kube import Conflict, Kube, KubeError, rfc3339
from controller.settings import LeaderSettings

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        settings: LeaderSettings,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.identity = settings.identity or f"{socket.gethostname()}-{os.getpid()}"
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._leading = False
        self._renewed_at = -float("inf")  # monotonic s of the start of our last successful renewal
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as we last saw it
        self._observed_at = 0.0
        self.transitions = 0

    def is_leader(self) -> bool:
        """True only while our last renewal is younger than the renew deadline."""
        return self._leading and self._monotonic() - self._renewed_at < self.settings.renew_deadline_seconds

    def step(self) -> bool:
        """One round: acquire the lease if free or expired, renew it if ours. Returns is_leader()."""
        started = self._monotonic()
        try:
            lease = self.kube.read_lease(self.settings.lease_name)
            if self._try_write(lease, started):
                if not self._leading:
                    log.info(
                        "became the leader (lease %s, identity %s)", self.settings.lease_name, self.identity
                    )
                    self.transitions += 1
                self._leading, self._renewed_at = True, started
            elif self._leading:
                log.warning(
                    "lost the lease %s: another replica holds it; stopping actions", self.settings.lease_name
                )
                self._leading = False
        except Conflict:
            if self._leading:
                log.warning("lost the lease %s in a write race; stopping actions", self.settings.lease_name)
            self._leading = False
        except KubeError as error:
            log.warning("could not renew the lease %s: %s", self.settings.lease_name, error)
        return self.is_leader()

    def _try_write(self, lease: dict[str, Any] | None, started: float) -> bool:
        now = rfc3339(self._wall_clock())
        duration = max(1, round(self.settings.lease_duration_seconds))
        if lease is None:
            first: dict[str, Any] = {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": duration,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            }
            self.kube.write_lease(self.settings.lease_name, first, None)
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, started
            held_for = float(spec.get("leaseDurationSeconds") or self.settings.lease_duration_seconds)
            if started - self._observed_at < held_for:
                return False
            log.info("lease %s held by %s expired; taking it over", self.settings.lease_name, holder)
        new_spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "acquireTime": spec.get("acquireTime") if holder == self.identity else now,
            "renewTime": now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0)
            + (0 if holder == self.identity else 1),
        }
        self.kube.write_lease(self.settings.lease_name, new_spec, lease["metadata"]["resourceVersion"])
        return True

    def release(self) -> None:
        """On shutdown: give the lease up so another replica takes over at once instead of after it expires."""
        if not self.is_leader():
            return
        self._leading = False
        try:
            lease = self.kube.read_lease(self.settings.lease_name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": None, "leaseDurationSeconds": 1}
                self.kube.write_lease(self.settings.lease_name, spec, lease["metadata"]["resourceVersion"])
                log.info("released the lease %s", self.settings.lease_name)
        except KubeError as error:
            log.warning("could not release the lease %s: %s", self.settings.lease_name, error)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew every retry period until `stop` is set, then release."""
        while not stop.is_set():
            await asyncio.to_thread(self.step)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.retry_period_seconds)
        await asyncio.to_thread(self.release)
