"""The probe's wire format: fixed-size binary records, probe -> agent, in Unix datagrams.

Both sides import this module: the probe packs, the agent's collective collector unpacks. A datagram holds one
or more records back to back; every record carries the magic and version so a foreign or stale sender is
recognised per record. Changing a field means a new VERSION. The agent decodes and checks a whole datagram at
once (`decode_records`, numpy); `decode` serves tools and tests.
"""

from __future__ import annotations

import struct
from collections import Counter
from enum import IntEnum
from typing import NamedTuple

import numpy as np

MAGIC = b"LKSP"
VERSION = 1


class Kind(IntEnum):
    """What a record reports."""

    ISSUE = 1  # a collective was issued and has not completed yet (sent only when it stays pending)
    COMPLETE = 2  # a collective completed: carries issue and completion times
    HEARTBEAT = 3  # the process is alive; seq/op fields unused, carries the drop counter


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
GROUP_BYTES = 32
POD_BYTES = 64
NAMESPACE_BYTES = 64

# magic, version, kind, op, pad | rank, world_size, local_rank (-1 = unknown) | seq, bytes |
# issued_at, completed_at (Unix s; 0 = not completed or completion not measurable) | dropped_total, reserved | job, group, pod, namespace
RECORD = struct.Struct(f"<4sBBBx iii QQ dd II {JOB_BYTES}s{GROUP_BYTES}s{POD_BYTES}s{NAMESPACE_BYTES}s")
RECORD_BYTES = RECORD.size
# The same layout as a numpy structured dtype: a datagram is decoded with one np.frombuffer.
RECORD_DTYPE = np.dtype([
    ("magic", "S4"), ("version", "u1"), ("kind", "u1"), ("op", "u1"), ("pad", "u1"),
    ("rank", "<i4"), ("world_size", "<i4"), ("local_rank", "<i4"), ("seq", "<u8"), ("bytes", "<u8"),
    ("issued_at", "<f8"), ("completed_at", "<f8"), ("dropped_total", "<u4"), ("reserved", "<u4"),
    ("job", f"S{JOB_BYTES}"), ("group", f"S{GROUP_BYTES}"), ("pod", f"S{POD_BYTES}"), ("namespace", f"S{NAMESPACE_BYTES}"),
])  # fmt: skip
assert RECORD_DTYPE.itemsize == RECORD_BYTES
# 192 * 284 B = 54,528 B: under the agent's 64 KiB receive buffer and a default socket send buffer. Few large
# datagrams, not many small ones: each datagram wakes the agent's receive thread.
MAX_RECORDS_PER_DATAGRAM = 192


class Record(NamedTuple):
    """One decoded record. Times are Unix seconds on the sender's clock (same node as the agent)."""

    kind: Kind
    op: Op
    rank: int
    world_size: int
    local_rank: int | None
    seq: int
    bytes: int
    issued_at: float
    completed_at: float | None
    dropped_total: int
    job: str
    group: str
    pod: str
    namespace: str


def encode_text(text: str, size: int) -> bytes:
    """UTF-8 `text` cut to at most `size` bytes without splitting a character (struct pads with NULs)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode("utf-8")


class DecodeError(ValueError):
    """A record the agent must drop; `reason` is the label it is counted under."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_KINDS: dict[int, Kind] = {int(k): k for k in Kind}
_OPS: dict[int, Op] = {int(o): o for o in Op}
_COMPLETE = int(Kind.COMPLETE)
_TEXTS: dict[bytes, str] = {}  # raw field -> text: jobs, groups and pods repeat in every record


def text(raw: bytes) -> str:
    text = _TEXTS.get(raw)
    if text is None:
        text = raw.rstrip(b"\0").decode("utf-8", "strict")
        if len(_TEXTS) >= 4096:
            _TEXTS.clear()
        _TEXTS[raw] = text
    return text


def _bad_fields(kind: int, op: int, issued_at: float, completed_at: float) -> bool:
    """Whether a record's per-collective fields are out of range: unknown kind or op, NaN or negative times,
    a completion before its issue."""
    return (
        kind not in _KINDS or op not in _OPS or not (issued_at >= 0 and completed_at >= 0)
        or (kind == _COMPLETE and 0 < completed_at < issued_at)
    )  # fmt: skip


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> Record:
    """Decode the record at `offset`; raise DecodeError(reason) for anything that is not a valid record."""
    if len(buf) - offset < RECORD_BYTES:
        raise DecodeError("truncated")
    (magic, version, kind, op, rank, world_size, local_rank, seq, nbytes, issued_at, completed_at, dropped, _,
     job, group, pod, namespace) = RECORD.unpack_from(buf, offset)  # fmt: skip
    if magic != MAGIC:
        raise DecodeError("bad_magic")
    if version != VERSION:
        raise DecodeError("bad_version")
    if _bad_fields(kind, op, issued_at, completed_at):
        raise DecodeError("malformed")
    kind_, op_ = _KINDS[kind], _OPS[op]
    try:
        texts = (text(job), text(group), text(pod), text(namespace))
    except UnicodeDecodeError:
        raise DecodeError("malformed") from None
    if not texts[0] or rank < 0 or world_size <= 0 or rank >= world_size:
        raise DecodeError("malformed")
    return Record(
        kind_, op_, rank, world_size, local_rank if local_rank >= 0 else None, seq, nbytes, issued_at,
        completed_at if completed_at > 0 else None, dropped, texts[0], texts[1] or "default", texts[2], texts[3],
    )  # fmt: skip


def encode(record: Record) -> bytes:
    """Pack one record (the probe's sender packs its hot-path tuples directly; this serves tools and tests)."""
    return RECORD.pack(
        MAGIC, VERSION, record.kind, record.op, record.rank, record.world_size,
        -1 if record.local_rank is None else record.local_rank, record.seq, record.bytes, record.issued_at,
        record.completed_at or 0.0, record.dropped_total, 0, encode_text(record.job, JOB_BYTES),
        encode_text(record.group, GROUP_BYTES), encode_text(record.pod, POD_BYTES),
        encode_text(record.namespace, NAMESPACE_BYTES),
    )  # fmt: skip


# Bytes that one process writes the same into all its records: magic, version, rank, world size, local rank, job,
# pod and namespace. When they agree across a buffer, the first record's check covers them all. The process group
# may differ (a probe's heartbeat names none): its texts are checked once per distinct group.
_FIELD_OFFSETS: dict[str, int] = {name: spec[1] for name, spec in (RECORD_DTYPE.fields or {}).items()}
_SAME_IN_A_BATCH = np.zeros(RECORD_BYTES, dtype=bool)
_SAME_IN_A_BATCH[[*range(0, 5), *range(8, 20), *range(56, RECORD_BYTES)]] = True
_SAME_IN_A_BATCH[_FIELD_OFFSETS["group"] : _FIELD_OFFSETS["group"] + GROUP_BYTES] = False
# ... as a mask over a record's 4-byte words: records are compared a word at a time (XOR, AND), not byte by byte
_SAME_WORDS = np.where(_SAME_IN_A_BATCH, 0xFF, 0).astype(np.uint8).view("<u4")
assert RECORD_BYTES % 4 == 0
_VALID_KIND = np.zeros(256, dtype=bool)  # indexed by a record's u1 kind / op
_VALID_KIND[list(_KINDS)] = True
_VALID_OP = np.zeros(256, dtype=bool)
_VALID_OP[list(_OPS)] = True


def _bad_rows(records: np.ndarray) -> np.ndarray:
    """`_bad_fields` of every record at once: a boolean mask."""
    kind, issued_at, completed_at = records["kind"], records["issued_at"], records["completed_at"]
    with np.errstate(invalid="ignore"):
        return (
            ~_VALID_KIND[kind] | ~_VALID_OP[records["op"]]
            | ~((issued_at >= 0) & (completed_at >= 0))
            | ((kind == _COMPLETE) & (completed_at > 0) & (completed_at < issued_at))
        )  # fmt: skip


class Decoded(NamedTuple):
    records: np.ndarray  # the valid records, RECORD_DTYPE, datagram order
    reasons: Counter[str]  # dropped records by reason
    uniform: bool  # all records share job, rank and identity (what one probe process sends); groups may differ


def decode_records(buf: bytes | bytearray) -> Decoded:
    """Decode and check the whole records in `buf` at once (the agent's path; a torn tail is ignored).

    Same checks and reasons as `decode`. A buffer whose records share their identity bytes (one probe process's
    datagrams, joined) is checked with a few numpy operations; any other falls back to `decode` record by record.
    """
    reasons: Counter[str] = Counter()
    whole = len(buf) // RECORD_BYTES
    records = np.frombuffer(buf, dtype=RECORD_DTYPE, count=whole)
    if not whole:
        return Decoded(records, reasons, True)
    words = np.frombuffer(buf, dtype="<u4", count=whole * len(_SAME_WORDS)).reshape(whole, len(_SAME_WORDS))
    uniform = whole == 1 or not ((words[1:] ^ words[0]) & _SAME_WORDS).any()
    if uniform:
        try:
            decode(buf, 0)
        except DecodeError as exc:
            if exc.reason != "malformed":  # magic and version are the same in every record
                reasons[exc.reason] += whole
                return Decoded(records[:0], reasons, True)
            uniform = False  # maybe this record's own fields: check each
    if uniform:  # identity checked once; the fields that differ per record, in one pass over the rows
        bad = _bad_rows(records)
        groups = records["group"]
        others = groups != groups[0]
        if others.any():
            for group in set(groups[others].tolist()):
                try:
                    text(group)
                except UnicodeDecodeError:
                    bad |= groups == group
        if not bad.any():
            return Decoded(records, reasons, True)
        reasons["malformed"] += int(bad.sum())
        return Decoded(records[~bad], reasons, True)
    ok = np.ones(whole, dtype=bool)
    for index in range(whole):
        try:
            decode(buf, index * RECORD_BYTES)
        except DecodeError as exc:
            reasons[exc.reason] += 1
            ok[index] = False
    return Decoded(records[ok], reasons, False)

