"""The replicated side of the storage activity check (issue 12): where hosts write
heartbeats, a host found alive on storage (storage-active: not fenced, its VMs not
restarted), what its record keeps, and how the new fields travel to older peers."""

from __future__ import annotations

import dataclasses

import msgpack

from hacluster.fsm import commands as c
from hacluster.fsm import decode_command, encode_command
from hacluster.fsm.model import FenceResult, StorageCheck, StorageVerdict
from hacluster.fsm.states import HOST_MEANINGS, HostState, VmState

from .builders import Cluster, kinds

H = HostState
ACTIVE = StorageCheck(StorageVerdict.ACTIVE, 1, ("t+1.0 heartbeat /mnt/pool: #4 -> #6",))
QUIET = StorageCheck(StorageVerdict.QUIET, 3, ("a", "b", "c"))


def suspect_b() -> Cluster:
    cluster = Cluster()
    cluster.add_hosts("a", "b")
    cluster.add_vm("vm1", allowed_hosts=("b",))
    cluster.ok(c.ReportStorage(name="b", heartbeat_paths=("/mnt/pool",)))
    cluster.suspect("b")
    return cluster


def test_a_host_reports_where_it_writes_heartbeats() -> None:
    cluster = suspect_b()
    assert cluster.host("b").heartbeat_paths == ("/mnt/pool",)
    assert cluster.run(c.ReportStorage(name="b", heartbeat_paths=("/mnt/pool",))) == []


def test_a_suspect_host_active_on_storage_is_storage_active_and_keeps_its_vms() -> None:
    cluster = suspect_b()
    events = cluster.ok(c.StorageChecked(host="b", check=ACTIVE))
    assert kinds(events) == ["host-state", "storage-active"]
    host = cluster.host("b")
    assert host.state is H.STORAGE_ACTIVE and host.storage_check == ACTIVE
    assert "still writes shared storage" in host.reason
    assert cluster.vm("vm1").state is VmState.STARTED and cluster.vm("vm1").host == "b"
    cluster.ok(c.MarkHostAlive(name="b", evidence="renews again"))
    assert cluster.host("b").state is H.ONLINE
    assert cluster.host("b").storage_check == StorageCheck()  # that episode is over


def test_a_pending_attempt_ends_storage_active_and_a_later_fence_is_a_new_incident() -> None:
    cluster = suspect_b()
    token = cluster.fence("b")
    assert cluster.vm("vm1").state is VmState.FENCE
    cluster.ok(c.StorageChecked(host="b", token=token, check=ACTIVE))
    record = cluster.state.fence_record(token)
    assert record is not None
    assert (record.result, record.storage) == (FenceResult.STORAGE_ACTIVE, ACTIVE)
    assert cluster.host("b").state is H.STORAGE_ACTIVE
    assert cluster.vm("vm1").state is VmState.FENCE  # still frozen: nothing restarts it
    cluster.ok(c.RequestFence(host="b", reason="storage quiet", evidence="-", storage=QUIET))
    again = cluster.state.fence_record(cluster.host("b").fence_token)
    assert again is not None and (again.attempt, again.incident) == (1, again.token)
    assert again.storage == QUIET and cluster.host("b").storage_check == QUIET
    cluster.confirm("b")
    assert cluster.vm("vm1").state is VmState.PENDING  # released (no other host fits)


def test_a_check_of_an_older_attempt_or_a_healthy_host_is_refused() -> None:
    cluster = suspect_b()
    token = cluster.fence("b")
    stale = cluster.run(c.StorageChecked(host="b", token=token - 1, check=ACTIVE))
    assert kinds(stale) == ["rejected"] and "stale storage check" in stale[0].message
    healthy = cluster.run(c.StorageChecked(host="a", check=ACTIVE))
    assert kinds(healthy) == ["rejected"] and "no storage check is due" in healthy[0].message


def test_an_unreadable_storage_is_recorded_and_said() -> None:
    cluster = suspect_b()
    blind = StorageCheck(StorageVerdict.UNREADABLE, 3, ("/mnt/pool: not readable",))
    events = cluster.ok(c.StorageChecked(host="b", check=blind))
    assert kinds(events) == ["storage-unreadable"]
    assert cluster.host("b").state is H.SUSPECT and cluster.host("b").storage_check == blind


def test_an_operator_may_confirm_a_storage_active_host_off() -> None:
    cluster = suspect_b()
    cluster.ok(c.StorageChecked(host="b", check=ACTIVE))
    cluster.ok(c.AdminConfirmFence(host="b", who="alice", reason="pulled its cords"))
    assert cluster.host("b").state is H.FENCED
    assert cluster.host("b").storage_check == StorageCheck()


def test_a_storage_active_attempt_is_not_a_failure_a_watchdog_confirm_may_follow() -> None:
    cluster = suspect_b()
    token = cluster.fence("b")
    cluster.ok(c.StorageChecked(host="b", token=token, check=ACTIVE))
    cluster.ok(c.RequestFence(host="b", reason="storage quiet", evidence="-"))
    refused = cluster.run(c.WatchdogConfirm(host="b", token=cluster.host("b").fence_token,
                                            evidence="late"))
    assert kinds(refused) == ["rejected"]


# ---------------------------------------------------------------- the wire


def test_without_a_storage_check_a_fence_request_is_written_as_version_1() -> None:
    plain = c.RequestFence(host="b", reason="r", evidence="e")
    raw = msgpack.unpackb(encode_command(c.Envelope(plain)))
    assert raw[2] == 1 and "storage" not in raw[-1]
    checked = dataclasses.replace(plain, storage=QUIET)
    raw = msgpack.unpackb(encode_command(c.Envelope(checked)))
    assert raw[2] == 2 and raw[-1]["storage"][0] == "quiet"
    decoded = decode_command(encode_command(c.Envelope(checked)))
    assert isinstance(decoded, c.Envelope) and decoded.command == checked


def test_an_older_release_reads_what_is_written_in_its_version() -> None:
    """A version's readers refuse fields they do not know: those added later are left
    out (settings v1 as release 0.1.0 knew it, watchdog confirms of version 1)."""
    raw = msgpack.unpackb(encode_command(c.Envelope(c.SetSettings(fence_cap=2))))
    later = {"probe_after_s", "fence_fallback", "watchdog_margin_s", "failback_max_concurrent",
             "failback_stickiness", "failback_hold_down_s", "failback_ready_after_s"}
    assert raw[2] == 1
    assert set(raw[-1]) == {f.name for f in dataclasses.fields(c.SetSettings)} - later
    watchdog = msgpack.unpackb(encode_command(c.Envelope(
        c.WatchdogConfirm(host="b", token=3, evidence="late"))))
    assert watchdog[2] == 1 and set(watchdog[-1]) == {"host", "token", "evidence"}


def test_every_host_state_is_explained_in_the_state_tables() -> None:
    assert set(HOST_MEANINGS) == set(HostState)
