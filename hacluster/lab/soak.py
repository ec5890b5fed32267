"""`hacluster soak`: a lab cluster under random faults from a seed, judged by
witnesses outside the cluster (hacluster.lab.soakcheck).

One fault at a time: apply, hold, heal, repair (power on what is off, start
peers that died, as a datacenter and systemd would), wait until every VM runs
again (or the recovery bound passes), a short pause, the next. The schedule is
drawn from the seed up front (hacluster.lab.nemesis.schedule), so a failing
seed replays the same faults; the leader is resolved when a fault starts.
Before each fault the soak changes a replicated setting, so the end check has
writes to find (and an old journal has entries to miss).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacluster.lab.cluster import PROFILES, LabCluster
from hacluster.lab.nemesis.base import Fault, FaultRecord
from hacluster.lab.nemesis.schedule import KINDS, build, schedule
from hacluster.lab.soakcheck import judge, recovery_stats
from hacluster.lab.soakevidence import Alive, Evidence, PeerEnd, Power, Seen, Verdict
from hacluster.ports import PowerState
from hacluster.rpc.protocol import ErrorCode, RpcError

DEFAULT_LEASE_TTL_S = 3.0
FENCE_CAP, FENCE_WINDOW_S = 30, 600.0  # raised for the run: a soak fences often on purpose
HOST_MEMORY_MIB, VM_MEMORY_MIB = 8192, 256
REPAIR_AFTER_S = 20.0  # a host off this long is powered on, fenced or not
# --watchdog without values: (timeout_s, self_fence_s) per profile. The default
# profile's are the product's defaults; the fast profile's those the end-to-end
# test of chassis death uses (tests/e2e/test_chassis_death.py).
WATCHDOGS: dict[str, tuple[float, float]] = {"default": (10.0, 10.0), "fast": (1.5, 2.5)}


@dataclass(frozen=True)
class SoakConfig:
    hosts: int = 5
    vms: int = 40
    duration_s: float = 600.0
    seed: int = 1
    profile: str = "default"
    isolation: str = "netns"
    kinds: tuple[str, ...] = KINDS
    loss: tuple[int, int] = (10, 50)
    recovery_bound_s: float = 90.0
    watchdog: tuple[float, float] | None = None  # (timeout_s, self_fence_s) on every host
    hold_s: float = 0.0  # > 0: every fault lasts this long (default: drawn per kind)
    loss_hosts: int = 0  # > 0: loss faults between this many hosts (default: drawn)
    root: str = ""  # lab directory ("" = a new temporary one)
    keep: bool = False  # keep the lab's files even when the run passed

    def __post_init__(self) -> None:
        problems = []
        if not 3 <= self.hosts <= 9:
            problems.append(f"--hosts must be 3-9, not {self.hosts}")
        if not 1 <= self.vms <= self.hosts * HOST_MEMORY_MIB // VM_MEMORY_MIB // 2:
            problems.append(f"--vms must be 1-{self.hosts * HOST_MEMORY_MIB // VM_MEMORY_MIB // 2}"
                            f" for {self.hosts} hosts (half the room, so hosts may die)")
        if self.duration_s <= 0:
            problems.append("--duration must be > 0")
        if self.profile not in PROFILES:
            problems.append(f"unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if not 1 <= self.loss[0] <= self.loss[1] <= 100:
            problems.append(f"--loss must be MIN-MAX within 1-100, not {self.loss}")
        if self.watchdog is not None and min(self.watchdog) <= 0:
            problems.append(f"--watchdog timeouts must be > 0, not {self.watchdog}")
        if self.hold_s < 0:
            problems.append("--hold must be > 0")
        if not 0 <= self.loss_hosts <= self.hosts or self.loss_hosts == 1:
            problems.append(f"--loss-hosts must be 2-{self.hosts}, not {self.loss_hosts}")
        if not self.kinds or set(self.kinds) - set(KINDS):
            problems.append(f"unknown fault kind(s) {sorted(set(self.kinds) - set(KINDS))} "
                            f"(known: {', '.join(KINDS)})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def lease_ttl_s(self) -> float:
        return PROFILES[self.profile].get("lease_ttl_s", DEFAULT_LEASE_TTL_S)


@dataclass
class SoakResult:
    config: SoakConfig
    verdict: Verdict
    faults: list[FaultRecord]
    started_at: float
    root: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        stats = recovery_stats(self.verdict.recoveries)
        return {
            "seed": self.config.seed, "hosts": self.config.hosts, "vms": self.config.vms,
            "profile": self.config.profile, "isolation": self.config.isolation,
            "watchdog": list(self.config.watchdog) if self.config.watchdog else None,
            "duration_s": self.config.duration_s, "fence_cap": [FENCE_CAP, FENCE_WINDOW_S],
            "recovery_bound_s": self.config.recovery_bound_s,
            "faults": [{"index": f.index, "kind": f.kind, "description": f.description,
                        "applied_s": round(f.applied_at - self.started_at, 3),
                        "healed_s": round(f.healed_at - self.started_at, 3),
                        "notes": f.notes} for f in self.faults],
            "violations": [v.to_json() for v in self.verdict.violations],
            "findings": [v.to_json() for v in self.verdict.findings],
            "false_fences": len(self.verdict.false_fences),
            "recovery_median_s": stats["all"]["median_s"],
            "recovery_p95_s": stats["all"]["p95_s"],
            "recovery_by_kind": stats["by_kind"],
            "operator_waits": [
                {"fault": f.index, "host": host, "waiting_s": round(at - self.started_at, 3),
                 "confirmed_s": next((round(c - self.started_at, 3) for c, h in f.confirms
                                      if h == host and c >= at), None)}
                for f in self.faults for at, host in f.waits],
            "settle_s": {str(r.fault): r.settle_s for r in self.verdict.recoveries},
            "lab": self.root, "notes": self.notes,
        }


class ProcessWitness:
    """Samples every host's peer process at 10 Hz: alive or not, from when."""

    def __init__(self, lab: LabCluster) -> None:
        self.lab = lab
        self.changes: list[Alive] = []
        self._last: dict[str, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-witness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, node in list(self.lab.nodes.items()):
                alive = node.host.peer_pid() is not None
                if self._last.get(name) != alive:
                    self._last[name] = alive
                    self.changes.append(Alive(time.monotonic(), name, alive))
            self._stop.wait(0.1)


def _call(lab: LabCluster, method: str, params: dict[str, Any] | None = None,
          name: str | None = None, timeout_s: float = 5.0) -> Any:
    with lab.client(name, timeout_s=timeout_s) as rpc:
        return rpc.call(method, params or {})


class Soak:
    def __init__(self, config: SoakConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.root = Path(config.root or tempfile.mkdtemp(prefix="hacluster-soak-"))
        self.lab = LabCluster(self.root / "lab", config.hosts, profile=config.profile,
                              isolation=config.isolation, vm_memory_mib=VM_MEMORY_MIB,
                              watchdog=config.watchdog)
        self.rng = random.Random(config.seed)
        self.vms: list[str] = []
        self.faults: list[FaultRecord] = []
        self.expected: dict[str, Any] = {}
        self.ledger_seen: dict[tuple[int, str], float] = {}  # fence records read mid-run
        self.notes: list[str] = []
        self.started_at = 0.0

    # ------------------------------------------------------------ the run

    def run(self) -> SoakResult:
        witness = ProcessWitness(self.lab)
        current: list[Fault] = []
        passed = False
        try:
            self._build()
            witness.start()
            self.started_at = time.monotonic()
            self._faults(current)
            ended = self._settle("the end", self.faults[-1] if self.faults else None)
            final = self._final()
            witness.stop()
            evidence = self._evidence(witness, final, ended)
            verdict = judge(evidence)
            passed = not verdict.violations
            (self.root / "evidence.json").write_text(json.dumps(_evidence_json(evidence)))
            return SoakResult(self.config, verdict, self.faults, self.started_at,
                              str(self.root), self.notes)
        finally:
            for fault in current:  # interrupted mid-fault: heal it before tearing down
                with contextlib.suppress(Exception):
                    fault.heal()
            witness.stop()
            self.lab.stop(keep=True)
            if passed and not self.config.keep:
                import shutil

                shutil.rmtree(self.root / "lab", ignore_errors=True)

    def _build(self) -> None:
        c = self.config
        dog = (f"watchdog {c.watchdog[0]:g}s (self-fence {c.watchdog[1]:g}s)" if c.watchdog
               else "no watchdog")
        self.say(f"soak: seed {c.seed}, {c.hosts} hosts, {c.vms} VMs, {c.profile} profile, "
                 f"{dog}, {c.isolation} isolation, {c.duration_s:g}s; lab in {self.root}")
        self.lab.start()
        if c.watchdog:
            self.lab.wait(self._armed, 60, "every host's watchdog armed")
        cap = {"fence_cap": FENCE_CAP, "fence_window_s": FENCE_WINDOW_S}
        _call(self.lab, "settings.set", {"values": cap}, timeout_s=30)
        self.expected.update(cap, **PROFILES[c.profile])
        self.vms = self.lab.add_vms(c.vms)
        self.say(f"soak: {len(self.vms)} VMs running; fence cap raised to {FENCE_CAP} per "
                 f"{FENCE_WINDOW_S:g}s for the run")

    def _faults(self, current: list[Fault]) -> None:
        c = self.config
        deadline = time.monotonic() + c.duration_s
        plans = schedule(c.seed, c.hosts, c.lease_ttl_s, 10_000, c.kinds, c.loss, c.hold_s,
                         c.loss_hosts)
        for index, plan in enumerate(plans, start=1):
            if time.monotonic() >= deadline:
                break
            self._bump_setting(index)
            fault = build(plan, self.lab, index, self._leader(), c.lease_ttl_s,
                          self._loaded(), c.watchdog is not None)
            current.append(fault)
            try:
                fault.apply()
            except Exception as exc:  # a fault that could not be set up: say so, heal
                fault.record.notes.append(f"apply failed: {exc}")
            self.faults.append(fault.record)
            self.say(f"{self._t()}  #{index} {fault.record.kind}: {fault.record.description}")
            self._hold(fault, plan.hold_s)
            try:
                fault.heal()
            except Exception as exc:
                fault.record.notes.append(f"heal failed: {exc}")
            current.remove(fault)
            took = self._settle(f"fault #{index}", fault.record)
            self._read_ledger()
            self.say(f"{self._t()}  #{index} healed; settled {took - fault.record.healed_at:.1f}s"
                     " after" + (f" ({'; '.join(fault.record.notes)})"
                                 if fault.record.notes else ""))
            time.sleep(self.rng.uniform(1.0, 3.0))

    def _t(self) -> str:
        return f"+{time.monotonic() - self.started_at:7.1f}s"

    def _hold(self, fault: Fault, hold_s: float) -> None:
        """The planned hold, longer while the fault wants it (up to the recovery bound)."""
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < hold_s or (
                elapsed < hold_s + self.config.recovery_bound_s and self._holds_on(fault)):
            try:
                fault.during(elapsed)
            except Exception as exc:
                fault.record.notes.append(f"during: {exc}")
            time.sleep(0.1)
        if elapsed > hold_s + 0.5:
            fault.record.notes.append(f"held {elapsed:.1f}s (planned {hold_s:.1f}s)")

    @staticmethod
    def _holds_on(fault: Fault) -> bool:
        try:
            return fault.holds_on()
        except Exception as exc:
            fault.record.notes.append(f"holds_on: {exc}")
            return False

    def _loaded(self) -> frozenset[str]:
        """Hosts running VMs now, as the observer sees them."""
        assert self.lab.observer is not None
        return frozenset(h for h, names in self.lab.observer.running().items() if names)

    def _armed(self) -> bool:
        return all(h["watchdog"]["armed"] for h in _call(self.lab, "host.list")["hosts"])

    def _leader(self) -> str:
        try:
            leader = self.lab.leader()
        except (RpcError, RuntimeError, OSError):
            leader = None
        return leader or sorted(self.lab.nodes)[0]

    def _bump_setting(self, index: int) -> None:
        value = 600 + index
        try:
            _call(self.lab, "settings.set", {"values": {"vm_stable_s": value}}, timeout_s=10)
        except RpcError as exc:
            if exc.code is ErrorCode.MAYBE_APPLIED:
                self.expected.pop("vm_stable_s", None)  # unknown until the next one lands
            return
        except (RuntimeError, OSError):
            return
        self.expected["vm_stable_s"] = float(value)

    def _repair(self, record: FaultRecord | None) -> None:
        """What a datacenter does after a fault: power on a host that is off
        (also one fenced late) once the cluster is done fencing it, and (as
        systemd would) start a peer that died on a powered host. Powering a host
        on while a fence of it is still under way only makes the fencer power it
        off again (a new leader reads it on and must)."""
        states: dict[str, str] | None = None
        for name, node in sorted(self.lab.nodes.items()):
            if node.bmc.power is PowerState.OFF:
                if states is None:
                    states = self._host_states()
                if not self._fence_done(name, states):
                    continue
                self._note(record, f"repair: {name} powered on")
                self.lab.power_on(name)
            elif node.host.peer_pid() is None and self.lab.start_peer_if_powered(name):
                self._note(record, f"repair: {name}'s peer started again")

    def _read_ledger(self) -> None:
        """Fence records a peer holds now: each must still be there at the end."""
        with contextlib.suppress(RpcError, RuntimeError, OSError):
            fences = _call(self.lab, "fence.history", {"limit": 100_000})["fences"]
            for f in fences:
                self.ledger_seen.setdefault((f["token"], f["host"]), time.monotonic())

    def _host_states(self) -> dict[str, str]:
        try:
            return {h["name"]: h["state"] for h in _call(self.lab, "host.list")["hosts"]}
        except (RpcError, RuntimeError, OSError):
            return {}

    def _fence_done(self, name: str, states: dict[str, str]) -> bool:
        """Fenced or waiting for an operator, or off for long (no quorum to say)."""
        if states.get(name) in ("fenced", "fence-failed", "fence-blocked"):
            return True
        offs = [e.mono for e in self.lab.nodes[name].bmc.events() if e.event == "power-off"]
        return not offs or time.monotonic() - offs[-1] >= REPAIR_AFTER_S

    def _note(self, record: FaultRecord | None, text: str) -> None:
        (record.notes if record is not None else self.notes).append(text)

    def _settled(self) -> bool:
        assert self.lab.observer is not None
        running = self.lab.observer.running()
        where = {vm: [h for h, names in running.items() if vm in names] for vm in self.vms}
        if any(len(hosts) != 1 for hosts in where.values()):
            return False
        hosts = _call(self.lab, "host.list")["hosts"]
        return all(h["state"] == "online" for h in hosts)

    def _settle(self, what: str, record: FaultRecord | None) -> float:
        """Repair, and wait until every VM runs once and every host is online."""
        def settled() -> bool:
            self._repair(record)
            return self._settled()

        try:
            self.lab.wait(settled, self.config.recovery_bound_s, f"{what} to settle")
        except TimeoutError as exc:
            self.notes.append(str(exc))
            self.say(f"{self._t()}  {exc}; {self._capture(what)}")
        return time.monotonic()

    def _capture(self, what: str) -> str:
        """A run that did not settle: every peer's status into the lab directory, and
        every thread's stack into its log (SIGUSR1), for a look afterwards."""
        views: dict[str, Any] = {}
        for name, node in sorted(self.lab.nodes.items()):
            try:
                views[name] = _call(self.lab, "status", name=name, timeout_s=3)
            except (RpcError, RuntimeError, OSError) as exc:
                views[name] = {"error": str(exc)}
            pid = node.host.peer_pid()
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGUSR1)
        path = self.root / f"unsettled-{len(self.notes)}.json"
        path.write_text(json.dumps({"what": what, "at": time.monotonic(), "peers": views},
                                   default=str))
        return f"peers' status in {path}, their stacks in their peer.log"

    # ------------------------------------------------------------ the end

    def _final(self) -> list[PeerEnd]:
        """Every peer's view, once they all agree (or after a minute)."""
        deadline = time.monotonic() + 60
        ends: list[PeerEnd] = []
        while time.monotonic() < deadline:
            ends = []
            for name in sorted(self.lab.nodes):
                with contextlib.suppress(RpcError, RuntimeError, OSError):
                    ends.append(self._peer_end(name))
            marks = {(e.applied_index, e.digest) for e in ends}
            if len(ends) == len(self.lab.nodes) and len(marks) == 1:
                break
            time.sleep(0.5)
        return ends

    def _peer_end(self, name: str) -> PeerEnd:
        status = _call(self.lab, "status", name=name)["peer"]
        vms = _call(self.lab, "vm.list", name=name)["vms"]
        settings = _call(self.lab, "settings.show", name=name)["settings"]
        fences = _call(self.lab, "fence.history", {"limit": 100_000}, name=name)["fences"]
        return PeerEnd(name, status["applied_index"], status["digest"],
                       tuple(v["name"] for v in vms), settings,
                       tuple((f["token"], f["host"], f["result"]) for f in fences))

    def _evidence(self, witness: ProcessWitness, final: list[PeerEnd],
                  ended: float) -> Evidence:
        observer = self.lab.observer
        assert observer is not None
        power = [Power(e.mono, e.began, name, e.event == "power-on", e.cause, e.detail)
                 for name, node in self.lab.nodes.items() for e in node.bmc.events()
                 if e.event in ("power-on", "power-off")]
        sightings = [Seen(s.at, s.host, s.vm, s.running, s.after, s.by)
                     for s in list(observer.sightings)]
        return Evidence(
            hosts=sorted(self.lab.nodes), voters=sorted(self.lab.nodes), vms=self.vms,
            sightings=sightings, power=power, faults=self.faults, liveness=witness.changes,
            fence_cap=FENCE_CAP, fence_window_s=FENCE_WINDOW_S,
            fence_grace_s=self.config.lease_ttl_s + 5.0,
            recovery_bound_s=self.config.recovery_bound_s,
            vms_per_host=HOST_MEMORY_MIB // VM_MEMORY_MIB, ended_at=ended, final=final,
            expected_settings=self.expected,
            watchdog_timeout_s=self.config.watchdog[0] if self.config.watchdog else 0.0,
            feeds=({h: list(f) for h, f in self.lab.watchdog_emulator.feeds.items()}
                   if self.lab.watchdog_emulator is not None else {}),
            ledger_seen=[(at, t, h) for (t, h), at in sorted(self.ledger_seen.items())])


def _evidence_json(ev: Evidence) -> dict[str, Any]:
    """Everything the judge read, to judge again later (soakcheck.judge)."""
    from dataclasses import asdict

    return asdict(ev)


def render(result: SoakResult) -> str:
    """The human summary: faults, violations with evidence, recovery by kind."""
    s = result.summary()
    dog = s["watchdog"]
    lines = [f"seed {s['seed']}, {s['hosts']} hosts, {s['vms']} VMs, {s['profile']} profile, "
             + (f"watchdog {dog[0]:g}s (self-fence {dog[1]:g}s)" if dog else "no watchdog"),
             f"faults ({len(s['faults'])}):"]
    for f in s["faults"]:
        settle = s["settle_s"].get(str(f["index"]))
        lines.append(f"  #{f['index']:<3} +{f['applied_s']:7.1f}s .. +{f['healed_s']:7.1f}s  "
                     f"{f['kind']:<17} {f['description']}"
                     + (f"  [settled {settle:.1f}s after heal]" if settle is not None
                        else "  [NOT SETTLED]"))
        lines += [f"        note: {n}" for n in f["notes"]]
    lines.append(f"violations ({len(s['violations'])}), false fences: {s['false_fences']}")
    for v in s["violations"]:
        lines.append(f"  [{v['rule']}] +{v['at'] - result.started_at:.3f}s {v['summary']}")
        lines += [f"        {e}" for e in v["evidence"]]
    lines.append(f"findings ({len(s['findings'])}, not violations):")
    for v in s["findings"]:
        lines.append(f"  [{v['rule']}] {v['summary']}")
        lines += [f"        {e}" for e in v["evidence"]]
    lines.append("recovery (first VM gone -> every VM running once, seen by the observer):")
    for kind, st in sorted(s["recovery_by_kind"].items()):
        if st["count"]:
            lines.append(f"  {kind:<18} n={st['count']:<3} median {st['median_s']:.2f}s  "
                         f"p95 {st['p95_s']:.2f}s")
    med, p95 = s["recovery_median_s"], s["recovery_p95_s"]
    lines.append("  all: " + (f"median {med:.2f}s p95 {p95:.2f}s" if med is not None
                              else "no outage"))
    waits = s["operator_waits"]
    lines.append(f"waits for an operator ({len(waits)}; expected without a watchdog, "
                 "not violations):")
    for w in waits:
        confirmed = (f"confirmed at +{w['confirmed_s']:.1f}s" if w["confirmed_s"] is not None
                     else "never confirmed")
        lines.append(f"  #{w['fault']:<3} {w['host']} fence-failed, waiting for an operator "
                     f"from +{w['waiting_s']:.1f}s; {confirmed}")
    lines.append(f"seed {s['seed']}: {'PASS' if not s['violations'] else 'FAIL'}"
                 f" (replay: {replay_command(result.config)})")
    return "\n".join(lines)


def replay_command(c: SoakConfig) -> str:
    """The command line that runs this soak again (the same seed, the same faults)."""
    words = ["hacluster soak", f"--seed {c.seed}", f"--hosts {c.hosts}", f"--vms {c.vms}",
             f"--duration {c.duration_s:g}s", f"--profile {c.profile}",
             f"--isolation {c.isolation}"]
    if c.watchdog:
        words.append(f"--watchdog {c.watchdog[0]:g}:{c.watchdog[1]:g}")
    if c.kinds != KINDS:
        words.append(f"--kinds {','.join(c.kinds)}")
    if c.loss != (10, 50):
        words.append(f"--loss {c.loss[0]}-{c.loss[1]}")
    if c.hold_s:
        words.append(f"--hold {c.hold_s:g}s")
    if c.loss_hosts:
        words.append(f"--loss-hosts {c.loss_hosts}")
    if c.recovery_bound_s != 90.0:
        words.append(f"--recovery-bound {c.recovery_bound_s:g}s")
    return " ".join(words)
