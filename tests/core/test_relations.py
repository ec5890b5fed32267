"""VM relations (fsm/relations.py): required host tags, colocation groups and the
mandatory start order, through real commands applied to a state."""

from __future__ import annotations

from hacluster.core.agent import DomainState, StartVm, reconcile
from hacluster.core.explain import explain
from hacluster.core.versions import admit
from hacluster.fsm import commands as c
from hacluster.fsm.codec import decode_command, encode_command
from hacluster.fsm.model import Desired, Selector
from hacluster.fsm.relations import stop_waves
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster, only

V = VmState


def cluster(*hosts: tuple[str, int]) -> Cluster:
    cl = Cluster()
    for name, memory in hosts or (("h1", 4096), ("h2", 8192), ("h3", 2048)):
        cl.add_host(name, memory)
    cl.announce_all()
    return cl


def refusal(cl: Cluster, command: c.Command) -> str:
    rejected = only(cl.run(command), "rejected")
    assert rejected, f"{command} was not refused"
    return rejected[0].message


# ---------------------------------------------------------------- host tags


def test_a_vm_runs_only_on_hosts_with_every_required_tag() -> None:
    cl = cluster()
    cl.ok(c.TagHost(name="h3", tag="ssd"))
    cl.ok(c.TagHost(name="h1", tag="ssd"))
    cl.ok(c.TagHost(name="h1", tag="gpu"))
    assert cl.host("h1").tags == ("gpu", "ssd")
    assert cl.add_vm("a", required_tags=("ssd",)).host == "h1"  # h2 has more room, no ssd
    assert cl.add_vm("b", required_tags=("ssd", "gpu"), memory_mib=512).host == "h1"


def test_a_tag_no_host_carries_leaves_the_vm_pending_until_a_host_gets_it() -> None:
    cl = cluster()
    vm = cl.add_vm("a", required_tags=("gpu",))
    assert vm.state is V.PENDING and "lacks tag(s) gpu (h1, h2, h3)" in vm.reason
    cl.ok(c.TagHost(name="h3", tag="gpu"))
    assert (cl.vm_state("a"), cl.vm("a").host) == (V.STARTING, "h3")


def test_removing_a_tag_keeps_the_vm_running_until_it_fails_there() -> None:
    cl = cluster()
    cl.ok(c.TagHost(name="h1", tag="ssd"))
    cl.ok(c.TagHost(name="h3", tag="ssd"))
    cl.add_vm("a", required_tags=("ssd",))
    cl.ok(c.TagHost(name="h1", tag="ssd", add=False))
    assert cl.vm("a").state is V.STARTED and cl.vm("a").host == "h1"
    cl.report("a", "crashed")  # no restart in place: h1 lacks the tag now
    assert (cl.vm_state("a"), cl.vm("a").host) == (V.STARTING, "h3")
    assert "h1 is not among its hosts any more" in cl.vm("a").reason


# ---------------------------------------------------------------- colocation


def test_a_colocation_group_is_placed_on_one_host() -> None:
    cl = cluster()
    cl.add_vm("big", memory_mib=6000)  # h2 keeps 2192 MiB free, h1 has 4096
    cl.add_vm("db", colocation="pair", memory_mib=2000)
    web = cl.add_vm("web", colocation="pair", memory_mib=2000)
    assert cl.vm("db").host == web.host == "h1"


def test_a_member_that_does_not_fit_where_its_group_runs_waits() -> None:
    cl = cluster()
    cl.add_vm("db", colocation="pair", memory_mib=7000)
    web = cl.add_vm("web", colocation="pair", memory_mib=2000)
    assert web.state is V.PENDING
    assert web.reason == ("no host fits 2000 MiB, 1 vCPU: lacks memory (h2); not where "
                          "colocation group pair runs (h2) (h1, h3)")


def test_the_recovery_plan_moves_a_colocation_group_together() -> None:
    cl = cluster(("h1", 2048), ("h2", 8192), ("h3", 8192))
    cl.ok(c.SetSettings(selector=Selector.VM_COUNT))
    cl.add_vm("filler", memory_mib=1000, allowed_hosts=("h3",))
    cl.ok(c.SetHostMaintenance(name="h1", on=True))
    cl.add_vm("db", colocation="pair", memory_mib=1500)
    cl.add_vm("web", colocation="pair", memory_mib=1500)
    cl.ok(c.SetHostMaintenance(name="h1", on=False))
    assert cl.vm("db").host == cl.vm("web").host == "h2"
    cl.fence("h2")
    cl.confirm("h2")
    # one at a time, db would go to h1 (fewest VMs, room for one of them) and web would
    # find no room there
    assert {cl.vm("db").host, cl.vm("web").host} == {"h3"}
    assert {cl.vm_state("db"), cl.vm_state("web")} == {V.RECOVERY}
    assert cl.vm("db").reason.endswith("fewest VMs (1); with its colocation group pair "
                                       "(db, web)")


def test_a_group_that_fits_on_no_host_together_waits_pending_with_the_reason() -> None:
    cl = cluster()
    cl.add_vm("db", colocation="pair", memory_mib=3000)
    cl.add_vm("web", colocation="pair", memory_mib=3000)
    cl.fence("h2")
    cl.confirm("h2")
    for name in ("db", "web"):  # h1 would fit one of them
        assert cl.vm_state(name) is V.PENDING
        assert cl.vm(name).reason.startswith(
            "colocation group pair (db, web) fits on no host together")


def test_a_member_relocated_after_failures_pulls_its_group_after_it() -> None:
    cl = cluster()
    cl.add_vm("db", colocation="pair", memory_mib=1000, max_restarts=0)
    cl.add_vm("web", colocation="pair", memory_mib=1000)
    cl.report("db", "crashed")  # no restarts in place: relocated
    assert (cl.vm_state("db"), cl.vm("db").host) == (V.STARTING, "h1")
    web = cl.vm("web")
    assert web.state is V.STOPPING and web.reason.startswith(
        "colocation group pair moves to h1 with db")
    cl.report("web", "stopped")
    assert (cl.vm_state("web"), cl.vm("web").host) == (V.STARTING, "h1")


def test_a_live_migration_of_one_member_is_refused_and_a_drain_moves_the_group() -> None:
    cl = cluster()
    cl.add_vm("db", colocation="pair")
    cl.add_vm("web", colocation="pair")
    why = refusal(cl, c.MigrateVm(name="db", target="h1"))
    assert "cannot migrate db alone: colocation group pair keeps it with web" in why
    cl.ok(c.SetHostMaintenance(name="h2", on=True))
    assert cl.host_state("h2") is HostState.DRAINING
    assert cl.vm("db").target_host == cl.vm("web").target_host == "h1"


def test_a_group_set_after_placement_is_brought_together_as_explain_says() -> None:
    cl = cluster()
    cl.add_vm("db", allowed_hosts=("h1",))
    cl.add_vm("web", allowed_hosts=("h2",))
    cl.ok(c.SetVmOptions(name="db", colocation="pair", allowed_hosts=()))
    cl.ok(c.SetVmOptions(name="web", colocation="pair", allowed_hosts=()))
    assert (cl.vm("db").host, cl.vm("web").host) == ("h1", "h2")  # nothing moved by itself
    hint = [line for line in explain(cl.state, "db") if line.startswith("not together yet")]
    assert hint and hint[0].endswith("now: hactl vm migrate db h2")
    cl.ok(c.MigrateVm(name="db", target="h2"))  # what it says works
    cl.report("db", "migrated")
    assert cl.vm("db").host == "h2"
    assert not [line for line in explain(cl.state, "db") if "not together" in line]


def test_colocation_and_anti_affinity_with_the_same_member_are_refused() -> None:
    cl = cluster()
    cl.add_vm("db", colocation="pair", anti_affinity="apart")
    why = refusal(cl, c.AddVm(name="web", xml="<domain/>", memory_mib=1, vcpus=1,
                              colocation="pair", anti_affinity="apart"))
    assert why == ("web and db would be in colocation group pair (kept together) and "
                   "anti-affinity group apart (kept apart)")


# ---------------------------------------------------------------- start order


def test_a_start_order_cycle_is_refused_naming_it() -> None:
    cl = cluster()
    cl.add_vm("db")
    cl.add_vm("app", start_after=("db",))
    cl.add_vm("web", start_after=("app",))
    why = refusal(cl, c.SetVmOptions(name="db", start_after=("web",)))
    assert why == "start-after would make a cycle: db -> web -> app -> db"


def test_an_unknown_dependency_is_refused_and_a_dependency_cannot_be_removed() -> None:
    cl = cluster()
    why = refusal(cl, c.AddVm(name="app", xml="<domain/>", memory_mib=1, vcpus=1,
                              start_after=("db",)))
    assert why == "start-after names unknown VM(s): db"
    cl.add_vm("db", desired=Desired.STOPPED)
    cl.add_vm("app", start_after=("db",), desired=Desired.STOPPED)
    assert "VM db is a start-after dependency of app" in refusal(cl, c.RemoveVm(name="db"))
    cl.ok(c.SetVmOptions(name="app", start_after=()))
    cl.ok(c.RemoveVm(name="db"))


def test_the_agent_starts_a_dependent_only_once_its_dependency_runs() -> None:
    cl = cluster()
    cl.add_vm("db", start=False)
    cl.add_vm("app", start_after=("db",), start=False)
    assert cl.vm("db").host == cl.vm("app").host == "h2"

    def starts() -> list[str]:
        return [a.name for a in reconcile("h2", cl.state, {}, fresh=True)
                if isinstance(a, StartVm)]

    assert starts() == ["db"]  # app waits: db is starting, not running
    cl.report("db", "started")
    assert starts() == ["app"]
    cl.report("app", "started")
    cl.report("db", "crashed")  # db restarts in place; app keeps running meanwhile
    assert reconcile("h2", cl.state, {"app": DomainState.RUNNING}, fresh=True)[0] == \
        StartVm("db", "<domain/>", cl.vm("db").placement, f"placed here ({cl.vm('db').reason})")


def test_a_dependent_on_another_host_waits_for_the_dependency_there() -> None:
    cl = cluster()
    cl.add_vm("db", allowed_hosts=("h1",), start=False)
    cl.add_vm("app", start_after=("db",), allowed_hosts=("h3",), start=False)
    assert reconcile("h3", cl.state, {}, fresh=True) == []
    cl.report("db", "started")
    assert [type(a) for a in reconcile("h3", cl.state, {}, fresh=True)] == [StartVm]


def test_a_planned_shutdown_stops_in_reverse_start_order() -> None:
    cl = cluster()
    for name, after in (("db", ()), ("cache", ()), ("mid", ("db",)), ("app", ("mid",)),
                        ("web", ("app", "cache")), ("lone", ())):
        cl.add_vm(name, start_after=after, desired=Desired.STOPPED)
    every = ("app", "cache", "db", "lone", "mid", "web")
    assert stop_waves(cl.state, every) == (("lone", "web"), ("app", "cache"), ("mid",),
                                           ("db",))
    # "mid" runs elsewhere: "app" still stops before "db", which it needs through "mid"
    assert stop_waves(cl.state, ("db", "app", "lone")) == (("app", "lone"), ("db",))
    assert stop_waves(cl.state, ("db", "cache")) == (("cache", "db"),)
    assert stop_waves(cl.state, ()) == ()
    assert stop_waves(cl.state, ("gone", "db")) == (("db", "gone"),)  # removed meanwhile


# ---------------------------------------------------------------- versions


def test_relations_are_version_2_and_refused_while_an_older_host_runs() -> None:
    plain = c.AddVm(name="a", xml="<domain/>", memory_mib=1, vcpus=1)
    ordered = c.AddVm(name="a", xml="<domain/>", memory_mib=1, vcpus=1, start_after=("b",))
    assert (plain.wire_version(), ordered.wire_version()) == (1, 2)
    assert c.SetVmOptions(name="a", priority=1).wire_version() == 1
    assert c.SetVmOptions(name="a", colocation="").wire_version() == 2
    decoded = decode_command(encode_command(c.Envelope(ordered)))
    assert isinstance(decoded, c.Envelope) and decoded.command == ordered
    old = Cluster()
    old.add_host("h1")  # never announced: release 0.1.0
    assert admit(old.state, "add-vm", 1).admitted
    assert "add-vm v2 is not understood by every host" in admit(old.state, "add-vm", 2).refusal
    assert not admit(old.state, "host-tag", 1).admitted
