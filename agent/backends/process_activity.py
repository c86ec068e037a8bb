"""How busy a training process is: its state and CPU time (`/proc/<pid>/stat`) and the bytes it wrote (`/proc/<pid>/io`);
and whether it is alive at all (the collective collector's trust: agent/collectors/trust.py).

The collective collector puts it in a rank's evidence, so that a rank that stops issuing collectives while it writes
a checkpoint reads as busy, not hung: a stopped (SIGSTOP) or blocked process writes nothing. The pids come from the
probe socket's credentials, so the agent needs the host pid namespace; `io` needs root or CAP_SYS_PTRACE.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICKS_PER_SECOND = float(os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True)
class ProcessActivity:
    state: str  # R running, S sleeping, D waiting for I/O, T stopped, t traced, Z zombie (proc(5))
    cpu_seconds: float  # user + system time of all its threads
    written_bytes: int | None  # wchar: bytes passed to write(2) and the like (files, pipes, sockets); None: unreadable


def read_activity(pid: int, proc_root: str = "/proc") -> ProcessActivity | None:
    """The process's activity now, or None when it is gone (or its stat cannot be read)."""
    base = os.path.join(proc_root, str(pid))
    fields = _stat_fields(base)
    try:
        state, cpu_ticks = fields[0].decode(), int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None
    return ProcessActivity(state, cpu_ticks / _TICKS_PER_SECOND, _written_bytes(base))


def alive(pid: int, proc_root: str = "/proc") -> bool:
    """Whether process `pid` still runs or is stopped (SIGSTOP); False when gone or a zombie."""
    fields = _stat_fields(os.path.join(proc_root, str(pid)))
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _stat_fields(base: str) -> list[bytes]:
    """The fields of `<base>/stat` after the command name (state first), [] if it cannot be read."""
    try:
        with open(os.path.join(base, "stat"), "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return []


def _written_bytes(base: str) -> int | None:
    try:
        with open(os.path.join(base, "io"), "rb") as io:
            for line in io:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return None
