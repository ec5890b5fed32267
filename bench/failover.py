"""Failover time on a lab cluster: host power loss to its last VM running
elsewhere (as the independent observer sees it), split into detection, fence
and restart, with the default settings and with the fast lease profile.

    .venv/bin/python bench/failover.py --trials 20
    .venv/bin/python bench/failover.py --trials 5 --isolation netns --driver qemu

Prints one JSON object on its last stdout line:
{"default": {...}, "fast": {...}}, each with median_s, p95_s, max_s,
overhead_median_s (recovery minus lease timeout, BMC time and VM start time),
trials, the medians of each phase, and the lab it ran on (isolation, driver,
VM memory). By default hosts are loopback addresses with libvirt's test
driver; `--isolation netns --driver qemu` makes every host a network
namespace running real QEMU domains (32 MiB, no disk). Needs root (see
hacluster.lab).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

from hacluster.lab.cluster import EventFollower, LabCluster, lab_unavailable
from hacluster.lab.isolation import ISOLATIONS


@dataclass
class Trial:
    total_s: float  # power loss -> last of its VMs seen running elsewhere
    detection_s: float  # power loss -> fence requested (lease expiry)
    fence_s: float  # fence requested -> fence confirmed in the log
    restart_s: float  # fence confirmed -> last VM seen running
    bmc_s: float  # what the BMC itself took (fence record: requested -> finished)
    vm_start_s: float  # placement -> running, slowest VM (the agent's start)
    lease_ttl_s: float
    wrong_fences: int  # hosts fenced that were not really down

    @property
    def overhead_s(self) -> float:
        return self.total_s - self.lease_ttl_s - self.bmc_s - self.vm_start_s


def settled(lab: LabCluster) -> bool:
    """Every VM started where the state says, and seen there by the observer."""
    assert lab.observer is not None
    vms = lab.vms()
    return all(v["state"] == "started" and lab.observer.where(n) == [v["host"]]
               for n, v in vms.items())


def choose_victim(lab: LabCluster, placement: dict[str, str], which: str) -> str:
    """most-vms: the host with the most VMs; leader: the Raft leader's host; follower: the
    host with the most VMs among the others."""
    leader = lab.wait_leader()
    if which == "leader":
        return leader
    hosts = sorted(h for h in set(placement.values()) if which != "follower" or h != leader)
    return max(hosts, key=lambda h: sum(1 for x in placement.values() if x == h))


def one_trial(lab: LabCluster, ttl: float, which: str = "most-vms") -> Trial:
    lab.wait(lambda: settled(lab), 60, "a settled cluster before the trial")
    placement = {n: v["host"] for n, v in lab.vms().items()}
    victim = choose_victim(lab, placement, which)
    moved = sorted(n for n, h in placement.items() if h == victim)
    follower = EventFollower(lab, next(n for n in lab.nodes if n != victim))
    follower.start()
    time.sleep(0.3)
    before = {n: len(lab.call("fence.history", {"host": n})["fences"]) for n in lab.nodes}
    cut = lab.power_off(victim, "bench: power cut")
    lab.wait(lambda: _recovered(lab, moved, victim), 60, "recovery")
    assert lab.observer is not None
    starts = [lab.observer.first_start(n, cut, not_on=victim) for n in moved]
    missing = [n for n, s in zip(moved, starts, strict=True) if s is None]
    if missing:
        raise RuntimeError(f"observer never saw {missing} start after the cut of {victim}: "
                           f"{lab.observer.sightings[-10:]}")
    last = max(s for s in starts if s is not None)
    requested = follower.first("fence-requested", victim, cut) or cut
    confirmed = follower.first("fence-confirmed", victim, cut) or requested
    fence = lab.call("fence.history", {"host": victim})["fences"][-1]
    placed = min((at for at, e in follower.events if at >= confirmed and e["kind"] == "vm-state"
                  and e["subject"] in moved), default=confirmed)
    wrong = sum(len(lab.call("fence.history", {"host": n})["fences"]) - before[n]
                for n in lab.nodes if n != victim)
    trial = Trial(last - cut, requested - cut, confirmed - requested, last - confirmed,
                  max(0.0, fence["finished_at"] - fence["requested_at"]), last - placed,
                  ttl, wrong)
    follower.stop()
    lab.power_on(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "online", 60, "host back online")
    return trial


def _recovered(lab: LabCluster, moved: list[str], victim: str) -> bool:
    vms = lab.vms()
    assert lab.observer is not None
    return all(vms[n]["state"] == "started" and vms[n]["host"] != victim
               and lab.observer.where(n) for n in moved)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(trials: list[Trial]) -> dict[str, float | int]:
    def med(attr: str) -> float:
        return round(statistics.median(getattr(t, attr) for t in trials), 3)

    totals = [t.total_s for t in trials]
    return {
        "median_s": round(statistics.median(totals), 3), "p95_s": round(_p95(totals), 3),
        "max_s": round(max(totals), 3),
        "overhead_median_s": round(statistics.median(t.overhead_s for t in trials), 3),
        "detection_median_s": med("detection_s"), "fence_median_s": med("fence_s"),
        "restart_median_s": med("restart_s"), "bmc_median_s": med("bmc_s"),
        "vm_start_median_s": med("vm_start_s"), "lease_ttl_s": trials[0].lease_ttl_s,
        "wrong_fences": sum(t.wrong_fences for t in trials), "trials": len(trials),
    }


def run_profile(profile: str, trials: int, hosts: int, vms: int,
                lab_kind: argparse.Namespace) -> dict[str, float | int | str]:
    lab = LabCluster(tempfile.mkdtemp(prefix=f"hacluster-bench-{profile}-"), hosts,
                     profile=profile, log_level="warning", driver=lab_kind.driver,
                     isolation=lab_kind.isolation)
    try:
        lab.start()
        # every trial is one fence incident: the default cap (3 per hour) would
        # block the fourth, and the victim would wait fence-blocked for good
        lab.call("fence.cap", {"cap": trials + 1})
        lab.add_vms(vms)
        ttl = float(lab.call("settings.show")["settings"]["lease_ttl_s"])
        results = []
        for i in range(trials):
            trial = one_trial(lab, ttl, lab_kind.victim)
            print(f"{profile} trial {i + 1}/{trials}: " + json.dumps(
                {k: round(v, 3) for k, v in asdict(trial).items()}), file=sys.stderr)
            results.append(trial)
        return {**summarize(results), "isolation": lab_kind.isolation,
                "driver": lab_kind.driver, "vm_memory_mib": lab.vm_memory_mib,
                "victim": lab_kind.victim}
    finally:
        lab.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--profiles", default="default,fast")
    parser.add_argument("--isolation", choices=ISOLATIONS, default="loopback",
                        help="hosts on loopback addresses, or each in a network namespace")
    parser.add_argument("--driver", choices=("test", "qemu"), default="test",
                        help="libvirt driver of every host's libvirtd")
    parser.add_argument("--victim", choices=("most-vms", "leader", "follower"),
                        default="most-vms", help="whose power is cut in each trial")
    args = parser.parse_args()
    reason = lab_unavailable(args.driver, args.isolation)
    if reason:
        print(f"bench/failover.py: cannot build a lab cluster here: {reason}", file=sys.stderr)
        return 2
    out = {p: run_profile(p, args.trials, args.hosts, args.vms, args)
           for p in args.profiles.split(",")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
