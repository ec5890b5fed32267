"""The storage activity check (issue 12, the CloudStack KVM HA design's step), pure.

Every host writes a small heartbeat record (host, boot, counter, wall time) to its own
file in each shared storage directory it reported (`Host.heartbeat_paths`), at every
lease renewal (daemon/storage.py). Before the leader fences a host on its lease alone
(a host its BMC read off needs no check), and before it counts a host whose fence
failed as reset by its watchdog, it reads that host's heartbeat files and the
modification marks of its VMs' disk files under those directories, again every
`interval_s`.

**Activity is a change between two reads by the leader**: a heartbeat counter, boot,
size or modification time that moved, or a file that appeared. The first read is taken
once the lease expired, so any change is activity after the lease expired (or after the
last check); no clock of another machine is ever compared with the leader's.

Verdicts (`StorageWatch.verdict`):
- active: the latest read saw a change. The host is alive on storage: it is not fenced
  and its VMs are not restarted; the checks go on.
- quiet: the last `checks` comparisons read the storage and saw no change.
- unreadable: the last `checks` comparisons saw no change, but some could not read the
  heartbeat directories (not mounted on the leader, an I/O error, past the deadline).
- None: fewer comparisons so far (pending).

What a verdict allows (`StorageWatch.gate`): a fence through the BMC (its read-back is
the proof) goes ahead when quiet or unreadable, so a storage the leader cannot read
never blocks it for ever; a fence without a read-back (the watchdog's) needs quiet.
A silent storage proves nothing about death, which is why those proofs stay needed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hacluster.fsm.domain_xml import domain_disk_files
from hacluster.fsm.model import ClusterState, Host, StorageCheck, StorageVerdict

DEFAULT_CHECKS = 3
DEFAULT_INTERVAL_S = 2.0
MAX_DISKS = 64  # disk files read per check (the rest are not looked at)
READS_KEPT = 12  # read lines kept per host (the evidence's last ones)
LINE_CHARS = 600
HEARTBEAT, DISK = "heartbeat", "disk"
OK, MISSING, ERROR = "ok", "missing", "error"  # FileRead.state
HEARTBEAT_DIR = ".hacluster"  # inside each heartbeat path


def heartbeat_file(path: str, host: str) -> str:
    """Where `host` writes its heartbeat in the shared directory `path`."""
    return f"{path.rstrip('/')}/{HEARTBEAT_DIR}/{host}.heartbeat"


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file as the leader read it. `mark`: what any write changes (counter, boot,
    size, modification time); `shown`: the same for people, or why it was not read."""

    path: str
    kind: str  # HEARTBEAT | DISK
    state: str  # OK | MISSING (its directory read, the file is not there) | ERROR
    mark: tuple[Any, ...] = ()
    shown: str = ""


@dataclass(frozen=True, slots=True)
class StorageRead:
    """One check: every file read for a host. `at`: the leader's monotonic clock when it
    began; `at_text`: its wall clock then, for people."""

    host: str
    at: float
    at_text: str
    took_s: float
    files: tuple[FileRead, ...]


@dataclass(frozen=True, slots=True)
class CheckStorage:
    """Read the host's heartbeat files and its VMs' disk files (a Manager decision)."""

    host: str
    heartbeat_paths: tuple[str, ...]
    disks: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Gate:
    """May the fence go ahead on storage grounds; what to record if not; the evidence."""

    may: bool
    evidence: StorageCheck = StorageCheck()
    report: StorageCheck | None = None  # a verdict the replicated state must learn
    note: str = ""  # said in the fence's evidence when there was no check


def disks_of(state: ClusterState, host: Host,
             cache: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """The disk files of the host's VMs that lie in one of its heartbeat directories
    (the shared storage it reported), at most MAX_DISKS. Not those another host may
    write too: of a VM caught in a live migration, or shared with a VM placed elsewhere
    (their writes would look like this host's). `cache`: domain XML -> its disk files
    (a leader checks every `interval_s`, and parses each XML once)."""
    cache = {} if cache is None else cache
    if len(cache) > 2 * len(state.vms) + 64:  # XMLs replaced since: start afresh
        cache.clear()

    def files(xml: str) -> tuple[str, ...]:
        if xml not in cache:
            cache[xml] = domain_disk_files(xml)
        return cache[xml]

    roots = [p.rstrip("/") + "/" for p in host.heartbeat_paths]
    ours = {vm.name for vm in state.vms_on(host.name) if not vm.target_host}
    found: dict[str, None] = {}
    for name in sorted(ours):
        for path in files(state.vms[name].xml):
            if "/../" not in path and any(path.startswith(root) for root in roots):
                found[path] = None
    if found:
        for name, vm in state.vms.items():
            if name not in ours and vm.host:
                for path in files(vm.xml):
                    found.pop(path, None)
    return tuple(sorted(found))[:MAX_DISKS]


@dataclass
class _Episode:
    """The checks of one host since its lease expired (until it lives or is fenced)."""

    since: float
    next_at: float
    reading: bool = False
    reads: int = 0
    last: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    missing: set[tuple[str, str]] = field(default_factory=set)
    active: bool = False  # the latest comparison saw a change
    run: int = 0  # comparisons without a change since the last change
    quiet: int = 0  # of those, the latest consecutive ones that could read the storage
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=READS_KEPT))
    answered: float = float("-inf")  # when the latest read came back (leader's clock)

    def add(self, read: StorageRead) -> None:
        changes, compared = self._compare(read.files)
        first, self.reads = self.reads == 0, self.reads + 1
        if first:
            outcome = "first read"
        elif changes:
            self.active, self.run, self.quiet = True, 0, 0
            outcome = "WRITTEN: " + "; ".join(changes)
        else:
            self.active, self.run = False, self.run + 1
            self.quiet = self.quiet + 1 if compared else 0
            outcome = "no change" if compared else "nothing could be compared"
        self.lines.append(_line(read, read.at - self.since, outcome))

    def _compare(self, files: tuple[FileRead, ...]) -> tuple[list[str], bool]:
        """What changed since the last reads, and whether any heartbeat was compared."""
        changes, compared = [], False
        for f in files:
            key = (f.kind, f.path)
            if f.state == OK:
                before = self.last.get(key)
                if (before is not None and before != f.mark) or \
                        (before is None and key in self.missing):
                    changes.append(f"{f.kind} {f.path}: {f.shown}")
                compared = compared or (f.kind == HEARTBEAT and
                                        (before is not None or key in self.missing))
                self.last[key] = f.mark
                self.missing.discard(key)
            elif f.state == MISSING and key not in self.last:
                compared = compared or (f.kind == HEARTBEAT and key in self.missing)
                self.missing.add(key)
        return changes, compared


def _line(read: StorageRead, offset: float, outcome: str) -> str:
    beats = [f"{f.path}: {f.shown or f.state}" for f in read.files if f.kind == HEARTBEAT]
    disks = [f for f in read.files if f.kind == DISK]
    seen = f"; {sum(f.state == OK for f in disks)}/{len(disks)} disks read" if disks else ""
    text = (f"{read.at_text} (+{offset:.1f} s, {read.took_s:.2f} s) {read.host}: "
            f"{', '.join(beats) or 'no heartbeat path'}{seen} -> {outcome}")
    return text if len(text) <= LINE_CHARS else text[:LINE_CHARS - 3] + "..."


class StorageWatch:
    """The leader's checks, per host, for one leadership (nothing carries over)."""

    def __init__(self) -> None:
        self.checks = DEFAULT_CHECKS
        self.interval_s = DEFAULT_INTERVAL_S
        self.read_timeout_s = DEFAULT_INTERVAL_S
        self.configured = False  # this leader's own [storage] lists heartbeat paths
        self._episodes: dict[str, _Episode] = {}
        self._disks: dict[str, tuple[str, ...]] = {}  # domain XML -> its disk files

    def configure(self, checks: int, interval_s: float, configured: bool,
                  read_timeout_s: float = DEFAULT_INTERVAL_S) -> None:
        if checks < 1 or not interval_s > 0 or not read_timeout_s > 0:
            raise ValueError("checks must be >= 1, interval_s and read_timeout_s > 0")
        self.checks, self.interval_s, self.configured = checks, interval_s, configured
        self.read_timeout_s = read_timeout_s

    @property
    def stale_after_s(self) -> float:
        """A verdict whose latest read came back longer ago than this is stale: a read
        is due every interval and takes at most the read deadline; one may go amiss."""
        return 2 * self.interval_s + self.read_timeout_s

    def reset(self) -> None:
        self._episodes.clear()

    def forget(self, host: str) -> None:
        """The host lives again, was fenced or left: its episode is over."""
        self._episodes.pop(host, None)

    def due(self, state: ClusterState, host: Host, now: float, why: str) -> CheckStorage | None:
        """The next read of this host's storage, if one is due now (the first at once)."""
        episode = self._episodes.setdefault(host.name, _Episode(since=now, next_at=now))
        if episode.reading or now < episode.next_at:
            return None
        episode.reading = True
        return CheckStorage(host.name, host.heartbeat_paths,
                            disks_of(state, host, self._disks), why)

    def result(self, read: StorageRead, now: float) -> None:
        """A read came back (a forgotten episode's is dropped)."""
        episode = self._episodes.get(read.host)
        if episode is None or not episode.reading:
            return
        episode.reading = False
        episode.next_at = now + self.interval_s
        episode.answered = now
        episode.add(read)

    def verdict(self, host: str) -> StorageVerdict | None:
        episode = self._episodes.get(host)
        if episode is None:
            return None
        if episode.active:
            return StorageVerdict.ACTIVE
        if episode.quiet >= self.checks:
            return StorageVerdict.QUIET
        if episode.run >= self.checks:
            return StorageVerdict.UNREADABLE
        return None

    def evidence(self, host: str) -> StorageCheck:
        """The verdict with the checks behind it and the latest read lines."""
        verdict, episode = self.verdict(host), self._episodes.get(host)
        if verdict is None or episode is None:
            return StorageCheck()
        behind = {StorageVerdict.ACTIVE: 1, StorageVerdict.QUIET: episode.quiet}
        return StorageCheck(verdict, behind.get(verdict, episode.run), tuple(episode.lines))

    def gate(self, host: Host, strict: bool, now: float) -> Gate:
        """May a fence of `host` go ahead on storage grounds now? `strict`: a fence
        without a BMC read-back (its watchdog's), which needs a readable, quiet storage;
        a BMC fence (its read-back is the proof) also goes ahead when unreadable. Only
        on reads that still come in (`stale_after_s`)."""
        if not host.heartbeat_paths:
            note = f"no storage check: {host.name} writes no storage heartbeats" \
                if self.configured else ""
            return Gate(True, note=note)
        verdict, evidence = self.verdict(host.name), self.evidence(host.name)
        episode = self._episodes.get(host.name)
        fresh = episode is not None and now - episode.answered <= self.stale_after_s
        if fresh and (verdict is StorageVerdict.QUIET or
                      (verdict is StorageVerdict.UNREADABLE and not strict)):
            return Gate(True, evidence)
        known = host.storage_check.verdict
        report = (verdict is StorageVerdict.ACTIVE and known is not StorageVerdict.ACTIVE) or \
            (verdict is StorageVerdict.UNREADABLE and known is not StorageVerdict.UNREADABLE)
        return Gate(False, evidence, evidence if report else None)
