"""Live migration for the libvirt adapter: the flags, the connection to the
destination, and the one repair made there first.

libvirt refuses an incoming domain when the destination already holds one of the
same name under another uuid ("domain 'NAME' already exists with uuid X"), even
when that one is only an inactive definition. Hosts of release 0.2.0 let libvirt
pick a random uuid per host, and people define VMs by hand, so a VM that once ran
on a host (and was fenced, failed over or stopped there) could not be live-migrated
back to it: no failback, no drain onto that host. The migration carries the
running domain's definition (VIR_MIGRATE_PERSIST_DEST), so such a stale inactive
definition is replaced by it: removed just before the migration starts, and logged
with both uuids. A destination domain of that name that is active (running, paused,
an incoming migration) is never touched: the migration is refused, because two
running copies of one VM would be split brain.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import libvirt

from hacluster.hypervisor.domxml import p2p_uri
from hacluster.ports import HypervisorError

log = logging.getLogger(__name__)
LOOK_TIMEOUT_S = 10.0  # how long a peer-to-peer migration waits to look at the destination

# Removing a stale definition takes its managed save image (a saved state of an old
# copy: restoring it later would roll the VM's disks back under it) and its snapshot
# and checkpoint metadata with it, and keeps the NVRAM file, which the incoming
# domain may name: the same as what libvirt does when the uuids match.
_UNDEFINE_STALE = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
)


def _open_within(uri: str, timeout_s: float) -> libvirt.virConnect | str:
    """A connection to uri, or why there is none. libvirt's open has no timeout (an
    unreachable host holds it for the kernel's SYN retries, minutes, which the
    migration's own deadline cannot abort): it runs in a thread of its own, and a
    connection that comes too late is closed when it comes."""
    result: list[libvirt.virConnect | str] = []
    lock = threading.Lock()

    def connect() -> None:
        try:
            conn: libvirt.virConnect | str = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            conn = exc.get_error_message() or str(exc)
        with lock:
            result.append(conn)
            late = len(result) > 1
        if late and isinstance(conn, libvirt.virConnect):
            conn.close()

    thread = threading.Thread(target=connect, name=f"open {uri}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    with lock:
        if not result:
            result.append(f"no answer within {timeout_s:g} s")  # marks a late one
        return result[0]


def migration_flags(dom: libvirt.virDomain) -> int:
    """Live, aborted on an I/O error, and the definition moves with the domain."""
    flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
    flags |= libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    if dom.isPersistent():
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    return flags


def run_migration(
    dom: libvirt.virDomain, dest_uri: str, params: dict[str, Any], peer_to_peer: bool,
    what: str,
) -> None:
    """Migrate dom to dest_uri after clearing a stale definition there. `what` names
    the migration in errors and logs. libvirt errors propagate as libvirtError."""
    flags = migration_flags(dom)
    if peer_to_peer:
        # The source libvirtd reaches the destination itself; this client opens it
        # too only to look for a stale definition. If it cannot, the migration goes
        # ahead: libvirtd may have a way in that we lack, and it refuses a conflict.
        looked = _open_within(dest_uri, LOOK_TIMEOUT_S)
        if isinstance(looked, str):
            log.warning("%s: cannot open the destination to look for a stale definition "
                        "(%s); migrating anyway", what, looked)
        else:
            try:
                clear_stale_definition(dom, looked, dest_uri, flags, what)
            finally:
                looked.close()
        dom.migrateToURI3(p2p_uri(dest_uri), params, flags | libvirt.VIR_MIGRATE_PEER2PEER)
        return
    dest = libvirt.open(dest_uri)
    try:
        clear_stale_definition(dom, dest, dest_uri, flags, what)
        dom.migrate3(dest, params, flags)
    finally:
        dest.close()


def clear_stale_definition(
    dom: libvirt.virDomain, dest: libvirt.virConnect, dest_uri: str, flags: int, what: str
) -> None:
    """Remove the destination's inactive definition of dom's name when its uuid is
    not dom's; raise HypervisorError if the destination runs a domain of that name."""
    if dest.getHostname() == dom.connect().getHostname():
        return  # migrating to itself: libvirt refuses that with its own words
    name = dom.name()
    try:
        old = dest.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    old_uuid, new_uuid = old.UUIDString(), dom.UUIDString()
    if old.isActive():
        state = "paused" if old.state()[0] == libvirt.VIR_DOMAIN_PAUSED else "active"
        raise HypervisorError(
            f"{what} refused: {dest_uri} already has an {state} domain {name!r} "
            f"(uuid {old_uuid}); it is left alone, since two running copies of one VM "
            "would be split brain")
    if old_uuid == new_uuid or not flags & libvirt.VIR_MIGRATE_PERSIST_DEST:
        return  # libvirt accepts the same uuid; without PERSIST_DEST nothing replaces it
    # A start on the destination between the check and this undefine would make that
    # copy transient and leave it running; libvirt then refuses the migration.
    old.undefineFlags(_UNDEFINE_STALE)
    log.warning("%s: removed the stale inactive definition of %s on %s (uuid %s) to make "
                "room for the incoming one (uuid %s)", what, name, dest_uri, old_uuid, new_uuid)
