"""The start check of `[hypervisor] disk_leases`: the peer never edits libvirt's
configuration, it refuses to start on a host whose libvirt would take no disk leases
(hacluster/hypervisor/locks.py reads the files; contrib/libvirt/ has what to set)."""

from __future__ import annotations

import logging

from hacluster.config import Config, ConfigError
from hacluster.fsm.model import HostRole
from hacluster.hypervisor.locks import LockSetup, lock_setup_problem

log = logging.getLogger("hacluster.peer")


def check_disk_leases(config: Config, role: HostRole) -> LockSetup | None:
    """The lock setup this host's libvirt uses, or None when disk leases are off (or
    the host runs no VMs). Raises ConfigError naming the file and the option."""
    hv = config.hypervisor
    if not hv.disk_leases or role is HostRole.WITNESS:
        return None
    problem, setup = lock_setup_problem(hv.libvirt_config_dir, hv.disk_lease_dir)
    if problem or setup is None:
        raise ConfigError(f"[hypervisor] disk_leases: {problem}")
    log.info("disk leases: libvirt takes a lease on every writable disk",
             extra={"setup": setup.describe()})
    return setup
