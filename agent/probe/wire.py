"""The probe's wire format, VERSION 2: Unix datagrams from a training process to the node's agent, each one
header with the sender's identity followed by short fixed-size records.

Both sides import this module: the probe packs (`Packer`, agent/probe/transport.py), the agent's collective
collector unpacks (`decode`, agent/collectors/collective.py). A datagram, little-endian:

    header   HEADER_BYTES (224): magic b"LKSP", version, G (process-group names), N (records), rank, world size,
             local rank (-1 = unknown), the sender's count of records lost so far, job, pod, namespace (UTF-8,
             NUL-padded; longer texts are cut at a character boundary)
    groups   G x GROUP_BYTES (32): the process-group names the records index into ("" = the default group)
    records  N x RECORD_BYTES (40): kind, op, group index, seq, bytes, issued_at, completed_at

One probe process sends every datagram with one identity, so the agent checks it once per datagram and reads the
records with one np.frombuffer. A datagram without records is a heartbeat: the process is alive. Magic and
version sit where VERSION 1 had them (whose 284-byte records each repeated the identity), so an older probe's
datagram is counted as bad_version, never misread. Changing a field means a new VERSION.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from agent.probe.identity import Identity

MAGIC = b"LKSP"
VERSION = 2


class Kind(IntEnum):
    """What a record reports."""

    ISSUE = 1  # a collective was issued and has not completed yet (sent only when it stays pending)
    COMPLETE = 2  # a collective completed: carries issue and completion times
    # 3 was VERSION 1's heartbeat record: in VERSION 2 every datagram's header says the process is alive


class Op(IntEnum):
    """Collective operation; `name` is what evidence and metrics show."""

    unknown = 0
    all_reduce = 1
    broadcast = 2
    all_gather = 3
    reduce_scatter = 4
    reduce = 5
    barrier = 6
    all_to_all = 7
    gather = 8
    scatter = 9
    send = 10
    recv = 11


OP_CLASS: dict[Op, str] = {
    # coarse classes for metric labels: ops that move data the same way share one
    Op.unknown: "other",
    Op.all_reduce: "all_reduce",
    Op.broadcast: "broadcast",
    Op.all_gather: "all_gather",
    Op.reduce_scatter: "reduce_scatter",
    Op.reduce: "reduce",
    Op.barrier: "barrier",
    Op.all_to_all: "all_to_all",
    Op.gather: "gather",
    Op.scatter: "scatter",
    Op.send: "p2p",
    Op.recv: "p2p",
}


JOB_BYTES = 64
POD_BYTES = 64
NAMESPACE_BYTES = 64
GROUP_BYTES = 32

# magic, version, pad, G, N, pad | rank, world_size, local_rank (-1 = unknown) | dropped_total | job, pod, namespace
HEADER = struct.Struct(f"<4sBxHH2x iii Q {JOB_BYTES}s{POD_BYTES}s{NAMESPACE_BYTES}s")
HEADER_BYTES = HEADER.size
# kind, op, group index, pad | seq, bytes | issued_at, completed_at (Unix s; 0 = not completed or not measurable)
RECORD = struct.Struct("<BBH4x QQ dd")
RECORD_BYTES = RECORD.size
# The same record as a numpy structured dtype: a datagram's records are read with one np.frombuffer. The padding is
# a field so that numpy keeps the layout through concatenation.
RECORD_DTYPE = np.dtype([
    ("kind", "u1"), ("op", "u1"), ("group", "<u2"), ("pad", "V4"), ("seq", "<u8"), ("bytes", "<u8"),
    ("issued_at", "<f8"), ("completed_at", "<f8"),
])  # fmt: skip
assert RECORD_DTYPE.itemsize == RECORD_BYTES
assert HEADER_BYTES % 8 == 0 and GROUP_BYTES % 8 == 0, "records start 8-byte aligned"
# 224 + 16 * 32 + 1024 * 40 B = 41,696 B at most: under the agent's 64 KiB receive buffer and a default socket send
# buffer. Few large datagrams, not many small ones: each datagram wakes the agent's receive thread.
MAX_RECORDS_PER_DATAGRAM = 1024
MAX_GROUPS_PER_DATAGRAM = 16  # a flush touching more process groups than this sends more datagrams


class Record(NamedTuple):
    """One decoded record; the sender's identity is its datagram's. Times are Unix seconds on the sender's clock
    (the agent's node)."""

    kind: Kind
    op: Op
    group: str
    seq: int
    bytes: int
    issued_at: float
    completed_at: float | None


def encode_text(text: str, size: int) -> bytes:
    """UTF-8 `text` cut to at most `size` bytes without splitting a character (struct pads with NULs)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode("utf-8")


# What the probe's sender packs: kind, the recorder's token (group, seq, op, bytes, issued_at: recorder.py Token) and
# completed_at (0.0 = not completed or not measurable).
Row = tuple[int, tuple[str, int, int, int, float], float]


class Packer:
    """Packs one process's records into datagrams: its identity once, at construction; per datagram a header with
    the drop counter and the table of the process groups its records name."""

    def __init__(self, identity: Identity) -> None:
        self._identity = (
            identity.rank, identity.world_size, -1 if identity.local_rank is None else identity.local_rank,
        )  # fmt: skip
        self._texts = (
            encode_text(identity.job, JOB_BYTES),
            encode_text(identity.pod, POD_BYTES),
            encode_text(identity.namespace, NAMESPACE_BYTES),
        )
        self._group_names: dict[str, bytes] = {}  # group -> its table entry, padded

    def pack(self, rows: Sequence[Row], dropped_total: int) -> list[tuple[bytes, int]]:
        """`rows` as datagrams of at most MAX_RECORDS_PER_DATAGRAM records and MAX_GROUPS_PER_DATAGRAM groups each,
        with their record counts; no rows make one heartbeat datagram."""
        datagrams: list[tuple[bytes, int]] = []
        table: dict[bytes, int] = {}  # this datagram's groups: entry -> index
        body: list[bytes] = []
        pack, names = RECORD.pack, self._group_names
        for kind, (group, seq, op, nbytes, issued_at), completed_at in rows:
            name = names.get(group)
            if name is None:
                name = names[group] = encode_text(group, GROUP_BYTES).ljust(GROUP_BYTES, b"\0")
                if len(names) > 4096:  # a process that makes process groups without end: bound the cache
                    names.clear()
            index = table.get(name)
            if index is None:
                if len(table) == MAX_GROUPS_PER_DATAGRAM:
                    datagrams.append(self._datagram(table, body, dropped_total))
                    table, body = {}, []
                index = table[name] = len(table)
            body.append(pack(kind, op, index, seq, nbytes, issued_at, completed_at))
            if len(body) == MAX_RECORDS_PER_DATAGRAM:
                datagrams.append(self._datagram(table, body, dropped_total))
                table, body = {}, []
        if body or not datagrams:
            datagrams.append(self._datagram(table, body, dropped_total))
        return datagrams

    def _datagram(self, table: dict[bytes, int], body: list[bytes], dropped_total: int) -> tuple[bytes, int]:
        header = HEADER.pack(MAGIC, VERSION, len(table), len(body), *self._identity, dropped_total, *self._texts)
        return b"".join([header, *table, *body]), len(body)


def encode(identity: Identity, records: Sequence[Record], dropped_total: int = 0) -> bytes:
    """One datagram of `records` (tools and tests; the probe's sender packs its hot-path tuples with a Packer)."""
    if len(records) > MAX_RECORDS_PER_DATAGRAM or len({r.group for r in records}) > MAX_GROUPS_PER_DATAGRAM:
        raise ValueError("too many records or process groups for one datagram")
    rows = [(r.kind, (r.group, r.seq, r.op, r.bytes, r.issued_at), r.completed_at or 0.0) for r in records]
    [(datagram, _)] = Packer(identity).pack(rows, dropped_total)
    return datagram


class DecodeError(ValueError):
    """A datagram the agent must drop: `reason` is the label it is counted under, `records` how many records that
    counts (those its header announces, at least one; one when the header cannot be read)."""

    def __init__(self, reason: str, records: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.records = records


_TEXTS: dict[bytes, str] = {}  # raw field -> text: jobs, pods and groups repeat in every datagram


def text(raw: bytes) -> str:
    """A NUL-padded UTF-8 field as text (cached); UnicodeDecodeError when it is not UTF-8."""
    text = _TEXTS.get(raw)
    if text is None:
        text = raw.rstrip(b"\0").decode("utf-8", "strict")
        if len(_TEXTS) >= 4096:
            _TEXTS.clear()
        _TEXTS[raw] = text
    return text


# Whether a record's kind and op are known, indexed by its first two bytes read as one little-endian u2 (kind + 256 op).
_VALID_KIND_OP = np.zeros(1 << 16, dtype=bool)
_VALID_KIND_OP[[int(kind) + 256 * int(op) for kind in Kind for op in Op]] = True
_RAW_RECORD = np.dtype(f"V{RECORD_BYTES}")
_KIND_OP_VIEW = np.dtype({"names": ["kind_op"], "formats": ["<u2"], "offsets": [0], "itemsize": RECORD_BYTES})


class Decoded(NamedTuple):
    """One datagram, checked."""

    identity: Identity
    dropped_total: int  # records the sender lost so far (its queue full, or the agent away)
    groups: tuple[str | None, ...]  # process-group names by index ("default" for ""); None: not UTF-8
    records: np.ndarray  # the valid records, RECORD_DTYPE, datagram order
    malformed: int  # records dropped: kind, op or group index out of range, NaN or negative times, bad group name

    def by_group(self) -> list[tuple[str, np.ndarray]]:
        """The valid records split by process group, datagram order within each."""
        records, groups = self.records, self.groups
        if len(groups) == 1 and groups[0] is not None:  # the common datagram: one process group
            return [(groups[0], records)] if len(records) else []
        indexes = records["group"]
        return [
            (name, records[indexes == index])
            for index, name in enumerate(groups)
            if name is not None and (indexes == index).any()
        ]

    def as_records(self) -> list[Record]:
        """The valid records as Records (tools and tests)."""
        return [
            Record(Kind(kind), Op(op), self.groups[group] or "", seq, nbytes, issued_at, completed_at or None)
            for kind, op, group, _, seq, nbytes, issued_at, completed_at in self.records.tolist()
        ]


def decode(buf: bytes | bytearray | memoryview) -> Decoded:
    """Check and decode one datagram; raise DecodeError for one the agent must drop whole. Records out of range
    are left out and counted in `malformed`; the identity is checked once, here, for all of them."""
    if len(buf) < HEADER_BYTES:
        raise DecodeError("truncated")
    (magic, version, group_count, record_count, rank, world_size, local_rank, dropped_total, job, pod,
     namespace) = HEADER.unpack_from(buf)  # fmt: skip
    if magic != MAGIC:
        raise DecodeError("bad_magic")
    if version != VERSION:
        raise DecodeError("bad_version")
    announced = max(1, record_count)
    records_at = HEADER_BYTES + group_count * GROUP_BYTES
    expected = records_at + record_count * RECORD_BYTES
    if len(buf) != expected:
        raise DecodeError("truncated" if len(buf) < expected else "malformed", announced)
    try:
        identity = Identity(text(job), rank, world_size, local_rank if local_rank >= 0 else None, text(pod),
                            text(namespace))  # fmt: skip
    except UnicodeDecodeError:
        raise DecodeError("malformed", announced) from None
    if not identity.job or rank < 0 or world_size <= 0 or rank >= world_size:
        raise DecodeError("malformed", announced)
    groups = tuple(_group_name(bytes(buf[offset : offset + GROUP_BYTES]))
                   for offset in range(HEADER_BYTES, records_at, GROUP_BYTES))  # fmt: skip
    records = np.frombuffer(buf, dtype=RECORD_DTYPE, count=record_count, offset=records_at)
    bad = _bad_rows(records, groups)
    if bad is None:
        return Decoded(identity, dropped_total, groups, records, 0)
    return Decoded(identity, dropped_total, groups, records[~bad], int(bad.sum()))


def join(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Records of several datagrams as one array (numpy's concatenate of structured arrays compares their fields
    first, ~25 us; as raw 40-byte items it is a copy)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([part.view(_RAW_RECORD) for part in parts]).view(RECORD_DTYPE)


def _group_name(raw: bytes) -> str | None:
    try:
        return text(raw) or "default"
    except UnicodeDecodeError:
        return None


def _bad_rows(records: np.ndarray, groups: tuple[str | None, ...]) -> np.ndarray | None:
    """Mask of the records with a field out of range (unknown kind or op, a group index past the table or naming a
    group that is not UTF-8, NaN or negative times, a completion before its issue), or None when all are valid."""
    issued_at, completed_at, indexes = records["issued_at"], records["completed_at"], records["group"]
    ok = (
        _VALID_KIND_OP[records.view(_KIND_OP_VIEW)["kind_op"]]
        & (np.minimum(issued_at, completed_at) >= 0)  # False for NaN too (comparisons with NaN do not warn)
        & ~((completed_at > 0) & (completed_at < issued_at))
        & (indexes < len(groups))
    )  # fmt: skip
    for index, name in enumerate(groups):
        if name is None:
            ok &= indexes != index
    return None if ok.all() else ~ok
