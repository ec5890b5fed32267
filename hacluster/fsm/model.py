"""The replicated state: hosts, VMs, fence history and cluster settings.

Records are frozen dataclasses; `ClusterState` swaps whole records in its maps
(so a reader holding a record never sees it change) and keeps two derived
indexes (VMs by host, pending VMs) that are rebuilt on restore and never
serialized.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from hacluster.fsm.states import VM_ON_HOST, HostState, VmState


class FenceAction(enum.StrEnum):
    OFF = "off"
    REBOOT = "reboot"
    NONE = "none"
    IDENTIFY = "identify"


class FenceFallback(enum.StrEnum):
    """What a fence that failed (its BMC dark, unreachable, refusing) falls back to."""

    WATCHDOG = "watchdog"  # a host with an armed watchdog counts as fenced once it must
    #                        have reset itself (core/manager.py `watchdog_fenced_at`)
    OPERATOR = "operator"  # wait for `hactl fence confirm`


class WatchdogKind(enum.StrEnum):
    NONE = "none"
    DEVICE = "device"  # the Linux watchdog device (/dev/watchdog: hardware or softdog)
    COMMAND = "command"  # a configured command run at every feed (an external watchdog)


class Selector(enum.StrEnum):
    FREE_MEMORY = "free-memory"
    PROVISIONED_MEMORY = "provisioned-memory"
    VCPUS = "vcpus"
    VM_COUNT = "vm-count"
    LOAD = "load"


class ShutdownPolicy(enum.StrEnum):
    """What a peer stopped by SIGTERM (a planned reboot) does with its host's VMs."""

    MIGRATE = "migrate"  # live-migrate them away (bounded), then as failover for the rest
    STOP = "stop"  # shut them down; they start again on this host when its peer returns
    FREEZE = "freeze"  # leave them running, unprotected until its peer returns
    FAILOVER = "failover"  # shut them down, record that, then start them elsewhere


class Failback(enum.StrEnum):
    """Whether a VM returns to its best preferred host once that host is ready again."""

    NEVER = "never"  # it stays where it is (the behaviour before failback existed)
    AUTO = "auto"  # live-migrated back, bounded and sticky (fsm/failback.py)


class HaPolicy(enum.StrEnum):
    RESTART = "restart"
    NONE = "none"


class Desired(enum.StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    DISABLED = "disabled"  # stopped and not managed: never started, recovered or moved


class HostRole(enum.StrEnum):
    VOTER = "voter"
    MEMBER = "member"  # non-voting Raft member, runs VMs
    WITNESS = "witness"  # votes, runs no VMs, never fenced


class FenceResult(enum.StrEnum):
    PENDING = "pending"
    OFF = "off"
    ALREADY_OFF = "already-off"
    REBOOTED = "rebooted"
    NOTIFIED = "notified"
    UNREACHABLE = "unreachable"
    AUTH_REJECTED = "auth-rejected"
    COMMAND_REJECTED = "command-rejected"
    TIMEOUT = "timeout"
    ERROR = "error"
    MANUAL = "manual"  # an admin confirmed the host is off
    SUPERSEDED = "superseded"  # a newer attempt for the same host replaced it
    HELD = "held"  # the leader held it: too few voters renew to confirm it (HoldFence)
    CANCELLED = "cancelled"  # the host renewed again before any fence succeeded
    SELF_FENCED = "self-fenced"  # its BMC failed; its armed watchdog has reset it by now
    STORAGE_ACTIVE = "storage-active"  # not run: the host still writes shared storage

    @property
    def host_is_off(self) -> bool:
        return self in (
            FenceResult.OFF,
            FenceResult.ALREADY_OFF,
            FenceResult.REBOOTED,
            FenceResult.MANUAL,
            FenceResult.SELF_FENCED,
        )


@dataclass(frozen=True, slots=True)
class BmcSettings:
    """Cluster-wide BMC defaults. The password is sealed (encrypted with a key
    derived from the cluster secret) by the proposer; the core never sees it."""

    driver: str = "ipmi"
    port: int = 623
    username: str = ""
    sealed_password: bytes = field(default=b"", repr=False)
    cipher_suite: int = 3
    agent: str = ""
    options: tuple[tuple[str, str], ...] = ()
    verify_tls: bool = True


@dataclass(frozen=True, slots=True)
class BmcOverride:
    """Per-host BMC settings; empty / negative fields inherit the cluster default."""

    address: str = ""
    driver: str = ""
    port: int = 0
    username: str = ""
    sealed_password: bytes = field(default=b"", repr=False)
    cipher_suite: int = -1
    agent: str = ""
    action: str = ""  # "" = cluster fence action
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Watchdog:
    """A host's self-fencing, as its peer reported it (`ReportWatchdog`): the peer feeds
    the watchdog only while a leader acknowledges its lease; `self_fence_s` after the
    last acknowledged renewal it destroys its VMs and stops feeding, and `timeout_s`
    later the watchdog resets the machine. `armed`: the watchdog runs now."""

    kind: WatchdogKind = WatchdogKind.NONE
    timeout_s: float = 0.0
    self_fence_s: float = 0.0
    armed: bool = False

    @property
    def resets_within_s(self) -> float:
        """After its last acknowledged renewal, the host is reset within this long."""
        return self.self_fence_s + self.timeout_s


class StorageVerdict(enum.StrEnum):
    """What the leader's storage activity check of a silent host found (core/storage.py)."""

    NONE = "none"  # no check: the host writes no heartbeats, or its power read off
    ACTIVE = "active"  # it wrote (heartbeat or VM disk) after its lease expired
    QUIET = "quiet"  # consecutive checks read its storage and saw nothing written
    UNREADABLE = "unreadable"  # nothing seen, but the leader could not read it every time


@dataclass(frozen=True, slots=True)
class StorageCheck:
    """The evidence of a storage activity check, as the leader proposed it: its verdict,
    how many consecutive checks that verdict rests on, and one line per read (when, what
    was read, what it showed). Informational in `apply`, like any evidence."""

    verdict: StorageVerdict = StorageVerdict.NONE
    checks: int = 0
    reads: tuple[str, ...] = ()

    def summary(self, last_read: bool = True) -> str:
        if self.verdict is StorageVerdict.NONE:
            return "no storage check"
        last = f"; last read: {self.reads[-1]}" if self.reads and last_read else ""
        return f"storage {self.verdict.value} ({self.checks} check(s)){last}"


@dataclass(frozen=True, slots=True)
class Settings:
    fence_cap: int = 3
    fence_window_s: float = 3600.0
    fence_action: FenceAction = FenceAction.OFF
    fence_retry_limit: int = 3  # attempts per incident before fence-failed
    fence_retry_backoff_s: float = 2.0  # doubled after each failed attempt
    fence_timeout_s: float = 15.0  # hard deadline of one attempt
    selector: Selector = Selector.FREE_MEMORY
    memory_overcommit: float = 1.0
    vcpu_overcommit: float = 4.0
    lease_renew_s: float = 0.5  # how often agents renew
    lease_suspect_s: float = 1.5  # silence before a host is suspect
    lease_ttl_s: float = 3.0  # silence before its lease expires and it is fenced
    vm_stable_s: float = 600.0  # a VM running this long has its restart count reset
    cluster_maintenance: bool = False
    bmc: BmcSettings = BmcSettings()
    # Read a silent host's power through its BMC after this much silence (0: never);
    # power read off fences it at once instead of waiting out the lease.
    probe_after_s: float = 1.0
    fence_fallback: FenceFallback = FenceFallback.WATCHDOG
    # Added to a host's self-fence delay and watchdog timeout before a host whose fence
    # failed counts as reset by its watchdog (clock rate differences, feeding period).
    watchdog_margin_s: float = 2.0
    # What a peer stopped by SIGTERM does with its VMs (a host may override it).
    shutdown_policy: ShutdownPolicy = ShutdownPolicy.FREEZE
    # Failback (fsm/failback.py): live migrations back to preferred hosts at a time, the
    # score a preferred host must beat the current one by, how long a VM stays after it
    # last started or moved, and after how long online a returned host counts as ready
    # without `hactl host ready` (0: only an operator's statement makes it ready).
    failback_max_concurrent: int = 2
    failback_stickiness: int = 0
    failback_hold_down_s: float = 300.0
    failback_ready_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    addresses: tuple[str, ...] = ()  # "link=address" for every network it renews over
    raft_address: str = ""  # host:port of its Raft peer
    memory_mib: int = 0
    vcpus: int = 0
    role: HostRole = HostRole.VOTER
    state: HostState = HostState.JOINING
    reason: str = ""  # why it is in this state (one line)
    since: float = 0.0  # log time of the last state change
    load: float = 0.0  # last reported load figure
    fence_token: int = 0  # token (log index) of the current/last fence attempt
    fence_wanted: str = ""  # non-empty: fence even though the lease is fresh (why)
    maintenance_wanted: bool = False  # drain ends in maintenance
    bmc: BmcOverride = BmcOverride()
    migration_uri: str = ""  # libvirt URI other hosts use to live-migrate to it
    bmc_ok: bool = False  # its own last BMC check answered
    bmc_detail: str = "not checked yet"
    bmc_checked_at: float = 0.0  # log time of that check
    agent_ready: bool = False  # its agent reported ready since it joined or was fenced
    peer_stopped: bool = False  # its peer left cleanly: lease not judged, VMs unprotected
    watchdog: Watchdog = Watchdog()  # its self-fencing (`ReportWatchdog`)
    # shared storage directories its peer writes heartbeats to (`ReportStorage`)
    heartbeat_paths: tuple[str, ...] = ()
    # the leader's latest storage check of it while its lease is out (`StorageChecked`)
    storage_check: StorageCheck = StorageCheck()
    shutdown_policy: str = ""  # its own shutdown policy ("": the cluster's setting)
    shutdown: str = ""  # the policy of a planned shutdown under way ("": none)
    tags: tuple[str, ...] = ()  # sorted; VMs may require them (Vm.required_tags)
    # its fencing levels, tried in order (`SetHostFencing`); () = its BMC is level 1
    fence_levels: tuple[FenceLevel, ...] = ()
    # may take VMs back by failback: lost when it is fenced or enters maintenance
    # (Ctx.set_host_state), restored by `hactl host ready` (SetHostMaintenance v2)
    failback_ready: bool = True

    @property
    def runs_vms(self) -> bool:
        return self.role is not HostRole.WITNESS


def stop_failure(vm_name: str) -> str:
    """How Host.fence_wanted begins when this VM failed to stop there."""
    return f"VM {vm_name} failed to stop"


@dataclass(frozen=True, slots=True)
class Vm:
    name: str
    xml: str = ""
    memory_mib: int = 0
    vcpus: int = 1
    priority: int = 0
    ha: HaPolicy = HaPolicy.RESTART
    desired: Desired = Desired.STARTED
    allowed_hosts: tuple[str, ...] = ()  # empty = any host
    anti_affinity: str = ""  # group name; members never share a host
    max_restarts: int = 2  # restarts in place before relocating
    max_relocates: int = 1  # relocations after restarts are used up
    state: VmState = VmState.STOPPED
    host: str = ""
    target_host: str = ""  # migration target
    placement: int = 0  # log index of the current placement; reports must match it
    restarts: int = 0
    relocates: int = 0
    reason: str = ""
    since: float = 0.0
    migrate_tried: tuple[str, ...] = ()  # targets whose live migration failed in this move
    tried_hosts: tuple[str, ...] = ()  # hosts it failed on since it last ran stably
    # VM relations (fsm/relations.py): started only once these VMs run (mandatory order)
    start_after: tuple[str, ...] = ()
    colocation: str = ""  # group name; members are kept together on one host
    required_tags: tuple[str, ...] = ()  # runs only on hosts carrying all of these tags
    # (host, score) as the operator listed them: placement prefers higher scores
    # (fsm/placement.py), failback returns to the best ready one (fsm/failback.py)
    preferred_hosts: tuple[tuple[str, int], ...] = ()
    failback: Failback = Failback.NEVER  # return to the best preferred host (fsm/failback.py)


@dataclass(frozen=True, slots=True)
class FenceRecord:
    token: int  # log index of the RequestFence that created it
    host: str
    incident: int  # token of the first attempt for this outage
    attempt: int
    action: FenceAction
    reason: str
    evidence: str  # why the leader decided (lease age etc.)
    requested_by: str
    requested_at: float
    result: FenceResult = FenceResult.PENDING
    result_evidence: str = ""
    method: str = ""
    confirmed_by: str = ""
    finished_at: float = 0.0
    storage: StorageCheck = StorageCheck()  # the storage activity check before it


@dataclass(frozen=True, slots=True)
class HostVersions:
    """What a host's peer announced it understands (`AnnounceVersions`): the command
    (type, version) pairs it decodes and the log entry formats it reads. A host with no
    record never announced (release 0.1.0): it understands the baseline (core/versions.py)."""

    name: str
    commands: tuple[tuple[str, int], ...] = ()
    entry_formats: tuple[int, ...] = ()


RECENT_REQUESTS_KEPT = 10_000
FENCE_HISTORY_KEPT = 5_000


class Usage:
    """Resources booked on one host (derived from the VMs; never serialized)."""

    __slots__ = ("count", "groups", "memory_mib", "vcpus")

    def __init__(self) -> None:
        self.memory_mib = 0
        self.vcpus = 0
        self.count = 0
        self.groups: dict[str, int] = {}  # anti-affinity group -> VMs

    def add(self, vm: Vm, sign: int) -> None:
        self.memory_mib += sign * vm.memory_mib
        self.vcpus += sign * vm.vcpus
        self.count += sign
        if vm.anti_affinity:
            left = self.groups.get(vm.anti_affinity, 0) + sign
            if left:
                self.groups[vm.anti_affinity] = left
            else:
                self.groups.pop(vm.anti_affinity, None)

    def copy(self) -> Usage:
        other = Usage()
        other.memory_mib, other.vcpus, other.count = self.memory_mib, self.vcpus, self.count
        other.groups = dict(self.groups)
        return other


@dataclass
class ClusterState:
    hosts: dict[str, Host] = field(default_factory=dict)
    vms: dict[str, Vm] = field(default_factory=dict)
    fences: list[FenceRecord] = field(default_factory=list)
    settings: Settings = Settings()
    log_time: float = 0.0  # largest log clock proposed (core/logclock.py): never skips ahead
    applied_index: int = 0
    # request id -> index, oldest first (an OrderedDict: dropping the oldest is O(1))
    recent_requests: OrderedDict[str, int] = field(default_factory=OrderedDict)
    # host -> what its peer announced it understands (absent: never announced)
    versions: dict[str, HostVersions] = field(default_factory=dict)
    # derived, never serialized: who holds resources where, and who waits for a host
    vms_by_host: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)
    usage: dict[str, Usage] = field(default_factory=dict, repr=False, compare=False)
    pending: set[str] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.rebuild_indexes()

    def rebuild_indexes(self) -> None:
        self.vms_by_host = {}
        self.usage = {}
        self.pending = set()
        for vm in self.vms.values():
            self._index(vm, 1)

    @staticmethod
    def holds(vm: Vm) -> tuple[str, ...]:
        """Hosts on which vm holds resources: its host, and a migration target."""
        if vm.state not in VM_ON_HOST:
            return ()
        if vm.target_host and vm.target_host != vm.host:
            return (vm.host, vm.target_host)
        return (vm.host,)

    def _index(self, vm: Vm, sign: int) -> None:
        for host in self.holds(vm):
            names = self.vms_by_host.setdefault(host, set())
            if sign > 0:
                names.add(vm.name)
            else:
                names.discard(vm.name)
            self.usage.setdefault(host, Usage()).add(vm, sign)
        if vm.state is VmState.PENDING:
            if sign > 0:
                self.pending.add(vm.name)
            else:
                self.pending.discard(vm.name)

    def put_vm(self, vm: Vm) -> None:
        old = self.vms.get(vm.name)
        if old is not None:
            self._index(old, -1)
        self.vms[vm.name] = vm
        self._index(vm, 1)

    def drop_vm(self, name: str) -> None:
        old = self.vms.pop(name, None)
        if old is not None:
            self._index(old, -1)

    def vms_on(self, host: str) -> list[Vm]:
        """VMs holding resources on host (running, starting, migrating to or from it), sorted."""
        return [self.vms[n] for n in sorted(self.vms_by_host.get(host, ()))]

    def usage_of(self, host: str) -> Usage:
        return self.usage.get(host) or Usage()

    def fence_record(self, token: int) -> FenceRecord | None:
        for record in reversed(self.fences):
            if record.token == token:
                return record
        return None


# ---------------------------------------------------------------- fencing levels


FENCE_DEVICE_DRIVERS = ("bmc", "ipmi", "redfish", "agent")


@dataclass(frozen=True, slots=True)
class FenceDevice:
    """One device of a fencing level. driver "bmc": the host's own BMC settings (cluster
    defaults with its overrides; no other field is set). ipmi and redfish devices with no
    username, password or cipher suite take the cluster's BMC defaults; agent devices
    take nothing from them (a fence agent has its own defaults). port 0: the driver's
    default. The password is sealed by the proposer, as BMC passwords are."""

    driver: str
    address: str = ""
    port: int = 0
    username: str = ""
    sealed_password: bytes = field(default=b"", repr=False)
    agent: str = ""  # driver "agent": the fence_* executable
    cipher_suite: int = -1  # -1: the cluster default (ipmi), none given (agent)
    options: tuple[tuple[str, str], ...] = ()  # extra key=value for agents / redfish


@dataclass(frozen=True, slots=True)
class FenceLevel:
    """Devices that must ALL power off (and read back off) for the level to fence the
    host, e.g. the two PDU outlets of a host with two power supplies."""

    devices: tuple[FenceDevice, ...] = ()
