"""Scenario directories: cluster.toml (hosts, VMs, settings) + events.txt
(timed faults, operator commands and expectations) -> a timeline.

events.txt, one per line, `#` starts a comment:
    TIME power-off|power-on|isolate|heal HOST
    TIME heal-all | kill-leader | pause-leader | lease-block-leader
    TIME kill-peer|pause|resume|lease-block|lease-unblock HOST
    TIME stop-peer HOST | stop-leader               (SIGTERM: a planned shutdown)
    TIME restart-peer HOST [rebuild | prefix N]     (N: journal entries kept)
    TIME cut-link|restore-link HOST LINK
    TIME cut|restore A B [one-way]                  (all links between A and B)
    TIME loss A B PERCENT                            (both ways; 0 heals it)
    TIME partition H1,H2 H3,H4,H5
    TIME vote-requests HOST lost|delivered          (its Raft RequestVotes only: a cut that
                                                     falls between its pre-vote and its election)
    TIME clock HOST SECONDS                          (its wall clock steps to this skew)
    TIME bmc HOST works|unreachable|slow|slow-ok|already-off|bad-credentials|frozen|lies
    TIME bmc-fails HOST N                            (its next N commands fail, then it works)
    TIME outlet ADDRESS MODE                         (a fence device of a level, as bmc)
    TIME chassis-death HOST                          (its BMC goes dark and its power off at once)
    TIME storage-cut|storage-restore HOST            (it writes and reads no shared storage)
    TIME crash VM
    TIME fault|clear-fault start-fails|stop-fails|migrate-fails VM [N | on HOST]
    TIME hactl host maintenance HOST on|off | hactl host ready HOST
    TIME hactl host tag HOST add|remove TAG
    TIME hactl fence confirm HOST REASON... | hactl fence retry HOST
    TIME hactl vm start|stop|disable|remove VM | hactl vm migrate VM [HOST]
    TIME hactl cluster maintenance on|off
    TIME hactl settings KEY=VALUE...
    TIME hactl shutdown-policy POLICY [HOST]        (the cluster's, or HOST's; "default")
    TIME hactl host fencing HOST --level DEVICE... [--level ...]   (sim/levels.py)
    TIME expect vm VM STATE [HOST] | expect host HOST STATE | expect running VM HOST|nowhere
    TIME expect fences N        (confirmed fences so far)
    TIME expect power-offs HOST N   (fence power-offs of HOST in its BMC log)
    TIME expect outlet-offs ADDRESS N   (power-offs of that fence device)
    TIME expect halted HOST         (its peer stopped at an entry it cannot read)
    TIME expect leader HOST TERM    (the peer that leads now, and in which term)
    TIME expect term HOST TERM      (the current Raft term of HOST's peer)
    TIME upgrade HOST               (its peer restarts as this release)
    TIME force fence-hold HOST REASON   (proposed past the version gate)

cluster.toml: [[host]] lacks = ["fence-cancel", ...] runs an older release there;
[[host]] watchdog = [TIMEOUT_S, SELF_FENCE_S] gives it a watchdog its peer feeds;
disk_leases = true: a start is refused while a powered host runs the VM (libvirt's lock
manager with a shared lockspace).
[[host]] storage = ["/pool"] makes its peer write storage heartbeats there (sim/storage.py);
[[vm]] disks = ["/pool/db.qcow2"] gives the VM those disk files (written while it runs).
[[host]] tags = ["ssd"] tags it (`host-tag`); [[vm]] takes any AddVm field (start_after,
colocation, required_tags, preferred_hosts = [["h1", 100]], failback = "auto", ...).
"""

from __future__ import annotations

import difflib
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacluster.cli.commands import parse_pairs
from hacluster.cli.fencespec import parse_device
from hacluster.fsm import commands as c
from hacluster.fsm.model import (
    ClusterState,
    Desired,
    FenceDevice,
    FenceLevel,
    FenceResult,
    HostRole,
)
from hacluster.fsm.states import HostState
from hacluster.fsm.wire import WireError, decode_fields
from hacluster.sim.fakes import BmcMode, SimBmc
from hacluster.sim.raftmsgs import RaftModelConfig
from hacluster.sim.world import World


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and line."""


@dataclass
class Outcome:
    name: str
    timeline: str
    failures: list[str] = field(default_factory=list)
    mismatch: str = ""  # unified diff against expected.log ("" when equal or absent)


def load_cluster(world: World, path: Path) -> tuple[dict[str, Any], float]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    for spec in doc.get("host", []):
        world.add_host(
            spec["name"],
            spec.get("memory_mib", 16384),
            spec.get("vcpus", 16),
            HostRole(spec.get("role", "voter")),
            tuple(spec.get("links", ["mgmt"])),
            BmcMode(spec.get("bmc", "works")),
            tuple(spec["watchdog"]) if "watchdog" in spec else None,
            tuple(spec.get("storage", ())),
        )
        world.hosts[spec["name"]].peer.lacks = frozenset(spec.get("lacks", ()))
    world.disk_leases = bool(doc.get("disk_leases", False))
    world.start()
    return doc, float(doc.get("duration", 30.0))


def bootstrap(world: World, doc: dict[str, Any], path: Path) -> None:
    """Elect a first leader (the one cluster.toml names, if it does), let every peer
    register its host, then commit settings and VMs as an operator would."""
    world.elect(doc.get("leader"))
    if doc.get("settings"):
        world.admin_wait(_decode(c.SetSettings, doc["settings"], path))
    _wait_until_online(world, [spec["name"] for spec in doc.get("host", [])])
    for spec in doc.get("host", []):
        for tag in spec.get("tags", ()):
            world.admin_wait(c.TagHost(name=spec["name"], tag=tag))
    for spec in doc.get("vm", []):
        spec = dict(spec)
        disks = "".join(f"<disk type='file'><source file='{d}'/></disk>"
                        for d in spec.pop("disks", ()))
        devices = f"<devices>{disks}</devices>" if disks else ""
        fields = {
            "xml": f"<domain><name>{spec['name']}</name>{devices}</domain>",
            "memory_mib": 1024,
            "vcpus": 1,
            **spec,
        }
        world.admin_wait(_decode(c.AddVm, fields, path))


def _wait_until_online(world: World, names: list[str], limit_s: float = 5.0) -> None:
    deadline = world.now + limit_s
    while world.now < deadline:
        state = world.truth()
        if state is not None and all(
                n in state.hosts and state.hosts[n].state is HostState.ONLINE for n in names):
            return
        world.step()


def _decode(cls: type, fields: dict[str, Any], path: Path) -> Any:
    try:
        return decode_fields(cls, fields)
    except WireError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def run_scenario(directory: Path, raft_config: RaftModelConfig | None = None) -> Outcome:
    """raft_config: another Raft model than production's (a test shows a scenario fail
    without a fix); expected.log is written with the default."""
    world = World(raft_config=raft_config)
    cluster_file = directory / "cluster.toml"
    doc, duration = load_cluster(world, cluster_file)
    bootstrap(world, doc, cluster_file)
    failures: list[str] = []
    for when, words, where in _events(directory / "events.txt"):
        world.run_until(when)
        try:
            failure = perform(world, words)
        except (KeyError, ValueError, IndexError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        if failure:
            failures.append(f"{where}: {failure}")
    world.run_until(duration)
    failures.extend(f"invariant: {v}" for v in world.observer.violations)
    text = render(world, failures)
    expected_file = directory / "expected.log"
    mismatch = ""
    if expected_file.exists():
        expected = expected_file.read_text()
        if expected != text:
            mismatch = "".join(
                difflib.unified_diff(
                    expected.splitlines(True), text.splitlines(True), "expected.log", "actual"
                )
            )
    return Outcome(directory.name, text, failures, mismatch)


def _events(path: Path) -> list[tuple[float, list[str], str]]:
    out = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path.name}:{number}"
        words = shlex.split(line)
        try:
            when = float(words[0])
        except ValueError:
            raise ScenarioError(f"{where}: a line starts with a time, got {words[0]!r}") from None
        if len(words) < 2:
            raise ScenarioError(f"{where}: missing action")
        out.append((when, words[1:], where))
    return out


def perform(world: World, words: list[str]) -> str:
    """Carry out one scenario action; return a failure text for a failed expectation."""
    verb, args = words[0], words[1:]
    if verb == "expect":
        return expect(world, args)
    if verb in ("hactl", "force"):
        command = hactl_command(args) if verb == "hactl" else forced_command(args)
        world.note(f"{verb} {' '.join(args)}")
        world.admin(command, force=verb == "force")
        return ""
    action = ACTIONS.get(verb)
    if action is None:
        raise ValueError(f"unknown action {verb!r}")
    action(world, args)
    return ""


def _net(world: World, args: list[str], verb: str) -> None:
    net = world.net
    if verb == "isolate":
        net.isolate(args[0])
        world.note(f"net {args[0]}: isolated (all links cut; host keeps running)")
    elif verb == "heal":
        net.heal(args[0])
        world.note(f"net {args[0]}: healed")
    elif verb == "heal-all":
        net.heal_all(quality=True)
        world.lease_blocked.clear()
        world.raft.lost_vote_requests.clear()
        world.note("net: all partitions and faults healed")
    elif verb in ("cut-link", "restore-link"):
        if verb == "cut-link":
            net.cut_link(args[0], args[1])
        else:
            net.restore_link(args[0], args[1])
        world.note(f"net {args[0]}: link {args[1]} {'cut' if verb == 'cut-link' else 'restored'}")
    elif verb in ("cut", "restore"):
        both = "one-way" not in args[2:]
        (net.cut if verb == "cut" else net.restore)(args[0], args[1], both=both)
        arrow = "<->" if both else "->"
        world.note(f"net {args[0]} {arrow} {args[1]}: {verb}")
    elif verb == "loss":
        net.set_path(args[0], args[1], loss=float(args[2]) / 100, both=True)
        world.note(f"net {args[0]} <-> {args[1]}: {args[2]}% loss")
    elif verb == "partition":
        net.partition(*(g.split(",") for g in args))
        world.note(f"net: partition {' | '.join(args)}")
    elif verb == "vote-requests":
        if args[1] not in ("lost", "delivered"):
            raise ValueError(f"vote-requests takes lost or delivered, got {args[1]!r}")
        lost = args[1] == "lost"
        (world.raft.lost_vote_requests.add if lost else world.raft.lost_vote_requests.discard)(
            args[0])
        world.note(f"net {args[0]}: its Raft vote requests are {args[1]}")


def _process(world: World, args: list[str], verb: str) -> None:
    if verb == "kill-peer":
        world.crash_peer(args[0])
    elif verb == "stop-peer":
        world.stop_peer(args[0])
    elif verb == "restart-peer":
        rebuild = args[1:2] == ["rebuild"]
        prefix = int(args[2]) if args[1:2] == ["prefix"] else None
        world.restart_peer(args[0], rebuild=rebuild, log_prefix=prefix)
        world.note(f"peer {args[0]}: restarted" + (f" ({' '.join(args[1:])})" if args[1:]
                                                     else ""))
    elif verb == "pause":
        world.pause_peer(args[0])
    elif verb == "resume":
        world.resume_peer(args[0])
    elif verb in ("lease-block", "lease-unblock"):
        (world.lease_blocked.add if verb == "lease-block" else world.lease_blocked.discard)(
            args[0])
        world.note(f"net {args[0]}: lease port {'blocked' if verb == 'lease-block' else 'open'}"
                   " (Raft traffic flows)")
    elif verb == "upgrade":
        world.hosts[args[0]].peer.lacks = frozenset()
        world.restart_peer(args[0])
        world.note(f"peer {args[0]}: upgraded to this release and restarted")
    elif verb == "clock":
        world.hosts[args[0]].peer.clock.wall_skew = float(args[1])
        world.note(f"clock {args[0]}: wall clock steps to {float(args[1]):+g}s")


def _leader(world: World, args: list[str], verb: str) -> None:
    leader = world.leader
    if leader is None:
        world.note(f"{verb}: no leader")
        return
    if verb == "kill-leader":
        world.power_off(leader, "scenario: kill the leader")
    elif verb == "pause-leader":
        world.pause_peer(leader)
    elif verb == "lease-block-leader":
        _process(world, [leader], "lease-block")
    elif verb == "stop-leader":
        world.stop_peer(leader)


def _power(world: World, args: list[str], verb: str) -> None:
    if verb == "chassis-death":
        world.set_bmc_mode(args[0], BmcMode.UNREACHABLE)
        world.note(f"bmc {args[0]}: dark with its host")
        world.power_off(args[0], "chassis death")
        return
    (world.power_off if verb == "power-off" else world.power_on)(args[0], "scenario")


def _storage(world: World, args: list[str], verb: str) -> None:
    cut = world.storage.cut
    (cut.add if verb == "storage-cut" else cut.discard)(args[0])
    shown = "cut (it writes and reads nothing there)" if verb == "storage-cut" else "restored"
    world.note(f"storage {args[0]}: {shown}")


def _bmc(world: World, args: list[str], verb: str) -> None:
    bmc = world.hosts[args[0]].bmc
    if verb == "bmc-fails":
        bmc.fail_next = int(args[1])
        world.note(f"bmc {args[0]}: the next {args[1]} commands fail")
    else:
        world.note(f"bmc {args[0]}: mode {args[1]}")
        world.set_bmc_mode(args[0], BmcMode(args[1]))


def _vm_fault(world: World, args: list[str], verb: str) -> None:
    op = {"start-fails": "start", "stop-fails": "stop", "migrate-fails": "migrate"}[args[0]]
    vm, rest = args[1], args[2:]
    faults = world.vm_faults
    if rest[:1] == ["on"]:
        pair = (vm, rest[1])
        faults.start_on.add(pair) if verb == "fault" else faults.start_on.discard(pair)
    else:
        table: dict[str, int] = getattr(faults, op)
        table[vm] = (int(rest[0]) if rest else -1) if verb == "fault" else 0
    world.note(f"fault {vm}: {' '.join(args[:1] + rest)} {'on' if verb == 'fault' else 'off'}")


def _crash(world: World, args: list[str], verb: str) -> None:
    for host in world.hosts.values():
        if host.hyper.domains.pop(args[0], None) is not None:
            world.note(f"crash {args[0]} on {host.name}")


ACTIONS: dict[str, Any] = {
    **{v: (lambda w, a, v=v: _net(w, a, v)) for v in (
        "isolate", "heal", "heal-all", "cut-link", "restore-link", "cut", "restore", "loss",
        "partition", "vote-requests")},
    **{v: (lambda w, a, v=v: _process(w, a, v)) for v in (
        "kill-peer", "stop-peer", "restart-peer", "pause", "resume", "lease-block", "lease-unblock",
        "clock", "upgrade")},
    **{v: (lambda w, a, v=v: _leader(w, a, v)) for v in (
        "kill-leader", "pause-leader", "lease-block-leader", "stop-leader")},
    **{v: (lambda w, a, v=v: _power(w, a, v)) for v in ("power-off", "power-on",
                                                         "chassis-death")},
    **{v: (lambda w, a, v=v: _bmc(w, a, v)) for v in ("bmc", "bmc-fails")},
    **{v: (lambda w, a, v=v: _storage(w, a, v)) for v in ("storage-cut", "storage-restore")},
    **{v: (lambda w, a, v=v: _vm_fault(w, a, v)) for v in ("fault", "clear-fault")},
    "crash": lambda w, a: _crash(w, a, "crash"),
    "outlet": lambda w, a: _outlet(w, a),
}


def _outlet(world: World, args: list[str]) -> None:
    world.outlets.setdefault(args[0], SimBmc()).mode = BmcMode(args[1])
    world.note(f"outlet {args[0]}: mode {args[1]}")


def _fencing(host: str, words: list[str]) -> c.SetHostFencing:
    """`--level DEVICE... --level ...` in hactl's device words (cli/fencespec.py)."""
    levels: list[list[FenceDevice]] = []
    for word in words:
        if word == "--level":
            levels.append([])
            continue
        raw = parse_device(word)
        raw["options"] = [[k, v] for k, v in raw.get("options", {}).items()]
        levels[-1].append(decode_fields(FenceDevice, raw))
    return c.SetHostFencing(name=host, levels=tuple(FenceLevel(tuple(d)) for d in levels))


def hactl_command(args: list[str]) -> c.Command:
    match args:
        case ["host", "maintenance", host, ("on" | "off") as mode]:
            return c.SetHostMaintenance(name=host, on=mode == "on")
        case ["host", "tag", host, ("add" | "remove") as verb, tag]:
            return c.TagHost(name=host, tag=tag, add=verb == "add")
        case ["host", "ready", host]:
            return c.SetHostMaintenance(name=host, on=False, ready=True)
        case ["fence", "confirm", host, *reason]:
            return c.AdminConfirmFence(host=host, who="operator", reason=" ".join(reason))
        case ["fence", "retry", host]:
            return c.RetryFence(host=host, who="operator")
        case ["vm", ("start" | "stop" | "disable") as verb, vm]:
            desired = {
                "start": Desired.STARTED,
                "stop": Desired.STOPPED,
                "disable": Desired.DISABLED,
            }[verb]
            return c.SetVmDesired(name=vm, desired=desired)
        case ["vm", "remove", vm]:
            return c.RemoveVm(name=vm)
        case ["vm", "migrate", vm, *target]:
            return c.MigrateVm(name=vm, target=target[0] if target else "")
        case ["cluster", "maintenance", ("on" | "off") as mode]:
            return c.SetClusterMaintenance(on=mode == "on", who="operator")
        case ["settings", *pairs]:
            return decode_fields(c.SetSettings, parse_pairs(pairs))
        case ["host", "fencing", host, "--level", *words]:
            return _fencing(host, ["--level", *words])
        case ["shutdown-policy", policy, *host]:
            return c.SetShutdownPolicy(host=host[0] if host else "",
                                       policy="" if policy == "default" else policy)
    raise ValueError(f"unknown hactl command {' '.join(args)!r}")


def forced_command(args: list[str]) -> c.Command:
    """A command proposed past the version gate (a scenario shows what a peer that
    cannot read it does)."""
    match args:
        case ["fence-hold", host, *reason]:
            return c.HoldFence(host=host, reason=" ".join(reason) or "forced")
    raise ValueError(f"unknown forced command {' '.join(args)!r}")


def expect(world: World, args: list[str]) -> str:
    state = world.truth()
    if state is None:
        return "expectation checked with no peer running"
    match args:
        case ["vm", vm, want, *host]:
            rec = state.vms[vm]
            ok = rec.state.value == want and (not host or rec.host == host[0])
            got = f"{rec.state.value} on {rec.host or '-'}"
        case ["host", host, want]:
            got = state.hosts[host].state.value
            ok = got == want
        case ["running", vm, where]:
            hosts = [h.name for h in world.hosts.values() if h.powered and vm in h.hyper.live()]
            got = ",".join(hosts) or "nowhere"
            ok = got == where
        case ["fences", count]:
            got = str(len(_confirmed(state)))
            ok = got == count
        case ["halted", host]:
            got = world.hosts[host].peer.halted or "running"
            ok = bool(world.hosts[host].peer.halted)
        case ["leader", host, term]:
            leader = world.leader
            got = f"{leader} in term {world.hosts[leader].peer.raft.term}" if leader else "none"
            ok = got == f"{host} in term {term}"
        case ["term", host, term]:
            got = str(world.hosts[host].peer.raft.term)
            ok = got == term
        case ["outlet-offs", address, count]:
            outlet = world.outlets.get(address)
            got = str(sum(1 for _, what in outlet.log if what == "off") if outlet else 0)
            ok = got == count
        case ["power-offs", host, count]:
            got = str(sum(1 for _, what in world.hosts[host].bmc.log if what == "off"))
            ok = got == count
        case _:
            raise ValueError(f"unknown expectation {' '.join(args)!r}")
    world.note(f"expect {' '.join(args)}: {'ok' if ok else 'FAILED, got ' + got}")
    return "" if ok else f"expected {' '.join(args)}, got {got}"


def _confirmed(state: ClusterState) -> list[Any]:
    return [r for r in state.fences if r.result.host_is_off and r.result is not FenceResult.MANUAL]


def render(world: World, failures: list[str]) -> str:
    lines = [f"{t:7.2f}  {text}" for t, text in world.timeline]
    lines.append("")
    leader = world.leader
    term = world.hosts[leader].peer.raft.term if leader else 0
    state = world.truth()
    lines.append(f"final (t={world.now:.2f}, leader {leader}, term {term}, "
                 f"log {state.applied_index if state else 0} entries):")
    if state is not None:
        for name in sorted(state.hosts):
            host = state.hosts[name]
            lines.append(f"  host {name:<8} {host.state.value:<13} {host.reason}")
        for name in sorted(state.vms):
            vm = state.vms[name]
            running = [h.name for h in world.hosts.values() if h.powered and name in h.hyper.live()]
            lines.append(
                f"  vm   {name:<8} {vm.state.value:<10} on {vm.host or '-':<6} "
                f"running on {','.join(running) or 'nowhere'}"
            )
    lines.append(f"invariants: {'VIOLATED' if world.observer.violations else 'ok'}")
    lines.extend(f"  FAILED {f}" for f in failures)
    return "\n".join(lines) + "\n"
