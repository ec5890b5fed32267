"""The soak's fault catalogue: every fault an object with `apply()` and
`heal()` that records what it did, when (CLOCK_MONOTONIC), and what it means
for judging a fence (hosts it takes down or pauses, packets it drops).

    base.py      Fault, FaultRecord
    power.py     power loss through the BMC, chassis death (host and BMC dark)
    process.py   SIGKILL / SIGSTOP of a peer (the leader's too), of a libvirtd,
                 libvirtd restart, CPU starvation (cgroup)
    network.py   isolation (of the leader too), splits, one-way cuts, loss
    bmcfaults.py BMC slow, unreachable, frozen, rejecting credentials
    disk.py      a peer restarted from an old copy of its journal
    schedule.py  a random schedule from a seed (a failing seed replays)
"""
