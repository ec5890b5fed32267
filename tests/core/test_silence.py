"""Issue 11: a silent host's power is read through its BMC (nothing commanded); read off,
it is fenced without waiting out the lease; read on or unanswered, nothing changes."""

from __future__ import annotations

from hacluster.core.silence import MAX_PROBES, NEW_LEADER_GRACE_S, ProbePower
from hacluster.fsm import commands as c

from .test_manager import T0, Leader, cluster_of, proposals


def probes(decisions: list[object]) -> list[str]:
    return [d.host for d in decisions if isinstance(d, ProbePower)]


def probing_leader(*hosts: str, **settings: object) -> Leader:
    leader = Leader(cluster_of(*hosts, **{"probe_after_s": 1.0, **settings}))
    leader.commit_noop()
    for host in hosts:
        leader.renew(host, T0 + 0.1)
    return leader


def test_a_host_silent_for_probe_after_s_has_its_power_read_once() -> None:
    leader = probing_leader("b")
    assert probes(leader.tick(T0 + 1.0)) == []
    assert probes(leader.tick(T0 + 1.1)) == ["b"]
    leader.manager.probe_result("b", False, "power on", T0 + 1.2)
    for at in (T0 + 1.3, T0 + 2.0, T0 + 2.5):  # one read per silence
        assert probes(leader.tick(at)) == []
    leader.renew("b", T0 + 2.6)  # it lives: a later silence gets a read of its own
    assert probes(leader.tick(T0 + 3.7)) == ["b"]


def test_power_read_off_fences_it_without_waiting_out_the_lease() -> None:
    leader = probing_leader("b")
    leader.tick(T0 + 1.1)
    leader.manager.probe_result("b", True, "power read: off", T0 + 1.2)
    (suspect,) = proposals(leader.tick(T0 + 1.3), c.MarkHostSuspect)
    assert "power read off by its BMC" in suspect.command.evidence  # type: ignore[attr-defined]
    leader.commit(suspect)
    (request,) = proposals(leader.tick(T0 + 1.4), c.RequestFence)
    fence = request.command
    assert fence.reason == "power read off"  # type: ignore[attr-defined]
    assert "power read: off" in fence.evidence  # type: ignore[attr-defined]
    leader.commit(request)
    record = leader.state.fence_record(leader.state.hosts["b"].fence_token)
    assert record is not None and record.attempt == 1  # an incident like any other


def test_power_read_on_changes_nothing_until_the_lease_runs_out() -> None:
    leader = probing_leader("b")
    leader.tick(T0 + 1.1)
    leader.manager.probe_result("b", False, "power read: on", T0 + 1.2)
    assert proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect) == []
    assert proposals(leader.tick(T0 + 1.6), c.MarkHostSuspect)  # 1.5 s after its renewal


def test_a_host_read_off_that_then_renews_is_not_fenced() -> None:
    leader = probing_leader("b")
    leader.tick(T0 + 1.1)
    leader.manager.probe_result("b", True, "power read: off", T0 + 1.2)
    leader.renew("b", T0 + 1.25)  # powered on again, its peer renews
    decisions = leader.tick(T0 + 1.3)
    assert proposals(decisions, c.MarkHostSuspect) == []
    assert proposals(decisions, c.RequestFence) == []


def test_a_new_leader_reads_at_once_the_hosts_it_has_not_heard() -> None:
    leader = Leader(cluster_of("b", "d", probe_after_s=1.0))
    leader.commit_noop()
    leader.renew("d", T0 + 0.1)
    assert probes(leader.tick(T0 + NEW_LEADER_GRACE_S - 0.05)) == []
    assert probes(leader.tick(T0 + NEW_LEADER_GRACE_S)) == ["b"]


def test_reads_are_bounded_and_can_be_switched_off() -> None:
    hosts = [f"h{i}" for i in range(MAX_PROBES + 3)]
    leader = probing_leader(*hosts)
    assert len(probes(leader.tick(T0 + 1.2))) == MAX_PROBES
    off = probing_leader("b", probe_after_s=0.0)
    assert probes(off.tick(T0 + 2.0)) == []
