"""The fence protocol inside apply: intent with the cap, confirm, failure and
retries, operator confirm and retry."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.fsm import ClusterState
from hacluster.fsm import commands as c
from hacluster.fsm.model import BmcOverride, FenceAction, FenceResult, HostRole
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster, kinds, only

H = HostState
V = VmState


def cluster_with(*hosts: str, **settings: Any) -> Cluster:
    cluster = Cluster(**settings)
    cluster.add_host("spare", memory_mib=1 << 20, vcpus=512)
    cluster.add_hosts(*hosts)
    return cluster


def pinned_vm(cluster: Cluster, name: str, host: str, **kw: Any) -> None:
    """A started VM on host that may later move anywhere."""
    cluster.add_vm(name, allowed_hosts=(host,), **kw)
    cluster.ok(c.SetVmOptions(name=name, allowed_hosts=()))


# ---------------------------------------------------------------- intent


def test_fence_token_is_the_request_index() -> None:
    cluster = cluster_with("h1")
    cluster.suspect("h1")
    events = cluster.request_fence("h1", origin="leader")
    token = cluster.index
    assert cluster.host("h1").fence_token == token
    assert cluster.host_state("h1") is H.FENCING
    requested = only(events, "fence-requested")[0]
    assert (requested.get("token"), requested.get("attempt")) == (str(token), "1")
    record = cluster.state.fence_record(token)
    assert record is not None
    assert (record.incident, record.attempt, record.requested_by) == (token, 1, "leader")
    assert record.result is FenceResult.PENDING
    assert record.requested_at == cluster.state.log_time


def test_fence_request_freezes_the_hosts_vms() -> None:
    cluster = cluster_with("h1")
    pinned_vm(cluster, "v1", "h1")
    cluster.fence("h1")
    vm = cluster.vm("v1")
    assert vm.state is V.FENCE and vm.host == "h1"


def test_fence_of_a_host_with_a_fresh_lease_is_refused() -> None:
    cluster = cluster_with("h1")
    events = cluster.request_fence("h1")
    assert kinds(events) == ["rejected"] and "lease is fresh" in events[0].message
    assert cluster.host_state("h1") is H.ONLINE


def test_maintenance_and_witness_hosts_are_never_fenced() -> None:
    cluster = cluster_with("h1")
    cluster.add_host("w1", role=HostRole.WITNESS)
    cluster.ok(c.SetHostMaintenance(name="h1", on=True))
    assert "maintenance" in cluster.request_fence("h1")[0].message
    assert "witness" in cluster.request_fence("w1")[0].message
    assert cluster.host_state("h1") is H.MAINTENANCE
    assert cluster.state.fences == []


def test_cluster_maintenance_refuses_fences() -> None:
    cluster = cluster_with("h1")
    cluster.suspect("h1")
    cluster.ok(c.SetClusterMaintenance(on=True, who="ops"))
    events = cluster.request_fence("h1")
    assert kinds(events) == ["rejected"] and "cluster maintenance" in events[0].message
    assert cluster.host_state("h1") is H.SUSPECT
    cluster.ok(c.SetClusterMaintenance(on=False))
    assert kinds(cluster.request_fence("h1"))[-1] == "fence-requested"


def test_host_override_chooses_the_fence_action() -> None:
    cluster = cluster_with("h1", fence_action=FenceAction.OFF)
    cluster.ok(c.SetHostBmc(name="h1", bmc=BmcOverride(action="reboot")))
    token = cluster.fence("h1")
    record = cluster.state.fence_record(token)
    assert record is not None and record.action is FenceAction.REBOOT


# ---------------------------------------------------------------- the cap


def test_fourth_incident_within_the_window_is_blocked() -> None:
    cluster = cluster_with("h1", "h2", "h3", "h4", fence_cap=3, fence_window_s=3_600.0)
    pinned_vm(cluster, "v4", "h4")
    for host in ("h1", "h2", "h3"):
        cluster.fence(host)
    cluster.suspect("h4")
    events = cluster.request_fence("h4")
    assert cluster.host_state("h4") is H.FENCE_BLOCKED
    reached = only(events, "fence-cap-reached")
    assert reached and "3 fence(s) per 3600 s" in reached[0].message
    assert cluster.vm_state("v4") is V.FENCE  # frozen: its host may still run it
    assert "fence-requested" not in kinds(events)


def test_retries_of_the_same_incident_do_not_count() -> None:
    cluster = cluster_with("h1", "h2", "h3", fence_cap=2)
    cluster.fence("h1")
    for attempt in (2, 3, 4):
        events = cluster.request_fence("h1")
        assert only(events, "fence-requested")[0].get("attempt") == str(attempt)
    cluster.fence("h2")
    cluster.suspect("h3")
    cluster.request_fence("h3")
    assert cluster.host_state("h3") is H.FENCE_BLOCKED


def test_manual_confirms_do_not_count() -> None:
    cluster = cluster_with("h1", "h2", fence_cap=1)
    cluster.suspect("h1")
    cluster.ok(c.AdminConfirmFence(host="h1", who="alice", reason="pulled the plug"))
    cluster.fence("h2")
    assert cluster.host_state("h2") is H.FENCING


def test_cap_window_slides_with_log_time() -> None:
    cluster = cluster_with("h1", "h2", fence_cap=1, fence_window_s=600.0)
    cluster.fence("h1")
    first = cluster.state.log_time
    cluster.suspect("h2")
    events = cluster.request_fence("h2")
    assert f"next possible at log time {first + 600:.0f}" in events[-1].message
    cluster.request_fence("h2", at=first + 599.0)
    assert cluster.host_state("h2") is H.FENCE_BLOCKED
    events = cluster.request_fence("h2", at=first + 600.0)
    assert cluster.host_state("h2") is H.FENCING
    assert only(events, "fence-requested")


@pytest.mark.parametrize("skew_s", [3700.0, -3700.0])
def test_a_skewed_wall_clock_moves_no_window(skew_s: float) -> None:
    """Hole 1 of issue 8: a report stamped by a host whose clock ran an hour ahead reopened
    the cap (log time was the largest wall stamp). Wall stamps are informational now."""
    cluster = cluster_with("h1", "h2", "h3", fence_cap=1, fence_window_s=3600.0)
    cluster.fence("h1")
    first = cluster.state.log_time
    cluster.ok(c.ReportHostLoad(name="h3", load=0.5), wall=first + skew_s)
    assert cluster.state.log_time < first + 10
    cluster.suspect("h2")
    cluster.request_fence("h2")
    assert cluster.host_state("h2") is H.FENCE_BLOCKED


def test_cap_zero_blocks_every_automatic_fence() -> None:
    cluster = cluster_with("h1", fence_cap=0)
    cluster.suspect("h1")
    events = cluster.request_fence("h1", step=1e6)
    assert cluster.host_state("h1") is H.FENCE_BLOCKED
    assert "next possible at log time inf" in events[-1].message


def test_operator_retry_overrides_the_cap() -> None:
    cluster = cluster_with("h1", "h2", fence_cap=1)
    cluster.fence("h1")
    cluster.suspect("h2")
    cluster.request_fence("h2")
    events = cluster.ok(c.RetryFence(host="h2", who="bob"))
    assert cluster.host_state("h2") is H.FENCING
    assert "overrides the fence cap" in only(events, "fence-requested")[0].message


def test_blocked_host_that_renews_gets_its_vms_back_in_place() -> None:
    cluster = cluster_with("h1", "h2", fence_cap=1)
    pinned_vm(cluster, "v2", "h2")
    cluster.fence("h1")
    cluster.suspect("h2")
    cluster.request_fence("h2")
    cluster.ok(c.MarkHostAlive(name="h2", evidence="renewed"))
    assert cluster.host_state("h2") is H.ONLINE
    vm = cluster.vm("v2")
    assert vm.state in (V.STARTED, V.STARTING) and vm.host == "h2"


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(("fence", "fence", "confirm", "fail", "back", "admin", "wait")),
            st.sampled_from(("h1", "h2", "h3", "h4", "h5")),
            st.sampled_from((0.0, 1.0, 30.0, 99.0, 100.0, 150.0)),
        ),
        max_size=40,
    )
)
def test_automatic_incidents_never_exceed_the_cap_in_any_window(
    actions: list[tuple[str, str, float]],
) -> None:
    cap, window = 2, 100.0
    cluster = cluster_with("h1", "h2", "h3", "h4", "h5", fence_cap=cap, fence_window_s=window)
    started: list[float] = []
    for action, host, wait in actions:
        state = cluster.host_state(host)
        if action == "wait":
            cluster.run(c.Noop(), step=wait)
        elif action == "fence":
            if state is H.ONLINE:
                cluster.suspect(host)
            events = cluster.request_fence(host, step=wait)
            started += [
                cluster.state.log_time
                for e in only(events, "fence-requested")
                if e.get("attempt") == "1"
            ]
        elif action == "confirm":
            cluster.confirm(host)
        elif action == "fail":
            cluster.fail_fence(host)
        elif action == "admin":
            cluster.run(c.AdminConfirmFence(host=host, who="alice", reason="checked"))
        elif state is H.FENCED:
            cluster.ok(c.HostReady(name=host))
    for t in started:
        assert len([s for s in started if t - window < s <= t]) <= cap, started


# ---------------------------------------------------------------- confirm


def test_confirm_releases_vms_in_one_plan_highest_priority_first() -> None:
    cluster = Cluster()
    cluster.add_host("h1", memory_mib=16_384)
    cluster.add_host("h2", memory_mib=4_096)
    for name, priority in (("low", 0), ("mid", 2), ("high", 5)):
        pinned_vm(cluster, name, "h1", memory_mib=2_048, priority=priority)
    cluster.fence("h1")
    events = cluster.confirm("h1")
    assert kinds(events)[:2] == ["host-state", "fence-confirmed"]
    assert cluster.host_state("h1") is H.FENCED
    for name in ("high", "mid"):
        vm = cluster.vm(name)
        assert (vm.state, vm.host, vm.placement) == (V.RECOVERY, "h2", cluster.index)
    low = cluster.vm("low")
    assert low.state is V.PENDING and low.host == ""
    assert "no host fits 2048 MiB" in low.reason and "lacks memory" in low.reason
    moved = [e.subject for e in only(events, "vm-state")]
    assert moved == ["high", "mid", "low"]


def test_vms_stay_frozen_until_the_confirm_commits() -> None:
    cluster = cluster_with("h1")
    pinned_vm(cluster, "v1", "h1")
    cluster.fence("h1")
    cluster.run(c.Noop())
    assert cluster.vm_state("v1") is V.FENCE
    cluster.confirm("h1")
    assert cluster.vm("v1").state is V.RECOVERY and cluster.vm("v1").host == "spare"


def test_confirm_records_the_evidence() -> None:
    cluster = cluster_with("h1")
    token = cluster.fence("h1")
    cluster.confirm("h1", result=FenceResult.ALREADY_OFF, origin="leader")
    record = cluster.state.fence_record(token)
    assert record is not None
    assert record.result is FenceResult.ALREADY_OFF
    assert (record.method, record.confirmed_by) == ("ipmi", "leader")
    assert record.result_evidence == "power read back off"
    assert record.finished_at == cluster.state.log_time


def test_stale_confirm_is_refused_and_keeps_vms_frozen() -> None:
    cluster = cluster_with("h1")
    pinned_vm(cluster, "v1", "h1")
    old = cluster.fence("h1")
    cluster.request_fence("h1")  # a new attempt supersedes the old token
    events = cluster.confirm("h1", token=old)
    assert kinds(events) == ["rejected"] and "stale confirm" in events[0].message
    assert cluster.vm_state("v1") is V.FENCE
    superseded = cluster.state.fence_record(old)
    assert superseded is not None and superseded.result is FenceResult.SUPERSEDED


def test_confirm_of_an_unknown_token_is_refused() -> None:
    cluster = cluster_with("h1", "h2")
    token = cluster.fence("h1")
    cluster.fence("h2")
    events = cluster.confirm("h2", token=token)  # h1's token
    assert kinds(events) == ["rejected"] and "no fence attempt" in events[0].message


def test_confirm_needs_a_result_that_proves_power_off() -> None:
    cluster = cluster_with("h1")
    cluster.fence("h1")
    for result in (
        FenceResult.TIMEOUT,
        FenceResult.MANUAL,
        FenceResult.NOTIFIED,
        FenceResult.PENDING,
    ):
        events = cluster.confirm("h1", result=result)
        assert kinds(events) == ["rejected"] and "does not prove" in events[0].message
    assert cluster.host_state("h1") is H.FENCING


def test_migrating_vm_resumes_on_the_surviving_end() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    pinned_vm(cluster, "v1", "h1")
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    cluster.fence("h1")
    assert cluster.vm_state("v1") is V.FENCE
    cluster.confirm("h1")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host, vm.target_host) == (V.RECOVERY, "h2", "")


def test_migrating_vm_waits_for_both_ends_to_be_fenced() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2", "h3")
    pinned_vm(cluster, "v1", "h1")
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    cluster.fence("h1")
    cluster.fence("h2")
    cluster.confirm("h1")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.FENCE, "h2")
    cluster.confirm("h2")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.RECOVERY, "h3")


def test_fenced_host_rejoins_only_after_confirm() -> None:
    cluster = cluster_with("h1")
    cluster.fence("h1")
    assert kinds(cluster.run(c.HostReady(name="h1"))) == ["rejected"]
    cluster.confirm("h1")
    events = cluster.ok(c.HostReady(name="h1"))
    assert cluster.host_state("h1") is H.ONLINE
    assert "host-recovered" in kinds(events)


def test_vm_not_restarted_after_fence_when_ha_is_none() -> None:
    cluster = cluster_with("h1")
    pinned_vm(cluster, "v1", "h1", ha=c.HaPolicy.NONE)
    cluster.fence("h1")
    cluster.confirm("h1")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.STOPPED, "")


# ---------------------------------------------------------------- failure and retries


def test_failed_attempts_retry_up_to_the_limit_then_wait_for_an_operator() -> None:
    cluster = cluster_with("h1", fence_retry_limit=3)
    pinned_vm(cluster, "v1", "h1")
    first = cluster.fence("h1")
    for attempt in (1, 2):
        events = cluster.fail_fence("h1")
        assert only(events, "fence-failed")[0].get("final") == "False"
        assert cluster.host_state("h1") is H.FENCING
        events = cluster.request_fence("h1")
        assert only(events, "fence-requested")[0].get("attempt") == str(attempt + 1)
    events = cluster.fail_fence("h1", result=FenceResult.UNREACHABLE)
    assert only(events, "fence-failed")[0].get("final") == "True"
    assert cluster.host_state("h1") is H.FENCE_FAILED
    assert "3 attempt(s) failed" in cluster.host("h1").reason
    assert cluster.vm_state("v1") is V.FENCE
    record = cluster.state.fence_record(cluster.host("h1").fence_token)
    assert record is not None and (record.incident, record.attempt) == (first, 3)


def test_fence_failed_host_is_not_fenced_again_automatically() -> None:
    cluster = cluster_with("h1", fence_retry_limit=1)
    cluster.fence("h1")
    cluster.fail_fence("h1")
    events = cluster.request_fence("h1")
    assert kinds(events) == ["rejected"] and "waits for an operator" in events[0].message


def test_notified_is_final_at_once() -> None:
    cluster = cluster_with("h1", fence_retry_limit=3)
    cluster.fence("h1")
    cluster.fail_fence("h1", result=FenceResult.NOTIFIED)
    assert cluster.host_state("h1") is H.FENCE_FAILED
    assert "operator notified" in cluster.host("h1").reason


def test_power_off_is_not_a_failure() -> None:
    cluster = cluster_with("h1")
    cluster.fence("h1")
    events = cluster.fail_fence("h1", result=FenceResult.OFF)
    assert kinds(events) == ["rejected"] and "not a failure" in events[0].message


def test_stale_failure_is_refused() -> None:
    cluster = cluster_with("h1")
    old = cluster.fence("h1")
    cluster.request_fence("h1")
    events = cluster.fail_fence("h1", token=old)
    assert kinds(events) == ["rejected"] and "stale failure" in events[0].message


def test_operator_confirm_releases_vms_with_who_and_why() -> None:
    cluster = cluster_with("h1", fence_retry_limit=1)
    pinned_vm(cluster, "v1", "h1")
    first = cluster.fence("h1")
    cluster.fail_fence("h1")
    events = cluster.ok(c.AdminConfirmFence(host="h1", who="alice", reason="BMC dead, unplugged"))
    assert "manual: alice: BMC dead, unplugged" in only(events, "fence-confirmed")[0].message
    assert cluster.host_state("h1") is H.FENCED
    assert cluster.vm("v1").state is V.RECOVERY
    record = cluster.state.fence_record(cluster.index)
    assert record is not None
    assert record.result is FenceResult.MANUAL
    assert (record.confirmed_by, record.requested_by) == ("alice", "alice")
    assert (record.incident, record.attempt) == (first, 2)


def test_operator_confirm_needs_who_and_reason() -> None:
    cluster = cluster_with("h1")
    cluster.fence("h1")
    for who, reason in (("", "off"), ("alice", ""), ("  ", " ")):
        events = cluster.run(c.AdminConfirmFence(host="h1", who=who, reason=reason))
        assert kinds(events) == ["rejected"] and "who and a reason" in events[0].message


def test_operator_confirm_of_an_online_host_is_refused() -> None:
    cluster = cluster_with("h1")
    events = cluster.run(c.AdminConfirmFence(host="h1", who="alice", reason="sure"))
    assert kinds(events) == ["rejected"] and cluster.host_state("h1") is H.ONLINE


def test_operator_retry_continues_the_same_incident() -> None:
    cluster = cluster_with("h1", "h2", fence_retry_limit=1, fence_cap=1)
    first = cluster.fence("h1")
    cluster.fail_fence("h1")
    events = cluster.ok(c.RetryFence(host="h1", who="bob"))
    assert cluster.host_state("h1") is H.FENCING
    assert only(events, "fence-requested")[0].get("attempt") == "2"
    record = cluster.state.fence_record(cluster.index)
    assert record is not None and record.incident == first


def test_retry_of_a_host_that_is_not_failed_is_refused() -> None:
    cluster = cluster_with("h1")
    events = cluster.run(c.RetryFence(host="h1", who="bob"))
    assert kinds(events) == ["rejected"] and cluster.host_state("h1") is H.ONLINE


def test_retry_is_refused_in_cluster_maintenance() -> None:
    cluster = cluster_with("h1", fence_retry_limit=1)
    cluster.fence("h1")
    cluster.fail_fence("h1")
    cluster.ok(c.SetClusterMaintenance(on=True))
    events = cluster.run(c.RetryFence(host="h1", who="bob"))
    assert kinds(events) == ["rejected"] and "cluster maintenance" in events[0].message


def test_failed_stop_asks_for_a_fence_of_a_healthy_host() -> None:
    cluster = cluster_with("h1")
    pinned_vm(cluster, "v1", "h1")
    cluster.ok(c.SetVmDesired(name="v1", desired=c.Desired.STOPPED))
    cluster.report("v1", "stop-failed", detail="qemu hung")
    assert "qemu hung" in cluster.host("h1").fence_wanted
    cluster.request_fence("h1")
    assert cluster.host_state("h1") is H.FENCING
    cluster.confirm("h1")
    vm = cluster.vm("v1")
    assert (vm.state, vm.host) == (V.STOPPED, "")
    cluster.ok(c.HostReady(name="h1"))
    assert cluster.host("h1").fence_wanted == ""


def test_thawed_migration_keeps_both_ends() -> None:
    """unfreeze() returns a frozen migrating VM to STARTED on its source and drops the
    target. The migration may have finished (or still run) meanwhile: the VM then runs
    on the target while the state places it on the source only; the source agent
    reports it crashed and restarts it there: two copies."""
    cluster = cluster_with("h1", "h2", fence_cap=0)
    pinned_vm(cluster, "v1", "h1")
    cluster.ok(c.MigrateVm(name="v1", target="h2"))
    cluster.suspect("h2")
    cluster.request_fence("h2")  # cap 0: blocked, the VM freezes with both ends
    assert (cluster.vm_state("v1"), cluster.vm("v1").target_host) == (V.FENCE, "h2")
    cluster.ok(c.MarkHostAlive(name="h2", evidence="renewed"))
    vm = cluster.vm("v1")
    assert {"h1", "h2"} <= set(ClusterState.holds(vm)), vm


def test_thawed_vm_that_never_started_is_started_not_reported_crashed() -> None:
    """unfreeze() turns every frozen VM into STARTED. One that was still STARTING when
    its host went silent never ran: the agent sees 'started' and no domain, reports a
    crash, and the VM burns a restart (or relocates) for nothing."""
    cluster = cluster_with("h1", fence_cap=0)
    cluster.add_vm("v1", allowed_hosts=("h1",), start=False)
    cluster.suspect("h1")
    cluster.request_fence("h1")
    cluster.ok(c.MarkHostAlive(name="h1", evidence="renewed"))
    assert cluster.vm_state("v1") is V.STARTING
