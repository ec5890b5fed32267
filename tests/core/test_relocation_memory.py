"""Relocation after repeated failures remembers the hosts tried (VmReport v3
keep_trying) and tries every eligible host before the VM goes to error; reports of an
older release keep the old caps exactly."""

from __future__ import annotations

from hacluster.fsm import commands as c
from hacluster.fsm.model import Desired
from hacluster.fsm.states import VmState

from .builders import Cluster


def flaky(hosts: int = 4) -> Cluster:
    cl = Cluster()
    cl.add_hosts(*(f"h{i}" for i in range(1, hosts + 1)))
    cl.announce_all()
    cl.add_vm("vm1", max_restarts=0, max_relocates=1)
    return cl


def fail(cl: Cluster, keep_trying: bool) -> None:
    vm = cl.vm("vm1")
    observed = "crashed" if vm.state is VmState.STARTED else "start-failed"
    cl.ok(c.VmReport(name="vm1", host=vm.host, placement=vm.placement, observed=observed,
                     keep_trying=keep_trying))


def hosts_tried(cl: Cluster, keep_trying: bool, limit: int = 10) -> list[str]:
    seen = [cl.vm("vm1").host]
    for _ in range(limit):
        fail(cl, keep_trying)
        if cl.vm_state("vm1") is VmState.ERROR:
            break
        seen.append(cl.vm("vm1").host)
    return seen


def test_every_eligible_host_is_tried_once_before_error() -> None:
    cl = flaky()
    seen = hosts_tried(cl, keep_trying=True)
    assert sorted(seen) == ["h1", "h2", "h3", "h4"]  # each once, none twice
    vm = cl.vm("vm1")
    assert vm.state is VmState.ERROR
    assert vm.reason.endswith("every eligible host tried (h1, h2, h3, h4)")


def test_host_limits_bound_the_hosts_tried() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2", "h3", "h4")
    cl.announce_all()
    cl.add_vm("vm1", max_restarts=0, max_relocates=0, allowed_hosts=("h2", "h3"))
    seen = hosts_tried(cl, keep_trying=True)
    assert sorted(seen) == ["h2", "h3"] and cl.vm_state("vm1") is VmState.ERROR


def test_an_older_report_keeps_the_old_caps() -> None:
    cl = flaky()
    seen = hosts_tried(cl, keep_trying=False)
    assert len(seen) == 2  # one relocation (the cap), then error
    assert cl.vm("vm1").tried_hosts == ()
    assert cl.vm("vm1").reason.endswith("relocate cap 1 used up")


def test_an_operator_start_forgets_the_hosts_tried() -> None:
    cl = flaky()
    hosts_tried(cl, keep_trying=True)
    cl.ok(c.SetVmDesired(name="vm1", desired=Desired.STARTED))
    assert cl.vm("vm1").tried_hosts == () and cl.vm_state("vm1") is VmState.STARTING
