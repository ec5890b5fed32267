"""Recovery after chassis death (the host and its BMC go dark together) with watchdog
self-fencing, measured by witnesses outside the product, for several watchdog settings.

    .venv/bin/python bench/chassis.py --trials 5
    .venv/bin/python bench/chassis.py --trials 3 --setups default:10:10,fast:1.5:2.5

A setup is PROFILE:TIMEOUT_S:SELF_FENCE_S: the lab profile (lease timing) and every
host's [watchdog] timeout_s and self_fence_s (hacluster/lab/watchdog.py emulates the
watchdog outside the host). Each trial makes the victim's BMC unreachable, cuts the
victim's power, and measures:
  total     the power-off in the victim BMC's power log -> the last of the victim's VMs
            seen running on another host by the observer (libvirt polled at 20 Hz)
  designed  what the timing argument makes the leader wait after the victim's last
            acknowledgement: (self_fence_s + timeout_s) * 1.01 + watchdog_margin_s
            (docs/safety.md, Self-fencing); overhead = total - designed
The BMC stays dark for the whole trial (no power read can answer), so every release
is a watchdog fence; the ledger's last record for the victim must say so, and
`not_watchdog` counts the trials where it did not. `wrong_fences` counts power-offs
by IPMI during the trials (BMC logs): there should be none, the only BMC that could
be asked is dark.

Prints one JSON object on its last stdout line: {setup: {median_s, p95_s, max_s,
overhead_median_s, designed_s, trials, recovered_trials, not_watchdog, wrong_fences,
...}}. Needs root (see hacluster.lab).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from hacluster.lab.bmc import BmcMode
from hacluster.lab.cluster import LabCluster, lab_unavailable
from hacluster.lab.witness import ipmi_power_offs, power_loss

CAUSE = "bench: chassis death"
CLOCK_RATE_MARGIN = 1.01  # core/manager.py: the leader allows for clock rate differences


def armed(lab: LabCluster) -> bool:
    return all(h["watchdog"]["armed"] for h in lab.hosts().values())


def settled(lab: LabCluster) -> bool:
    """Every VM started where the state says, seen there by the observer, every
    watchdog armed and recorded."""
    assert lab.observer is not None
    observer = lab.observer
    return armed(lab) and all(
        v["state"] == "started" and observer.where(n) == [v["host"]]
        for n, v in lab.vms().items())


def one_trial(lab: LabCluster, number: int) -> dict[str, Any]:
    lab.wait(lambda: settled(lab), 180, "a settled cluster before the trial")
    placement = {n: v["host"] for n, v in lab.vms().items()}
    leader = lab.wait_leader()
    victim = max(sorted(h for h in lab.nodes if h != leader),
                 key=lambda h: sum(1 for x in placement.values() if x == h))
    moved = sorted(n for n, h in placement.items() if h == victim)
    observer = lab.observer
    assert observer is not None
    bmc = lab.nodes[victim].bmc
    bmc.set_mode(BmcMode.UNREACHABLE)
    before = lab.power_off(victim, CAUSE) - 0.01
    try:
        lab.wait(lambda: all(observer.first_start(n, before, not_on=victim) for n in moved),
                 180, f"the observer seeing the VMs of {victim} elsewhere")
    except TimeoutError as exc:
        print(f"trial {number}: {exc}", file=sys.stderr)
    loss = power_loss(bmc.events(), CAUSE, before)
    starts = [observer.first_start(n, loss or before, not_on=victim) for n in moved]
    total = (max(s for s in starts if s is not None) - loss
             if loss is not None and moved and all(s is not None for s in starts) else None)
    fences = lab.call("fence.history", {"host": victim})["fences"]
    method = fences[-1]["method"] if fences else ""
    wrong = [f"{p.host} at +{p.at - before:.2f}s" for p in
             ipmi_power_offs({n: node.bmc for n, node in lab.nodes.items()}, before)]
    bmc.set_mode(BmcMode.WORKS)
    lab.power_on(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "online", 180, "host back online")
    return {"victim": victim, "vms": len(moved), "total_s": total, "method": method,
            "wrong_fences": wrong}


def run_setup(setup: str, trials: int) -> dict[str, Any]:
    profile, timeout_s, self_fence_s = setup.split(":")
    watchdog = (float(timeout_s), float(self_fence_s))
    load_before = os.getloadavg()[0]
    lab = LabCluster(tempfile.mkdtemp(prefix=f"hacluster-bench-chassis-{profile}-"), 3,
                     profile=profile, log_level="warning", watchdog=watchdog)
    try:
        lab.start()
        cap = lab.raise_fence_cap(trials + 1)  # every trial is one fence incident
        lab.add_vms(6)
        settings = lab.call("settings.show")["settings"]
        designed = (sum(watchdog) * CLOCK_RATE_MARGIN + float(settings["watchdog_margin_s"]))
        records = []
        for i in range(trials):
            record = one_trial(lab, i + 1)
            print(f"{setup} trial {i + 1}/{trials}: {json.dumps(record)}", file=sys.stderr)
            records.append(record)
        totals = sorted(r["total_s"] for r in records if r["total_s"] is not None)
        return {
            "median_s": round(statistics.median(totals), 3) if totals else None,
            "p95_s": round(totals[min(len(totals) - 1, round(0.95 * (len(totals) - 1)))], 3)
            if totals else None,
            "max_s": round(totals[-1], 3) if totals else None,
            "overhead_median_s": round(statistics.median(totals) - designed, 3)
            if totals else None,
            "designed_s": round(designed, 3), "trials": trials,
            "recovered_trials": len(totals),
            "not_watchdog": sum(1 for r in records if r["method"] != "watchdog"),
            "wrong_fences": sum(len(r["wrong_fences"]) for r in records),
            "profile": profile, "watchdog_timeout_s": watchdog[0],
            "self_fence_s": watchdog[1], "lease_ttl_s": float(settings["lease_ttl_s"]),
            "fence_cap": cap,
            "observer_violations": len(lab.observer.violations) if lab.observer else None,
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "measured_at": time.strftime("%Y-%m-%d %H:%M"),
            "trial_records": [{k: round(v, 3) if isinstance(v, float) else v
                               for k, v in r.items()} for r in records],
        }
    finally:
        lab.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--setups", default="fast:1.5:2.5,default:5:5,default:10:10",
                        help="comma-separated PROFILE:TIMEOUT_S:SELF_FENCE_S")
    args = parser.parse_args()
    reason = lab_unavailable("test", "loopback")
    if reason:
        print(f"bench/chassis.py: cannot build a lab cluster here: {reason}", file=sys.stderr)
        return 2
    out = {setup: run_setup(setup, args.trials) for setup in args.setups.split(",")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
