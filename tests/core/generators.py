"""Random but realistic command streams for property tests and the benchmark.

`next_command` looks at the current state and picks a command that usually
makes sense (reports for the current placement, confirms for the current
token, ...), sometimes one that does not. Choices come from a `Chooser`, so the
same generator is driven by hypothesis (shrinkable) or by a seeded
random.Random (subprocess determinism test).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from hypothesis import strategies as st

from hacluster.fsm import commands as c
from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    ClusterState,
    Desired,
    FenceAction,
    FenceDevice,
    FenceLevel,
    FenceResult,
    HaPolicy,
    HostRole,
    Selector,
)
from hacluster.fsm.states import HostState

T = TypeVar("T")

HOSTS = ("h0", "h1", "h2", "h3", "h4")
VMS = tuple(f"v{i}" for i in range(10))
GROUPS = ("", "", "", "db", "web")
SECRET_MARK = b"SEALED-SECRET-"


class Chooser(Protocol):
    def pick(self, options: Sequence[T]) -> T: ...

    def integer(self, low: int, high: int) -> int: ...

    def real(self, low: float, high: float) -> float: ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def real(self, low: float, high: float) -> float:
        return round(self.rng.uniform(low, high), 3)


class DataChooser:
    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def pick(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def real(self, low: float, high: float) -> float:
        return self.data.draw(st.floats(low, high, allow_nan=False, allow_infinity=False))


Maker = Callable[[Chooser, ClusterState], c.Command]


def _host(ch: Chooser, state: ClusterState) -> str:
    known = sorted(state.hosts)
    return ch.pick(known) if known and ch.integer(0, 9) else ch.pick(HOSTS)


def _host_in(ch: Chooser, state: ClusterState, *wanted: HostState) -> str:
    """Mostly a host in one of the wanted states (so commands usually make sense)."""
    fitting = sorted(n for n, h in state.hosts.items() if h.state in wanted)
    return ch.pick(fitting) if fitting and ch.integer(0, 4) else _host(ch, state)


def _vm(ch: Chooser, state: ClusterState) -> str:
    known = sorted(state.vms)
    return ch.pick(known) if known and ch.integer(0, 9) else ch.pick(VMS)


def _new(ch: Chooser, pool: Sequence[str], taken: Iterable[str]) -> str:
    """Mostly a name not taken yet."""
    free = sorted(set(pool) - set(taken))
    return ch.pick(free) if free and ch.integer(0, 4) else ch.pick(pool)


def _secret(ch: Chooser) -> bytes:
    return SECRET_MARK + str(ch.integer(0, 99)).encode()


def add_host(ch: Chooser, state: ClusterState) -> c.Command:
    role = ch.pick((HostRole.VOTER, HostRole.VOTER, HostRole.MEMBER, HostRole.WITNESS))
    bmc = BmcOverride(address=f"10.0.0.{ch.integer(1, 9)}", sealed_password=_secret(ch))
    taken = (n for n, h in state.hosts.items() if h.state is not HostState.REMOVED)
    return c.AddHost(
        name=_new(ch, HOSTS, taken),
        addresses=("192.168.0.1",),
        memory_mib=ch.pick((2_048, 4_096, 8_192)),
        vcpus=ch.pick((2, 4)),
        role=role,
        bmc=bmc,
    )


def host_ready(ch: Chooser, state: ClusterState) -> c.Command:
    name = _host_in(ch, state, HostState.JOINING, HostState.FENCED)
    return c.HostReady(name=name, memory_mib=ch.pick((0, 0, 4_096)), vcpus=ch.pick((0, 0, 4)))


def host_misc(ch: Chooser, state: ClusterState) -> c.Command:
    name = _host(ch, state)
    options: list[c.Command] = [
        c.RemoveHost(name=_host_in(ch, state, HostState.MAINTENANCE, HostState.FENCED)),
        c.ReportHostLoad(name=name, load=ch.real(0, 8)),
        c.SetHostMaintenance(name=name, on=ch.pick((True, False))),
        c.SetHostBmc(name=name, bmc=BmcOverride(username="admin", sealed_password=_secret(ch))),
        c.ReportBmcHealth(name=name, ok=ch.pick((True, False)), detail="probe"),
        c.SetPeerStopped(name=name, stopped=ch.pick((True, False))),
        c.SetHostAddresses(name=name, addresses=ch.pick(
            (("main=192.168.0.1",), ("main=192.168.0.1", "backend=10.0.0.1"), ("bad",)))),
        c.AnnounceVersions(name=name, commands=ch.pick(((("noop", 1),), (
            ("frobnicate", 2), ("noop", 1)))), entry_formats=ch.pick(((1,), (1, 2)))),
        c.MarkHostAlive(
            name=_host_in(
                ch, state, HostState.SUSPECT, HostState.FENCE_BLOCKED, HostState.FENCE_FAILED
            ),
            evidence="renewed",
        ),
        c.SetHostFencing(name=name, levels=ch.pick(((), (
            FenceLevel((FenceDevice("bmc"),)),
            FenceLevel((FenceDevice("agent", "pdu1", agent="fence_apc",
                                    sealed_password=_secret(ch)),
                        FenceDevice("ipmi", "10.0.9.1", sealed_password=_secret(ch)))))))),
    ]
    return ch.pick(options)


def suspect(ch: Chooser, state: ClusterState) -> c.Command:
    name = _host_in(ch, state, HostState.ONLINE, HostState.DRAINING)
    return c.MarkHostSuspect(name=name, evidence="lease overdue")


def request_fence(ch: Chooser, state: ClusterState) -> c.Command:
    name = _host_in(ch, state, HostState.SUSPECT, HostState.FENCING, HostState.FENCE_BLOCKED)
    return c.RequestFence(
        host=name, reason="lease expired", evidence="silent", term=ch.integer(0, 3)
    )


def fence_outcome(ch: Chooser, state: ClusterState) -> c.Command:
    name = _host_in(ch, state, HostState.FENCING, HostState.FENCE_FAILED, HostState.FENCE_BLOCKED)
    host = state.hosts.get(name)
    token = host.fence_token if host is not None and ch.integer(0, 5) else ch.integer(0, 50)
    kind = ch.pick(("confirm", "confirm", "confirm", "failed", "failed", "admin", "retry"))
    off = (FenceResult.OFF, FenceResult.ALREADY_OFF, FenceResult.REBOOTED)
    failed = (FenceResult.TIMEOUT, FenceResult.UNREACHABLE, FenceResult.NOTIFIED)
    result = (
        ch.pick({"confirm": off, "failed": failed}.get(kind, off))
        if ch.integer(0, 4)
        else ch.pick(tuple(FenceResult))
    )
    if kind == "confirm":
        return c.ConfirmFence(
            host=name, token=token, result=result, evidence="read back off", method="ipmi"
        )
    if kind == "failed":
        return c.FenceFailed(
            host=name, token=token, result=result, evidence="no answer", method="ipmi"
        )
    if kind == "admin":
        return c.AdminConfirmFence(host=name, who=ch.pick(("alice", "")), reason="pulled plug")
    return c.RetryFence(host=name, who="bob")


def add_vm(ch: Chooser, state: ClusterState) -> c.Command:
    allowed = ch.pick(((), (), ("h0", "h1"), ("h2",)))
    return c.AddVm(
        name=_new(ch, VMS, state.vms),
        xml="<domain><name>x</name></domain>",
        memory_mib=ch.pick((512, 1_024, 2_048)),
        vcpus=ch.pick((1, 2)),
        priority=ch.integer(0, 3),
        ha=ch.pick((HaPolicy.RESTART, HaPolicy.RESTART, HaPolicy.NONE)),
        desired=ch.pick((Desired.STARTED, Desired.STARTED, Desired.STOPPED, Desired.DISABLED)),
        allowed_hosts=allowed,
        anti_affinity=ch.pick(GROUPS),
        max_restarts=ch.integer(0, 2),
        max_relocates=ch.integer(0, 1),
    )


def vm_misc(ch: Chooser, state: ClusterState) -> c.Command:
    name = _vm(ch, state)
    options: list[c.Command] = [
        c.RemoveVm(name=name),
        c.SetVmOptions(name=name, priority=ch.integer(0, 5), anti_affinity=ch.pick(GROUPS)),
        c.SetVmOptions(name=name, allowed_hosts=ch.pick(((), ("h1",), ("h0", "h3")))),
        c.SetVmDesired(name=name, desired=ch.pick(tuple(Desired))),
        c.MigrateVm(name=name, target=ch.pick(("", *HOSTS))),
    ]
    return ch.pick(options)


def vm_report(ch: Chooser, state: ClusterState) -> c.Command:
    placed = sorted(n for n, v in state.vms.items() if v.host)
    if not placed and ch.integer(0, 4):
        return add_vm(ch, state)
    name = ch.pick(placed) if placed and ch.integer(0, 9) else _vm(ch, state)
    vm = state.vms.get(name)
    if vm is None or not ch.integer(0, 9):
        return c.VmReport(
            name=name,
            host=_host(ch, state),
            placement=ch.integer(0, 50),
            observed=ch.pick(c.VM_REPORTS),
        )
    host = vm.target_host if vm.target_host and not ch.integer(0, 3) else vm.host
    likely = {
        "starting": ("started", "started", "start-failed"),
        "recovery": ("started", "started", "crashed", "start-locked"),
        "stopping": ("stopped", "stopped", "stop-failed"),
        "migrating": ("migrated", "migrate-failed", "crashed"),
        "started": ("crashed",),
    }.get(vm.state.value, ("started",))
    observed = ch.pick(likely) if ch.integer(0, 2) else ch.pick(c.VM_REPORTS)
    return c.VmReport(
        name=name, host=host, placement=vm.placement, observed=observed, detail="seen by agent"
    )


def cluster_misc(ch: Chooser, state: ClusterState) -> c.Command:
    options: list[c.Command] = [
        c.SetSettings(selector=ch.pick(tuple(Selector))),
        c.SetSettings(fence_cap=ch.integer(0, 4), fence_window_s=ch.pick((60.0, 600.0))),
        c.SetSettings(
            memory_overcommit=ch.pick((0.5, 1.0, 1.5)), vcpu_overcommit=ch.pick((1.0, 4.0))
        ),
        c.SetSettings(fence_retry_limit=ch.integer(0, 3), fence_action=ch.pick(tuple(FenceAction))),
        c.SetBmcDefaults(bmc=BmcSettings(username="root", sealed_password=_secret(ch))),
        c.SetClusterMaintenance(on=not ch.integer(0, 3), who="carol"),
        c.Noop(term=ch.integer(0, 3)),
    ]
    return ch.pick(options)


MAKERS: tuple[tuple[Maker, int], ...] = (
    (add_host, 3),
    (host_ready, 3),
    (host_misc, 2),
    (suspect, 3),
    (request_fence, 3),
    (fence_outcome, 4),
    (add_vm, 5),
    (vm_misc, 3),
    (vm_report, 8),
    (cluster_misc, 2),
)
WEIGHTED: tuple[Maker, ...] = tuple(m for m, w in MAKERS for _ in range(w))


def next_command(ch: Chooser, state: ClusterState) -> c.Command:
    return ch.pick(WEIGHTED)(ch, state)


def next_envelope(
    ch: Chooser, state: ClusterState, clock: float, used_ids: list[str]
) -> c.Envelope:
    """A command with a stamp a little (sometimes a lot) after clock, and a request id
    that is sometimes reused."""
    cmd = next_command(ch, state)
    stamp = clock + ch.pick((0.0, 0.5, 1.0, 5.0, 100.0, 1_000.0))
    if used_ids and not ch.integer(0, 30):
        request_id = ch.pick(used_ids)
    else:
        request_id = f"r{len(used_ids)}" if ch.integer(0, 3) else ""
        if request_id:
            used_ids.append(request_id)
    return c.Envelope(cmd, request_id, ch.pick(("h0", "h1", "admin")), stamp)


def envelopes(
    ch: Chooser, count: int, apply_fn: Callable[[c.Envelope], Any], state: ClusterState
) -> list[c.Envelope]:
    """Generate count envelopes, applying each (through apply_fn) before the next."""
    out: list[c.Envelope] = []
    used: list[str] = []
    clock = 1_000.0
    for _ in range(count):
        env = next_envelope(ch, state, clock, used)
        clock = env.stamped_at
        apply_fn(env)
        out.append(env)
    return out
