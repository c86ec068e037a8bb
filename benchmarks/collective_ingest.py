"""Probe records, both ends: the probe's cost to pack a collective, the agent's to apply it (header check, trust,
window update), and one evidence and one metrics build at that load.

Packs the records of --ranks ranks at --rate collectives/s with the probe's own Packer, in datagrams of one
sender flush (0.5 s of collectives), feeds them to the collective collector's state and prints microseconds per
record and the share of one core that load costs (DESIGN.md budget for the whole agent: under 1% of a core at
that load). Peers, measured in the same run: `struct.unpack` of each record alone (the least a record-at-a-time
reader pays before any trust or window work), and for the probe, `struct.pack` of each record alone.

    python benchmarks/collective_ingest.py [--ranks 8] [--records 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.backends.probe_socket import Datagram  # noqa: E402
from agent.collectors.collective import CollectiveState  # noqa: E402
from agent.collectors.trust import Trust  # noqa: E402
from agent.probe import wire  # noqa: E402
from agent.probe.identity import Identity  # noqa: E402
from agent.settings import CollectiveSettings  # noqa: E402

FLUSH_SECONDS = 0.5  # the probe sender's flush interval (agent/probe/transport.py): one flush, one datagram
COMPLETE = int(wire.Kind.COMPLETE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=500.0, help="collectives per second per rank")
    parser.add_argument("--trials", type=int, default=5, help="repetitions; the best is reported")
    args = parser.parse_args()
    now = time.time()
    per_rank = args.records // args.ranks
    per_flush = max(1, int(args.rate * FLUSH_SECONDS))
    datagrams, pack_runs, struct_runs = [], [], []
    for rank in range(args.ranks):
        packer = wire.Packer(Identity("bench-job", rank, args.ranks, rank, f"pod-{rank}", "ml"))
        rows: list[wire.Row] = [
            (COMPLETE, ("default", seq, wire.Op.all_reduce, 4 << 20, now + seq / args.rate), now + seq / args.rate + 0.002)
            for seq in range(per_rank)
        ]
        flushes = [rows[start : start + per_flush] for start in range(0, per_rank, per_flush)]
        for flush in flushes:
            datagrams += [Datagram(data, os.getpid() + rank, 0, False) for data, _ in packer.pack(flush, 0)]
        for _ in range(args.trials if rank == 0 else 0):  # the probe's side, on one rank's records
            started = time.process_time()
            for flush in flushes:
                packer.pack(flush, 0)
            pack_runs.append((time.process_time() - started) / per_rank)
            started = time.process_time()
            for flush in flushes:  # the peer: each record's fields alone, no header, no group table
                [wire.RECORD.pack(kind, op, 0, seq, nbytes, issued_at, done) for kind, (_, seq, op, nbytes, issued_at), done in flush]
            struct_runs.append((time.process_time() - started) / per_rank)
    ingest_runs, decode_runs = [], []
    for _ in range(args.trials):  # interleaved trials, best of each: the machine may be shared
        state = CollectiveState(CollectiveSettings(trust="process"), Trust("process", lambda pid: None, lambda pid: True))
        started = time.process_time()
        for datagram in datagrams:
            state.receive(datagram)
        ingest_runs.append((time.process_time() - started) / state.accepted)
        started = time.process_time()
        for datagram in datagrams:  # the peer: struct-unpacking each record alone
            data = datagram.data
            first = wire.HEADER_BYTES + wire.HEADER.unpack_from(data)[2] * wire.GROUP_BYTES  # after the group table
            for offset in range(first, len(data), wire.RECORD_BYTES):
                wire.RECORD.unpack_from(data, offset)
        decode_runs.append((time.process_time() - started) / state.accepted)
    started = time.process_time()
    state.evidence()
    evidence = time.process_time() - started
    started = time.process_time()
    state.metrics()
    metrics = time.process_time() - started
    us_per_record = min(ingest_runs) * 1e6
    print(json.dumps({
        "benchmark": "collective_ingest", "records": state.accepted, "invalid": sum(state.invalid.values()),
        "datagrams": len(datagrams), "wire_version": wire.VERSION, "record_bytes": wire.RECORD_BYTES,
        "us_per_record": us_per_record,
        "us_per_record_median": statistics.median(ingest_runs) * 1e6,
        "core_share_at_load": us_per_record * 1e-6 * args.ranks * args.rate,
        "peer_per_record_unpack_us": min(decode_runs) * 1e6,
        "ratio_ingest_to_per_record_unpack": min(ingest_runs) / min(decode_runs),
        "probe_pack_us_per_record": min(pack_runs) * 1e6,
        "peer_probe_struct_pack_us_per_record": min(struct_runs) * 1e6,
        "ratio_pack_to_struct_pack": min(pack_runs) / min(struct_runs),
        "evidence_build_ms": evidence * 1e3, "metrics_build_ms": metrics * 1e3,
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
