"""NIC byte counters from sysfs (`<root>/<iface>/statistics/{rx,tx}_bytes`), cheap enough to read at 10+ Hz.

Files stay open and are re-read with pread at offset 0, which makes sysfs produce a fresh value (~1 us per read
instead of ~10 us for open+read+close). The sampler reads the descriptors itself (`ByteCounters.fds`) and parses
the bytes later (`counts`): its 20 Hz tick stays a few system calls. Where the C sampler was built
(`agent/_nicsample.c`), `native_sampler` reads them on a thread without Python instead.
"""

from __future__ import annotations

import fnmatch
import math
import os
from typing import Protocol

from agent.backends.sysfs import OpenFiles, _nicsample  # the optional C module, imported (or None) there


def interfaces(root: str, include: list[str], exclude: list[str]) -> list[str]:
    """Interfaces under `root` that have byte counters: `include` (fnmatch) if given, minus `exclude`."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    chosen = []
    for name in names:
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if os.path.exists(os.path.join(root, name, "statistics", "rx_bytes")):
            chosen.append(name)
    return chosen


COUNTER_BYTES = 32  # a read of rx_bytes or tx_bytes: a decimal u64 and a newline


class ByteCounters:
    """The rx_bytes and tx_bytes files of one interface, held open (`agent.backends.sysfs.OpenFiles`): `fds` is
    (rx, tx), for the sampler to read itself."""

    def __init__(self, root: str, name: str) -> None:
        base = os.path.join(root, name, "statistics")
        self.name = name
        self._files = OpenFiles()
        try:
            self.fds = tuple(self._files.descriptor(os.path.join(base, f)) for f in ("rx_bytes", "tx_bytes"))
            self.read()  # an interface without readable counters raises here, not at the first tick
        except (OSError, ValueError):
            self._files.close()
            raise

    def read(self) -> int:
        """rx + tx bytes since the interface came up; raises OSError when the interface is gone."""
        return sum(int(os.pread(fd, COUNTER_BYTES, 0)) for fd in self.fds)

    def close(self) -> None:
        self._files.close()


def read_all(fds: tuple[int, ...]) -> list[bytes]:
    """One pread of each descriptor (b"" for one that fails): a sampling tick's system calls, nothing else."""
    try:
        return [os.pread(fd, COUNTER_BYTES, 0) for fd in fds]
    except OSError:
        return [_read_or_empty(fd) for fd in fds]


def _read_or_empty(fd: int) -> bytes:
    try:
        return os.pread(fd, COUNTER_BYTES, 0)
    except OSError:
        return b""


def counts(raw: list[bytes]) -> list[float]:
    """rx+tx bytes per interface from `read_all` of (rx, tx) pairs; NaN where a read failed or was not a number."""
    try:
        return [float(raw[i]) + float(raw[i + 1]) for i in range(0, len(raw), 2)]
    except ValueError:
        return [_pair(raw[i], raw[i + 1]) for i in range(0, len(raw), 2)]


def _pair(rx: bytes, tx: bytes) -> float:
    try:
        return float(rx) + float(tx)
    except ValueError:
        return math.nan


def native_sampler(capacity: int) -> NativeSampler | None:
    """The C sampler holding up to `capacity` reads (see agent/_nicsample.c), None where it was not built."""
    return None if _nicsample is None else _nicsample.Sampler(capacity)


class NativeSampler(Protocol):
    def set_fds(self, fds: tuple[int, ...], /) -> None: ...
    def set_interval(self, seconds: float, /) -> None: ...
    def start(self) -> None: ...
    def take(self) -> tuple[bytes, bytes, bytes, int]: ...
    def stop(self) -> None: ...
