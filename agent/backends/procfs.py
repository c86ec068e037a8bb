"""The only code that reads host facts from procfs: TCP segment counters (`<pid>/net/snmp`) and the boot id.

The root is injectable so tests read fixture trees; a file that is missing or malformed raises ProcfsError.
TCP counters are per network namespace, so the caller says whose namespace to read: `1` (the node's init:
right on the host and, through the host's /proc, in an agent pod with or without hostNetwork) or `self` (the
agent's own, for an agent started inside another network namespace).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

READ_BYTES = 1 << 16  # more than /proc/<pid>/net/snmp holds (~2 kB)


class ProcfsError(Exception):
    """A procfs file could not be read or parsed; `source` is its path below the root."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class TcpSegments:
    """Cumulative TCP segment counters of the host's network namespace (`/proc/<pid>/net/snmp`, Tcp: line)."""

    out_segments: int  # OutSegs: segments sent, retransmissions excluded
    retransmitted_segments: int  # RetransSegs


class Procfs:
    def __init__(self, root: Path, network_namespace_pid: str = "1") -> None:
        self.root = root
        self._snmp = f"{network_namespace_pid}/net/snmp"
        self._boot_id: str | None = None  # read once: a reboot restarts the agent

    def tcp_segments(self) -> TcpSegments:
        fields = self._snmp_section(self._snmp, "Tcp")
        try:
            return TcpSegments(out_segments=int(fields["OutSegs"]), retransmitted_segments=int(fields["RetransSegs"]))
        except (KeyError, ValueError) as error:
            raise ProcfsError(self._snmp, f"no usable Tcp OutSegs/RetransSegs ({error})") from None

    def boot_id(self) -> str:
        if self._boot_id is None:
            self._boot_id = self._read("sys/kernel/random/boot_id").strip()
        return self._boot_id

    def _snmp_section(self, source: str, section: str) -> dict[str, str]:
        """The `Name: key key ...` / `Name: value value ...` pair of lines of one section, as a dict."""
        rows = [line.split()[1:] for line in self._read(source).splitlines() if line.startswith(section + ":")]
        if len(rows) != 2 or len(rows[0]) != len(rows[1]):
            raise ProcfsError(source, f"no well-formed {section}: header and value lines")
        return dict(zip(rows[0], rows[1], strict=True))

    def _read(self, source: str) -> str:
        try:  # os.open and one read: a scrape's only procfs read, without pathlib and a text file object
            fd = os.open(os.path.join(self.root, source), os.O_RDONLY | os.O_CLOEXEC)
            try:
                return os.read(fd, READ_BYTES).decode("ascii", errors="replace")
            finally:
                os.close(fd)
        except OSError as error:
            raise ProcfsError(source, error.strerror or str(error)) from None
