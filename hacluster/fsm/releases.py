"""What every host of the cluster runs, as far as the replicated state can tell.

During a rolling upgrade some rules of the newer release must wait until every host runs
it: the snapshot format it writes (an older peer sent one it cannot read would halt),
and state that the newer release tracks implicitly, through commands the older one also
applies (an older peer's snapshot would lack it, and a newer peer loading that snapshot
would then differ from the others). Each host announces the command versions it
understands (`AnnounceVersions`); a command that only a release has tells that release.
"""

from __future__ import annotations

from hacluster.fsm.model import ClusterState
from hacluster.fsm.states import HostState

# a command version every peer of release 0.3.0 announces, and no earlier release
RELEASE_0_3_0 = ("host-fencing", 1)


def everyone_runs(state: ClusterState, marker: tuple[str, int]) -> bool:
    """Has every host that is not removed announced the release `marker` tells?"""
    for name, host in state.hosts.items():
        if host.state is HostState.REMOVED:
            continue
        known = state.versions.get(name)
        if known is None or marker not in known.commands:
            return False
    return True
