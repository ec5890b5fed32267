"""What `hactl status` and `host show` say about failback (daemon/views.py)."""

from __future__ import annotations

from hacluster.core import versions
from hacluster.daemon import views
from hacluster.fsm import commands as c
from hacluster.fsm.model import Failback
from tests.core.builders import Cluster


def test_status_names_a_returned_host_that_vms_wait_to_fail_back_to() -> None:
    cl = Cluster()
    cl.add_hosts("h1", "h2")
    for name in ("h1", "h2"):  # readiness is tracked once every host runs 0.3.0
        cl.ok(versions.announcement(cl.state, name))
    cl.add_vm("db", preferred_hosts=(("h1", 100),), failback=Failback.AUTO)
    cl.add_vm("never", preferred_hosts=(("h1", 100),))
    cl.fence("h1")
    cl.confirm("h1")
    cl.report("db", "started")
    cl.report("never", "started")
    cl.ok(c.HostReady(name="h1"))
    assert views.host_view(cl.state, cl.host("h1"))["failback_ready"] is False
    waiting = views.waiting_for_operator(cl.state)
    assert "host h1 is back but not ready: waiting for `hactl host ready h1`; db would " \
        "fail back there" in waiting  # (not `never`: its policy keeps it where it is)
    cl.ok(c.SetHostMaintenance(name="h1", on=False, ready=True))
    assert not any("not ready" in line for line in views.waiting_for_operator(cl.state))
    shown = views.vm_view(cl.vm("db"), detail=True)
    assert (shown["preferred_hosts"], shown["failback"]) == ([["h1", 100]], "auto")
