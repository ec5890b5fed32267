"""Simulator Raft model benchmark: simulated seconds per real second of a RaftCluster.

Measures (for each shape, "<voters>v<members>m_<step ms>ms" keys)
  sim_s_per_s          simulated seconds per CPU second, the caller stepping the cluster
                       every step, proposing ~5 commands per second from random peers and
                       applying every peer's committed entries after each step
  checked_sim_s_per_s  the same with RaftChecker.check after every step
  msgs_per_sim_s       Raft messages sent per simulated second

The clock is the process CPU time (time.process_time), an independent witness of the
work done; the simulated clock is the model's own.

Usage: python bench/sim_raft.py [--seconds S] [--smoke]   (the last stdout line is JSON)
"""

from __future__ import annotations

import argparse
import json
import random
import time

from hacluster.sim.net import SimNet
from hacluster.sim.raftcheck import RaftChecker
from hacluster.sim.raftmodel import RaftCluster

SHAPES = [(5, 3, 0.02), (3, 0, 0.02), (5, 3, 0.01), (5, 3, 0.05), (7, 0, 0.02), (7, 20, 0.02)]


def measure(voters: int, members: int, step_s: float, seconds: float,
            check: bool) -> tuple[float, float]:
    net = SimNet(random.Random(1))
    names = [f"v{i}" for i in range(voters)] + [f"m{i}" for i in range(members)]
    for name in names:
        net.add_host(name, ("mgmt", "backend"))
    cluster = RaftCluster(net, random.Random(2), names[:voters], names[voters:])
    checker = RaftChecker.attach(cluster) if check else None
    rng = random.Random(3)
    started = time.process_time()
    steps = round(seconds / step_s)
    for n in range(1, steps + 1):
        cluster.step(n * step_s)
        if rng.random() < 5.0 * step_s:
            cluster[rng.choice(names)].propose(b"command %d" % n, lambda result: None)
        for peer in cluster:
            peer.apply_committed()
        if checker is not None:
            checker.check(cluster)
    used = time.process_time() - started
    assert checker is None or not checker.violations, checker.violations
    return seconds / used, net.stats["sent"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated per shape")
    parser.add_argument("--smoke", action="store_true", help="one short trial")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.smoke else SHAPES
    seconds = 2.0 if args.smoke else args.seconds
    result: dict[str, float] = {}
    for voters, members, step_s in shapes:
        key = f"{voters}v{members}m_{round(step_s * 1000)}ms"
        speed, msgs = measure(voters, members, step_s, seconds, check=False)
        checked, _ = measure(voters, members, step_s, seconds, check=True)
        result[f"{key}_sim_s_per_s"] = round(speed, 1)
        result[f"{key}_checked_sim_s_per_s"] = round(checked, 1)
        result[f"{key}_msgs_per_sim_s"] = round(msgs, 1)
        print(f"{key}: {speed:.0f} sim-s/s ({checked:.0f} checked), {msgs:.0f} msgs/sim-s",
              flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
