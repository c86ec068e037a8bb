"""Agent-side cost of probe records: decode + trust + window update per record, and one evidence/metrics build.

Feeds the collective collector's state with datagrams as 8 ranks at 500 collectives/s would send them (full
datagrams of MAX_RECORDS_PER_DATAGRAM records) and prints microseconds per record and the share of one core
that load costs (DESIGN.md budget for the whole agent: under 1% of a core at that load). The peer, measured in
the same run: struct-decoding each record alone (`wire.decode`), which the record-at-a-time agent paid before
any trust or window work.

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
from agent.settings import CollectiveSettings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--rate", type=float, default=500.0, help="collectives per second per rank")
    parser.add_argument("--trials", type=int, default=5, help="repetitions; the best is reported")
    args = parser.parse_args()
    now = time.time()
    per_rank = args.records // args.ranks
    datagrams = []
    for rank in range(args.ranks):
        for start in range(0, per_rank, wire.MAX_RECORDS_PER_DATAGRAM):
            records = [
                wire.encode(wire.Record(wire.Kind.COMPLETE, wire.Op.all_reduce, rank, args.ranks, rank, seq,
                                        4 << 20, now + seq / args.rate, now + seq / args.rate + 0.002, 0,
                                        "bench-job", "default", f"pod-{rank}", "ml"))  # fmt: skip
                for seq in range(start, min(per_rank, start + wire.MAX_RECORDS_PER_DATAGRAM))
            ]
            datagrams.append(Datagram(b"".join(records), os.getpid() + rank, 0, False))
    ingest_runs, decode_runs = [], []
    for _ in range(args.trials):  # interleaved trials, best of each: the machine may be shared
        state = CollectiveState(CollectiveSettings(trust="process"), Trust("process", lambda pid: None, lambda pid: True))
        started = time.perf_counter()
        for datagram in datagrams:
            state.receive(datagram)
        ingest_runs.append((time.perf_counter() - started) / state.accepted)
        started = time.perf_counter()
        for datagram in datagrams:  # the peer: struct-unpacking each record alone, the old agent's first step
            for offset in range(0, len(datagram.data), wire.RECORD_BYTES):
                wire.decode(datagram.data, offset)
        decode_runs.append((time.perf_counter() - started) / state.accepted)
    started = time.perf_counter()
    state.evidence()
    evidence = time.perf_counter() - started
    started = time.perf_counter()
    state.metrics()
    metrics = time.perf_counter() - started
    us_per_record = min(ingest_runs) * 1e6
    print(json.dumps({
        "benchmark": "collective_ingest", "records": state.accepted, "invalid": sum(state.invalid.values()),
        "records_per_datagram": wire.MAX_RECORDS_PER_DATAGRAM,
        "us_per_record": us_per_record,
        "us_per_record_median": statistics.median(ingest_runs) * 1e6,
        "core_share_at_load": us_per_record * 1e-6 * args.ranks * args.rate,
        "peer_per_record_decode_us": min(decode_runs) * 1e6,
        "ratio_ingest_to_per_record_decode": min(ingest_runs) / min(decode_runs),
        "evidence_build_ms": evidence * 1e3, "metrics_build_ms": metrics * 1e3,
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
