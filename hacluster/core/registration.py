"""What the replicated state must learn about this host when its peer starts (and
until it has): it exists, its lease links, where it writes storage heartbeats, that its
peer runs again. The daemon
(daemon/peer.py) and the simulator (sim/peer.py) propose what this returns."""

from __future__ import annotations

from hacluster.core import versions
from hacluster.fsm import commands as c
from hacluster.fsm.model import ClusterState, HostRole
from hacluster.fsm.states import HostState


def registration(me: str, state: ClusterState, role: HostRole, addresses: tuple[str, ...],
                 raft_address: str = "", understands: versions.HostVersions | None = None,
                 heartbeat_paths: tuple[str, ...] = ()) -> tuple[c.Command, str] | None:
    """The next command this host's peer must propose about itself, and why (None:
    the state knows all it needs). `addresses`: "link=address" per lease link;
    `understands`: the command versions it reads (default: this build's);
    `heartbeat_paths`: its [storage] heartbeat paths (said once every host reads it)."""
    host = state.hosts.get(me)
    if host is None or host.state is HostState.REMOVED:
        return c.AddHost(name=me, addresses=addresses, role=role,
                         raft_address=raft_address), \
            "this host is missing from the cluster state"
    if host.addresses != addresses:
        return c.SetHostAddresses(name=me, addresses=addresses), \
            "[leases] links in the config differ from the cluster state"
    announce = versions.announcement(state, me, understands)
    if announce is not None:
        return announce, "the cluster state does not say what this peer understands"
    if host.shutdown:  # (only peers that understand it can have recorded one)
        return c.PlannedShutdown(name=me, step="back"), \
            f"it was stopped for a planned shutdown ({host.shutdown})"
    report = storage_report(me, state, role, heartbeat_paths)
    if report is not None:
        return report
    if host.peer_stopped:
        return c.SetPeerStopped(name=me, stopped=False), "it was stopped cleanly"
    if role is HostRole.WITNESS and host.state is HostState.JOINING:
        # no agent, nothing to clean up: ready at once
        return c.HostReady(name=me), "a witness runs no VMs"
    return None


def storage_report(me: str, state: ClusterState, role: HostRole,
                   heartbeat_paths: tuple[str, ...]) -> tuple[c.Command, str] | None:
    """Where this host writes storage heartbeats, if the state says otherwise and every
    host reads the command (until then the check stays off for this host; the daemon
    asks again now and then, so a rolling upgrade's end turns it on)."""
    host = state.hosts.get(me)
    if host is None or host.state is HostState.REMOVED or role is HostRole.WITNESS or \
            host.heartbeat_paths == heartbeat_paths or \
            not versions.admit(state, c.ReportStorage.TYPE, 1).admitted:
        return None
    return c.ReportStorage(name=me, heartbeat_paths=heartbeat_paths), \
        "[storage] heartbeat_paths in the config differ from the cluster state"
