"""FSM benchmark: a 100-host, 10,000-VM state built by applying real commands.

Measures
  apply_per_s           apply() throughput on a realistic mix of encoded commands
                        (VM reports, host loads, option and settings changes,
                        migrations, retried request ids) against the big state
  snapshot_bytes        size of encode_snapshot()
  snapshot_roundtrip_s  encode_snapshot + decode_snapshot
  plan_1000_vms_s       apply() of the ConfirmFence that releases a host holding
                        1,000 VMs (one recovery plan for all of them)

Extra keys: build_s, snapshot_encode_s, snapshot_decode_s, fence_request_s (the
RequestFence that freezes the 1,000 VMs), planner_only_1000_s (Planner + plan on
the same VMs, without apply), apply_with_1000_pending_s (one capacity-changing
entry while 1,000 unplaceable VMs are pending), mix_entries, vms, hosts.

Usage: python bench/fsm.py [--profile]   (the last stdout line is one JSON object)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from hacluster.fsm import (
    ClusterState,
    apply,
    decode_snapshot,
    encode_command,
    encode_snapshot,
    state_digest,
)
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import FenceResult
from hacluster.fsm.states import VmState

HOSTS = 100
VMS = 10_000
BIG = "h000"  # holds 1,000 VMs; fenced at the end
BIG_VMS = 1_000
VM_MEMORY_MIB = 1_024
VM_VCPUS = 2
MIX_ENTRIES = 20_000

XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <description>team-{team}</description>
  <memory unit='MiB'>1024</memory>
  <currentMemory unit='MiB'>1024</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source protocol='rbd' name='vms/{name}-root'><host name='10.0.0.10' port='6789'/></source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:{mac}'/><source bridge='br0'/><model type='virtio'/>
    </interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='virtio'/>
  </devices>
</domain>
"""


def domain_xml(i: int) -> str:
    name = vm_name(i)
    mac = ":".join(f"{(i >> s) & 0xFF:02x}" for s in (16, 8, 0))
    return XML.format(name=name, uuid=f"{i:08x}-0000-4000-8000-{i:012x}", team=i % 17, mac=mac)


def vm_name(i: int) -> str:
    return f"vm{i:05}"


def host_name(i: int) -> str:
    return f"h{i:03}"


class Log:
    """A state plus the log index and proposer clock; every command is encoded."""

    def __init__(self) -> None:
        self.state = ClusterState()
        self.index = 0
        self.clock = 1_000.0
        self.rejected = 0

    def entry(self, cmd: c.Command, request_id: str = "") -> bytes:
        self.clock += 0.01
        return encode_command(c.Envelope(cmd, request_id, "h001", self.clock))

    def apply(self, data: bytes) -> list[Event]:
        self.index += 1
        events = apply(self.state, data, self.index)
        self.rejected += sum(1 for e in events if e.kind in ("rejected", "undecodable"))
        return events

    def run(self, cmd: c.Command, request_id: str = "") -> list[Event]:
        return self.apply(self.entry(cmd, request_id))


def build() -> Log:
    log = Log()
    log.run(c.SetSettings(vcpu_overcommit=4.0))
    for i in range(HOSTS):
        big = i == 0
        log.run(
            c.AddHost(
                name=host_name(i),
                addresses=(f"main=10.1.{i // 250}.{i % 250}",),
                memory_mib=(1 << 20) if big else 256 * 1024,
                vcpus=512 if big else 64,
            )
        )
    log.run(c.HostReady(name=BIG))  # only the big host takes the first 1,000 VMs
    for i in range(VMS):
        if i == BIG_VMS:
            for h in range(1, HOSTS):
                log.run(c.HostReady(name=host_name(h)))
        log.run(
            c.AddVm(
                name=vm_name(i),
                xml=domain_xml(i),
                memory_mib=VM_MEMORY_MIB,
                vcpus=VM_VCPUS,
                priority=i % 4,
                anti_affinity=f"g{(i // 10) % 50}" if i % 10 == 0 and i >= BIG_VMS else "",
            )
        )
        vm = log.state.vms[vm_name(i)]
        log.run(c.VmReport(name=vm.name, host=vm.host, placement=vm.placement, observed="started"))
    assert log.rejected == 0, "building the state was refused somewhere"
    assert len(log.state.vms_by_host[BIG]) == BIG_VMS
    assert all(vm.state is VmState.STARTED for vm in log.state.vms.values())
    return log


def mix(log: Log, count: int) -> list[bytes]:
    """A realistic mix of entries, valid in order against the state after build()."""
    state = log.state
    others = [n for n in sorted(state.vms) if state.vms[n].host != BIG]
    spare = iter(others)
    entries: list[bytes] = []
    index = log.index
    clock = log.clock

    def add(cmd: c.Command, request_id: str = "") -> int:
        nonlocal index, clock
        clock += 0.01
        entries.append(encode_command(c.Envelope(cmd, request_id, "h001", clock)))
        index += 1
        return index

    kinds = _cycle(
        ["load", "load", "load", "crash", "options", "noop", "migrate", "retry", "settings", "load"]
    )
    n = 0
    while len(entries) < count:
        n += 1
        kind = next(kinds)
        if kind == "load":
            add(c.ReportHostLoad(name=host_name(n % HOSTS), load=(n % 97) / 10))
        elif kind == "crash":  # crash, restart in place, started
            vm = state.vms[next(spare)]
            placement = add(
                c.VmReport(
                    name=vm.name,
                    host=vm.host,
                    placement=vm.placement,
                    observed="crashed",
                    detail="guest panic",
                )
            )
            add(c.VmReport(name=vm.name, host=vm.host, placement=placement, observed="started"))
        elif kind == "options":
            add(c.SetVmOptions(name=vm_name(n % VMS), priority=n % 5))
        elif kind == "noop":
            add(c.Noop(term=1))
        elif kind == "migrate":
            vm = state.vms[next(spare)]
            target = host_name(1 + (int(vm.host[1:]) % (HOSTS - 1)))
            placement = add(c.MigrateVm(name=vm.name, target=target))
            add(c.VmReport(name=vm.name, host=target, placement=placement, observed="migrated"))
        elif kind == "retry":  # an agent retries a report it already got committed
            add(c.ReportHostLoad(name=BIG, load=1.0), request_id=f"agent-{n}")
            add(c.ReportHostLoad(name=BIG, load=1.0), request_id=f"agent-{n}")
        else:
            add(c.SetSettings(vm_stable_s=600.0 + n % 7))
    return entries


def _cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items


def capacity_change_with_pending(log: Log) -> float:
    """Apply time of one capacity-changing entry (a VM stopped) while 1,000 VMs that fit
    nowhere are pending: every such entry re-plans every pending VM."""
    for i in range(BIG_VMS):
        log.run(c.AddVm(name=f"huge{i:04}", xml="<domain/>", memory_mib=300 * 1024, vcpus=2))
    assert len(log.state.pending) == BIG_VMS
    name = vm_name(VMS - 1)
    log.run(c.SetVmDesired(name=name, desired=c.Desired.STOPPED))
    vm = log.state.vms[name]
    stopped = log.entry(
        c.VmReport(name=name, host=vm.host, placement=vm.placement, observed="stopped")
    )
    seconds, _ = timed(lambda: log.apply(stopped))
    assert log.rejected == 0 and log.state.vms[name].state is VmState.STOPPED
    return seconds


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(runs: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    results = [timed(fn) for _ in range(runs)]
    return min(r[0] for r in results), results[0][1]


def measure(profile: cProfile.Profile | None) -> dict[str, Any]:
    out: dict[str, Any] = {"hosts": HOSTS, "vms": VMS}
    out["build_s"], log = timed(build)

    snapshot = encode_snapshot(log.state)
    out["snapshot_bytes"] = len(snapshot)
    out["snapshot_encode_s"], _ = best_of(3, lambda: encode_snapshot(log.state))
    out["snapshot_decode_s"], restored = best_of(3, lambda: decode_snapshot(snapshot))
    out["snapshot_roundtrip_s"], _ = best_of(3, lambda: decode_snapshot(encode_snapshot(log.state)))
    assert state_digest(restored) == state_digest(log.state)

    entries = mix(log, MIX_ENTRIES)
    out["mix_entries"] = len(entries)
    if profile:
        profile.enable()
    seconds, _ = timed(lambda: [log.apply(e) for e in entries])
    if profile:
        profile.disable()
    assert log.rejected == 0, f"{log.rejected} mix entries were refused"
    out["apply_per_s"] = round(len(entries) / seconds)

    log.run(c.MarkHostSuspect(name=BIG, evidence="benchmark"))
    from hacluster.fsm.placement import Planner, plan

    frozen = log.state.vms_on(BIG)
    out["planner_only_1000_s"], _ = timed(lambda: plan(Planner(log.state, [BIG]), frozen))
    out["fence_request_s"], _ = timed(
        lambda: log.run(c.RequestFence(host=BIG, reason="benchmark", evidence="lease expired"))
    )
    token = log.state.hosts[BIG].fence_token
    confirm = log.entry(
        c.ConfirmFence(
            host=BIG, token=token, result=FenceResult.OFF, evidence="power off", method="ipmi"
        )
    )
    if profile:
        profile.enable()
    out["plan_1000_vms_s"], events = timed(lambda: log.apply(confirm))
    if profile:
        profile.disable()
    recovered = [e for e in events if e.get("to") == "recovery"]
    assert len(recovered) == BIG_VMS, f"only {len(recovered)} VMs were placed"
    assert log.rejected == 0
    out["apply_with_1000_pending_s"] = capacity_change_with_pending(log)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the apply mix and the ConfirmFence (to stderr)",
    )
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    result = measure(profile)
    if profile:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(30)
        print(text.getvalue(), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
