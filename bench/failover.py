"""Failover time on a lab cluster, measured by witnesses outside the product: host
power loss to its last VM running elsewhere, split into phases, with the default
settings and with the fast lease profile.

    .venv/bin/python bench/failover.py --trials 20
    .venv/bin/python bench/failover.py --trials 10 --victim-vms 40
    .venv/bin/python bench/failover.py --trials 5 --isolation netns --driver qemu

Every figure comes from a witness (hacluster/lab/witness.py):
  power loss   the victim BMC's power log (the power-off the bench asked for)
  detection    power loss -> the first `get power` the victim's BMC answered (the
               leader's probe or fence looking: detection as the BMC sees it; what
               the product decided before that only the product can say)
  fence        first read -> the last read answering off before the first VM ran
               elsewhere (a fence of a host already off sends no power command: its
               reads are all the BMC sees)
  restart      that read -> the last of the victim's VMs seen running on another
               host by the observer (libvirt polled at 20 Hz): confirming the
               fence in the log, placing, starting
  total        power loss -> the last VM running elsewhere
A phase whose witness saw nothing is left out of the medians and counted in
`missing` (never taken as 0 s). `overhead_median_s` is the total minus the wait the
settings prescribe before the first read (probe_after_s, or lease_ttl_s when power
reads are off). The product's own account (its event log: fence-requested,
fence-confirmed, as one peer streams them) is reported beside, as `product_*`.
`wrong_fences` counts power-offs by IPMI (BMC logs) during the trials: every victim
is already off when fenced, so any such power-off hit a running host.

`--profiles default,default+lease-only,...` measures a profile also with power reads
off (probe_after_s = 0: the lease-only path), in the same run.

Prints one JSON object on its last stdout line: {"default": {...}, "fast": {...}},
each with median_s, p95_s, max_s, the phase medians, missing, wrong_fences, the fence
cap used for the run, and the lab (isolation, driver, VM memory, VMs per victim).
Needs root (see hacluster.lab).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from hacluster.lab.cluster import LabCluster, lab_unavailable
from hacluster.lab.events import EventFollower
from hacluster.lab.isolation import ISOLATIONS
from hacluster.lab.witness import Recovery, ipmi_power_offs, recovery

CAUSE = "bench: power cut"


@dataclass
class Trial:
    witnessed: Recovery
    designed_wait_s: float  # what the settings make the leader wait before it reads the power
    victim_led: bool  # the victim's peer was the Raft leader
    product: dict[str, float | None] = field(default_factory=dict)  # its own event log
    wrong_fences: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        phases = self.witnessed.phases()
        total = phases["total_s"]
        return {"victim": self.witnessed.victim, "vms": len(self.witnessed.vms),
                "victim_led": self.victim_led, **phases,
                "overhead_s": None if total is None else total - self.designed_wait_s,
                **{f"product_{k}": v for k, v in self.product.items()},
                "missing": self.witnessed.missing, "wrong_fences": self.wrong_fences}


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
    hosts = sorted(h for h in lab.nodes if which != "follower" or h != leader)
    return max(hosts, key=lambda h: sum(1 for x in placement.values() if x == h))


def designed_wait(settings: dict[str, Any]) -> float:
    probe = float(settings.get("probe_after_s", 0.0))
    return probe if probe > 0 else float(settings["lease_ttl_s"])


def pin_extra_vms(lab: LabCluster, victim: str, count: int, trial: int) -> list[str]:
    """`count` more VMs started on the victim, then free to go anywhere."""
    if count <= 0:
        return []
    names = lab.add_vms(count, prefix=f"t{trial}-", allowed_hosts=[victim], timeout_s=300)
    with lab.client() as rpc:
        for name in names:
            rpc.call("vm.set", {"name": name, "allowed_hosts": []})
    return names


def remove_vms(lab: LabCluster, names: list[str]) -> None:
    """Stop them (a started VM cannot be removed), then remove them."""
    if not names:
        return
    with lab.client() as rpc:
        for name in names:
            rpc.call("vm.stop", {"name": name})
    observer = lab.observer
    assert observer is not None
    lab.wait(lambda: not any(observer.where(n) for n in names)
             and all(lab.vms()[n]["state"] == "stopped" for n in names), 120,
             "the extra VMs stopped")
    with lab.client() as rpc:
        for name in names:
            rpc.call("vm.remove", {"name": name})


def product_account(follower: EventFollower, victim: str, loss: float | None) -> dict[
        str, float | None]:
    """What the product's event log says (stamped when the bench received each
    event): relative to the witnessed power loss; None when it never said it."""
    def rel(kind: str) -> float | None:
        at = follower.first(kind, victim, loss or 0.0)
        return None if at is None or loss is None else at - loss

    return {"fence_requested_s": rel("fence-requested"),
            "fence_confirmed_s": rel("fence-confirmed")}


def one_trial(lab: LabCluster, settings: dict[str, Any], args: argparse.Namespace,
              number: int) -> Trial:
    lab.wait(lambda: settled(lab), 120, "a settled cluster before the trial")
    placement = {n: v["host"] for n, v in lab.vms().items()}
    victim = choose_victim(lab, placement, args.victim)
    extra = pin_extra_vms(lab, victim, args.victim_vms, number)
    placement = {n: v["host"] for n, v in lab.vms().items()}
    moved = sorted(n for n, h in placement.items() if h == victim)
    led = lab.leader() == victim
    follower = EventFollower(lab, next(n for n in sorted(lab.nodes) if n != victim))
    follower.start()
    time.sleep(0.3)
    assert lab.observer is not None
    observer = lab.observer
    before = lab.power_off(victim, CAUSE) - 0.01
    try:
        lab.wait(lambda: all(observer.first_start(n, before, not_on=victim) for n in moved),
                 120, f"the observer seeing the VMs of {victim} elsewhere")
    except TimeoutError as exc:
        print(f"trial {number}: {exc}", file=sys.stderr)
    witnessed = recovery(lab.nodes[victim].bmc, observer, victim, moved, CAUSE, before)
    product = product_account(follower, victim, witnessed.power_loss)
    follower.stop()
    wrong = [f"{p.host} at +{p.at - before:.2f}s" for p in
             ipmi_power_offs({n: node.bmc for n, node in lab.nodes.items()}, before)]
    lab.power_on(victim)
    lab.wait(lambda: lab.hosts()[victim]["state"] == "online", 120, "host back online")
    remove_vms(lab, extra)
    return Trial(witnessed, designed_wait(settings), led, product, wrong)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def summarize(trials: list[Trial]) -> dict[str, Any]:
    records = [t.record() for t in trials]

    def med(key: str) -> float | None:
        values = [r[key] for r in records if r[key] is not None]
        return round(statistics.median(values), 3) if values else None

    totals = [r["total_s"] for r in records if r["total_s"] is not None]
    missing: dict[str, int] = {}
    for r in records:
        for what in r["missing"]:
            kind = what.split(":")[0]
            missing[kind] = missing.get(kind, 0) + 1
    out: dict[str, Any] = {
        "median_s": round(statistics.median(totals), 3) if totals else None,
        "p95_s": round(_p95(totals), 3) if totals else None,
        "max_s": round(max(totals), 3) if totals else None,
        "trials": len(trials), "recovered_trials": len(totals),
        "missing": missing, "wrong_fences": sum(len(r["wrong_fences"]) for r in records),
        "victim_led_trials": sum(1 for r in records if r["victim_led"]),
        "vms_per_victim_median": statistics.median(r["vms"] for r in records),
    }
    for key in ("overhead_s", "first_vm_s", "detection_s", "fence_s", "restart_s",
                "product_fence_requested_s", "product_fence_confirmed_s"):
        out[key.removesuffix("_s") + "_median_s"] = med(key)
    return out


def fit_victim_vms(lab: LabCluster, vms: int) -> dict[str, float]:
    """A lab host has 8 vCPUs and the default vcpu_overcommit (4) books at most 32
    one-vCPU VMs on it: allow `vms` on one host, and say so."""
    settings = lab.call("settings.show")["settings"]
    needed = float(max(settings["vcpu_overcommit"], -(-vms // 8) + 1))
    if needed == settings["vcpu_overcommit"]:
        return {}
    lab.set_settings({"vcpu_overcommit": needed})
    print(f"vcpu_overcommit raised for this run: {settings['vcpu_overcommit']:g} -> "
          f"{needed:g} ({vms} VMs on one host of 8 vCPUs)", file=sys.stderr)
    return {"vcpu_overcommit": needed}


LEASE_ONLY = "+lease-only"  # a profile with power reads off: the lease-only path


def run_profile(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """`name`: a lab profile, or one with LEASE_ONLY appended (probe_after_s = 0)."""
    profile = name.removesuffix(LEASE_ONLY)
    load_before = os.getloadavg()[0]
    lab = LabCluster(tempfile.mkdtemp(prefix=f"hacluster-bench-{profile}-"), args.hosts,
                     profile=profile, log_level="warning", driver=args.driver,
                     isolation=args.isolation, vm_memory_mib=args.vm_memory_mib)
    try:
        lab.start()
        # every trial is one fence incident
        cap = lab.raise_fence_cap(args.trials + 1)
        changed = fit_victim_vms(lab, args.victim_vms + args.vms)
        if name.endswith(LEASE_ONLY):
            lab.set_settings({"probe_after_s": 0.0})
            changed["probe_after_s"] = 0.0
        if args.vms:
            lab.add_vms(args.vms, timeout_s=300)
        settings = lab.call("settings.show")["settings"]
        results = []
        for i in range(args.trials):
            trial = one_trial(lab, settings, args, i + 1)
            print(f"{name} trial {i + 1}/{args.trials}: " + json.dumps(
                {k: round(v, 3) if isinstance(v, float) else v
                 for k, v in trial.record().items()}), file=sys.stderr)
            results.append(trial)
        return {**summarize(results), "lease_ttl_s": float(settings["lease_ttl_s"]),
                "probe_after_s": float(settings.get("probe_after_s", 0.0)),
                "designed_wait_s": designed_wait(settings), "fence_cap": cap,
                "settings_changed": changed,
                "isolation": args.isolation, "driver": args.driver, "hosts": args.hosts,
                "vm_memory_mib": lab.vm_memory_mib, "vms": args.vms,
                "victim_vms": args.victim_vms, "victim": args.victim,
                "observer_violations": len(lab.observer.violations) if lab.observer else None,
                "observer_violation_list": lab.observer.violations[:10] if lab.observer else [],
                "loadavg_1m_before": round(load_before, 2),
                "loadavg_1m_after": round(os.getloadavg()[0], 2),
                "measured_at": time.strftime("%Y-%m-%d %H:%M"),
                "trial_records": [{k: round(v, 3) if isinstance(v, float) else v
                                   for k, v in t.record().items()} for t in results]}
    finally:
        lab.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--vms", type=int, default=6, help="VMs spread over the hosts")
    parser.add_argument("--victim-vms", type=int, default=0,
                        help="more VMs started on the victim before each cut (removed after)")
    parser.add_argument("--vm-memory-mib", type=int, default=None,
                        help="memory of each VM (lab default: 256 test, 32 qemu; hosts have "
                             "8192)")
    parser.add_argument("--profiles", default="default,fast",
                        help="comma-separated lab profiles; append +lease-only for the "
                             "same with power reads off (probe_after_s = 0)")
    parser.add_argument("--isolation", choices=ISOLATIONS, default="loopback",
                        help="hosts on loopback addresses, or each in a network namespace")
    parser.add_argument("--driver", choices=("test", "qemu"), default="test",
                        help="libvirt driver of every host's libvirtd")
    parser.add_argument("--victim", choices=("most-vms", "leader", "follower"),
                        default="most-vms", help="whose power is cut in each trial")
    args = parser.parse_args()
    if args.victim_vms and args.vm_memory_mib is None and args.driver == "test":
        args.vm_memory_mib = 64  # 40 VMs of 256 MiB do not fit on the two survivors
    reason = lab_unavailable(args.driver, args.isolation)
    if reason:
        print(f"bench/failover.py: cannot build a lab cluster here: {reason}", file=sys.stderr)
        return 2
    out = {p: run_profile(p, args) for p in args.profiles.split(",")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
