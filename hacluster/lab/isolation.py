"""How the hosts of a lab cluster are kept apart on one machine: addresses,
where their BMCs listen, and what cutting a host off the network means.

loopback (the default, light)
    Every host gets its own loopback address 127.a.b.N in the root network
    namespace and its own cgroup (hacluster.lab.cgroups) that its peer runs
    in; BMCs listen on 127.0.0.1. A cut is an nftables table in the root
    namespace (hacluster.lab.linkfaults) dropping every packet between the
    host and the other hosts, told by address *and* by socket ownership: a
    connection the host's peer opens from 127.0.0.1 is cut as well.

netns
    Every host is a network namespace of a `LabNetwork` (a veth into one
    bridge, an address 10.213.x.N); its peer and its libvirtd (with QEMU) run
    inside it. BMCs (ipmi_sim) run in the root namespace and listen on the
    bridge's own address (the gateway), which every namespace reaches, as a
    management network.

    A cut takes the host off the *data* network: nftables inside its namespace
    drops every packet to or from the other hosts' addresses (Raft, leases,
    live migration). The management network stays up: the host still reaches
    every BMC and is reached by nobody but its own BMC's power hooks, which
    do not need the network. The observer reads libvirtd through Unix sockets
    and the peers' RPC sockets are files, so neither depends on the network.
"""

from __future__ import annotations

import contextlib
import random
from typing import Protocol

from hacluster.lab import cgroups
from hacluster.lab.linkfaults import LinkFaultError, LinkFaults, isolate
from hacluster.lab.netns import LabNetwork, cleanup_stale
from hacluster.lab.netns import unavailable_reason as netns_unavailable

ISOLATIONS = ("loopback", "netns")


class Isolation(Protocol):
    kind: str
    links: LinkFaults  # directed drops between hosts (the nemesis's network faults)

    @property
    def bmc_address(self) -> str: ...

    def procs_file(self, name: str) -> str:
        """The cgroup.procs file the host's peer joins ("" for none)."""
        ...

    def create(self) -> None: ...

    def add_host(self, name: str) -> tuple[str, str]:
        """Make room for a host; returns (its address, its netns name or "")."""
        ...

    def cut(self, name: str, others: list[str]) -> None:
        """Take host `name` off the data network (`others`: the other hosts'
        addresses)."""
        ...

    def restore(self, name: str) -> None: ...

    def destroy(self) -> None: ...


class LoopbackIsolation:
    kind = "loopback"
    bmc_address = "127.0.0.1"

    def __init__(self) -> None:
        # A random 127.x.y.0/24 per cluster: clusters and other programs never collide.
        self.net = f"127.{random.randint(100, 250)}.{random.randint(1, 254)}"
        self._count = 0
        self._addresses: dict[str, str] = {}
        self._cuts: dict[str, str] = {}  # host -> id of its cut in self.links
        self.groups: cgroups.HostGroups | None = None
        self.links = LinkFaults(self._addresses.__getitem__, lambda _: None, self._owner)

    def _owner(self, name: str) -> str:
        return self.groups.nft_match(name) if self.groups is not None else ""

    def create(self) -> None:
        cgroups.cleanup_stale()
        self.groups = cgroups.HostGroups()

    def add_host(self, name: str) -> tuple[str, str]:
        self._count += 1
        self._addresses[name] = f"{self.net}.{self._count}"
        if self.groups is not None:
            self.groups.create(name)
        return self._addresses[name], ""

    def procs_file(self, name: str) -> str:
        return str(self.groups.procs_file(name)) if self.groups is not None else ""

    def cut(self, name: str, others: list[str]) -> None:
        if name not in self._cuts:
            hosts = [h for h, address in self._addresses.items() if address in others]
            self._cuts[name] = self.links.install(isolate(name, hosts))

    def restore(self, name: str) -> None:
        cut = self._cuts.pop(name, None)
        if cut is not None:
            self.links.remove(cut)

    def destroy(self) -> None:
        self._cuts.clear()
        try:
            self.links.remove_all()
        finally:
            if self.groups is not None:
                self.groups.destroy()


class NetnsIsolation:
    kind = "netns"

    def __init__(self) -> None:
        self.network = LabNetwork()
        self.links = LinkFaults(lambda h: self.network.namespace(h).address,
                                lambda h: self.network.namespace(h).name, lambda _: "")

    @property
    def bmc_address(self) -> str:
        return self.network.gateway

    def procs_file(self, name: str) -> str:
        return ""  # the namespace tells its packets apart

    def create(self) -> None:
        cleanup_stale()  # namespaces and bridges of runs that crashed
        self.network.create()

    def add_host(self, name: str) -> tuple[str, str]:
        space = self.network.add(name)
        return space.address, space.name

    def cut(self, name: str, others: list[str]) -> None:
        if others:
            self.network.cut(name, peers=others)

    def restore(self, name: str) -> None:
        self.network.restore(name)

    def destroy(self) -> None:
        with contextlib.suppress(LinkFaultError):  # the tables go with the namespaces
            self.links.remove_all()
        self.network.destroy()


def make_isolation(kind: str) -> Isolation:
    if kind == "loopback":
        return LoopbackIsolation()
    if kind == "netns":
        return NetnsIsolation()
    raise ValueError(f"unknown isolation {kind!r} (known: {', '.join(ISOLATIONS)})")


def isolation_unavailable(kind: str) -> str | None:
    """Why this isolation cannot run here (None: it can)."""
    return netns_unavailable() if kind == "netns" else cgroups.unavailable_reason()
