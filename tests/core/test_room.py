"""Making room (fsm/room.py): a VM pending because its host limits name only hosts that
VMs without limits fill gets room made by live-migrating a few of those, bounded."""

from __future__ import annotations

from hacluster.core.explain import explain
from hacluster.core.manager import Manager, Propose
from hacluster.fsm import commands as c
from hacluster.fsm import room
from hacluster.fsm.states import VmState

from .builders import Cluster, only


def full_h1(small: int = 2, size: int = 2048) -> Cluster:
    """h1 full of VMs without limits; h2 and h3 with room for them."""
    cl = Cluster()
    cl.add_host("h1", small * size)
    cl.add_host("h2", 8192)
    cl.add_host("h3", 8192)
    cl.announce_all()
    for i in range(small):
        cl.add_vm(f"free{i}", size, allowed_hosts=("h1",))  # placed there...
        cl.ok(c.SetVmOptions(name=f"free{i}", allowed_hosts=()))  # ...then unlimited
    return cl


def test_the_fewest_moves_make_it_fit_and_never_onto_its_own_hosts() -> None:
    cl = full_h1()
    cl.add_vm("pinned", 2048, allowed_hosts=("h1", "h2"))
    assert cl.vm("pinned").host == "h2"  # h2 had room: nothing to make
    cl = full_h1()
    cl.add_vm("pinned", 2048, allowed_hosts=("h1",))
    assert cl.vm_state("pinned") is VmState.PENDING
    plan = room.plan(cl.state, cl.vm("pinned"))
    assert plan is not None and plan.host == "h1" and len(plan.moves) == 1
    assert plan.moves[0][1] != "h1"
    cl.ok(c.MakeRoom(name="pinned"))
    moved = cl.vm(plan.moves[0][0])
    assert moved.state is VmState.MIGRATING and moved.reason.startswith("making room on h1")
    assert cl.vm("pinned").reason.startswith("waiting for room on h1")
    lines = explain(cl.state, "pinned")
    assert any(x.startswith(f"room is being made for it: {moved.name}") for x in lines)
    cl.report(moved.name, "migrated")
    assert cl.vm("pinned").host == "h1" and cl.vm_state("pinned") is VmState.STARTING


def test_vms_with_limits_of_their_own_are_never_moved() -> None:
    cl = Cluster()
    cl.add_host("h1", 4096)
    cl.add_host("h2", 8192)
    cl.announce_all()
    cl.add_vm("mine", 4096, allowed_hosts=("h1",))
    cl.add_vm("pinned", 2048, allowed_hosts=("h1",))
    assert room.plan(cl.state, cl.vm("pinned")) is None
    events = cl.run(c.MakeRoom(name="pinned"))
    assert "no room can be made for pinned" in only(events, "rejected")[0].message


def test_at_most_max_moves_vms_are_moved() -> None:
    cl = full_h1(small=room.MAX_MOVES + 1, size=1024)
    cl.add_vm("big", 1024 * (room.MAX_MOVES + 1), allowed_hosts=("h1",))
    assert room.plan(cl.state, cl.vm("big")) is None  # it would take one move too many


def test_one_batch_at_a_time_and_the_leader_proposes_it() -> None:
    cl = full_h1()
    cl.add_vm("pinned", 2048, allowed_hosts=("h1",))
    manager = Manager("h2")
    manager.become_leader(1, cl.state, 0.0)
    manager.proposal_done("noop", c.Noop(term=1), True, 1, own_term=True)
    proposals = [d.command for d in manager.tick(cl.state, 1.0, 1.0) if isinstance(d, Propose)]
    assert proposals == [c.MakeRoom(name="pinned")]
    cl.ok(c.MakeRoom(name="pinned"))
    assert room.moving(cl.state) and room.wanted(cl.state) == ""
    events = cl.run(c.MakeRoom(name="pinned"))
    assert "being made for another VM already" in only(events, "rejected")[0].message
