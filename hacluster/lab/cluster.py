"""A lab cluster on one machine: N hosts, each a private libvirtd (libvirt's
test driver, or QEMU) plus a peer process, and a BMC simulator (OpenIPMI's
ipmi_sim) per host whose power-off kills every process of that host and whose
power-on starts them again.

Hosts live on loopback addresses of their own (isolation="loopback", the
default) or each in a network namespace (isolation="netns", usually with
driver="qemu"); hacluster.lab.isolation says what each means, where the BMCs
listen and what `cut` does.

Used by the end-to-end tests, `hacluster demo` and bench/failover.py.
Needs root (private libvirtd instances use namespaces).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacluster.hypervisor.domxml import domain_type_for, minimal_domain_xml
from hacluster.lab import chassis
from hacluster.lab.bmc import BmcSim
from hacluster.lab.host import HostSpec, LabHost, package_pythonpath
from hacluster.lab.isolation import isolation_unavailable, make_isolation
from hacluster.lab.observer import Observer
from hacluster.lab.watchdog import WatchdogEmulator
from hacluster.ports import Hypervisor, PowerState
from hacluster.rpc.client import RpcClient
from hacluster.rpc.protocol import ErrorCode, RpcError

RAFT_PORT, LEASE_PORT = 7440, 7441
METRICS_PORT = 7449  # [metrics] address of every peer, on its host's address (metrics=True)
BMC_USER = "admin"

# Replicated settings per profile (lease timings; the rest stays default).
PROFILES: dict[str, dict[str, float]] = {
    "default": {},
    "fast": {"lease_renew_s": 0.15, "lease_suspect_s": 0.45, "lease_ttl_s": 0.9,
             "fence_retry_backoff_s": 0.5, "probe_after_s": 0.3},
}
LAB_TIMING = (("agent_tick_s", 0.1), ("manager_tick_s", 0.05), ("bmc_check_interval_s", 5.0))


def backend_of(address: str) -> str:
    """The second network of a loopback host: the same host number one /24 up."""
    a, b, c, d = address.split(".")
    return f"{a}.{b}.{(int(c) % 254) + 1}.{d}"


def lab_unavailable(driver: str = "test", isolation: str = "loopback") -> str | None:
    """Why a lab cluster cannot run on this machine (None: it can)."""
    from hacluster.lab.libvirtd import unavailable_reason

    reason = unavailable_reason("qemu" if driver == "qemu" else "test")
    if reason:
        return reason
    for tool in ("ipmi_sim", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt: openipmi, nftables)"
    return isolation_unavailable(isolation)


@dataclass
class LabNode:
    host: LabHost
    bmc: BmcSim

    @property
    def name(self) -> str:
        return self.host.spec.name


class LabCluster:
    def __init__(self, root: str | Path, hosts: int = 3, *, profile: str = "default",
                 driver: str = "test", isolation: str = "loopback", log_level: str = "info",
                 vm_memory_mib: int | None = None, links: int = 1,
                 notify_hook: str = "", watchdog: tuple[float, float] | None = None,
                 timing: tuple[tuple[str, float], ...] = LAB_TIMING,
                 raft: tuple[tuple[str, float], ...] = (),
                 observer_interval_s: float = 0.05, disk_leases: bool = False,
                 vm_disks: bool | None = None,
                 storage: tuple[int, float] | None = None, metrics: bool = False,
                 release: str = "") -> None:
        """watchdog: (timeout_s, self_fence_s) gives every host a watchdog that cuts its
        power when not fed (hacluster/lab/watchdog.py). storage: (checks,
        check_interval_s) makes every host write storage heartbeats into ROOT/shared
        (every lab host shares this machine's filesystem: a shared storage) and the
        leader check it (core/storage.py).

        disk_leases: every host's libvirtd runs libvirt's lockd lock manager with its
        own virtlockd, all of them sharing one lockspace directory (ROOT/lockspace), and
        every peer runs with `[hypervisor] disk_leases` (QEMU only). vm_disks (default:
        disk_leases): every VM gets a disk, /var/lib/libvirt/images/NAME.img. Each host
        keeps its own copy of that image (its libvirtd's /var/lib/libvirt is private),
        as a shared block device whose locks do not cross hosts would look: QEMU's own
        image lock cannot see a second copy on another host; only a disk lease can.
        release: every peer runs the older release in this directory (HostSpec.release)."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
        if driver not in ("test", "qemu"):
            raise ValueError(f"unknown driver {driver!r} (known: test, qemu)")
        self.root = Path(root).resolve()
        self.count = hosts
        self.profile = profile
        self.driver = driver
        self.isolation = make_isolation(isolation)
        self.log_level = log_level
        # QEMU domains of 32 MiB without a disk idle in the firmware: cheap and quick
        self.vm_memory_mib = vm_memory_mib or (32 if driver == "qemu" else 256)
        if links not in (1, 2) or (links == 2 and isolation != "loopback"):
            raise ValueError("links: 1, or 2 with loopback isolation")
        self.links = links
        self.notify_hook = notify_hook
        self.watchdog = watchdog
        self.storage = storage
        self.watchdog_emulator: WatchdogEmulator | None = None
        self.timing = timing  # [timing] of every peer (() = the product's defaults)
        self.raft = raft  # [raft] of every peer (() = the product's defaults)
        self.observer_interval_s = observer_interval_s
        if disk_leases and driver != "qemu":
            raise ValueError("disk_leases needs driver='qemu'")
        self.disk_leases = disk_leases
        self.vm_disks = disk_leases if vm_disks is None else vm_disks
        self.metrics = metrics  # every peer serves Prometheus metrics (LabHost.metrics_url)
        self.release = release
        self.nodes: dict[str, LabNode] = {}
        self.cut_hosts: set[str] = set()
        self.observer: Observer | None = None

    # ------------------------------------------------------------ build

    def start(self, timeout_s: float = 60.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.storage is not None:
            self.shared_storage.mkdir(exist_ok=True)
        secret_file = self.root / "secret"
        secret_file.write_text(secrets.token_hex(24))
        secret_file.chmod(0o600)
        self.isolation.create()
        names = [f"h{i + 1}" for i in range(self.count)]
        places = {name: self.isolation.add_host(name) for name in names}
        peers = tuple(f"{n}={places[n][0]}:{RAFT_PORT}" for n in names)
        for name in names:
            self.nodes[name] = self._node(name, places[name], peers, str(secret_file))
        if self.watchdog is not None:
            self.watchdog_emulator = WatchdogEmulator(
                lambda: {n: node.host.spec.path for n, node in self.nodes.items()},
                self.watchdog[0], lambda n: self.power_off(n, "watchdog"))
            self.watchdog_emulator.start()
        for node in self.nodes.values():
            node.host.power_on()
        self.wait(lambda: self._all_online(), timeout_s, "every host online")
        self._configure()
        # libvirt's test driver ships a running domain named "test": not ours.
        self.observer = Observer({n: self._connector(n) for n in self.nodes},
                                 lambda n: self.nodes[n].bmc.power is PowerState.ON,
                                 ignore=frozenset({"test"}) if self.driver == "test"
                                 else frozenset(),
                                 power_log=lambda n: self.nodes[n].bmc.events(),
                                 interval_s=self.observer_interval_s)
        self.observer.start()

    def add_host(self, name: str, secret_file: str | None = None,
                 role: str = "voter") -> LabNode:
        """A new host joins a running cluster: Raft membership first (through any
        peer, voters only), its BMC in the replicated settings (so it can be fenced),
        then its peer starts with every voter as a partner. The observer watches
        it from then on."""
        place = self.isolation.add_host(name)
        address = place[0]
        peers = tuple(f"{n}={node.host.spec.raft_address}" for n, node in self.nodes.items()
                      if node.host.spec.role != "member")
        if role != "member":
            peers += (f"{name}={address}:{RAFT_PORT}",)
        addresses = [f"main={address}"] + ([f"backend={backend_of(address)}"]
                                           if self.links == 2 else [])
        self.call("host.add", {"name": name, "raft_address": f"{address}:{RAFT_PORT}",
                               "addresses": addresses, "role": role})
        node = self._node(name, place, peers, secret_file or str(self.root / "secret"), role)
        self.nodes[name] = node
        with self.client() as rpc:
            self._set_bmc(rpc, name, node)
        node.host.power_on()
        self.count += 1
        if self.observer is not None:
            self.observer.add_host(name, self._connector(name))
        return node

    def _node(self, name: str, place: tuple[str, str], peers: tuple[str, ...],
              secret: str, role: str = "voter") -> LabNode:
        directory = self.root / name
        address, netns = place
        spec = HostSpec(name=name, directory=str(directory), address=address,
                        raft_port=RAFT_PORT, lease_port=LEASE_PORT, peers=peers,
                        secret_file=secret, role=role, driver=self.driver,
                        log_level=self.log_level, timing=self.timing, netns=netns,
                        backend_address=backend_of(address) if self.links == 2 else "",
                        notify_hook=self.notify_hook,
                        watchdog_timeout_s=self.watchdog[0] if self.watchdog else 0.0,
                        self_fence_s=self.watchdog[1] if self.watchdog else 0.0,
                        cgroup_procs=self.isolation.procs_file(name), raft=self.raft,
                        lockspace_dir=str(self.root / "lockspace") if self.disk_leases else "",
                        metrics_port=METRICS_PORT if self.metrics else 0, release=self.release,
                        **self._storage_spec())
        host = LabHost(spec)
        host.write()
        hook = ["env", f"PYTHONPATH={package_pythonpath()}",
                sys.executable, "-m", "hacluster.lab.host", str(directory)]
        # The BMC listens outside any host namespace, where every host reaches it.
        bmc = BmcSim.start(directory / "bmc", address=self.isolation.bmc_address,
                           user=BMC_USER, power_on=True,
                           # a QEMU libvirtd takes seconds to start (capability probes)
                           cmd_timeout_s=30.0 if self.driver == "qemu" else 10.0,
                           power_off_cmd=[*hook, "power-off"], power_on_cmd=[*hook, "power-on"])
        return LabNode(host, bmc)

    @property
    def shared_storage(self) -> Path:
        """The directory every host writes its storage heartbeats to (storage=...)."""
        return self.root / "shared"

    def _storage_spec(self) -> dict[str, Any]:
        if self.storage is None:
            return {}
        return {"storage_paths": (str(self.shared_storage),),
                "storage_checks": self.storage[0], "storage_interval_s": self.storage[1]}

    def _connector(self, name: str) -> Callable[[], Hypervisor]:
        uri = self.nodes[name].host.libvirtd.uri

        def connect() -> Hypervisor:
            from hacluster.hypervisor.libvirt_driver import LibvirtHypervisor

            return LibvirtHypervisor(uri)

        return connect

    def _configure(self) -> None:
        first = next(iter(self.nodes.values()))
        with self.client() as rpc:
            rpc.call("bmc.set", {"username": BMC_USER, "driver": "ipmi",
                                 "password": first.bmc.password.reveal()})
            for name, node in self.nodes.items():
                self._set_bmc(rpc, name, node)
            settings = PROFILES[self.profile]
            if settings:
                self._set_settings(rpc, settings)

    @staticmethod
    def _set_bmc(rpc: RpcClient, name: str, node: LabNode) -> None:
        rpc.call("bmc.set", {"host": name, "address": node.bmc.address, "port": node.bmc.port,
                             "password": node.bmc.password.reveal()})

    @staticmethod
    def _set_settings(rpc: RpcClient, settings: dict[str, float]) -> None:
        """A setting new in this release waits until every peer said it reads it (each
        announces what it understands as it starts: a second or so)."""
        give_up = time.monotonic() + 20.0
        while True:
            try:
                rpc.call("settings.set", {"values": settings})
                return
            except RpcError as exc:
                if exc.code is not ErrorCode.CONFLICT or time.monotonic() > give_up:
                    raise
                time.sleep(0.2)

    # ------------------------------------------------------------ use

    def client(self, name: str | None = None, timeout_s: float = 30.0) -> RpcClient:
        """An RPC client to the named peer, or to any powered peer that is not
        cut off (a cut-off peer answers from a replica that no longer moves)."""
        names = [name] if name else [n for n, node in self.nodes.items()
                                     if node.bmc.power is PowerState.ON and n not in self.cut_hosts]
        last: Exception | None = None
        for candidate in names:
            try:
                return RpcClient.connect(self.nodes[candidate].host.spec.rpc_socket,
                                         timeout_s=timeout_s)
            except RpcError as exc:
                last = exc
        raise RuntimeError(f"no peer answers: {last}")

    def call(self, method: str, params: dict[str, Any] | None = None,
             name: str | None = None) -> Any:
        with self.client(name) as rpc:
            return rpc.call(method, params or {})

    def set_settings(self, values: dict[str, float]) -> None:
        """settings.set, waiting until every peer reads the settings' version."""
        with self.client() as rpc:
            self._set_settings(rpc, values)

    def raise_fence_cap(self, fences: int) -> dict[str, Any]:
        """Allow at least `fences` fence incidents per window for a run that causes
        them on purpose (the default cap, 3 per hour, would leave the fourth victim
        fence-blocked). Says so on stderr when it changes the cap; returns what the
        run used: cap, window_s, default_cap, raised."""
        before = self.call("fence.cap")["cap"]
        wanted = max(int(before["cap"]), fences)
        if wanted != before["cap"]:
            self.call("fence.cap", {"cap": wanted})
            print(f"fence cap raised for this run: {before['cap']} -> {wanted} fences per "
                  f"{before['window_s']:g} s", file=sys.stderr)
        return {"cap": wanted, "window_s": before["window_s"], "default_cap": before["cap"],
                "raised": wanted != before["cap"]}

    def add_vms(self, count: int, prefix: str = "vm", *, start: int = 1,
                timeout_s: float = 60.0, **options: Any) -> list[str]:
        """Add VMs named prefix+number from `start` (with vm.add `options` such as
        allowed_hosts) and wait until they run, seen by the observer too."""
        names = [f"{prefix}{i}" for i in range(start, start + count)]
        with self.client() as rpc:
            for name in names:
                rpc.call("vm.add", {"xml": self.vm_xml(name), **options})
        self.wait(lambda: self._all_running(names), timeout_s, f"{count} VMs running")
        if self.observer is not None:  # and seen by it: later checks compare with its looks
            observer = self.observer
            self.wait(lambda: all(observer.where(n) for n in names), max(10.0, timeout_s / 6),
                      f"the observer seeing the {count} VMs")
        return names

    def vm_xml(self, name: str) -> str:
        """The definition add_vms gives a VM (with a disk image on every host when
        the lab has VM disks)."""
        kind = domain_type_for(next(iter(self.nodes.values())).host.libvirtd.uri)
        disk = ""
        if self.vm_disks:
            for node in self.nodes.values():
                image = node.host.disk_image(name)
                image.parent.mkdir(parents=True, exist_ok=True)
                with open(image, "ab") as handle:
                    handle.truncate(1 << 20)  # 1 MiB, sparse: SeaBIOS finds nothing to boot
            disk = f"/var/lib/libvirt/images/{name}.img"
        return minimal_domain_xml(name, self.vm_memory_mib, 1, kind, disk=disk)

    def power_off(self, name: str, cause: str = "lab power cut") -> float:
        """Cut the host's power through its BMC simulator; returns the moment."""
        at = time.monotonic()
        self.nodes[name].bmc.set_power(False, cause)
        return at

    def power_on(self, name: str) -> None:
        self.nodes[name].bmc.set_power(True, "lab power on")

    @contextlib.contextmanager
    def power_held(self, name: str) -> Iterator[bool]:
        """Hold the host's chassis lock (no power change can run meanwhile: a
        power-off hook in progress finishes first); yields whether it is on.
        Start a host's process only inside, or a power-off under way could miss it."""
        node = self.nodes[name]
        with chassis.locked(node.bmc.directory):
            yield node.bmc.power is PowerState.ON

    def start_peer_if_powered(self, name: str) -> bool:
        """Start the host's peer again if its host is on and the peer is not running."""
        with self.power_held(name) as on:
            if not on or self.nodes[name].host.peer_pid() is not None:
                return False
            self.nodes[name].host.start_peer()
            return True

    def cut(self, name: str) -> float:
        """Take a running host off the network (see hacluster.lab.isolation for
        what stays reachable); returns the moment."""
        others = [node.host.spec.address for n, node in self.nodes.items() if n != name]
        at = time.monotonic()
        self.isolation.cut(name, others)
        self.cut_hosts.add(name)
        return at

    def restore(self, name: str) -> None:
        self.isolation.restore(name)
        self.cut_hosts.discard(name)

    @contextlib.contextmanager
    def cut_off(self, name: str) -> Iterator[float]:
        """cut() for the duration of a with block; yields the moment of the cut."""
        at = self.cut(name)
        try:
            yield at
        finally:
            self.restore(name)

    def leader(self) -> str | None:
        """The host whose peer leads, as a powered peer sees it."""
        address = self.call("status")["peer"]["leader"]
        for name, node in self.nodes.items():
            if node.host.spec.raft_address == address:
                return name
        return None

    def wait_leader(self, timeout_s: float = 20.0) -> str:
        """The leader's host name, once there is one (an election may be under way)."""
        found: list[str] = []

        def known() -> bool:
            leader = self.leader()
            found[:] = [leader] if leader else []
            return bool(found)

        self.wait(known, timeout_s, "a leader")
        return found[0]

    def vms(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.call("vm.list")["vms"]}

    def hosts(self) -> dict[str, dict[str, Any]]:
        return {h["name"]: h for h in self.call("host.list")["hosts"]}

    def _all_online(self) -> bool:
        try:
            hosts = self.hosts()
        except (RpcError, RuntimeError):
            return False
        return len(hosts) == self.count and all(h["state"] == "online" for h in hosts.values())

    def _all_running(self, names: list[str]) -> bool:
        vms = self.vms()
        return all(n in vms and vms[n]["state"] == "started" for n in names)

    @staticmethod
    def wait(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
        start = time.monotonic()
        while True:
            try:
                if condition():
                    return time.monotonic() - start
            except (RpcError, RuntimeError, OSError):
                pass
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
            time.sleep(0.05)

    # ------------------------------------------------------------ teardown

    def stop(self, keep: bool = False) -> None:
        """Power everything off, stop the BMCs, remove namespaces, bridge and
        cuts (also after a start that failed half-way); remove the files
        unless keep. Every step runs even when an earlier one failed."""
        steps: list[Callable[[], object]] = []
        if self.watchdog_emulator is not None:
            steps.append(self.watchdog_emulator.stop)
        if self.observer is not None:
            steps.append(self.observer.stop)
        for node in self.nodes.values():
            steps += [node.host.power_off, node.bmc.stop]
        # processes first: a namespace lingers while a process still uses it
        steps.append(self.isolation.destroy)
        if not keep:
            steps.append(lambda: shutil.rmtree(self.root, ignore_errors=True))
        failures: list[BaseException] = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                failures.append(exc)
        if failures:
            raise RuntimeError(f"lab teardown: {len(failures)} step(s) failed") from failures[0]

    def __enter__(self) -> LabCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
