"""Placement: selectors, tie-break, constraints, overcommit, priorities, and
pending VMs that wait for capacity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired, Selector, Vm
from hacluster.fsm.placement import Planner, by_priority, plan
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster, kinds

V = VmState


def pin(cluster: Cluster, name: str, host: str, memory_mib: int, vcpus: int) -> None:
    cluster.add_vm(name, memory_mib=memory_mib, vcpus=vcpus, allowed_hosts=(host,))


def four_hosts() -> Cluster:
    """Each selector has a clear favourite:
    host   memory  used  free   vCPUs used  VMs  load
    big    32768   12288 20480  12          3    3.0   <- free-memory
    mid    16384   2048  14336  8           1    2.0   <- vm-count
    small  8192    1024  7168   2           2    1.0   <- provisioned-memory, vcpus
    quiet  8192    6144  2048   4           2    0.1   <- load
    """
    cluster = Cluster()
    for name, memory in (("big", 32_768), ("mid", 16_384), ("small", 8_192), ("quiet", 8_192)):
        cluster.add_host(name, memory_mib=memory, vcpus=16)
    for i in range(3):
        pin(cluster, f"big{i}", "big", 4_096, 4)
    pin(cluster, "mid0", "mid", 2_048, 8)
    for i in range(2):
        pin(cluster, f"small{i}", "small", 512, 1)
        pin(cluster, f"quiet{i}", "quiet", 3_072, 2)
    for name, load in (("big", 3.0), ("mid", 2.0), ("small", 1.0), ("quiet", 0.1)):
        cluster.ok(c.ReportHostLoad(name=name, load=load))
    return cluster


@pytest.mark.parametrize(
    ("selector", "expected", "why"),
    [
        (Selector.FREE_MEMORY, "big", "most free memory (20480 MiB before placing)"),
        (Selector.PROVISIONED_MEMORY, "small", "least provisioned memory (1024 MiB)"),
        (Selector.VCPUS, "small", "fewest vCPUs allocated (2)"),
        (Selector.VM_COUNT, "mid", "fewest VMs (1)"),
        (Selector.LOAD, "quiet", "lowest load (0.1)"),
    ],
    ids=lambda v: v.value if isinstance(v, Selector) else None,
)
def test_selector_picks_its_favourite(selector: Selector, expected: str, why: str) -> None:
    cluster = four_hosts()
    cluster.ok(c.SetSettings(selector=selector))
    cluster.add_vm("probe", memory_mib=512, vcpus=1, start=False)
    vm = cluster.vm("probe")
    assert vm.host == expected
    assert vm.reason == f"placed on {expected}: {why}"


@pytest.mark.parametrize("selector", list(Selector))
def test_ties_go_to_the_first_host_name(selector: Selector) -> None:
    cluster = Cluster(selector=selector)
    for name in ("hc", "ha", "hb"):
        cluster.add_host(name)
    cluster.add_vm("v1")
    assert cluster.vm("v1").host == "ha"


def test_free_memory_spreads_a_plan_over_hosts() -> None:
    cluster = Cluster()
    cluster.add_hosts("ha", "hb", "hc")
    vms = [Vm(name=f"v{i}", memory_mib=1_024, vcpus=1) for i in range(6)]
    placed = [choice.host for _, choice in plan(Planner(cluster.state), vms)]
    assert placed == ["ha", "hb", "hc", "ha", "hb", "hc"]


def test_host_limits_override_the_selector() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=65_536)
    cluster.add_host("hb", memory_mib=2_048)
    cluster.add_vm("v1", allowed_hosts=("hb",))
    assert cluster.vm("v1").host == "hb"


def test_vm_outside_its_host_limits_waits_with_the_reason() -> None:
    cluster = Cluster()
    cluster.add_hosts("ha", "hb")
    cluster.add_vm("v1", allowed_hosts=("hz",))
    vm = cluster.vm("v1")
    assert vm.state is V.PENDING
    assert "outside the VM's host limits" in vm.reason and "ha, hb" in vm.reason


def test_anti_affinity_keeps_group_members_apart() -> None:
    cluster = Cluster()
    cluster.add_hosts("ha", "hb", "hc")
    for i in range(3):
        cluster.add_vm(f"db{i}", anti_affinity="db", memory_mib=1)
    assert sorted(cluster.vm(f"db{i}").host for i in range(3)) == ["ha", "hb", "hc"]
    cluster.add_vm("db3", anti_affinity="db")
    vm = cluster.vm("db3")
    assert vm.state is V.PENDING and "anti-affinity group db" in vm.reason


def test_anti_affinity_ignores_other_groups() -> None:
    cluster = Cluster()
    cluster.add_host("ha")
    cluster.add_vm("db0", anti_affinity="db")
    cluster.add_vm("web0", anti_affinity="web")
    cluster.add_vm("plain")
    assert {cluster.vm(n).host for n in ("db0", "web0", "plain")} == {"ha"}


@pytest.mark.parametrize(("overcommit", "fits"), [(1.0, 4), (1.5, 6), (0.5, 2)])
def test_memory_is_never_overcommitted_beyond_the_ratio(overcommit: float, fits: int) -> None:
    cluster = Cluster(memory_overcommit=overcommit)
    cluster.add_host("ha", memory_mib=4_096, vcpus=64)
    for i in range(fits + 1):
        cluster.add_vm(f"v{i}", memory_mib=1_024)
    placed = [n for n, vm in cluster.state.vms.items() if vm.host]
    assert len(placed) == fits
    assert "lacks memory" in cluster.vm(f"v{fits}").reason
    assert cluster.state.usage_of("ha").memory_mib <= 4_096 * overcommit


def test_vcpus_are_never_overcommitted_beyond_the_ratio() -> None:
    cluster = Cluster(vcpu_overcommit=2.0)
    cluster.add_host("ha", memory_mib=65_536, vcpus=2)
    for i in range(5):
        cluster.add_vm(f"v{i}", memory_mib=1, vcpus=1)
    assert cluster.vm("v3").host == "ha"
    assert "lacks vCPUs" in cluster.vm("v4").reason


def test_no_schedulable_host_is_named() -> None:
    cluster = Cluster()
    cluster.add_host("ha", ready=False)
    cluster.add_vm("v1", memory_mib=1_024, vcpus=2)
    assert cluster.vm("v1").reason == "no schedulable host for 1024 MiB, 2 vCPU"


def test_pending_reason_counts_each_cause() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=1_024)
    cluster.add_host("hb", memory_mib=1_024)
    cluster.add_host("hc", memory_mib=65_536, vcpus=1)
    cluster.add_vm("v1", memory_mib=4_096, vcpus=8)
    reason = cluster.vm("v1").reason
    assert reason.startswith("no host fits 4096 MiB, 8 vCPU: ")
    assert "lacks memory (ha, hb)" in reason and "lacks vCPUs (hc)" in reason


def test_plan_places_higher_priority_first_when_capacity_is_short() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=2_048)
    vms = [
        Vm(name=n, memory_mib=1_024, vcpus=1, priority=p)
        for n, p in (("a-low", 0), ("b-top", 9), ("c-mid", 5))
    ]
    result = [(vm.name, choice.host) for vm, choice in plan(Planner(cluster.state), vms)]
    assert result == [("b-top", "ha"), ("c-mid", "ha"), ("a-low", None)]


def test_priority_ties_are_broken_by_name() -> None:
    vms = [Vm(name=n, priority=1) for n in ("b", "c", "a")] + [Vm(name="z", priority=2)]
    assert [vm.name for vm in by_priority(vms)] == ["z", "a", "b", "c"]


# ---------------------------------------------------------------- pending VMs


def test_pending_vms_are_placed_when_a_host_comes_online() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=2_048, ready=False)
    for name, priority in (("low", 0), ("top", 9), ("mid", 5)):
        cluster.add_vm(name, memory_mib=1_024, priority=priority)
    assert cluster.state.pending == {"low", "top", "mid"}
    events = cluster.ok(c.HostReady(name="ha"))
    assert {n: cluster.vm_state(n) for n in ("top", "mid", "low")} == {
        "top": V.STARTING,
        "mid": V.STARTING,
        "low": V.PENDING,
    }
    assert cluster.state.pending == {"low"}
    assert [e.subject for e in events if e.get("to") == "starting"] == ["top", "mid"]


def test_pending_vm_is_placed_when_another_vm_stops() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=1_024)
    cluster.add_vm("first", memory_mib=1_024)
    cluster.add_vm("second", memory_mib=1_024)
    assert cluster.vm_state("second") is V.PENDING
    cluster.ok(c.SetVmDesired(name="first", desired=Desired.STOPPED))
    assert cluster.vm_state("second") is V.PENDING  # still booked while stopping
    cluster.report("first", "stopped")
    assert (cluster.vm("second").state, cluster.vm("second").host) == (V.STARTING, "ha")


def test_pending_vm_is_placed_when_overcommit_is_raised() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=1_024)
    cluster.add_vm("first", memory_mib=1_024)
    cluster.add_vm("second", memory_mib=1_024)
    cluster.ok(c.SetSettings(memory_overcommit=2.0))
    assert cluster.vm_state("second") is V.STARTING


def test_pending_vm_is_placed_when_a_host_leaves_maintenance() -> None:
    cluster = Cluster()
    cluster.add_host("ha")
    cluster.ok(c.SetHostMaintenance(name="ha", on=True))
    cluster.add_vm("v1")
    assert cluster.vm_state("v1") is V.PENDING
    cluster.ok(c.SetHostMaintenance(name="ha", on=False))
    assert cluster.vm_state("v1") is V.STARTING


def test_pending_reason_update_is_not_repeated() -> None:
    cluster = Cluster()
    cluster.add_host("ha", memory_mib=512)
    cluster.add_vm("v1", memory_mib=1_024)
    events = cluster.ok(c.SetSettings(vcpu_overcommit=8.0))
    assert kinds(events) == ["settings-changed"]


def test_nothing_is_placed_on_a_host_that_is_not_online() -> None:
    cluster = Cluster()
    cluster.add_hosts("ha", "hb")
    cluster.suspect("ha")
    cluster.fence("hb")
    states = {n: h.state for n, h in cluster.state.hosts.items()}
    assert states == {"ha": HostState.SUSPECT, "hb": HostState.FENCING}
    assert Planner(cluster.state).hosts == {}


# ---------------------------------------------------------------- a placement oracle


HOST_SPECS = st.lists(
    st.tuples(st.sampled_from((1_024, 2_048, 4_096)), st.integers(1, 4), st.floats(0, 4)),
    min_size=1,
    max_size=5,
)
VM_SPECS = st.lists(
    st.tuples(
        st.sampled_from((256, 512, 1_024, 2_048)),
        st.integers(1, 4),
        st.integers(0, 3),
        st.sampled_from(("", "", "g")),
        st.sampled_from(((), ("h0",), ("h1", "h2"))),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(HOST_SPECS, VM_SPECS, st.sampled_from(list(Selector)), st.sampled_from((1.0, 1.5)))
def test_plan_matches_a_brute_force_oracle(
    hosts: list[tuple[int, int, float]],
    specs: list[tuple[int, int, int, str, tuple[str, ...]]],
    selector: Selector,
    overcommit: float,
) -> None:
    cluster = Cluster(selector=selector, memory_overcommit=overcommit, vcpu_overcommit=1.0)
    for i, (memory, vcpus, load) in enumerate(hosts):
        cluster.add_host(f"h{i}", memory_mib=memory, vcpus=vcpus)
        cluster.ok(c.ReportHostLoad(name=f"h{i}", load=load))
    vms = [
        Vm(
            name=f"v{i:02}",
            memory_mib=m,
            vcpus=v,
            priority=p,
            anti_affinity=g,
            allowed_hosts=allowed,
        )
        for i, (m, v, p, g, allowed) in enumerate(specs)
    ]
    names = [f"h{i}" for i in range(len(hosts))]
    booked_mem, booked_cpu, count = (dict.fromkeys(names, 0) for _ in range(3))
    booked_groups: dict[str, set[str]] = {name: set() for name in names}
    for vm, choice in plan(Planner(cluster.state), vms):
        fitting = []
        for i, (memory, vcpus, load) in enumerate(hosts):
            name = f"h{i}"
            mem, cpu, groups = booked_mem[name], booked_cpu[name], booked_groups[name]
            if (
                (not vm.allowed_hosts or name in vm.allowed_hosts)
                and not (vm.anti_affinity and vm.anti_affinity in groups)
                and mem + vm.memory_mib <= memory * overcommit
                and cpu + vm.vcpus <= vcpus
            ):
                score = {
                    Selector.FREE_MEMORY: -(memory * overcommit - mem),
                    Selector.PROVISIONED_MEMORY: mem,
                    Selector.VCPUS: cpu,
                    Selector.VM_COUNT: count[name],
                    Selector.LOAD: load + cpu,  # booked vCPUs count as load
                }[selector]
                fitting.append((score, name))
        expected = min(fitting)[1] if fitting else None
        assert choice.host == expected, (vm, choice, fitting)
        if expected is not None:
            booked_mem[expected] += vm.memory_mib
            booked_cpu[expected] += vm.vcpus
            if vm.anti_affinity:
                booked_groups[expected].add(vm.anti_affinity)
            count[expected] += 1
