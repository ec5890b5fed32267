"""Scale lab: 25 peers (5 voters, 20 members) and 200 VMs on one machine, first
without faults, then with members' power cut one at a time; every figure from a
witness outside the product.

    .venv/bin/python bench/scale.py --minutes 10 --cuts 3 --raft-election-s 0.6,1.4
    .venv/bin/python bench/scale.py --voters 3 --members 3 --vms 20 --minutes 0.5 --cuts 1

Hosts are loopback addresses with libvirt's test driver (a private libvirtd each),
each behind an ipmi_sim BMC; members join after the voters through `add_host`, so
the observer (libvirt polled at --observer-hz) watches hosts added late. Peers run
with the product's default [timing]; [raft] is the product's unless
--raft-election-s widens the election timeout: 25 peers and 25 libvirtd on 2 cores
keep the CPU saturated, and with elections after 0.15-0.35 s of silence the voters
then depose their leader dozens of times a minute (BENCHMARKS.md).

Without faults, for --minutes:
  commit_visible_*_ms  an admin write (vm.set priority) through one peer's RPC until
                       another peer's RPC shows it (writer and reader rotate over every
                       peer, voters and members): latency seen from outside
  commit_ack_*_ms      the same write until its own RPC answered
  peer_rss_mib_*, peer_cpu_pct_*   every peer process, from /proc (CPU % of one core
                       over the phase); the leader's separately; libvirtd likewise
  machine_cpu_pct      the whole machine (/proc/stat), of all its cores
  vm_on_two_hosts      observer: a VM seen running on two powered hosts (must be 0)
  vms_not_running_*    observer, once a second: HA VMs not seen running anywhere
With --cuts N: N members (the one with the most VMs not cut before) lose power one
at a time; recovery from the BMC's power log to the observer seeing the last of its
VMs elsewhere (hacluster/lab/witness.py), then it is powered on and the cluster
settles again. false_fences: power-offs made over IPMI (BMC logs) during the whole
run; every cut host is already off when fenced, so each one hit a running host:
must be 0.

The last stdout line is one JSON object. Needs root (see hacluster.lab).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from hacluster.lab.cluster import LabCluster, lab_unavailable
from hacluster.lab.observer import Observer
from hacluster.lab.witness import ipmi_power_offs, recovery

CAUSE = "bench: power cut"
PROBE_VM = "vm1"
TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: list[float], prefix: str, digits: int = 2) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_p50": None, f"{prefix}_p99": None, f"{prefix}_max": None}
    return {f"{prefix}_p50": round(statistics.median(values), digits),
            f"{prefix}_p99": round(percentile(values, 0.99), digits),
            f"{prefix}_max": round(max(values), digits)}


# ------------------------------------------------------------------ /proc


def proc_cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


def proc_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclass
class Resources:
    """Samples every peer's and libvirtd's RSS, and CPU over the whole phase."""

    lab: LabCluster
    rss: dict[str, list[float]] = field(default_factory=dict)  # "peer:h1" -> MiB samples
    start_ticks: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> pid, ticks
    cpu_pct: dict[str, float] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)
    machine_pct: float = 0.0
    started: float = 0.0

    _pids: dict[str, int] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        """Every peer and libvirtd process (looked up once: the phase has no faults)."""
        if not self._pids:
            for name, node in self.lab.nodes.items():
                peer = node.host.peer_pid()
                if peer is not None:
                    self._pids[f"peer:{name}"] = peer
                daemon = [pid for pid, argv in node.host.libvirtd.processes()
                          if argv and Path(argv[0]).name == "libvirtd"]
                if daemon:
                    self._pids[f"libvirtd:{name}"] = daemon[0]
        return self._pids

    def begin(self) -> None:
        self.started = time.monotonic()
        self.machine = machine_busy_ticks()
        for key, pid in self.pids().items():
            ticks = proc_cpu_ticks(pid)
            if ticks is not None:
                self.start_ticks[key] = (pid, ticks)

    def sample(self) -> None:
        for key, pid in self.pids().items():
            rss = proc_rss_mib(pid)
            if rss is not None:
                self.rss.setdefault(key, []).append(rss)

    def end(self) -> None:
        elapsed = time.monotonic() - self.started
        for key, (pid, ticks) in self.start_ticks.items():
            now = proc_cpu_ticks(pid)  # the same process (a restarted one is left out)
            if now is not None:
                self.cpu_pct[key] = (now - ticks) / TICKS / elapsed * 100
        busy, total = machine_busy_ticks()
        self.machine_pct = (busy - self.machine[0]) / max(1, total - self.machine[1]) * 100

    def figures(self, leader: str | None) -> dict[str, Any]:
        def of(kind: str, values: dict[str, Any]) -> list[float]:
            return [v for k, v in values.items() if k.startswith(kind + ":")]

        peak = {k: max(v) for k, v in self.rss.items()}
        out: dict[str, Any] = {}
        for kind in ("peer", "libvirtd"):
            rss, cpu = of(kind, peak), of(kind, self.cpu_pct)
            out[f"{kind}_rss_mib_median"] = round(statistics.median(rss), 1) if rss else None
            out[f"{kind}_rss_mib_max"] = round(max(rss), 1) if rss else None
            out[f"{kind}_rss_mib_total"] = round(sum(rss), 1)
            out[f"{kind}_cpu_pct_median"] = round(statistics.median(cpu), 2) if cpu else None
            out[f"{kind}_cpu_pct_max"] = round(max(cpu), 2) if cpu else None
            out[f"{kind}_cpu_pct_total"] = round(sum(cpu), 1)
        if leader is not None:
            out["leader_rss_mib"] = round(peak.get(f"peer:{leader}", 0.0), 1)
            out["leader_cpu_pct"] = round(self.cpu_pct.get(f"peer:{leader}", 0.0), 2)
        out["machine_cpu_pct"] = round(self.machine_pct, 1)
        return out


# ------------------------------------------------------------------ probes


@dataclass
class Probes:
    """Admin writes through one peer, read back through another (both by RPC)."""

    lab: LabCluster
    visible_ms: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    by_role: dict[str, list[float]] = field(default_factory=dict)  # writer role -> visible
    failures: list[str] = field(default_factory=list)
    count: int = 0

    def one(self, writer: str, reader: str, roles: dict[str, str]) -> None:
        self.count += 1
        value = self.count % 50
        try:
            started = time.monotonic()
            self.lab.call("vm.set", {"name": PROBE_VM, "priority": value}, name=writer)
            acked = time.monotonic()
            with self.lab.client(reader) as rpc:
                while rpc.call("vm.show", {"name": PROBE_VM})["vm"]["priority"] != value:
                    if time.monotonic() - started > 10:
                        raise TimeoutError(f"{reader} did not show the write within 10 s")
                    time.sleep(0.002)
            seen = time.monotonic()
        except Exception as exc:  # counted and listed: a probe that failed is a finding
            self.failures.append(f"{writer}->{reader}: {type(exc).__name__}: {exc}"[:200])
            return
        self.ack_ms.append((acked - started) * 1000)
        self.visible_ms.append((seen - started) * 1000)
        self.by_role.setdefault(roles[writer], []).append((seen - started) * 1000)


# ------------------------------------------------------------------ the lab


def raft_overrides(election: str) -> tuple[tuple[str, float], ...]:
    """[raft] for every peer: "default" keeps the product's (elections after 0.15-0.35 s
    of silence); "MIN,MAX" widens the election timeout, the heartbeat and the
    timeouts that must stay above it following (RaftSettings' rules)."""
    if election == "default":
        return ()
    low, high = (float(x) for x in election.split(","))
    return (("election_timeout_min_s", low), ("election_timeout_max_s", high),
            ("heartbeat_interval_s", round(low / 6, 3)), ("connection_timeout_s", high),
            ("leader_fallback_timeout_s", max(2.0, 3 * high)))


def build(args: argparse.Namespace, root: str) -> tuple[LabCluster, dict[str, Any]]:
    lab = LabCluster(root, args.voters, profile=args.profile, log_level=args.log_level,
                     vm_memory_mib=args.vm_memory_mib, timing=(),
                     raft=raft_overrides(args.raft_election_s),
                     observer_interval_s=1.0 / args.observer_hz)
    began = time.monotonic()
    lab.start(timeout_s=120)
    voters_s = time.monotonic() - began
    for i in range(args.members):
        lab.add_host(f"m{i + 1}", role="member")
    total = args.voters + args.members
    lab.wait(lambda: len(lab.hosts()) == total
             and all(h["state"] == "online" for h in lab.hosts().values()), 300,
             f"{total} hosts online")
    hosts_s = time.monotonic() - began
    cap = lab.raise_fence_cap(args.cuts + 1)
    lab.add_vms(args.vms, timeout_s=900)
    return lab, {"voters_online_s": round(voters_s, 1), "hosts_online_s": round(hosts_s, 1),
                 "vms_running_s": round(time.monotonic() - began, 1), "fence_cap": cap}


def settled(lab: LabCluster) -> bool:
    """Every VM started where the state says, and seen there (and only there)."""
    observer = lab.observer
    assert observer is not None
    return all(v["state"] == "started" and observer.where(n) == [v["host"]]
               for n, v in lab.vms().items())


def not_running(lab: LabCluster, names: list[str]) -> list[str]:
    observer = lab.observer
    assert observer is not None
    running = set().union(*observer.running().values())
    return [n for n in names if n not in running]


def steady(lab: LabCluster, args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    """--minutes without faults: probes, resources, the observer's sanity."""
    observer = lab.observer
    assert observer is not None
    roles = {n: node.host.spec.role for n, node in lab.nodes.items()}
    hosts = sorted(lab.nodes)
    probes, resources = Probes(lab), Resources(lab)
    violations_before = len(observer.violations)
    gaps_before = len(observer.gaps_s)
    missing_samples: list[int] = []
    stop = threading.Event()

    def probe_loop() -> None:
        i = 0
        while not stop.wait(args.probe_interval_s):
            writer = hosts[i % len(hosts)]
            reader = hosts[(i * 7 + 3) % len(hosts)]
            if reader == writer:
                reader = hosts[(i + 1) % len(hosts)]
            probes.one(writer, reader, roles)
            i += 1

    voters = [n for n in hosts if roles[n] == "voter"]
    term_before, index_before = raft_position(lab, voters)
    resources.begin()
    thread = threading.Thread(target=probe_loop, name="probes", daemon=True)
    thread.start()
    leader = lab.leader()
    end = time.monotonic() + args.minutes * 60
    next_rss = 0.0
    while time.monotonic() < end:
        missing_samples.append(len(not_running(lab, names)))
        if time.monotonic() >= next_rss:
            resources.sample()
            next_rss = time.monotonic() + 5
        time.sleep(1.0)
    stop.set()
    thread.join(15)
    resources.end()
    term_after, index_after = raft_position(lab, voters)
    leader_after = lab.leader()
    gaps = observer.gaps_s[gaps_before:]
    return {
        "seconds": round(args.minutes * 60, 1),
        **spread(probes.visible_ms, "commit_visible_ms"),
        **spread(probes.ack_ms, "commit_ack_ms"),
        **{f"commit_visible_p50_ms_by_{role}_writer": round(statistics.median(v), 2)
           for role, v in sorted(probes.by_role.items())},
        "probes": probes.count, "probe_failures": len(probes.failures),
        "probe_failure_list": probes.failures[:20],
        **resources.figures(leader),
        "leader": leader, "leader_changed": leader != leader_after,
        # as the voters report it: how often the Raft term moved (elections), entries
        "raft_terms": term_after - term_before, "log_entries": index_after - index_before,
        "vm_on_two_hosts": len(observer.violations) - violations_before,
        "vms_not_running_samples": sum(1 for m in missing_samples if m),
        "vms_not_running_max": max(missing_samples, default=0),
        "observer_samples": len(missing_samples),
        **spread(gaps, "observer_look_gap_s", 3),
    }


def raft_position(lab: LabCluster, voters: list[str]) -> tuple[int, int]:
    """(highest term, highest applied index) the voters report."""
    terms, indexes = [0], [0]
    for name in voters:
        try:
            peer = lab.call("status", name=name)["peer"]
        except Exception:  # a voter that does not answer now reports nothing
            continue
        terms.append(int(peer["term"]))
        indexes.append(int(peer["applied_index"]))
    return max(terms), max(indexes)


def digests(lab: LabCluster) -> dict[str, tuple[int, str]]:
    """(applied index, state digest) of every running peer that answers."""
    out = {}
    for name, node in lab.nodes.items():
        if node.host.peer_pid() is None:
            continue
        with contextlib.suppress(Exception):
            peer = lab.call("status", name=name)["peer"]
            out[name] = (int(peer["applied_index"]), str(peer["digest"]))
    return out


def digests_agree(lab: LabCluster, timeout_s: float = 60.0) -> dict[str, Any]:
    """At the end (the only time the peers are asked about their state): every peer
    at the same applied index with the same state digest, within `timeout_s`."""
    seen: dict[str, tuple[int, str]] = {}

    def agree() -> bool:
        seen.clear()
        seen.update(digests(lab))
        return len(seen) == len(lab.nodes) and len(set(seen.values())) == 1

    try:
        lab.wait(agree, timeout_s, "every peer at the same index with the same digest")
        return {"digests_agree": True, "digest_index": next(iter(seen.values()))[0]}
    except TimeoutError:
        groups: dict[tuple[int, str], list[str]] = {}
        for name, at in seen.items():
            groups.setdefault(at, []).append(name)
        return {"digests_agree": False, "digest_groups": [
            f"{index} {digest[:12]}: {' '.join(sorted(names))}"
            for (index, digest), names in sorted(groups.items())]}


def truncations_logged(lab: LabCluster) -> int:
    """pysyncobj's 'truncating already-applied log entries' (logged critical by a
    follower that dropped entries it had applied) in every peer's log."""
    count = 0
    for node in lab.nodes.values():
        with contextlib.suppress(OSError):
            text = (node.host.spec.path / "peer.log").read_text(errors="replace")
            count += text.count("truncating already-applied log entries")
    return count


def cut_members(lab: LabCluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Cut members' power one at a time; the observer times each recovery."""
    observer = lab.observer
    assert observer is not None
    records: list[dict[str, Any]] = []
    done: set[str] = set()
    for number in range(args.cuts):
        lab.wait(lambda: settled(lab), 300, "a settled cluster before the cut")
        running = observer.running()
        members = [n for n, node in lab.nodes.items()
                   if node.host.spec.role == "member" and n not in done]
        victim = max(sorted(members), key=lambda n: len(running.get(n, ())))
        done.add(victim)
        moved = sorted(running.get(victim, ()))
        before = lab.power_off(victim, CAUSE) - 0.01
        try:
            lab.wait(partial(seen_elsewhere, observer, moved, victim, before), 180,
                     f"the VMs of {victim} running elsewhere")
        except TimeoutError as exc:
            print(f"cut {number + 1}: {exc}", file=sys.stderr)
        witnessed = recovery(lab.nodes[victim].bmc, observer, victim, moved, CAUSE, before)
        record = {"victim": victim, "vms": len(moved),
                  **{k: None if v is None else round(v, 3)
                     for k, v in witnessed.phases().items()},
                  "missing": witnessed.missing}
        print(f"cut {number + 1}/{args.cuts}: {json.dumps(record)}", file=sys.stderr)
        records.append(record)
        lab.power_on(victim)
        lab.wait(partial(online, lab, victim), 300, f"{victim} back online")
    return records


def seen_elsewhere(observer: Observer, vms: list[str], host: str, after: float) -> bool:
    return all(observer.first_start(n, after, not_on=host) for n in vms)


def online(lab: LabCluster, host: str) -> bool:
    return bool(lab.hosts()[host]["state"] == "online")


def run(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    root = tempfile.mkdtemp(prefix="hacluster-scale-")
    lab: LabCluster | None = None
    try:
        began = time.monotonic()
        lab, built = build(args, root)
        names = sorted(lab.vms())
        settle_s = lab.wait(lambda: settled(lab), 600, "a settled cluster")
        time.sleep(args.settle_s)
        print(f"built in {time.monotonic() - began:.0f} s; running {args.minutes:g} min "
              "without faults", file=sys.stderr)
        quiet = steady(lab, args, names)
        print("steady: " + json.dumps(quiet), file=sys.stderr)
        cuts = cut_members(lab, args) if args.cuts else []
        if cuts:
            lab.wait(lambda: settled(lab), 300, "a settled cluster after the cuts")
        agreement = digests_agree(lab)
        observer = lab.observer
        assert observer is not None
        false = [f"{p.host} at {p.at - began:.1f}s: {p.detail}"
                 for p in ipmi_power_offs({n: node.bmc for n, node in lab.nodes.items()}, began)]
        totals = [c["total_s"] for c in cuts if c["total_s"] is not None]
        return {
            "hosts": len(lab.nodes), "voters": args.voters, "members": args.members,
            "vms": args.vms, "vm_memory_mib": lab.vm_memory_mib, "profile": args.profile,
            "observer_hz": args.observer_hz, "probe_interval_s": args.probe_interval_s,
            "raft": dict(raft_overrides(args.raft_election_s)) or "product defaults",
            **built, "settle_s": round(settle_s, 1),
            "steady": quiet,
            "cuts": len(cuts), "cut_records": cuts,
            "recovery_median_s": round(statistics.median(totals), 3) if totals else None,
            "recovery_max_s": round(max(totals), 3) if totals else None,
            "recoveries_missing": len(cuts) - len(totals),
            "false_fences": len(false), "false_fence_list": false,
            "vm_on_two_hosts": len(observer.violations), **agreement,
            "raft_truncations_logged": truncations_logged(lab),
            "observer_violations": observer.violations[:20],
            "loadavg_1m_before": round(load_before, 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        }
    finally:
        if lab is not None:
            lab.stop(keep=args.keep)
        if args.keep:
            print(f"kept {root}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--voters", type=int, default=5)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--vms", type=int, default=200)
    parser.add_argument("--vm-memory-mib", type=int, default=64)
    parser.add_argument("--minutes", type=float, default=10.0, help="without faults")
    parser.add_argument("--cuts", type=int, default=3, help="members' power cut, one at a time")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--settle-s", type=float, default=10.0,
                        help="wait this long once settled before measuring")
    parser.add_argument("--observer-hz", type=float, default=10.0)
    parser.add_argument("--probe-interval-s", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true", help="keep the lab's files")
    parser.add_argument("--log-level", default="warning", help="of every peer")
    parser.add_argument("--raft-election-s", default="default",
                        help='"default" (the product\'s 0.15-0.35 s) or "MIN,MAX"')
    args = parser.parse_args()
    reason = lab_unavailable("test", "loopback")
    if reason:
        print(f"bench/scale.py: cannot build a lab cluster here: {reason}", file=sys.stderr)
        return 2
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
