"""The only code that reads network state from sysfs: `class/net/*` and `class/infiniband/*/ports/*`.

The network collector (and anything sampling NIC counters) turns these plain readings into metrics and
evidence. The root is injectable so tests read fixture trees. Files that cannot be read or parsed become
`ReadProblem`s next to the reading; an interface or port that vanished mid-read is simply absent.

Files (counters in `statistics/`, `counters/`, `hw_counters/`: ~600 on a node with 8 RDMA ports, and attributes
such as operstate, carrier_changes, state) stay open and are re-read with pread at offset 0, which makes sysfs
produce a fresh value: ~3 us per file instead of ~10 us for open+read+close. They belong to their device directory:
when it is re-created (driver reload, a new netdev of the same name; seen as a new inode) or a read fails, its files
are opened afresh. What cannot change while the directory exists is looked up once per directory: whether an
interface has a `device` link (physical), and the names in `counters/`, `hw_counters/` and an RDMA device's
`device/net/`, which are listed again every `LISTING_SECONDS`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

try:  # agent/_nicsample.c: reads a group of counter files in one call here, NIC byte counters on its own thread for
    # agent.backends.nic_bytes; built by setup.py where a compiler is at hand
    from agent import _nicsample  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _nicsample = None

# The /sys/class/net/<if>/statistics files the agent reads (all counters since the device appeared).
NET_STATISTICS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)

IFF_UP = 0x1  # `flags` bit: administratively up

# hw_counters files that are settings, not counters.
HW_COUNTER_SETTINGS = frozenset({"lifespan"})

LISTING_SECONDS = 60.0  # how long the names in a port's counters/ and hw_counters/ are taken as known
TEXT_BYTES = 256  # read of an attribute (operstate, rate, ...): more than any holds

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*Gb/sec")
_STATE = re.compile(r"^\s*(\d+)\s*:\s*(\S+)")


@dataclass(frozen=True)
class ReadProblem:
    """A sysfs file that could not be read or made sense of; `source` is its path below the sysfs root."""

    source: str
    reason: str


@dataclass
class InterfaceReading:
    """One `/sys/class/net/<name>` entry; None means the file was absent or not applicable (e.g. speed of a down link)."""

    name: str
    physical: bool  # backed by a device (has a `device` link), not a veth, bridge or loopback
    arp_type: int | None  # ARPHRD_*: 1 Ethernet, 32 InfiniBand (IPoIB), 772 loopback
    operstate: str
    admin_up: bool | None  # IFF_UP in `flags`: False when someone set the interface down on purpose
    mtu_bytes: int | None
    speed_bits_per_second: float | None
    carrier_changes: int | None
    statistics: dict[str, int] = field(default_factory=dict)


@dataclass
class RdmaPortReading:
    """One `/sys/class/infiniband/<device>/ports/<port>` entry."""

    device: str
    port: int
    link_layer: str  # "InfiniBand" or "Ethernet" (RoCE)
    state: int | None  # 4 = ACTIVE
    state_name: str
    phys_state: int | None  # 5 = LinkUp, 3 = Disabled (switched off on purpose)
    phys_state_name: str
    rate_bits_per_second: float | None
    netdevs: tuple[str, ...]
    counters: dict[str, int] = field(default_factory=dict)  # counters/, as sysfs gives them
    hw_counters: dict[str, int] = field(default_factory=dict)  # hw_counters/, vendor-specific

    @property
    def name(self) -> str:
        return f"{self.device}/{self.port}"


class SysfsNet:
    """Reads interfaces and RDMA ports below `root` (normally /sys)."""

    def __init__(self, root: Path) -> None:
        # plain strings: pathlib costs more than the reads themselves on a scrape of hundreds of files
        self.root = root
        self._root = str(root)
        self._net = f"{root}/class/net"
        self._ib = f"{root}/class/infiniband"
        self._devices: dict[str, _DeviceFiles] = {}  # device directory -> its open counter files
        # one reader at a time: a scrape and an evidence pull must not close a file the other is reading
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the counter files held open."""
        with self._lock:
            for files in self._devices.values():
                files.close()
            self._devices.clear()

    def _files(self, base: str) -> _DeviceFiles | None:
        """The open counter files of the device directory `base`; None if it is gone."""
        try:
            inode = os.stat(base).st_ino
        except OSError:
            self._devices.pop(base, _NO_FILES).close()
            return None
        files = self._devices.get(base)
        if files is None or files.inode != inode:
            if files is not None:
                files.close()
            files = self._devices[base] = _DeviceFiles(inode)
        return files

    def interfaces(self) -> list[str]:
        return _list(self._net)

    def rdma_ports(self) -> list[tuple[str, int]]:
        ports = []
        for device in _list(self._ib):
            for port in _list(f"{self._ib}/{device}/ports"):
                if port.isdigit():
                    ports.append((device, int(port)))
        return ports

    def read_interface(self, name: str, problems: list[ReadProblem]) -> InterfaceReading | None:
        """Read one interface; None if it vanished. Appends unreadable files to `problems`."""
        with self._lock:
            return self._read_interface(name, problems)

    def _read_interface(self, name: str, problems: list[ReadProblem]) -> InterfaceReading | None:
        base = f"{self._net}/{name}"
        files = self._files(base)
        if files is None:
            return None
        found: list[ReadProblem] = []
        reader = _Reader(self._root, found, files)
        speed_mbps = reader.integer(f"{base}/speed", missing_ok=True, einval_ok=True)
        flags = reader.integer(f"{base}/flags", missing_ok=True)
        if files.physical is None:
            files.physical = os.path.exists(f"{base}/device")
        reading = InterfaceReading(
            name=name,
            physical=files.physical,
            arp_type=reader.integer(f"{base}/type"),
            operstate=reader.text(f"{base}/operstate") or "unknown",
            admin_up=None if flags is None else bool(flags & IFF_UP),
            mtu_bytes=reader.integer(f"{base}/mtu"),
            speed_bits_per_second=speed_mbps * 1e6 if speed_mbps is not None and speed_mbps > 0 else None,
            carrier_changes=reader.integer(f"{base}/carrier_changes", missing_ok=True, einval_ok=True),
            statistics=reader.counters(files.paths(f"{base}/statistics", NET_STATISTICS)),
        )
        if not os.path.exists(base):
            return None
        problems.extend(found)
        return reading

    def read_rdma_port(self, device: str, port: int, problems: list[ReadProblem]) -> RdmaPortReading | None:
        """Read one RDMA port; None if it vanished. Appends unreadable files to `problems`."""
        with self._lock:
            return self._read_rdma_port(device, port, problems)

    def _read_rdma_port(self, device: str, port: int, problems: list[ReadProblem]) -> RdmaPortReading | None:
        base = f"{self._ib}/{device}/ports/{port}"
        files = self._files(base)
        if files is None:
            return None
        found: list[ReadProblem] = []
        reader = _Reader(self._root, found, files)
        state, state_name = reader.numbered(f"{base}/state")
        phys_state, phys_state_name = reader.numbered(f"{base}/phys_state")
        reading = RdmaPortReading(
            device=device,
            port=port,
            link_layer=reader.text(f"{base}/link_layer", missing_ok=True) or "InfiniBand",
            state=state,
            state_name=state_name,
            phys_state=phys_state,
            phys_state_name=phys_state_name,
            rate_bits_per_second=reader.rate(f"{base}/rate"),
            netdevs=tuple(name for name, _ in files.listing(f"{self._ib}/{device}/device/net")),
            counters=reader.counters(files.listing(f"{base}/counters")),
            hw_counters=reader.counters(files.listing(f"{base}/hw_counters", HW_COUNTER_SETTINGS)),
        )
        if not os.path.exists(base):
            return None
        problems.extend(found)
        return reading


class _Reader:
    """Reads small sysfs files of one device directory through its open files, turning every failure into a
    ReadProblem (or None where absence is normal)."""

    def __init__(self, root: str, problems: list[ReadProblem], files: OpenFiles) -> None:
        self._root = root
        self._problems = problems
        self._files = files

    def text(self, path: str, *, missing_ok: bool = False, einval_ok: bool = False) -> str | None:
        try:
            return self._files.read(path, TEXT_BYTES).decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            if not missing_ok:
                self._problem(path, "missing")
        except OSError as error:
            # EINVAL is how drivers say "not available now" (speed of a link that is down, some counters)
            if not (einval_ok and error.errno == errno.EINVAL):
                self._unreadable(path, error)
        return None

    def integer(self, path: str, *, missing_ok: bool = False, einval_ok: bool = False) -> int | None:
        text = self.text(path, missing_ok=missing_ok, einval_ok=einval_ok)
        if text is None:
            return None
        try:
            return int(text, 0) if text.startswith("0x") else int(text)
        except ValueError:
            self._problem(path, f"not an integer: {text[:40]!r}")
            return None

    def counters(self, files: list[tuple[str, str]]) -> dict[str, int]:
        """The decimal counters of (name, path) `files`, by name; unreadable ones left out (and noted)."""
        names, read = self._files.read_counts(files)
        if read is not None and None not in read:
            return dict(zip(names, read, strict=True))  # type: ignore[arg-type]  # no None in it
        names, contents, failure = self._files.read_group(files)  # say what is wrong
        try:
            counts = dict(zip(names, map(int, contents), strict=False))  # contents stop at a failed read
        except ValueError:  # a file that is not a number: find which
            counts = {}
            for (name, path), data in zip(files, contents, strict=False):
                self._parse_counter(counts, name, path, data)
        rest = len(contents)
        if failure is not None:
            self._unreadable(files[rest][1], failure)
            rest += 1
        for name, path in files[rest:]:  # after a failed read, or all of them when one could not be opened
            try:
                data = self._files.read(path)
            except OSError as error:
                self._unreadable(path, error)
                continue
            self._parse_counter(counts, name, path, data)
        return counts

    def _parse_counter(self, counts: dict[str, int], name: str, path: str, data: bytes) -> None:
        try:
            counts[name] = int(data)
        except ValueError:
            self._problem(path, f"not an integer: {data[:40].decode('ascii', errors='replace').strip()!r}")

    def numbered(self, path: str) -> tuple[int | None, str]:
        """'4: ACTIVE' as (4, 'ACTIVE')."""
        text = self.text(path)
        if text is None:
            return None, ""
        match = _STATE.match(text)
        if match is None:
            self._problem(path, f"not 'N: NAME': {text[:40]!r}")
            return None, ""
        return int(match.group(1)), match.group(2)

    def rate(self, path: str) -> float | None:
        """'200 Gb/sec (4X HDR)' as 200e9 bits/s."""
        text = self.text(path, einval_ok=True)
        if text is None:
            return None
        match = _RATE.match(text)
        if match is None:
            self._problem(path, f"not 'N Gb/sec': {text[:40]!r}")
            return None
        return float(match.group(1)) * 1e9

    def _unreadable(self, path: str, error: OSError) -> None:
        if isinstance(error, FileNotFoundError):
            self._problem(path, "missing")
        else:
            self._problem(path, os.strerror(error.errno) if error.errno else str(error))

    def _problem(self, path: str, reason: str) -> None:
        self._problems.append(ReadProblem(source=os.path.relpath(path, self._root), reason=reason))


class OpenFiles:
    """sysfs files held open and re-read with pread at offset 0 (a fresh value each time, without open and close);
    a failed read closes the file, so the next read opens it again."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}
        # per list of (name, path) read together: the list, its names and the descriptors of its paths
        self._groups: dict[int, tuple[list[tuple[str, str]], tuple[str, ...], array[int]]] = {}

    def descriptor(self, path: str) -> int:
        """The open descriptor of `path` (opened now if it is not), for a caller that preads it itself."""
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return fd

    def read(self, path: str, size: int = 64) -> bytes:
        """The file's content now (up to `size` bytes; 64 hold a counter)."""
        fd = self.descriptor(path)
        try:
            return os.pread(fd, size, 0)
        except OSError:
            self._close(path)
            raise

    def read_group(
        self, files: list[tuple[str, str]], size: int = 64
    ) -> tuple[tuple[str, ...], list[bytes], OSError | None]:
        """The names of (name, path) `files` and their contents, read one after another with nothing else per file
        (a scrape reads ~600). A read that fails ends it: that file is closed (the next read opens it again) and
        its error returned after the contents read before it. No contents and no error: a file could not be opened
        (read them one by one). Pass the same list object each time (`_DeviceFiles.listing` and `paths` return
        one) for its descriptors to be reused."""
        group = self._group(files)
        if group is None:
            return tuple(name for name, _ in files), [], None
        contents: list[bytes] = []
        append, pread = contents.append, os.pread
        try:
            for fd in group[2]:
                append(pread(fd, size, 0))
        except OSError as error:
            self._close(files[len(contents)][1])
            return group[1], contents, error
        return group[1], contents, None

    def read_counts(self, files: list[tuple[str, str]]) -> tuple[tuple[str, ...], list[int | None] | None]:
        """The names of (name, path) `files` and their decimal counts, read in one call of the C reader (None for a
        file whose read failed or that holds no plain count); no counts where the C reader is not built or a file
        could not be opened (read_group then reads them one by one and says why)."""
        group = self._group(files) if _nicsample is not None else None
        if group is None:
            return (), None
        return group[1], _nicsample.read_counters(group[2])

    def _group(
        self, files: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], tuple[str, ...], array[int]] | None:
        """The group of `files` (opened now if need be); None if a file could not be opened."""
        group = self._groups.get(id(files))
        if group is None or group[0] is not files:
            try:
                descriptors = array("i", [self.descriptor(path) for _, path in files])
            except OSError:
                return None
            group = self._groups[id(files)] = (files, tuple(name for name, _ in files), descriptors)
        return group

    def _close(self, path: str) -> None:
        self._groups.clear()  # they may hold its descriptor, whose number the next open can reuse
        with contextlib.suppress(OSError):
            os.close(self._fds.pop(path))

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._groups.clear()


class _DeviceFiles(OpenFiles):
    """The open files of one device directory (identified by its inode), what it lists, and whether it is physical."""

    def __init__(self, inode: int) -> None:
        super().__init__()
        self.inode = inode
        self.physical: bool | None = None  # an interface with a `device` link; None until looked at
        self._listings: dict[str, tuple[float, list[tuple[str, str]]]] = {}
        self._paths: dict[str, list[tuple[str, str]]] = {}

    def listing(self, directory: str, leave_out: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
        """(name, path) of each entry of `directory` but `leave_out`, listed again after LISTING_SECONDS."""
        now = time.monotonic()
        listed = self._listings.get(directory)
        if listed is None or now - listed[0] > LISTING_SECONDS:
            names = [name for name in _list(directory) if name not in leave_out]
            if listed is not None:
                self._groups.pop(id(listed[1]), None)
            listed = self._listings[directory] = (now, [(name, f"{directory}/{name}") for name in names])
        return listed[1]

    def paths(self, directory: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """(name, path) of the given files of `directory`."""
        paths = self._paths.get(directory)
        if paths is None:
            paths = self._paths[directory] = [(name, f"{directory}/{name}") for name in names]
        return paths


_NO_FILES = _DeviceFiles(0)


def _list(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:  # absent (no RDMA devices) or unreadable: nothing to list
        return []
