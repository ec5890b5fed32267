"""Host and VM state tables: every allowed edge, in one place.

`apply` changes a state only through `host_edge_allowed` / `vm_edge_allowed`,
so the tables below are the whole truth (docs/states.md is drawn from them).
"""

from __future__ import annotations

import enum


class HostState(enum.StrEnum):
    JOINING = "joining"  # added, its agent has not reported ready yet
    ONLINE = "online"  # lease fresh, schedulable
    SUSPECT = "suspect"  # lease overdue; not yet expired
    FENCING = "fencing"  # fence requested and committed; VMs frozen until confirmed
    FENCED = "fenced"  # power read back off (or confirmed by an admin)
    FENCE_FAILED = "fence-failed"  # retries exhausted; waits for an admin
    FENCE_BLOCKED = "fence-blocked"  # fence held (cap reached, or no majority would confirm it)
    STORAGE_ACTIVE = "storage-active"  # lease expired, but it still writes shared storage:
    #                                    not fenced, its VMs not restarted (core/storage.py)
    DRAINING = "draining"  # VMs are being moved away before maintenance
    MAINTENANCE = "maintenance"  # empty, unschedulable, never fenced for leases
    REMOVED = "removed"  # gone from the cluster


class VmState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"  # placed on a host, its agent is starting it
    STARTED = "started"
    STOPPING = "stopping"
    MIGRATING = "migrating"  # live migration from host to target_host
    FENCE = "fence"  # its host is being fenced; the VM may still run there
    RECOVERY = "recovery"  # its host was fenced; placed elsewhere and starting
    PENDING = "pending"  # should run, no host fits (reason says why)
    ERROR = "error"  # caps exhausted, start refused for a held disk lock, or unrecoverable


H = HostState
V = VmState

HOST_EDGES: dict[HostState, frozenset[HostState]] = {
    H.JOINING: frozenset({H.ONLINE, H.MAINTENANCE, H.REMOVED}),
    H.ONLINE: frozenset({H.SUSPECT, H.FENCING, H.FENCE_BLOCKED, H.DRAINING, H.REMOVED}),
    H.SUSPECT: frozenset({H.ONLINE, H.DRAINING, H.FENCING, H.FENCE_BLOCKED, H.FENCED,
                          H.STORAGE_ACTIVE, H.REMOVED}),
    H.FENCING: frozenset({H.FENCED, H.FENCE_FAILED, H.FENCE_BLOCKED, H.ONLINE, H.DRAINING,
                          H.STORAGE_ACTIVE}),
    H.FENCED: frozenset({H.ONLINE, H.MAINTENANCE, H.REMOVED}),
    H.FENCE_FAILED: frozenset({H.FENCING, H.FENCED, H.ONLINE, H.DRAINING, H.STORAGE_ACTIVE}),
    H.FENCE_BLOCKED: frozenset({H.FENCING, H.FENCED, H.ONLINE, H.DRAINING, H.STORAGE_ACTIVE}),
    H.STORAGE_ACTIVE: frozenset({H.ONLINE, H.DRAINING, H.FENCING, H.FENCE_BLOCKED, H.FENCED,
                                 H.REMOVED}),
    H.DRAINING: frozenset({H.MAINTENANCE, H.ONLINE, H.SUSPECT, H.FENCING, H.FENCE_BLOCKED}),
    H.MAINTENANCE: frozenset({H.ONLINE, H.JOINING, H.REMOVED}),
    H.REMOVED: frozenset(),
}

# What each host state means, for people (docs/states.md is drawn from it).
HOST_MEANINGS: dict[HostState, str] = {
    H.JOINING: "added; its agent has not reported ready yet",
    H.ONLINE: "lease fresh; receives VMs",
    H.SUSPECT: "lease overdue, not yet expired (or expired while its power is read, it is "
               "challenged, or its storage is checked)",
    H.FENCING: "fence requested and committed; its VMs frozen until the fence is confirmed",
    H.FENCED: "power read back off, reset by its watchdog, or confirmed off by an operator; "
              "its VMs restarted elsewhere",
    H.FENCE_FAILED: "every attempt failed; waits for an operator (or its watchdog)",
    H.FENCE_BLOCKED: "fence held: the cap is reached, or no majority could confirm it",
    H.STORAGE_ACTIVE: "lease expired, but the leader's storage activity check saw it write "
                      "shared storage (its heartbeat, its VMs' disks): alive, so not fenced "
                      "and its VMs not restarted; the check repeats, and the fence goes ahead "
                      "only once `[storage] checks` consecutive checks see nothing written. "
                      "An operator is notified (`storage-active`)",
    H.DRAINING: "VMs moved away by live migration before maintenance",
    H.MAINTENANCE: "empty, receives no VMs, never fenced for its lease",
    H.REMOVED: "gone from the cluster",
}

VM_EDGES: dict[VmState, frozenset[VmState]] = {
    V.STOPPED: frozenset({V.STARTING, V.PENDING, V.ERROR}),
    V.STARTING: frozenset({V.STARTED, V.STARTING, V.STOPPING, V.STOPPED, V.FENCE, V.PENDING,
                           V.ERROR}),
    V.STARTED: frozenset({V.STARTING, V.STOPPING, V.STOPPED, V.MIGRATING, V.FENCE, V.PENDING,
                          V.ERROR}),
    V.STOPPING: frozenset({V.STOPPED, V.STARTING, V.FENCE, V.PENDING, V.ERROR}),
    V.MIGRATING: frozenset({V.STARTED, V.STOPPING, V.FENCE, V.RECOVERY}),
    V.FENCE: frozenset({V.RECOVERY, V.PENDING, V.STOPPED, V.STARTING, V.STOPPING,
                        V.MIGRATING}),
    V.RECOVERY: frozenset({V.STARTED, V.STARTING, V.STOPPING, V.STOPPED, V.FENCE, V.PENDING,
                           V.ERROR}),
    V.PENDING: frozenset({V.STARTING, V.RECOVERY, V.STOPPED, V.ERROR}),
    V.ERROR: frozenset({V.STOPPED, V.STARTING, V.PENDING}),
}

# VM states in which the VM holds resources on (and may run on) vm.host.
VM_ON_HOST = frozenset({V.STARTING, V.STARTED, V.STOPPING, V.MIGRATING, V.FENCE, V.RECOVERY})
# VM states in which the agent on vm.host must make it run.
VM_SHOULD_RUN = frozenset({V.STARTING, V.STARTED, V.RECOVERY, V.MIGRATING})
# Hosts that may receive new VMs.
SCHEDULABLE_HOSTS = frozenset({H.ONLINE})
# Hosts whose VMs are frozen until a fence is confirmed.
FENCE_PENDING_HOSTS = frozenset({H.FENCING, H.FENCE_FAILED, H.FENCE_BLOCKED})
# Hosts whose lease ran out and whose fence is not confirmed: the leader's storage
# activity check may run for them, and they keep its latest verdict (Host.storage_check).
STORAGE_CHECKED_HOSTS = frozenset({H.SUSPECT, H.STORAGE_ACTIVE, *FENCE_PENDING_HOSTS})


def host_edge_allowed(old: HostState, new: HostState) -> bool:
    return new in HOST_EDGES[old]


def vm_edge_allowed(old: VmState, new: VmState) -> bool:
    return old == new or new in VM_EDGES[old]
