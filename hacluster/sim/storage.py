"""Shared storage in the simulator, for the storage activity check (core/storage.py).

One storage every host of a scenario mounts at the same paths. A host writes its
heartbeat at every renewal round of its peer (sim/peer.py, as daemon/peer.py does),
while it is powered and its peer runs, whatever the network does: a host cut off from
every network keeps writing. A VM that runs on a powered host writes its disk files
(those in its domain XML) at every step. A host whose storage is cut (`cut`) writes
nothing and, leading, reads nothing (its reads come back unreadable after the
deadline). The leader's reads become core/storage.py `StorageRead`s, like the ones
daemon/storage.py makes from real files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hacluster.core.storage import (
    DISK,
    ERROR,
    HEARTBEAT,
    MISSING,
    OK,
    CheckStorage,
    FileRead,
    StorageRead,
    heartbeat_file,
)
from hacluster.fsm.domain_xml import domain_disk_files

if TYPE_CHECKING:
    from hacluster.sim.world import World

READ_S = 0.05  # a read of a healthy storage
CHECKS, INTERVAL_S, READ_TIMEOUT_S = 3, 1.0, 1.0  # the peers' [storage] in the simulator


@dataclass
class SimStorage:
    heartbeats: dict[str, tuple[int, int, float]] = field(default_factory=dict)  # file ->
    #                                            (counter, boot, written at)
    disks: dict[str, float] = field(default_factory=dict)  # disk file -> written at
    cut: set[str] = field(default_factory=set)  # hosts that lost their storage
    counters: dict[str, int] = field(default_factory=dict)
    _xml_disks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # xml -> disks

    def write_heartbeat(self, host: str, paths: tuple[str, ...], boot: int, now: float) -> None:
        """A renewal round of `host`'s peer (boot: its process generation)."""
        if host in self.cut:
            return
        counter = self.counters[host] = self.counters.get(host, 0) + 1
        for path in paths:
            self.heartbeats[heartbeat_file(path, host)] = (counter, boot, now)

    def write_disks(self, world: World) -> None:
        """Every VM running on a powered host with its storage writes its disks."""
        state = world.truth()
        if state is None:
            return
        for name, host in world.hosts.items():
            if not host.powered or name in self.cut:
                continue
            for vm in host.hyper.live():
                record = state.vms.get(vm)
                for disk in self._disks_of(record.xml if record else ""):
                    self.disks[disk] = world.now

    def _disks_of(self, xml: str) -> tuple[str, ...]:
        if xml not in self._xml_disks:
            self._xml_disks[xml] = domain_disk_files(xml)
        return self._xml_disks[xml]

    def read(self, reader: str, check: CheckStorage, at: float,
             at_text: str) -> tuple[float, StorageRead]:
        """(when it answers, what it read) for a check by `reader`'s peer."""
        if reader in self.cut:  # its mount hangs: nothing within the deadline
            files = [FileRead(p, HEARTBEAT, ERROR, shown=f"not read within "
                              f"{READ_TIMEOUT_S:g} s: no answer") for p in check.heartbeat_paths]
            files += [FileRead(d, DISK, ERROR, shown="no answer") for d in check.disks]
            return READ_TIMEOUT_S, StorageRead(check.host, at, at_text, READ_TIMEOUT_S,
                                               tuple(files))
        files = [self._heartbeat(path, check.host) for path in check.heartbeat_paths]
        for disk in check.disks:
            written = self.disks.get(disk, 0.0)
            files.append(FileRead(disk, DISK, OK, (written,), f"modified t={written:.2f}"))
        return READ_S, StorageRead(check.host, at, at_text, READ_S, tuple(files))

    def _heartbeat(self, path: str, host: str) -> FileRead:
        found = self.heartbeats.get(heartbeat_file(path, host))
        if found is None:
            return FileRead(path, HEARTBEAT, MISSING, shown="no such file")
        counter, boot, written = found
        return FileRead(path, HEARTBEAT, OK, found, f"#{counter} boot {boot} written "
                        f"t={written:.2f}")
