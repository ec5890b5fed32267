"""Cluster maintenance switched on while a fence is committed: the fence does not run
(core/manager.py), and the event and `hactl status` say which VMs it keeps frozen."""

from __future__ import annotations

from hacluster.daemon.views import waiting_for_operator
from hacluster.fsm import commands as c
from hacluster.fsm.states import VmState

from .builders import Cluster, only


def test_maintenance_on_names_the_fences_it_holds_and_the_vms_they_keep_frozen() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2", "h3")
    cl.add_vm("a")
    host = cl.vm("a").host
    cl.fence(host)
    assert cl.vm_state("a") is VmState.FENCE
    event = only(cl.ok(c.SetClusterMaintenance(on=True, who="ops")), "cluster-maintenance")[0]
    assert event.get("held") == host and event.get("frozen") == "a"
    assert f"{host} keeps a frozen" in event.message
    lines = waiting_for_operator(cl.state)
    assert any(f"holds the fence of {host}: its VMs stay frozen (a)" in x for x in lines)
    off = only(cl.ok(c.SetClusterMaintenance(on=False, who="ops")), "cluster-maintenance")[0]
    assert f"the fences held meanwhile go on: {host}" in off.message


def test_maintenance_without_pending_fences_says_nothing_more() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2")
    event = only(cl.ok(c.SetClusterMaintenance(on=True, who="ops")), "cluster-maintenance")[0]
    assert event.message == "cluster maintenance on by ops: fencing disabled"
