"""`hactl explain` (core/explain.py), table-driven: each case grows a state by applying
real commands, then checks every line explain gives for one VM."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from hacluster.core.explain import explain
from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired, Failback, HaPolicy

from .builders import Cluster


def three_hosts() -> Cluster:
    cl = Cluster()
    cl.add_host("h1", 4096)
    cl.add_host("h2", 8192)
    cl.add_host("h3", 2048)
    cl.announce_all()
    return cl


def started(**options: object) -> Callable[[Cluster], None]:
    return lambda cl: cl.add_vm("db", **options)  # type: ignore[arg-type]


def migrating(cl: Cluster) -> None:
    cl.add_vm("db")
    cl.ok(c.MigrateVm(name="db", target="h1"))


def stopped(cl: Cluster) -> None:
    cl.add_vm("db", desired=Desired.STOPPED)


def disabled(cl: Cluster) -> None:
    cl.add_vm("db", desired=Desired.DISABLED)


def too_big(cl: Cluster) -> None:
    cl.add_vm("db", memory_mib=100_000)


def host_fencing(cl: Cluster) -> None:
    cl.add_vm("db")
    cl.fence("h2")


def restarted_once(cl: Cluster) -> None:
    cl.add_vm("db")
    cl.report("db", "crashed")


def anti_affinity(cl: Cluster) -> None:
    cl.add_vm("db", anti_affinity="dbs")
    cl.add_vm("db2", anti_affinity="dbs")


def relocated(cl: Cluster) -> None:
    cl.add_vm("db", max_restarts=0)
    vm = cl.vm("db")
    cl.ok(c.VmReport(name="db", host=vm.host, placement=vm.placement, observed="crashed",
                     keep_trying=True))


def planned_shutdown(cl: Cluster) -> None:
    cl.add_vm("db")
    cl.ok(c.PlannedShutdown(name="h2", step="done", policy="freeze"))


def waits_for_order(cl: Cluster) -> None:
    cl.add_vm("base", start=False)  # placed, its agent has not reported it running yet
    cl.add_vm("db", start_after=("base",), start=False)
    cl.add_vm("app", start_after=("db",), start=False)


def colocated(cl: Cluster) -> None:
    cl.add_vm("db", colocation="pair")
    cl.add_vm("web", colocation="pair")


def colocated_later(cl: Cluster) -> None:
    """The group is set after its members were placed on two hosts."""
    cl.add_vm("db", allowed_hosts=("h1",))
    cl.add_vm("web", allowed_hosts=("h2",))
    cl.ok(c.SetVmOptions(name="db", colocation="pair", allowed_hosts=()))
    cl.ok(c.SetVmOptions(name="web", colocation="pair", allowed_hosts=()))


def colocated_too_big(cl: Cluster) -> None:
    """Both fit h2 together; when h2 dies, h1 fits one of them only."""
    cl.add_vm("db", memory_mib=3000, colocation="pair")
    cl.add_vm("web", memory_mib=3000, colocation="pair")
    cl.fence("h2")
    cl.confirm("h2")


def tagged(cl: Cluster) -> None:
    cl.ok(c.TagHost(name="h1", tag="ssd"))
    cl.ok(c.TagHost(name="h3", tag="ssd"))
    cl.add_vm("db", required_tags=("ssd",))


def unknown_tag(cl: Cluster) -> None:
    cl.add_vm("db", required_tags=("gpu",))


def failed_over(failback: Failback = Failback.AUTO, *, ready: bool = True,
                **settings: Any) -> Callable[[Cluster], None]:
    """db prefers h1 and ran there; h1 was fenced, db restarted elsewhere, h1 is back
    (and said ready)."""
    def setup(cl: Cluster) -> None:
        if settings:
            cl.ok(c.SetSettings(**settings))
        cl.add_vm("db", preferred_hosts=(("h1", 100), ("h3", 20)), failback=failback)
        if "failback_max_concurrent" in settings:
            cl.add_vm("web", 512, preferred_hosts=(("h1", 100),), failback=Failback.AUTO,
                      priority=1)
        cl.add_vm("other", 3072, start=False, allowed_hosts=("h2",))
        cl.fence("h1")
        cl.confirm("h1")
        cl.report("db", "started")
        cl.ok(c.HostReady(name="h1"))
        if ready:
            cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    return setup


def failback_in_flight(cl: Cluster) -> None:
    failed_over(failback_hold_down_s=0.0)(cl)
    cl.ok(c.FailbackVm(name="db", target="h1"))


def concurrency_limit(cl: Cluster) -> None:
    failed_over(failback_hold_down_s=0.0, failback_max_concurrent=1)(cl)
    cl.report("web", "started")
    cl.ok(c.FailbackVm(name="web", target="h1"))  # first: the higher priority


def preferred_in_maintenance(cl: Cluster) -> None:
    failed_over(failback_hold_down_s=0.0)(cl)
    cl.ok(c.SetHostMaintenance(name="h1", on=True))


def preferred_full(cl: Cluster) -> None:
    failed_over(failback_hold_down_s=0.0)(cl)
    cl.add_vm("filler", 4096, allowed_hosts=("h1",))


def on_preferred(cl: Cluster) -> None:
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=Failback.AUTO)


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Cluster], None]
    lines: tuple[str, ...]  # every line, in order; "..." matches any one line


CASES = [
    Case("started, with the next host it would go to", started(), (
        "db is started on h2 (placement {p})",
        "why: running on h2",
        "desired started, HA policy restart, priority 0, restarts 0/2, relocations 0/1",
        "host h2 is online: agent ready",
        "if h2 died now: it would go to h1 (most free memory (4096 MiB before placing))")),
    Case("host limits and nowhere else to go", started(allowed_hosts=("h2",)), (
        "db is started on h2 (placement {p})",
        "...",
        "...",
        "host limits: only h2",
        "...",
        "if h2 died now: it would wait pending (no host fits 1024 MiB, 1 vCPU: outside "
        "the VM's host limits (h1, h3))")),
    Case("anti-affinity keeps it off its group's hosts", anti_affinity, (
        "db is started on h2 (placement {p})",
        "...",
        "...",
        "anti-affinity group dbs: never shares a host with another member",
        "...",
        "if h2 died now: it would go to h3 (most free memory (2048 MiB before placing))")),
    Case("migrating names both ends", migrating, (
        "db is migrating from h2 to h1",
        "why: live migration to h1 (requested)",
        "...",
        "host h2 is online: agent ready",
        "if h2 died now: it would go to h1 (most free memory (3072 MiB before placing))")),
    Case("stopped on purpose", stopped, (
        "db is stopped and placed on no host",
        "why: defined",
        "desired stopped, HA policy restart, priority 0, restarts 0/2, relocations 0/1",
        "stopped on purpose: it stays down until started",
        "if its host died now: it would not be restarted")),
    Case("disabled", disabled, (
        "db is stopped and placed on no host",
        "why: defined",
        "...",
        "disabled: the cluster neither starts, recovers nor moves it",
        "if its host died now: it would not be restarted")),
    Case("HA policy none", started(ha=HaPolicy.NONE, priority=5), (
        "db is started on h2 (placement {p})",
        "...",
        "desired started, HA policy none, priority 5, restarts 0/2, relocations 0/1",
        "HA policy none: not restarted after a crash or a host failure",
        "host h2 is online: agent ready",
        "if its host died now: it would not be restarted")),
    Case("pending: no host fits, and why", too_big, (
        "db is pending and placed on no host",
        "why: no host fits 100000 MiB, 1 vCPU: lacks memory (h1, h2, h3)",
        "...",
        "if placed now: it would wait pending (no host fits 100000 MiB, 1 vCPU: lacks "
        "memory (h1, h2, h3))")),
    Case("its host is being fenced", host_fencing, (
        "db is frozen on h2 until its fence is confirmed (placement {p})",
        "why: host h2 is being fenced; VM frozen until the fence is confirmed",
        "...",
        "host h2 is fencing: fence requested (token 13, attempt 1): lease expired (its VMs "
        "wait until the fence is confirmed)",
        "if h2 died now: it would go to h1 (most free memory (4096 MiB before placing))")),
    Case("a restart in place is counted", restarted_once, (
        "db is starting on h2 (placement {p})",
        "why: crashed on h2; restart 1/2 on h2",
        "desired started, HA policy restart, priority 0, restarts 1/2, relocations 0/1",
        "host h2 is online: agent ready",
        "if h2 died now: it would go to h1 (most free memory (4096 MiB before placing))")),
    Case("a relocation remembers where it failed", relocated, (
        "db is starting on h1 (placement {p})",
        "why: crashed on h2; relocation 1/1 (tried: h2); placed on h1: most free memory "
        "(4096 MiB before placing)",
        "desired started, HA policy restart, priority 0, restarts 0/0, relocations 1/1",
        "failed on h2 since it last ran stably: a relocation tries the other eligible hosts "
        "first",
        "host h1 is online: agent ready",
        "if h1 died now: it would go to h2 (most free memory (8192 MiB before placing))")),
    Case("its peer stopped for a planned shutdown", planned_shutdown, (
        "db is started on h2 (placement {p})",
        "...",
        "...",
        "host h2 is online: peer stopped for a planned shutdown (freeze)",
        "its peer is stopped for a planned shutdown (freeze): nothing protects this VM "
        "until it returns",
        "if h2 died now: it would go to h1 (most free memory (4096 MiB before placing))")),
    Case("start order: waits for its dependency to run", waits_for_order, (
        "db is starting on h2 (placement {p})",
        "...",
        "...",
        "start order: starts only after base run (mandatory: it waits as long as it takes)",
        "waiting for base to run: base is starting on h2",
        "start order: app start(s) only once it runs",
        "host h2 is online: agent ready",
        "...")),
    Case("colocation: the group is placed and would move together", colocated, (
        "db is started on h2 (placement {p})",
        "...",
        "...",
        "colocation group pair: kept on one host with web (h2); the group moves together",
        "host h2 is online: agent ready",
        "if h2 died now: it would go to h1 (most free memory (4096 MiB before placing); "
        "with its colocation group pair (db, web))")),
    Case("colocation: a group set after its members were placed apart", colocated_later, (
        "db is started on h1 (placement {p})",
        "...",
        "...",
        "colocation group pair: kept on one host with web (h2); the group moves together",
        "not together yet: db runs on h1, other members on h2; the group comes together "
        "when it is next placed (a failover, a drain); now: hactl vm migrate db h2",
        "...",
        "...")),
    Case("colocation: a group that fits on no host together waits", colocated_too_big, (
        "db is pending and placed on no host",
        "why: colocation group pair (db, web) fits on no host together: lacks memory for "
        "db (h3); lacks memory for web (h1)",
        "...",
        "colocation group pair: kept on one host with web (pending); the group moves "
        "together",
        "if placed now: it would wait pending (colocation group pair (db, web) fits on no "
        "host together: lacks memory for db (h3); lacks memory for web (h1))")),
    Case("required tags: only hosts carrying them", tagged, (
        "db is started on h1 (placement {p})",
        "...",
        "...",
        "requires host tag(s) ssd: carried by h1, h3",
        "host h1 is online: agent ready",
        "if h1 died now: it would go to h3 (most free memory (2048 MiB before placing))")),
    Case("required tags no host carries: pending, and said so", unknown_tag, (
        "db is pending and placed on no host",
        "why: no host fits 1024 MiB, 1 vCPU: lacks tag(s) gpu (h1, h2, h3)",
        "...",
        "requires host tag(s) gpu: no host carries them all (hactl host tag HOST add TAG); "
        "it cannot run anywhere",
        "...")),
    Case("on its preferred host", on_preferred, (
        "db is started on h1 (placement {p})",
        "...",
        "...",
        "host h1 is online: agent ready",
        "preferred hosts: h1 (100); failback auto",
        "on its preferred host h1 (score 100)",
        "...")),
    Case("failback never keeps it where it is", failed_over(Failback.NEVER), (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "host h3 is online: agent ready",
        "preferred hosts: h1 (100), h3 (20); failback never",
        "not on its preferred host h1: failback never (vm set --failback auto lets it "
        "return)",
        "if h3 died now: it would go to h1 (preferred host (score 100), most free memory "
        "(4096 MiB before placing))")),
    Case("its preferred host is back but not ready", failed_over(ready=False), (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "...",
        "preferred hosts: h1 (100), h3 (20); failback auto",
        "not on its preferred host h1: host h1 is back but not ready: waiting for "
        "`hactl host ready h1`",
        "...")),
    Case("its preferred host is in maintenance", preferred_in_maintenance, (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "...",
        "...",
        "not on its preferred host h1: host h1 is in maintenance",
        "if h3 died now: it would go to h2 (most free memory (5120 MiB before placing))")),
    Case("its preferred host has no capacity", preferred_full, (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "...",
        "...",
        "not on its preferred host h1: no capacity: host h1 lacks memory",
        "...")),
    Case("stickiness hold-down after its last move", failed_over(), (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "...",
        "...",
        "not on its preferred host h1: stickiness hold-down: on h3 since log time 1016, "
        "may fail back to h1 from 1316 (298 s)",
        "...")),
    Case("a failback migration in flight", failback_in_flight, (
        "db is migrating from h3 to h1",
        "why: failback to h1 (score 100, h3 20): live migration",
        "...",
        "...",
        "...",
        "failing back to h1 by live migration",
        "...")),
    Case("the failback concurrency limit", concurrency_limit, (
        "db is started on h3 (placement {p})",
        "...",
        "...",
        "...",
        "...",
        "not on its preferred host h1: concurrency limit: 1 failback migration(s) in flight "
        "(failback_max_concurrent 1)",
        "...")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_explain(case: Case) -> None:
    cl = three_hosts()
    case.setup(cl)
    got = explain(cl.state, "db")
    assert len(got) == len(case.lines), "\n".join(got)
    placement = cl.vm("db").placement
    for want, line in zip(case.lines, got, strict=True):
        if want != "...":
            assert line == want.format(p=placement), "\n".join(got)


def test_an_unknown_vm_is_said_so() -> None:
    assert explain(three_hosts().state, "ghost") == ["no VM named 'ghost'"]
