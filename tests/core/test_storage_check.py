"""The storage activity check (issue 12): the pure verdict (core/storage.py) and what the
leader does with it (core/manager.py). Reads are built by hand; time is an argument."""

from __future__ import annotations

from typing import Any

import pytest

from hacluster.core.manager import Decision, RunFence
from hacluster.core.storage import (
    DISK,
    ERROR,
    HEARTBEAT,
    MISSING,
    OK,
    CheckStorage,
    FileRead,
    StorageRead,
    StorageWatch,
    disks_of,
)
from hacluster.fsm import commands as c
from hacluster.fsm.model import FenceResult, Host, StorageCheck, StorageVerdict
from hacluster.fsm.states import HostState, VmState

from .builders import Cluster
from .test_manager import T0, Leader, cluster_of, command, proposals
from .test_watchdog_fence import ARMED, MARGIN

H = HostState
V = StorageVerdict
POOL = "/mnt/pool"
HOST = Host(name="b", heartbeat_paths=(POOL,))


def beat(counter: int | None, state: str = OK, path: str = POOL) -> FileRead:
    if state != OK:
        return FileRead(path, HEARTBEAT, state, shown=state)
    return FileRead(path, HEARTBEAT, OK, (counter, "boot1", 60, counter), f"#{counter}")


def disk(mtime: int, path: str = f"{POOL}/vm1.qcow2") -> FileRead:
    return FileRead(path, DISK, OK, (1 << 30, mtime), f"modified {mtime}")


def reading(at: float, *files: FileRead, host: str = "b") -> StorageRead:
    return StorageRead(host, at, f"t={at:g}", 0.01, files)


def watch_of(*reads: StorageRead, checks: int = 3) -> StorageWatch:
    """A watch fed these reads in order, one per interval (as the leader would)."""
    watch = StorageWatch()
    watch.configure(checks, 1.0, configured=True)
    for read in reads:
        assert watch.due(Cluster().state, HOST, read.at, "why") is not None
        watch.result(read, read.at)
    return watch


# ---------------------------------------------------------------- the verdict


def test_the_first_read_decides_nothing() -> None:
    assert watch_of(reading(0, beat(5))).verdict("b") is None


def test_a_heartbeat_written_between_two_reads_is_activity() -> None:
    watch = watch_of(reading(0, beat(5)), reading(1, beat(7)))
    assert watch.verdict("b") is V.ACTIVE
    evidence = watch.evidence("b")
    assert (evidence.verdict, evidence.checks) == (V.ACTIVE, 1)
    assert "WRITTEN: heartbeat /mnt/pool: #7" in evidence.reads[-1]
    assert evidence.reads[0].startswith("t=0 (+0.0 s, 0.01 s) b: /mnt/pool: #5")


def test_consecutive_checks_without_a_change_are_quiet() -> None:
    reads = [reading(t, beat(5), disk(100)) for t in range(4)]
    assert watch_of(*reads[:3]).verdict("b") is None
    watch = watch_of(*reads)
    assert watch.verdict("b") is V.QUIET
    evidence = watch.evidence("b")
    assert (evidence.checks, len(evidence.reads)) == (3, 4)
    assert "1/1 disks read -> no change" in evidence.reads[-1]


def test_after_activity_the_count_starts_again() -> None:
    reads = [reading(0, beat(5)), reading(1, beat(6))]
    reads += [reading(t, beat(6)) for t in range(2, 5)]
    assert watch_of(*reads[:4]).verdict("b") is None
    assert watch_of(*reads).verdict("b") is V.QUIET


def test_a_disk_written_by_a_vm_is_activity_though_the_heartbeat_stopped() -> None:
    watch = watch_of(reading(0, beat(5), disk(100)), reading(1, beat(5), disk(101)))
    assert watch.verdict("b") is V.ACTIVE
    assert "disk /mnt/pool/vm1.qcow2: modified 101" in watch.evidence("b").reads[-1]


def test_a_heartbeat_file_that_appears_is_activity() -> None:
    watch = watch_of(reading(0, beat(None, MISSING)), reading(1, beat(1)))
    assert watch.verdict("b") is V.ACTIVE


def test_a_heartbeat_that_stays_missing_is_quiet() -> None:
    reads = [reading(t, beat(None, MISSING)) for t in range(4)]
    assert watch_of(*reads).verdict("b") is V.QUIET


def test_unreadable_storage_is_no_change_but_never_quiet() -> None:
    reads = [reading(0, beat(5))] + [reading(t, beat(None, ERROR)) for t in range(1, 4)]
    watch = watch_of(*reads)
    assert watch.verdict("b") is V.UNREADABLE
    assert watch.evidence("b").checks == 3
    assert "nothing could be compared" in watch.evidence("b").reads[-1]


def test_quiet_needs_that_many_readable_checks_in_a_row() -> None:
    reads = [reading(0, beat(5)), reading(1, beat(5)), reading(2, beat(None, ERROR)),
             reading(3, beat(5)), reading(4, beat(5))]
    assert watch_of(*reads).verdict("b") is V.UNREADABLE
    assert watch_of(*reads, reading(5, beat(5))).verdict("b") is V.QUIET


def test_a_write_during_an_unreadable_spell_is_seen_once_readable_again() -> None:
    reads = [reading(0, beat(5)), reading(1, beat(None, ERROR)), reading(2, beat(9))]
    assert watch_of(*reads).verdict("b") is V.ACTIVE


def test_first_readable_read_after_an_unreadable_one_compares_nothing() -> None:
    """A baseline read later is no comparison: it must not count as a quiet check."""
    reads = [reading(0, beat(None, ERROR)), reading(1, beat(5)), reading(2, beat(5)),
             reading(3, beat(5))]
    assert watch_of(*reads).verdict("b") is V.UNREADABLE
    assert watch_of(*reads, reading(4, beat(5))).verdict("b") is V.QUIET


def test_one_read_at_a_time_then_one_interval_later() -> None:
    watch = StorageWatch()
    watch.configure(3, 2.0, configured=True)
    state = Cluster().state
    first = watch.due(state, HOST, 10.0, "why")
    assert isinstance(first, CheckStorage) and first.heartbeat_paths == (POOL,)
    assert watch.due(state, HOST, 11.0, "why") is None  # still reading
    watch.result(reading(10.0, beat(1)), 10.5)
    assert watch.due(state, HOST, 12.4, "why") is None
    assert watch.due(state, HOST, 12.5, "why") is not None


def test_a_read_that_comes_back_after_the_episode_ended_is_dropped() -> None:
    watch = watch_of(reading(0, beat(5)))
    assert watch.due(Cluster().state, HOST, 1.0, "why") is not None
    watch.forget("b")
    watch.result(reading(1.0, beat(6)), 1.1)
    assert watch.verdict("b") is None and watch.evidence("b") == StorageCheck()


def test_the_gate() -> None:
    quiet = watch_of(*[reading(t, beat(5)) for t in range(4)])
    assert quiet.gate(HOST, True, 3.0).may
    assert not quiet.gate(HOST, True, 3.0 + quiet.stale_after_s + 0.1).may  # reads stopped
    blind = watch_of(reading(0, beat(5)), *[reading(t, beat(0, ERROR)) for t in (1, 2, 3)])
    assert blind.gate(HOST, False, 3.0).may  # a BMC's read-back is proof enough
    strict = blind.gate(HOST, True, 3.0)
    assert not strict.may and strict.report is not None
    assert strict.report.verdict is V.UNREADABLE
    said = Host(name="b", heartbeat_paths=(POOL,), storage_check=strict.report)
    assert blind.gate(said, True, 3.0).report is None  # said once
    active = watch_of(reading(0, beat(5)), reading(1, beat(6))).gate(HOST, False, 1.0)
    assert not active.may and active.report is not None
    none = quiet.gate(Host(name="b"), True, 3.0)
    assert none.may and "b writes no storage heartbeats" in none.note


def test_the_disks_read_are_the_hosts_vms_disk_files_on_its_storage() -> None:
    cluster = Cluster()
    cluster.add_hosts("b")
    cluster.ok(c.ReportStorage(name="b", heartbeat_paths=(POOL,)))
    xml = ("<domain><name>vm1</name><devices>"
           f"<disk type='file'><source file='{POOL}/vm1.qcow2'/></disk>"
           "<disk type='file'><source file='/var/lib/local.qcow2'/></disk>"
           f"<disk type='file'><source file='{POOL}/../etc/x'/></disk>"
           "</devices></domain>")
    cluster.add_vm("vm1", xml=xml, allowed_hosts=("b",))
    assert disks_of(cluster.state, cluster.host("b")) == (f"{POOL}/vm1.qcow2",)
    cluster.add_hosts("a")
    shared = f"<domain><name>vm2</name><devices><disk type='file'><source file='{POOL}/vm1" \
        ".qcow2'/></disk></devices></domain>"
    cluster.add_vm("vm2", xml=shared, allowed_hosts=("a",))  # the same disk, elsewhere
    assert disks_of(cluster.state, cluster.host("b"), {}) == ()


# ---------------------------------------------------------------- the leader


def storage_leader(*, announce: bool = True, **settings: Any) -> Leader:
    """b writes heartbeats to POOL and runs vm1; every host announced this build
    (unless not `announce`: a cluster with a host of an older release)."""
    cluster = cluster_of("b", **settings)
    cluster.add_vm("vm1", 512, allowed_hosts=("b",))
    cluster.ok(c.ReportStorage(name="b", heartbeat_paths=(POOL,)))
    if announce:
        cluster.announce_all()
    leader = Leader(cluster)
    leader.manager.storage.configure(3, 1.0, configured=True)
    leader.commit_noop()
    return leader


def checks_of(decisions: list[Decision]) -> list[CheckStorage]:
    return [d for d in decisions if isinstance(d, CheckStorage)]


def expire_b(leader: Leader) -> float:
    """b goes silent: suspect, then its lease expires and it is challenged (T0 + 3.3)."""
    (suspect,) = proposals(leader.tick(T0 + 1.5), c.MarkHostSuspect)
    leader.commit(suspect)
    return T0 + 3.3


def run_checks(leader: Leader, at: float, counters: list[int | None],
               state: str = OK) -> tuple[float, list[Decision]]:
    """A check every interval from `at`, answered with b's heartbeat counter, and a tick
    right after each answer: (the next interval, every decision of those ticks)."""
    decisions: list[Decision] = []
    for counter in counters:
        asked = leader.tick(at)
        give_up = at + 10.0
        while not checks_of(asked):  # not due yet
            assert not proposals(asked, c.Command) and at < give_up, asked
            at = round(at + 0.05, 2)
            asked = leader.tick(at)
        leader.manager.storage_result(reading(at, beat(counter, state)), at + 0.01)
        decisions += asked + leader.tick(at + 0.02)
        at += 1.01
    return at, decisions


def test_a_silent_host_still_writing_storage_is_not_fenced_and_keeps_its_vms() -> None:
    leader = storage_leader()
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 12])  # first: at the lease's expiry
    assert proposals(decisions, c.RequestFence) == []
    (active,) = proposals(decisions, c.StorageChecked)
    assert command(active, c.StorageChecked).check.verdict is V.ACTIVE
    leader.commit(active)
    assert leader.state.hosts["b"].state is H.STORAGE_ACTIVE
    at, decisions = run_checks(leader, at, [14, 16, 18, 20])  # it goes on writing
    assert proposals(decisions, c.RequestFence) == [] and not any(
        isinstance(d, RunFence) for d in decisions)
    assert leader.state.vms["vm1"].state is VmState.STARTED  # never frozen, never moved
    leader.renew("b", at)
    (alive,) = proposals(leader.tick(at + 0.1), c.MarkHostAlive)
    leader.commit(alive)
    assert leader.state.hosts["b"].state is H.ONLINE


def test_once_it_stops_writing_it_is_fenced_with_the_checks_in_its_record() -> None:
    leader = storage_leader()
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 12])
    leader.commit(proposals(decisions, c.StorageChecked)[0])
    at, decisions = run_checks(leader, at, [12, 12])
    assert proposals(decisions, c.RequestFence) == []  # two checks are not three
    at, decisions = run_checks(leader, at, [12])
    (request,) = proposals(decisions, c.RequestFence)
    fence = command(request, c.RequestFence)
    assert (fence.storage.verdict, fence.storage.checks) == (V.QUIET, 3)
    assert fence.wire_version() == 2
    leader.commit(request)
    record = leader.state.fence_record(leader.state.hosts["b"].fence_token)
    assert record is not None and record.storage == fence.storage
    assert "-> no change" in record.storage.reads[-1]


def test_a_host_silent_on_storage_from_the_start_is_fenced_after_the_checks() -> None:
    leader = storage_leader()
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 10, 10])
    assert proposals(decisions, c.RequestFence) == []
    _, decisions = run_checks(leader, at, [10])
    assert len(proposals(decisions, c.RequestFence)) == 1


def test_an_unreadable_storage_delays_a_bmc_fence_but_never_blocks_it() -> None:
    leader = storage_leader()
    expire_b(leader)
    _, decisions = run_checks(leader, T0 + 3.0, [None] * 4, state=ERROR)
    (request,) = proposals(decisions, c.RequestFence)
    assert command(request, c.RequestFence).storage.verdict is V.UNREADABLE


def test_with_a_host_of_an_older_release_the_check_goes_into_the_evidence_text() -> None:
    leader = storage_leader(announce=False)
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 12])
    assert proposals(decisions, c.StorageChecked) == []  # not every host reads it
    assert proposals(decisions, c.RequestFence) == []  # but the fence waits all the same
    _, decisions = run_checks(leader, at, [12, 12, 12])
    (request,) = proposals(decisions, c.RequestFence)
    fence = command(request, c.RequestFence)
    assert fence.wire_version() == 1 and "storage quiet (3 check(s))" in fence.evidence


def test_a_host_that_writes_no_heartbeats_is_fenced_as_before_and_says_so() -> None:
    leader = storage_leader()
    leader.cluster.ok(c.ReportStorage(name="b", heartbeat_paths=()))
    expire_b(leader)
    assert checks_of(leader.tick(T0 + 3.0)) == []
    (request,) = proposals(leader.tick(T0 + 3.3), c.RequestFence)
    fence = command(request, c.RequestFence)
    assert "no storage check: b writes no storage heartbeats" in fence.evidence
    assert fence.wire_version() == 1


def test_a_host_its_bmc_read_off_needs_no_storage_check() -> None:
    leader = storage_leader()
    leader.manager.probe_result("b", True, "power read: off", T0 + 1.2)
    (suspect,) = proposals(leader.tick(T0 + 1.3), c.MarkHostSuspect)
    leader.commit(suspect)
    decisions = leader.tick(T0 + 1.4)
    assert checks_of(decisions) == []
    assert command(proposals(decisions, c.RequestFence)[0], c.RequestFence).reason == \
        "power read off"


# ---------------------------------------------------------------- before a watchdog confirm


def watchdog_leader() -> tuple[Leader, float]:
    """b (armed watchdog, heartbeats) loses its lease; its storage shows nothing for
    three checks, its fence fails unreachable: returns when its watchdog reset it."""
    leader = storage_leader(fence_retry_limit=1, watchdog_margin_s=MARGIN)
    leader.cluster.ok(c.ReportWatchdog(name="b", watchdog=ARMED))
    leader.manager.acked("b", T0 + 0.5)
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 10, 10, 10])
    leader.commit(proposals(decisions, c.RequestFence)[0])
    decisions = leader.tick(at + 0.1)
    for _ in checks_of(decisions):
        leader.manager.storage_result(reading(at + 0.1, beat(10)), at + 0.15)
    (run,) = [d for d in decisions if isinstance(d, RunFence)]
    (failed,) = leader.manager.fence_result("b", run.token, FenceResult.UNREACHABLE,
                                            "no answer", "ipmi", at + 0.2)
    leader.commit(failed)  # type: ignore[arg-type]
    assert leader.state.hosts["b"].state is H.FENCE_FAILED
    return leader, T0 + 0.5 + ARMED.resets_within_s * 1.01 + MARGIN


def checks_until(leader: Leader, until: float, counter: int = 10) -> float:
    """The checks go on while the fence failed; nothing is proposed before `until`."""
    at = T0 + 8.0
    while at < until - 1.1:
        at, decisions = run_checks(leader, at, [counter])
        assert proposals(decisions, c.Command) == []
    return at


def test_a_watchdog_confirm_carries_the_quiet_storage_check() -> None:
    leader, due = watchdog_leader()
    at = checks_until(leader, due)
    _, decisions = run_checks(leader, at, [10, 10])
    (confirm,) = proposals(decisions, c.WatchdogConfirm)
    assert command(confirm, c.WatchdogConfirm).storage.verdict is V.QUIET
    leader.commit(confirm)
    record = leader.state.fence_record(leader.state.hosts["b"].fence_token)
    assert record is not None and record.result is FenceResult.SELF_FENCED
    assert record.storage.verdict is V.QUIET


def test_a_host_writing_storage_after_its_fence_failed_is_not_counted_reset() -> None:
    """Its watchdog should have reset it by now, yet it writes: it is alive."""
    leader, due = watchdog_leader()
    _, decisions = run_checks(leader, checks_until(leader, due), [11])
    assert proposals(decisions, c.WatchdogConfirm) == []
    (active,) = proposals(decisions, c.StorageChecked)
    assert command(active, c.StorageChecked).token == leader.state.hosts["b"].fence_token
    leader.commit(active)
    assert leader.state.hosts["b"].state is H.STORAGE_ACTIVE
    assert leader.state.vms["vm1"].state is VmState.FENCE  # frozen: nothing restarts it


@pytest.mark.parametrize("answer", [ERROR, "stop"])
def test_without_a_readable_quiet_storage_no_watchdog_confirm(answer: str) -> None:
    """Unreadable: the watchdog confirm waits (said in the state); a leader that stops
    getting answers makes no check at all, so it waits too."""
    leader, due = watchdog_leader()
    at = due + 1.0
    if answer == ERROR:
        at, decisions = run_checks(leader, at, [None] * 4, state=ERROR)
        (said,) = proposals(decisions, c.StorageChecked)
        assert command(said, c.StorageChecked).check.verdict is V.UNREADABLE
        leader.commit(said)
        at, decisions = run_checks(leader, at, [None] * 3, state=ERROR)
        assert proposals(decisions, c.StorageChecked) == []  # said once
    else:  # a check starts and never comes back: the quiet verdict goes stale
        decisions = leader.tick(at) + leader.tick(at + 5.0)
    assert proposals(decisions, c.WatchdogConfirm) == []
    assert leader.state.hosts["b"].state is H.FENCE_FAILED


def test_a_host_blocked_by_the_cap_is_checked_again_before_its_fence() -> None:
    leader = storage_leader(fence_cap=0)
    expire_b(leader)
    at, decisions = run_checks(leader, T0 + 3.0, [10, 10, 10, 10])
    leader.commit(proposals(decisions, c.RequestFence)[0])
    assert leader.state.hosts["b"].state is H.FENCE_BLOCKED  # the cap
    at, decisions = run_checks(leader, at, [12])  # it writes while it waits
    leader.cluster.ok(c.SetSettings(fence_cap=5))
    decisions = leader.tick(at)
    assert proposals(decisions, c.RequestFence) == []
    (active,) = proposals(decisions, c.StorageChecked)
    leader.commit(active)
    assert leader.state.hosts["b"].state is H.STORAGE_ACTIVE
