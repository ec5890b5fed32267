"""Benchmark of the Raft adapter: 3 peers as processes on loopback.

    .venv/bin/python bench/raft.py [--fsm module:factory] [--sync-n 2000] ...

Measures, in one run:
  commit_p50_ms / commit_p99_ms   synchronous RaftNode.propose on the leader
  follower_commit_p50_ms          the same from a follower (forwarded to the leader)
  fsm_ops_per_s                   concurrent proposals (--threads callers) on the leader
  raw_pysyncobj_ops_per_s         a bare pysyncobj @replicated counter, same settings, same
                                  load (its mmap journal, no fsync)
  raw_commit_p50_ms               its synchronous latency
  reelection_median_s             leader SIGKILL -> both survivors name the same new leader
  fsync_cost_ms                   mean duration of one fsync/fdatasync in our peers
  fsyncs_per_commit               leader fsyncs per synchronous commit
  commit_p50_ms_no_fsync / fsm_ops_per_s_no_fsync   the same cluster with fsync off
The last stdout line is one JSON object with all of them, plus the 1-minute load
average before and after: on a shared 2-core machine, other work inflates the fsync and
latency numbers, so compare runs at similar load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # hacluster, and raftlab (test scaffolding)

from raftlab.harness import Cluster, Peer, wait_for  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(peer: Peer, n: int, size: int) -> dict[str, float]:
    doc = peer.call("bench_sync", n=n, size=size, call_timeout=600)
    lat = doc["latencies_ms"]
    return {
        "p50": statistics.median(lat),
        "p99": percentile(lat, 0.99),
        "failures": doc["failures"],
    }


def throughput(peer: Peer, n: int, threads: int, size: int) -> float:
    doc = peer.call("bench_concurrent", n=n, threads=threads, size=size, call_timeout=600)
    return float(doc["ops"] / doc["seconds"])


def measure_ours(args: argparse.Namespace, workdir: str, fsync: bool) -> dict[str, Any]:
    c = Cluster(workdir, 3, fsm=args.fsm, settings={"fsync": fsync})
    try:
        c.start()
        leader, _ = c.wait_leader()
        follower = next(p for p in c.peers if p is not leader)
        latency(leader, 200, args.size)  # warm-up
        before = leader.status()
        sync = latency(leader, args.sync_n, args.size)
        after = leader.status()
        result: dict[str, Any] = {
            "commit_p50_ms": sync["p50"],
            "commit_p99_ms": sync["p99"],
            "follower_commit_p50_ms": latency(follower, args.sync_n // 4, args.size)["p50"],
            "fsm_ops_per_s": throughput(leader, args.concurrent_n, args.threads, args.size),
            "failures": sync["failures"],
        }
        fsyncs = after["fsync_count"] - before["fsync_count"]
        if fsync and fsyncs:
            seconds = after["fsync_seconds"] - before["fsync_seconds"]
            result["fsync_cost_ms"] = seconds / fsyncs * 1000
            result["fsyncs_per_commit"] = fsyncs / args.sync_n
        if fsync:
            result["reelection_s"] = reelections(c, args.trials)
        return result
    finally:
        c.close()


def knows_leader(peer: Peer) -> bool:
    return peer.status()["leader"] is not None


def reelections(c: Cluster, trials: int) -> list[float]:
    """Kill the leader; time until both survivors agree on a newer leader."""
    times = []
    for _ in range(trials):
        leader, term = c.wait_leader()
        survivors = [p for p in c.peers if p is not leader]
        start = time.perf_counter()
        leader.kill()
        c.wait_leader(survivors, timeout=30, newer_than=term)
        times.append(time.perf_counter() - start)
        leader.start()
        c.wait_converged()
        wait_for(partial(knows_leader, leader), 10, "the restarted peer to rejoin")
    return times


def measure_raw(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    c = Cluster(workdir, 3, raw=True)
    try:
        c.start()
        leader, _ = c.wait_leader()
        latency(leader, 200, args.size)
        sync = latency(leader, args.sync_n, args.size)
        return {
            "raw_commit_p50_ms": sync["p50"],
            "raw_pysyncobj_ops_per_s": throughput(
                leader, args.concurrent_n, args.threads, args.size
            ),
        }
    finally:
        c.close()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Raft adapter benchmark (prints JSON last)")
    p.add_argument(
        "--fsm",
        default="raftlab.bytelog:factory",
        help="state machine factory as module:callable",
    )
    p.add_argument("--sync-n", type=int, default=2000, help="synchronous proposals")
    p.add_argument("--concurrent-n", type=int, default=20000, help="concurrent proposals")
    p.add_argument("--threads", type=int, default=32, help="concurrent proposers")
    p.add_argument("--size", type=int, default=64, help="command size in bytes")
    p.add_argument("--trials", type=int, default=7, help="re-election trials (>= 5)")
    p.add_argument("--skip-raw", action="store_true")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="raft-bench-") as tmp:
        ours = measure_ours(args, f"{tmp}/ours", fsync=True)
        no_fsync = measure_ours(args, f"{tmp}/nofsync", fsync=False)
        raw = {} if args.skip_raw else measure_raw(args, f"{tmp}/raw")
    times = ours.pop("reelection_s")
    report = {
        **ours,
        "reelection_median_s": statistics.median(times),
        "reelection_max_s": max(times),
        "reelection_trials": len(times),
        "commit_p50_ms_no_fsync": no_fsync["commit_p50_ms"],
        "fsm_ops_per_s_no_fsync": no_fsync["fsm_ops_per_s"],
        **raw,
        "fsm": args.fsm,
        "command_bytes": args.size,
        "threads": args.threads,
        # Other work on the machine inflates fsync and commit times: judge numbers by it.
        "loadavg_1m_before": load_before,
        "loadavg_1m_after": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    if raw:
        report["ours_vs_raw"] = report["fsm_ops_per_s"] / raw["raw_pysyncobj_ops_per_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
