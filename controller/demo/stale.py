"""Leftovers of demo runs that were killed outright (SIGKILL, a lost terminal): every run as root records its
owner pid under /run; a later run removes the namespaces, links, processes and files of runs whose owner died.
Runs whose owner is alive are never touched, so concurrent demos and test runs are safe."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

OWNERS_DIR = Path("/run/lockstep-demo")  # tmpfs: emptied at boot, when every namespace is gone anyway
NETNS_ETC = Path("/etc/netns")


def record_owner(prefix: str, work_dir: Path) -> Path:
    """Note that this process owns everything named `prefix`-*; returns the record to delete at teardown."""
    OWNERS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    record = OWNERS_DIR / f"{prefix}.json"
    record.write_text(json.dumps({"pid": os.getpid(), "work_dir": str(work_dir)}))
    return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lines(argv: list[str]) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (the dead run's work directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def sweep_stale_runs() -> list[str]:
    """Remove what dead demo runs left behind; returns the prefixes of the runs cleaned."""
    if not OWNERS_DIR.is_dir():
        return []
    cleaned = []
    for record in sorted(OWNERS_DIR.glob("*.json")):
        try:
            owner = json.loads(record.read_text())
            pid, work_dir = int(owner["pid"]), str(owner["work_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable demo owner record %s", record)
            continue
        if _alive(pid) or not Path(work_dir).name.startswith("lsdemo-"):
            continue
        prefix = record.stem
        namespaces = [
            line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.startswith(f"{prefix}-")
        ]
        victims = {
            int(p) for ns in namespaces for p in _lines(["ip", "netns", "pids", ns]) if p.strip().isdigit()
        }
        victims.update(_processes_mentioning(work_dir + os.sep))
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for line in _lines(["ip", "-o", "link", "show"]):
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"{prefix}-"):
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        for etc in NETNS_ETC.glob(f"{prefix}-*") if NETNS_ETC.is_dir() else []:
            shutil.rmtree(etc, ignore_errors=True)
        shutil.rmtree(work_dir, ignore_errors=True)
        record.unlink(missing_ok=True)
        cleaned.append(prefix)
    return cleaned
