"""Commands: the only way the replicated state changes.

Every command is a small frozen dataclass with a wire name (`TYPE`) and a
`VERSION`. The proposer wraps it in an `Envelope` that carries a request id
(apply is idempotent for it), the proposer's name, its wall-clock stamp (shown to
people, never used in a decision) and its estimate of the log clock (see
core/logclock.py), the only source of the replicated log time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    Desired,
    Failback,
    FenceAction,
    FenceFallback,
    FenceLevel,
    FenceResult,
    HaPolicy,
    HostRole,
    Selector,
    StorageCheck,
    Watchdog,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Command:
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1  # what this peer writes
    # Older versions this peer still decodes (their fields are a subset, absent ones take
    # their defaults, and apply treats them alike); () means VERSION only.
    READS: ClassVar[tuple[int, ...]] = ()
    # (field, version that added it): left out of what is written in an older version,
    # whose readers do not know the field (it must then hold its default)
    ADDED: ClassVar[tuple[tuple[str, int], ...]] = ()

    @classmethod
    def versions_read(cls) -> tuple[int, ...]:
        return cls.READS or (cls.VERSION,)

    def wire_version(self) -> int:
        """The oldest version that carries this command as it is: what is written, so
        that peers of the previous release read it unless it uses something new."""
        return self.VERSION

    def fields_missing_in(self, version: int) -> frozenset[str]:
        """The fields that version `version` of this command does not have."""
        return frozenset(name for name, since in self.ADDED if since > version)


# ---------------------------------------------------------------- hosts


@dataclass(frozen=True, kw_only=True, slots=True)
class AddHost(Command):
    TYPE = "add-host"
    name: str
    addresses: tuple[str, ...] = ()  # "link=address"
    raft_address: str = ""
    memory_mib: int = 0
    vcpus: int = 0
    role: HostRole = HostRole.VOTER
    bmc: BmcOverride = BmcOverride()


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoveHost(Command):
    TYPE = "remove-host"
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class HostReady(Command):
    """The host's agent is up, cleaned up stale local domains, and reports capacity."""

    TYPE = "host-ready"
    name: str
    memory_mib: int = 0
    vcpus: int = 0
    migration_uri: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportBmcHealth(Command):
    """A host checked its own BMC: can it be fenced if it dies?"""

    TYPE = "bmc-health"
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SetHostRole(Command):
    """Promote a non-voting member to voter, or demote a voter (Raft membership is
    changed by the same operation; the host's peer restarts in its new role)."""

    TYPE = "host-role"
    name: str
    role: HostRole


@dataclass(frozen=True, kw_only=True, slots=True)
class SetPeerStopped(Command):
    """A peer stops cleanly (SIGTERM) or starts again: while stopped, its lease is
    not judged, so stopping the daemon never fences its host."""

    TYPE = "peer-stopped"
    name: str
    stopped: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedShutdown(Command):
    """A peer stopped by SIGTERM carries out its shutdown policy (fsm/apply_shutdown.py):
    step "begin" (no new VMs here; "migrate" drains it), "done" (its peer leaves; the VMs
    in `stopped`, as (name, placement) pairs its agent shut down and libvirt then listed
    as not running, start elsewhere for "failover" or here again for "stop"), "back"
    (its peer runs again)."""

    TYPE = "host-shutdown"
    name: str
    step: str  # one of SHUTDOWN_STEPS
    policy: str = ""  # the ShutdownPolicy carried out
    stopped: tuple[tuple[str, int], ...] = ()
    detail: str = ""


SHUTDOWN_STEPS = ("begin", "done", "back")


@dataclass(frozen=True, kw_only=True, slots=True)
class SetShutdownPolicy(Command):
    """The cluster's shutdown policy (`host` ""), or one host's ("" policy: inherit)."""

    TYPE = "shutdown-policy"
    host: str = ""
    policy: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SetHostAddresses(Command):
    """A host's lease links ("link=address"), as its own config lists them: its
    peer proposes them when it starts and finds the stored ones differ (a link
    added or re-addressed), since the other peers send renewals to these."""

    TYPE = "host-addresses"
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportHostLoad(Command):
    TYPE = "host-load"
    name: str
    load: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SetHostMaintenance(Command):
    """on: drain the host by live migration, then hold it in maintenance.
    off: make it schedulable again. Version 2 added `ready` (with off: `hactl host
    ready`, an operator's statement that the host may take VMs back by failback)."""

    TYPE = "host-maintenance"
    VERSION = 2
    READS = (1, 2)
    ADDED = (("ready", 2),)
    name: str
    on: bool
    ready: bool = False

    def wire_version(self) -> int:
        return 2 if self.ready else 1


@dataclass(frozen=True, kw_only=True, slots=True)
class SetHostBmc(Command):
    TYPE = "host-bmc"
    name: str
    bmc: BmcOverride


@dataclass(frozen=True, kw_only=True, slots=True)
class MarkHostSuspect(Command):
    TYPE = "host-suspect"
    name: str
    evidence: str


@dataclass(frozen=True, kw_only=True, slots=True)
class MarkHostAlive(Command):
    TYPE = "host-alive"
    name: str
    evidence: str


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnounceVersions(Command):
    """What a host's peer understands: the command (type, version) pairs it decodes and
    the log entry formats it reads. Its peer proposes it at start whenever the record in
    the state differs; proposers only propose what every host understands
    (core/versions.py). It is exempt from that gate and written in entry format 1, so
    this wire form must never change: extend it with a new command type instead."""

    TYPE = "announce-versions"
    name: str
    commands: tuple[tuple[str, int], ...]
    entry_formats: tuple[int, ...]


# ---------------------------------------------------------------- fencing


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestFence(Command):
    """Fence intent. Its log index becomes the fencing token.
    Version 2 added the storage activity check that preceded it (kept in the record)."""

    TYPE = "fence-request"
    VERSION = 2
    READS = (1, 2)
    ADDED = (("storage", 2),)
    host: str
    reason: str
    evidence: str
    term: int = 0  # proposer's Raft term, for the record
    storage: StorageCheck = StorageCheck()

    def wire_version(self) -> int:
        return 1 if self.storage == StorageCheck() else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfirmFence(Command):
    """The BMC read the power back as off for this token's attempt."""

    TYPE = "fence-confirm"
    host: str
    token: int
    result: FenceResult
    evidence: str
    method: str


@dataclass(frozen=True, kw_only=True, slots=True)
class FenceFailed(Command):
    TYPE = "fence-failed"
    host: str
    token: int
    result: FenceResult
    evidence: str
    method: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportWatchdog(Command):
    """A host's peer says how it fences itself: armed before it says armed, says
    disarmed before it disarms, so the record never promises more than the machine does."""

    TYPE = "host-watchdog"
    name: str
    watchdog: Watchdog


@dataclass(frozen=True, kw_only=True, slots=True)
class HoldFence(Command):
    """The leader does not fence this host now, and says why: too few voters renew their
    leases for a fence of it to be confirmed. A pending attempt ends `held`; the host
    waits fence-blocked, and a later RequestFence continues the same incident."""

    TYPE = "fence-hold"
    host: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelFence(Command):
    """The host renews again before any fence of it succeeded: the pending attempt ends
    `cancelled` (no retry follows) and the host keeps its VMs."""

    TYPE = "fence-cancel"
    host: str
    evidence: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WatchdogConfirm(Command):
    """The host's fence failed (its BMC dark or refusing), but its armed watchdog must
    have reset it by now: counted fenced (result `self-fenced`, method `watchdog`) and
    its VMs released. Proposed only by the leader (core/manager.py), with the timing
    as evidence; `token` is the host's current attempt."""

    TYPE = "fence-watchdog"
    VERSION = 2  # version 2 added the storage activity check that preceded it
    READS = (1, 2)
    ADDED = (("storage", 2),)
    host: str
    token: int
    evidence: str
    storage: StorageCheck = StorageCheck()

    def wire_version(self) -> int:
        return 1 if self.storage == StorageCheck() else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class ReportStorage(Command):
    """A host's peer says where it writes its storage heartbeats ([storage]
    heartbeat_paths, shared storage directories): the leader reads them there, and the
    modification times of the host's VMs' disk files under them, before it fences the
    host on its lease alone (core/storage.py)."""

    TYPE = "host-storage"
    name: str
    heartbeat_paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class StorageChecked(Command):
    """The leader's storage activity check of a host whose lease ran out. Verdict
    `active`: the host still writes shared storage, so it is alive: it becomes
    storage-active (not fenced, its VMs not restarted; a pending attempt ends
    `storage-active`). Other verdicts are recorded on the host and shown (an unreadable
    storage holds a fence without a BMC read-back). `token`: the host's current fence
    attempt when it is fencing or fence-failed (0 otherwise)."""

    TYPE = "host-storage-check"
    host: str
    token: int = 0
    check: StorageCheck


@dataclass(frozen=True, kw_only=True, slots=True)
class AdminConfirmFence(Command):
    """An operator states the host is powered off (by hand); releases its VMs."""

    TYPE = "fence-admin-confirm"
    host: str
    who: str
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryFence(Command):
    """An operator asks for a new fence attempt of a fence-failed host."""

    TYPE = "fence-retry"
    host: str
    who: str


# ---------------------------------------------------------------- VMs


# Fields of version 2 of AddVm and SetVmOptions (release 0.3.0): the VM relations (start
# order, colocation, required host tags) and failback (preferred hosts, policy). A command
# that leaves them at their defaults is written as version 1, which every release reads.
RELATION_FIELDS = ("start_after", "colocation", "required_tags")
FAILBACK_FIELDS = ("preferred_hosts", "failback")


@dataclass(frozen=True, kw_only=True, slots=True)
class AddVm(Command):
    """Version 2 added the VM relations and failback (RELATION_FIELDS, FAILBACK_FIELDS)."""

    TYPE = "add-vm"
    VERSION = 2
    READS = (1, 2)
    ADDED = tuple((f, 2) for f in RELATION_FIELDS + FAILBACK_FIELDS)
    name: str
    xml: str
    memory_mib: int
    vcpus: int
    priority: int = 0
    ha: HaPolicy = HaPolicy.RESTART
    desired: Desired = Desired.STARTED
    allowed_hosts: tuple[str, ...] = ()
    anti_affinity: str = ""
    max_restarts: int = 2
    max_relocates: int = 1
    start_after: tuple[str, ...] = ()
    colocation: str = ""
    required_tags: tuple[str, ...] = ()
    preferred_hosts: tuple[tuple[str, int], ...] = ()
    failback: Failback = Failback.NEVER

    def wire_version(self) -> int:
        relations = self.start_after or self.colocation or self.required_tags
        return 2 if relations or self.preferred_hosts or self.failback is not Failback.NEVER \
            else 1


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoveVm(Command):
    TYPE = "remove-vm"
    name: str


@dataclass(frozen=True, kw_only=True, slots=True)
class SetVmOptions(Command):
    """Change placement options; fields left None keep their value.
    Version 2 added the VM relations and failback (RELATION_FIELDS, FAILBACK_FIELDS)."""

    TYPE = "vm-set"
    VERSION = 2
    READS = (1, 2)
    ADDED = tuple((f, 2) for f in RELATION_FIELDS + FAILBACK_FIELDS)
    name: str
    priority: int | None = None
    ha: HaPolicy | None = None
    allowed_hosts: tuple[str, ...] | None = None
    anti_affinity: str | None = None
    max_restarts: int | None = None
    max_relocates: int | None = None
    xml: str | None = None
    start_after: tuple[str, ...] | None = None
    colocation: str | None = None
    required_tags: tuple[str, ...] | None = None
    preferred_hosts: tuple[tuple[str, int], ...] | None = None
    failback: Failback | None = None

    def wire_version(self) -> int:
        added = (self.start_after, self.colocation, self.required_tags,
                 self.preferred_hosts, self.failback)
        return 1 if all(value is None for value in added) else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class SetVmDesired(Command):
    TYPE = "vm-desired"
    name: str
    desired: Desired


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrateVm(Command):
    TYPE = "vm-migrate"
    name: str
    target: str = ""  # "" = let placement choose


@dataclass(frozen=True, kw_only=True, slots=True)
class MakeRoom(Command):
    """Proposed by the leader for a VM pending because its host limits name only full
    hosts: apply live-migrates a few VMs without limits away from one of them
    (fsm/room.py), or refuses when that cannot make it fit."""

    TYPE = "make-room"
    name: str  # the pending VM


@dataclass(frozen=True, kw_only=True, slots=True)
class FailbackVm(Command):
    """Proposed by the leader: live-migrate a VM whose failback policy is auto back to
    its best preferred host. Apply checks again on the committed state (fsm/failback.py:
    the host ready, the score margin, the hold-down, the concurrency bound, capacity)."""

    TYPE = "vm-failback"
    name: str
    target: str


# What an agent observed for a VM placement it was given.
VM_REPORTS = (
    "started",  # running on the reporting host
    "start-failed",  # could not start it
    "stopped",  # stopped as asked
    "crashed",  # was running, is not (crash, guest shutdown, killed)
    "stop-failed",  # could not stop it: two copies are possible, fence the host
    "migrated",  # now runs on the target host
    "migrate-failed",  # still on the source host
    "start-locked",  # start refused: a disk lock (disk lease) is held, a live copy runs elsewhere
)
# Reports that version 1 of VmReport cannot carry (release 0.1.0 refuses them).
VM_REPORTS_V2 = frozenset({"start-locked"})
# Reports this release sends with keep_trying (VmReport v3).
KEEP_TRYING_REPORTS = frozenset({"start-failed", "crashed", "migrate-failed"})


def keeps_trying(command: Command) -> Command:
    """The report as this release sends it: failures that keep trying (VmReport v3)."""
    if isinstance(command, VmReport) and command.observed in KEEP_TRYING_REPORTS:
        return VmReport(name=command.name, host=command.host, placement=command.placement,
                        observed=command.observed, detail=command.detail, keep_trying=True)
    return command


@dataclass(frozen=True, kw_only=True, slots=True)
class VmReport(Command):
    """Version 2 added the report "start-locked"; version 3 `keep_trying` (issue 13: do
    not give up early, fsm/apply_vms.py): a failed live migration of a draining host is
    tried again live, to other targets too, before the VM moves by stop and start; a VM
    that failed to start or crashed remembers the host, and relocations try every
    eligible host before it goes to error. Without it, as before."""

    TYPE = "vm-report"
    VERSION = 3
    READS = (1, 2, 3)
    ADDED = (("keep_trying", 3),)
    name: str
    host: str  # reporting host
    placement: int  # the placement index the report is about
    observed: str  # one of VM_REPORTS
    detail: str = ""
    keep_trying: bool = False

    def wire_version(self) -> int:
        if self.keep_trying:
            return 3
        return 2 if self.observed in VM_REPORTS_V2 else 1

    def for_older_peers(self) -> VmReport | None:
        """What a peer of an older release reads in its place, if anything."""
        if self.keep_trying:
            return VmReport(name=self.name, host=self.host, placement=self.placement,
                            observed=self.observed, detail=self.detail)
        if self.observed in VM_REPORTS_V2:  # (release 0.1.0: a failed start; caps apply)
            return VmReport(name=self.name, host=self.host, placement=self.placement,
                            observed="start-failed", detail=self.detail)
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class TagHost(Command):
    """Add a tag to a host or remove one (`hactl host tag`): VMs that require tags
    (Vm.required_tags) run only on hosts carrying all of them."""

    TYPE = "host-tag"
    name: str  # the host
    tag: str
    add: bool = True  # False: remove it


# ---------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True, slots=True)
class SetSettings(Command):
    """Change replicated settings; fields left None keep their value.
    Version 2 added probe_after_s, version 3 fence_fallback and watchdog_margin_s,
    version 4 the failback settings."""

    TYPE = "settings"
    VERSION = 4
    READS = (1, 2, 3, 4)
    ADDED = (("probe_after_s", 2), ("fence_fallback", 3), ("watchdog_margin_s", 3),
             ("failback_max_concurrent", 4), ("failback_stickiness", 4),
             ("failback_hold_down_s", 4), ("failback_ready_after_s", 4))
    fence_cap: int | None = None
    fence_window_s: float | None = None
    fence_action: FenceAction | None = None
    fence_retry_limit: int | None = None
    fence_retry_backoff_s: float | None = None
    fence_timeout_s: float | None = None
    selector: Selector | None = None
    memory_overcommit: float | None = None
    vcpu_overcommit: float | None = None
    lease_renew_s: float | None = None
    lease_suspect_s: float | None = None
    lease_ttl_s: float | None = None
    vm_stable_s: float | None = None
    probe_after_s: float | None = None
    fence_fallback: FenceFallback | None = None
    watchdog_margin_s: float | None = None
    failback_max_concurrent: int | None = None
    failback_stickiness: int | None = None
    failback_hold_down_s: float | None = None
    failback_ready_after_s: float | None = None

    def wire_version(self) -> int:
        if any(getattr(self, name) is not None for name, since in self.ADDED if since == 4):
            return 4
        if self.fence_fallback is not None or self.watchdog_margin_s is not None:
            return 3
        return 1 if self.probe_after_s is None else 2


@dataclass(frozen=True, kw_only=True, slots=True)
class SetBmcDefaults(Command):
    TYPE = "bmc-defaults"
    bmc: BmcSettings


@dataclass(frozen=True, kw_only=True, slots=True)
class SetClusterMaintenance(Command):
    TYPE = "cluster-maintenance"
    on: bool
    who: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Noop(Command):
    """Committed by a new leader to prove it holds a live majority in its term."""

    TYPE = "noop"
    term: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class SetHostFencing(Command):
    """A host's fencing levels, tried in order until one fences it (every device of that
    level powered off and read back off); () = its BMC alone, as before levels existed.
    Replaces the host's levels as a whole."""

    TYPE = "host-fencing"
    name: str
    levels: tuple[FenceLevel, ...] = ()


ALL_COMMANDS: tuple[type[Command], ...] = (
    AddHost,
    RemoveHost,
    HostReady,
    ReportBmcHealth,
    SetPeerStopped,
    PlannedShutdown,
    SetShutdownPolicy,
    SetHostAddresses,
    SetHostRole,
    AnnounceVersions,
    ReportHostLoad,
    SetHostMaintenance,
    SetHostBmc,
    MarkHostSuspect,
    MarkHostAlive,
    RequestFence,
    ConfirmFence,
    FenceFailed,
    AdminConfirmFence,
    RetryFence,
    HoldFence,
    CancelFence,
    ReportWatchdog,
    WatchdogConfirm,
    ReportStorage,
    StorageChecked,
    AddVm,
    RemoveVm,
    SetVmOptions,
    SetVmDesired,
    MigrateVm,
    MakeRoom,
    FailbackVm,
    VmReport,
    SetSettings,
    SetBmcDefaults,
    SetClusterMaintenance,
    Noop,
    TagHost,
    SetHostFencing,
)

COMMANDS_BY_TYPE: dict[str, type[Command]] = {c.TYPE: c for c in ALL_COMMANDS}


@dataclass(frozen=True, slots=True)
class Envelope:
    command: Command
    request_id: str = ""
    origin: str = ""  # proposing peer (or admin user via a peer)
    stamped_at: float = 0.0  # proposer's wall clock, seconds: informational only
    log_clock: float = 0.0  # proposer's log clock estimate (0: it has none yet)


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A log entry this peer cannot decode (unknown type/version, corrupt)."""

    problem: str
    request_id: str = ""
    stamped_at: float = 0.0
    entry_format: int = 0  # the envelope's format, when it could be read
    command_type: str = ""  # and the command's wire name and version
    version: int = 0
