"""Snapshots: exact, canonical, and a damaged one is a SnapshotError (nothing else);
format 1 (no version announcements) is migrated on load, a newer format is refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.core import versions
from hacluster.fsm import ClusterState, decode_snapshot, encode_snapshot, state_digest
from hacluster.fsm import commands as c
from hacluster.fsm.codec import (
    SNAPSHOT_FORMAT,
    SnapshotError,
    SnapshotTooNew,
    UnreadableLog,
    snapshot_format,
)
from hacluster.fsm.model import (
    BmcOverride,
    FenceDevice,
    FenceFallback,
    FenceLevel,
    FenceRecord,
    FenceResult,
    Host,
    HostVersions,
    StorageCheck,
    StorageVerdict,
    Vm,
    Watchdog,
)

from .builders import Cluster, indexes


def busy_cluster() -> Cluster:
    """Hosts in several states, VMs everywhere, fence history, request ids."""
    cluster = Cluster(fence_cap=5)
    cluster.add_hosts("h1", "h2", "h3", "h4")
    cluster.add_host("h5", bmc=BmcOverride(address="10.0.0.5", sealed_password=b"\x00\xffpw"))
    for i in range(12):
        cluster.add_vm(
            f"v{i:02}",
            memory_mib=512 * (1 + i % 3),
            priority=i % 4,
            anti_affinity="db" if i % 5 == 0 else "",
        )
        cluster.ok(c.Noop(term=i), request_id=f"noop-{i}")
    cluster.ok(c.AddVm(name="off", xml="<d/>", memory_mib=1, vcpus=1, desired=c.Desired.STOPPED))
    cluster.fence("h1")
    cluster.confirm("h1")
    cluster.fence("h2")
    cluster.fail_fence("h2")
    cluster.ok(c.SetHostMaintenance(name="h4", on=True))
    cluster.ok(c.ReportHostLoad(name="h3", load=1.25))
    for name in ("h1", "h2", "h4", "h5"):  # this release everywhere: snapshots in its format
        cluster.ok(versions.announcement(cluster.state, name))
    mine = versions.this_peer("h3")
    cluster.ok(c.AnnounceVersions(name="h3", commands=(*mine.commands, ("frobnicate", 2)),
                                  entry_formats=(1, 2)))
    return cluster


def test_round_trip_is_exact() -> None:
    state = busy_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert restored == state
    assert state_digest(restored) == state_digest(state)


def test_round_trip_rebuilds_the_derived_indexes() -> None:
    state = busy_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert indexes(restored) == indexes(state)
    assert restored.pending == state.pending


def test_round_trip_keeps_secrets_and_request_order() -> None:
    state = busy_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert restored.hosts["h5"].bmc.sealed_password == b"\x00\xffpw"
    assert list(restored.recent_requests.items()) == list(state.recent_requests.items())


def test_snapshot_bytes_do_not_depend_on_dict_order() -> None:
    state = busy_cluster().state
    shuffled = decode_snapshot(encode_snapshot(state))
    shuffled.hosts = dict(reversed(list(shuffled.hosts.items())))
    shuffled.vms = dict(reversed(list(shuffled.vms.items())))
    assert encode_snapshot(shuffled) == encode_snapshot(state)


def test_empty_state_round_trips() -> None:
    assert decode_snapshot(encode_snapshot(ClusterState())) == ClusterState()


def test_digest_changes_with_content() -> None:
    cluster = busy_cluster()
    before = state_digest(cluster.state)
    cluster.ok(c.ReportHostLoad(name="h3", load=2.5))
    assert state_digest(cluster.state) != before


# ---------------------------------------------------------------- damaged snapshots


def _doc() -> dict[str, Any]:
    doc = msgpack.unpackb(encode_snapshot(busy_cluster().state), raw=False)
    assert isinstance(doc, dict)
    return doc


def position(cls: type, name: str) -> int:
    """Index of a field in a record's positional snapshot form."""
    return [f.name for f in dataclasses.fields(cls)].index(name)


def _pack(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def test_truncated_snapshot_is_a_snapshot_error() -> None:
    data = encode_snapshot(busy_cluster().state)
    for cut in range(0, len(data) - 1, max(1, len(data) // 300)):
        with pytest.raises(SnapshotError):
            decode_snapshot(data[:cut])


def test_garbage_is_a_snapshot_error() -> None:
    for data in (b"", b"\xc1", b"not a snapshot", _pack([1, 2, 3])):
        with pytest.raises(SnapshotError):
            decode_snapshot(data)


def test_round_trip_keeps_the_version_announcements() -> None:
    state = busy_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert set(restored.versions) == {"h1", "h2", "h3", "h4", "h5"}
    assert restored.versions == state.versions
    assert ("frobnicate", 2) in restored.versions["h3"].commands
    assert isinstance(restored.versions["h3"], HostVersions)


def test_format_1_is_migrated_with_no_announcements() -> None:
    """A snapshot written by release 0.1.0 (format 1, before announcements existed)
    loads as the same state with an empty announcement map."""
    state = busy_cluster().state
    doc = _doc()
    doc["format"] = 1
    del doc["versions"]
    _before_format_3(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored.versions == {}
    assert restored == dataclasses.replace(state, versions={})
    assert decode_snapshot(encode_snapshot(restored)) == restored
    # nobody announced: hosts of releases before 0.3.0, which read format 6 at most
    assert msgpack.unpackb(encode_snapshot(restored))["format"] == 6


def _before_format_7(doc: dict[str, Any]) -> None:
    """No settings.failback_*, host.tags, host.fence_levels, host.failback_ready,
    vm.start_after, vm.colocation, vm.required_tags, vm.preferred_hosts, vm.failback."""
    doc["settings"] = doc["settings"][:-4]
    doc["hosts"] = [h[:-3] for h in doc["hosts"]]
    doc["vms"] = [v[:-5] for v in doc["vms"]]


def _before_format_6(doc: dict[str, Any]) -> None:
    """... no settings.shutdown_policy, host.shutdown_policy, host.shutdown,
    vm.migrate_tried, vm.tried_hosts."""
    _before_format_7(doc)
    doc["settings"] = doc["settings"][:-1]
    doc["hosts"] = [h[:-2] for h in doc["hosts"]]
    doc["vms"] = [v[:-2] for v in doc["vms"]]


def _before_format_5(doc: dict[str, Any]) -> None:
    """... no host.heartbeat_paths, host.storage_check, fence.storage."""
    _before_format_6(doc)
    doc["hosts"] = [h[:-2] for h in doc["hosts"]]
    doc["fences"] = [f[:-1] for f in doc["fences"]]


def _before_format_4(doc: dict[str, Any]) -> None:
    """... no settings.fence_fallback, settings.watchdog_margin_s, host.watchdog."""
    _before_format_5(doc)
    doc["settings"] = doc["settings"][:-2]
    doc["hosts"] = [h[:-1] for h in doc["hosts"]]


def _before_format_3(doc: dict[str, Any]) -> None:
    """... and no settings.probe_after_s."""
    _before_format_4(doc)
    doc["settings"] = doc["settings"][:-1]


def test_format_2_is_migrated_with_the_default_probe_setting() -> None:
    state = busy_cluster().state
    doc = _doc()
    doc["format"] = 2
    _before_format_3(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored == state and restored.settings.probe_after_s == 1.0


def test_format_3_is_migrated_with_no_watchdogs_and_the_default_fallback() -> None:
    state = busy_cluster().state
    doc = _doc()
    doc["format"] = 3
    _before_format_4(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored == state
    assert restored.settings.fence_fallback is FenceFallback.WATCHDOG
    assert all(h.watchdog == Watchdog() for h in restored.hosts.values())


def test_format_4_is_migrated_with_no_heartbeats_and_no_storage_checks() -> None:
    state = storage_cluster().state
    doc = msgpack.unpackb(encode_snapshot(state), raw=False)
    doc["format"] = 4
    _before_format_5(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored.hosts["h2"].heartbeat_paths == ()
    assert restored.hosts["h2"].storage_check == StorageCheck()
    assert all(r.storage == StorageCheck() for r in restored.fences)
    stripped = {n: dataclasses.replace(h, heartbeat_paths=(), storage_check=StorageCheck(),
                                       failback_ready=True)  # format 7 added readiness
                for n, h in state.hosts.items()}
    assert restored.hosts == stripped
    assert restored.fences == [dataclasses.replace(r, storage=StorageCheck())
                               for r in state.fences]


def relations_cluster() -> Cluster:
    """busy_cluster, plus host tags and VMs with start order, colocation and tags."""
    cluster = busy_cluster()
    cluster.ok(c.TagHost(name="h3", tag="ssd"))
    cluster.ok(c.SetVmOptions(name="v01", start_after=("v02",), colocation="pair",
                              required_tags=("ssd",)))
    return cluster


def test_round_trip_keeps_relations_and_format_6_loads_without_them() -> None:
    state = relations_cluster().state
    assert decode_snapshot(encode_snapshot(state)) == state
    assert state.hosts["h3"].tags == ("ssd",) and state.vms["v01"].colocation == "pair"
    doc = msgpack.unpackb(encode_snapshot(state), raw=False)
    doc["format"] = 6
    _before_format_7(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored.hosts == {n: dataclasses.replace(h, tags=()) for n, h in
                              state.hosts.items()}
    assert restored.vms == {n: dataclasses.replace(v, start_after=(), colocation="",
                                                   required_tags=())
                            for n, v in state.vms.items()}


def test_format_6_is_migrated_with_no_fencing_levels() -> None:
    state = levels_cluster().state
    doc = msgpack.unpackb(encode_snapshot(state), raw=False)
    doc["format"] = 6
    _before_format_7(doc)
    restored = decode_snapshot(_pack(doc))
    assert all(h.fence_levels == () for h in restored.hosts.values())
    assert restored.hosts == {n: dataclasses.replace(h, fence_levels=())
                              for n, h in state.hosts.items()}


def levels_cluster() -> Cluster:
    """busy_cluster, plus a host with two fencing levels (the second of two devices)."""
    cluster = busy_cluster()
    pdu = FenceDevice("agent", "pdu1", agent="fence_apc_snmp", sealed_password=b"\x00sealed",
                      options=(("plug", "3"),))
    cluster.ok(c.SetHostFencing(name="h2", levels=(
        FenceLevel((FenceDevice("bmc"),)),
        FenceLevel((pdu, FenceDevice("ipmi", "10.0.9.2", port=6230))))))
    return cluster


def test_round_trip_keeps_fencing_levels() -> None:
    state = levels_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert restored == state
    assert restored.hosts["h2"].fence_levels[1].devices[0].sealed_password == b"\x00sealed"


def test_format_6_is_migrated_with_no_preferences_and_every_host_ready() -> None:
    """Before failback (format 6): no VM prefers a host nor fails back, every host is
    ready to take VMs back (readiness is tracked only once every host runs 0.3.0:
    fsm/releases.py), and the failback settings take their defaults."""
    state = busy_cluster().state
    doc = _doc()
    doc["format"] = 6
    _before_format_7(doc)
    restored = decode_snapshot(_pack(doc))
    assert all(h.failback_ready for h in restored.hosts.values())
    assert restored.hosts == {n: dataclasses.replace(h, failback_ready=True)
                              for n, h in state.hosts.items()}
    assert all(v.preferred_hosts == () and v.failback.value == "never"
               for v in restored.vms.values())
    assert restored.settings.failback_max_concurrent == 2


def test_readiness_is_tracked_only_once_every_host_runs_0_3_0() -> None:
    """An older peer's snapshot cannot hold it: a newer peer loading one would differ."""
    older = busy_cluster()
    commands = tuple(t for t in versions.this_peer("h1").commands if t[0] != "host-fencing")
    older.ok(c.AnnounceVersions(name="h1", commands=commands, entry_formats=(1, 2)))
    older.fence("h3")
    assert older.state.hosts["h3"].failback_ready
    assert decode_snapshot(encode_snapshot(older.state)) == older.state
    newer = busy_cluster()
    newer.fence("h3")
    assert not newer.state.hosts["h3"].failback_ready


def storage_cluster() -> Cluster:
    """busy_cluster, plus a host writing heartbeats, found active on storage, and a
    fence whose record carries a storage check."""
    cluster = busy_cluster()
    check = StorageCheck(StorageVerdict.ACTIVE, 1, ("t+0.0 heartbeat changed",))
    cluster.ok(c.ReportStorage(name="h3", heartbeat_paths=("/mnt/pool",)))
    cluster.ok(c.MarkHostSuspect(name="h3", evidence="lease overdue"))
    cluster.ok(c.StorageChecked(host="h3", check=check))
    cluster.ok(c.ReportStorage(name="h2", heartbeat_paths=("/mnt/pool", "/mnt/other")))
    quiet = StorageCheck(StorageVerdict.QUIET, 3, ("a", "b", "c"))
    cluster.ok(c.RequestFence(host="h3", reason="storage quiet", evidence="", storage=quiet))
    return cluster


def test_round_trip_keeps_heartbeat_paths_and_storage_checks() -> None:
    state = storage_cluster().state
    restored = decode_snapshot(encode_snapshot(state))
    assert restored == state
    assert restored.hosts["h2"].heartbeat_paths == ("/mnt/pool", "/mnt/other")
    assert restored.hosts["h3"].storage_check.verdict is StorageVerdict.QUIET
    assert restored.fences[-1].storage.checks == 3


def test_a_newer_format_is_refused_naming_both_formats() -> None:
    doc = _doc()
    doc["format"] = 8
    with pytest.raises(SnapshotTooNew, match=r"snapshot format 8 is newer than this peer "
                       r"reads \(formats 1, 2, 3, 4, 5, 6, 7\)") as raised:
        decode_snapshot(_pack(doc))
    assert isinstance(raised.value, UnreadableLog)  # the peer halts on it (exit code 76)


@pytest.mark.parametrize("found", [0, "2", None])
def test_unknown_format_is_named(found: Any) -> None:
    doc = _doc()
    doc["format"] = found
    with pytest.raises(SnapshotError, match=f"unknown snapshot format {found!r}"):
        decode_snapshot(_pack(doc))


@pytest.mark.parametrize(
    "key", ["hosts", "vms", "fences", "settings", "recent", "log_time", "applied_index",
            "versions"]
)
def test_missing_part_is_a_snapshot_error(key: str) -> None:
    doc = _doc()
    del doc[key]
    with pytest.raises(SnapshotError, match="invalid"):
        decode_snapshot(_pack(doc))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("hosts", 5),
        ("hosts", [["h1"]]),
        ("vms", [[1] * len(dataclasses.fields(Vm))]),
        ("fences", [{"token": "x"}]),
        ("settings", None),
        ("recent", [[1, 2, 3]]),
        ("recent", [5]),
        ("log_time", "noon"),
        ("applied_index", None),
        ("applied_index", float("inf")),
        ("log_time", [1]),
        ("versions", [["h1", [["add-host", "one"]], [1]]]),
    ],
)
def test_wrong_part_is_a_snapshot_error(key: str, value: Any) -> None:
    doc = _doc()
    doc[key] = value
    with pytest.raises(SnapshotError):
        decode_snapshot(_pack(doc))


def test_record_with_bad_enum_is_a_snapshot_error() -> None:
    doc = _doc()
    doc["hosts"][0][position(Host, "state")] = "on-fire"
    with pytest.raises(SnapshotError, match="on-fire"):
        decode_snapshot(_pack(doc))


def test_fence_record_with_bad_result_is_a_snapshot_error() -> None:
    doc = _doc()
    result = position(FenceRecord, "result")
    assert doc["fences"][0][result] == FenceResult.OFF.value
    doc["fences"][0][result] = "maybe"
    with pytest.raises(SnapshotError):
        decode_snapshot(_pack(doc))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corrupted_snapshot_is_a_snapshot_error_or_a_state(data: st.DataObject) -> None:
    raw = bytearray(SNAPSHOT)
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        state = decode_snapshot(bytes(raw))
    except SnapshotError:
        return
    assert isinstance(state, ClusterState)


SNAPSHOT = encode_snapshot(busy_cluster().state)


def test_format_5_is_migrated_with_the_default_shutdown_policies() -> None:
    state = busy_cluster().state
    doc = _doc()
    doc["format"] = 5
    _before_format_6(doc)
    restored = decode_snapshot(_pack(doc))
    assert restored == state
    assert restored.settings.shutdown_policy.value == "freeze"
    assert all(h.shutdown_policy == h.shutdown == "" for h in restored.hosts.values())


def test_while_an_older_release_is_in_the_cluster_snapshots_are_written_as_it_reads() -> None:
    """A rolling upgrade: h3 still runs 0.2.0 (no host-fencing, snapshot format 6). A
    snapshot the new peers send it must be one it reads, and carry the same state."""
    cluster = busy_cluster()
    older = tuple(t for t in versions.this_peer("h3").commands if t[0] != "host-fencing")
    cluster.ok(c.AnnounceVersions(name="h3", commands=older, entry_formats=(1, 2)))
    state = cluster.state
    assert snapshot_format(state) == 6
    data = encode_snapshot(state)
    assert msgpack.unpackb(data)["format"] == 6
    assert decode_snapshot(data) == state
    upgraded = versions.announcement(state, "h3")
    assert upgraded is not None
    cluster.ok(upgraded)
    assert msgpack.unpackb(encode_snapshot(cluster.state))["format"] == SNAPSHOT_FORMAT


def test_a_state_that_does_not_fit_the_older_format_keeps_the_newer_one() -> None:
    cluster = busy_cluster()
    cluster.ok(c.TagHost(name="h1", tag="ssd"))  # (the version gate would have refused it)
    older = tuple(t for t in versions.this_peer("h3").commands if t[0] != "host-fencing")
    cluster.ok(c.AnnounceVersions(name="h3", commands=older, entry_formats=(1, 2)))
    assert snapshot_format(cluster.state) == SNAPSHOT_FORMAT
    assert decode_snapshot(encode_snapshot(cluster.state)) == cluster.state
