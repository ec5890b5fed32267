"""Scenario directories: cluster.toml (hosts, VMs, settings) + events.txt
(timed faults, operator commands and expectations) -> a timeline.

events.txt, one per line, `#` starts a comment:
    TIME power-off|power-on|isolate|heal HOST
    TIME heal-all | kill-leader
    TIME cut-link|restore-link HOST LINK
    TIME partition H1,H2 H3,H4,H5
    TIME bmc HOST works|unreachable|slow|already-off|bad-credentials
    TIME crash VM
    TIME fault|clear-fault start-fails|stop-fails|migrate-fails VM
    TIME hactl host maintenance HOST on|off
    TIME hactl fence confirm HOST REASON... | hactl fence retry HOST
    TIME hactl vm start|stop|disable VM | hactl vm migrate VM [HOST]
    TIME hactl cluster maintenance on|off
    TIME hactl settings KEY=VALUE...
    TIME expect vm VM STATE [HOST] | expect host HOST STATE | expect running VM HOST|nowhere
    TIME expect fences N        (confirmed fences so far)
"""

from __future__ import annotations

import difflib
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacluster.cli.commands import parse_pairs
from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired, FenceResult, HostRole
from hacluster.fsm.states import HostState
from hacluster.fsm.wire import WireError, decode_fields
from hacluster.sim.fakes import BmcMode
from hacluster.sim.world import Simulation


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file and line."""


@dataclass
class Outcome:
    name: str
    timeline: str
    failures: list[str] = field(default_factory=list)
    mismatch: str = ""  # unified diff against expected.log ("" when equal or absent)


def load_cluster(sim: Simulation, path: Path) -> tuple[dict[str, Any], float]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    for spec in doc.get("host", []):
        sim.add_host(
            spec["name"],
            spec.get("memory_mib", 16384),
            spec.get("vcpus", 16),
            HostRole(spec.get("role", "voter")),
            tuple(spec.get("links", ["mgmt"])),
            BmcMode(spec.get("bmc", "works")),
        )
    return doc, float(doc.get("duration", 30.0))


def bootstrap(sim: Simulation, doc: dict[str, Any], path: Path) -> None:
    """Elect a first leader, then commit settings, hosts and VMs as an operator would."""
    while sim.leader is None:
        sim.step()
    if doc.get("settings"):
        sim.admin(_decode(c.SetSettings, doc["settings"], path))
    for spec in doc.get("host", []):
        sim.admin(
            c.AddHost(
                name=spec["name"],
                memory_mib=spec.get("memory_mib", 16384),
                vcpus=spec.get("vcpus", 16),
                role=HostRole(spec.get("role", "voter")),
                addresses=tuple(f"{ln}=sim" for ln in spec.get("links", ["mgmt"])),
            )
        )
    _wait_until_online(sim, [spec["name"] for spec in doc.get("host", [])])
    for spec in doc.get("vm", []):
        fields = {
            "xml": f"<domain><name>{spec['name']}</name></domain>",
            "memory_mib": 1024,
            "vcpus": 1,
            **spec,
        }
        sim.admin(_decode(c.AddVm, fields, path))


def _wait_until_online(sim: Simulation, names: list[str], limit_s: float = 5.0) -> None:
    deadline = sim.now + limit_s
    while sim.now < deadline and sim.leader is not None:
        hosts = sim.hosts[sim.leader].state.hosts
        if all(hosts[n].state is HostState.ONLINE for n in names):
            return
        sim.step()


def _decode(cls: type, fields: dict[str, Any], path: Path) -> Any:
    try:
        return decode_fields(cls, fields)
    except WireError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def run_scenario(directory: Path) -> Outcome:
    sim = Simulation()
    cluster_file = directory / "cluster.toml"
    doc, duration = load_cluster(sim, cluster_file)
    bootstrap(sim, doc, cluster_file)
    failures: list[str] = []
    for when, words, where in _events(directory / "events.txt"):
        sim.run_until(when)
        try:
            failure = perform(sim, words)
        except (KeyError, ValueError, IndexError) as exc:
            raise ScenarioError(f"{where}: {exc}") from None
        if failure:
            failures.append(f"{where}: {failure}")
    sim.run_until(duration)
    failures.extend(f"invariant: {v}" for v in sim.observer.violations)
    text = render(sim, failures)
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


def perform(sim: Simulation, words: list[str]) -> str:
    """Carry out one scenario action; return a failure text for a failed expectation."""
    verb, args = words[0], words[1:]
    if verb in ("power-off", "power-on"):
        (sim.power_off if verb == "power-off" else sim.power_on)(args[0], "scenario")
    elif verb == "isolate":
        sim.net.isolate(args[0])
        sim.note(f"net {args[0]}: isolated (all links cut; host keeps running)")
    elif verb == "heal":
        sim.net.heal(args[0])
        sim.note(f"net {args[0]}: healed")
    elif verb == "heal-all":
        sim.net.heal_all()
        sim.note("net: all partitions healed")
    elif verb in ("cut-link", "restore-link"):
        cut = sim.net.cut[args[0]]
        cut.add(args[1]) if verb == "cut-link" else cut.discard(args[1])
        sim.note(f"net {args[0]}: link {args[1]} {'cut' if verb == 'cut-link' else 'restored'}")
    elif verb == "partition":
        for group, names in enumerate(args):
            for name in names.split(","):
                sim.net.group[name] = group
        sim.note(f"net: partition {' | '.join(args)}")
    elif verb == "bmc":
        sim.hosts[args[0]].bmc = BmcMode(args[1])
        sim.note(f"bmc {args[0]}: mode {args[1]}")
    elif verb == "kill-leader":
        if sim.leader:
            sim.power_off(sim.leader, "scenario: kill the leader")
    elif verb == "crash":
        _crash(sim, args[0])
    elif verb in ("fault", "clear-fault"):
        kinds = {
            "start-fails": sim.faults.start_fails,
            "stop-fails": sim.faults.stop_fails,
            "migrate-fails": sim.faults.migrate_fails,
        }
        bucket = kinds[args[0]]
        bucket.add(args[1]) if verb == "fault" else bucket.discard(args[1])
        sim.note(f"fault {args[1]}: {args[0]} {'on' if verb == 'fault' else 'off'}")
    elif verb == "hactl":
        command = hactl_command(args)
        sim.note(f"hactl {' '.join(args)}")
        sim.admin(command)
    elif verb == "expect":
        return expect(sim, args)
    else:
        raise ValueError(f"unknown action {verb!r}")
    return ""


def _crash(sim: Simulation, vm: str) -> None:
    for host in sim.hosts.values():
        if host.hyper.domains.pop(vm, None) is not None:
            sim.note(f"crash {vm} on {host.name}")


def hactl_command(args: list[str]) -> c.Command:
    match args:
        case ["host", "maintenance", host, ("on" | "off") as mode]:
            return c.SetHostMaintenance(name=host, on=mode == "on")
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
        case ["vm", "migrate", vm, *target]:
            return c.MigrateVm(name=vm, target=target[0] if target else "")
        case ["cluster", "maintenance", ("on" | "off") as mode]:
            return c.SetClusterMaintenance(on=mode == "on", who="operator")
        case ["settings", *pairs]:
            return decode_fields(c.SetSettings, parse_pairs(pairs))
    raise ValueError(f"unknown hactl command {' '.join(args)!r}")


def expect(sim: Simulation, args: list[str]) -> str:
    state = sim.hosts[sim.leader].state if sim.leader else None
    if state is None:
        return "expectation checked with no leader"
    match args:
        case ["vm", vm, want, *host]:
            rec = state.vms[vm]
            ok = rec.state.value == want and (not host or rec.host == host[0])
            got = f"{rec.state.value} on {rec.host or '-'}"
        case ["host", host, want]:
            got = state.hosts[host].state.value
            ok = got == want
        case ["running", vm, where]:
            hosts = [h.name for h in sim.hosts.values() if h.powered and vm in h.hyper.live()]
            got = ",".join(hosts) or "nowhere"
            ok = got == where
        case ["fences", count]:
            confirmed = [
                r
                for r in state.fences
                if r.result.host_is_off and r.result is not FenceResult.MANUAL
            ]
            got = str(len(confirmed))
            ok = got == count
        case _:
            raise ValueError(f"unknown expectation {' '.join(args)!r}")
    sim.note(f"expect {' '.join(args)}: {'ok' if ok else 'FAILED, got ' + got}")
    return "" if ok else f"expected {' '.join(args)}, got {got}"


def render(sim: Simulation, failures: list[str]) -> str:
    lines = [f"{t:7.2f}  {text}" for t, text in sim.timeline]
    lines.append("")
    lines.append(
        f"final (t={sim.now:.2f}, leader {sim.leader}, term {sim.term}, "
        f"log {len(sim.log)} entries):"
    )
    state = sim.hosts[sim.leader].state if sim.leader else None
    if state is not None:
        for name in sorted(state.hosts):
            host = state.hosts[name]
            lines.append(f"  host {name:<8} {host.state.value:<13} {host.reason}")
        for name in sorted(state.vms):
            vm = state.vms[name]
            running = [h.name for h in sim.hosts.values() if h.powered and name in h.hyper.live()]
            lines.append(
                f"  vm   {name:<8} {vm.state.value:<10} on {vm.host or '-':<6} "
                f"running on {','.join(running) or 'nowhere'}"
            )
    lines.append(f"invariants: {'VIOLATED' if sim.observer.violations else 'ok'}")
    lines.extend(f"  FAILED {f}" for f in failures)
    return "\n".join(lines) + "\n"
