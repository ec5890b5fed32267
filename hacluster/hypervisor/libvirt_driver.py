"""ports.Hypervisor over libvirt-python; this module and migration.py (live
migration) are the only ones that import libvirt.

One `LibvirtHypervisor` owns one connection to one URI (qemu:///system,
qemu:///system?socket=PATH, test:///default, test+unix:///default?socket=PATH).
Every method may be called from any thread: libvirt connections are
thread-safe, and our own bookkeeping sits behind small locks. Every
libvirt error leaves as HypervisorError naming the domain and the cause.

Lifecycle events come from libvirt's default event loop, driven by one
process-wide thread, and are handed to subscribers from a dispatcher thread so
that a slow subscriber never stalls libvirt's keepalive or other connections.
When libvirtd goes away the connection's close callback wakes a watcher that
reconnects, re-registers for events and reports any state that changed while
we were blind (reason "resync"). The watcher also compares states every
resync_interval_s, because libvirt sends no event for a domain that died while
libvirtd was restarting.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt

from hacluster.hypervisor import domxml
from hacluster.hypervisor.fanout import DomainEventFanout
from hacluster.hypervisor.jobs import abort_after
from hacluster.hypervisor.locks import held_lock
from hacluster.hypervisor.migration import run_migration
from hacluster.hypervisor.states import IncomingMigrations, map_event, map_state
from hacluster.ports import (
    DiskLockHeld,
    DomainInfo,
    DomainListener,
    DomainState,
    HostCapacity,
    HypervisorError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# the namespace of the uuids `define` derives from VM names (an XML without a <uuid>)
VM_UUID_NAMESPACE = uuidlib.UUID("5d1c7c0e-6f1a-4e39-9a52-3a1f0c6b8e21")
_UNDEFINE_ALL = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


_UNSUPPORTED = (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT)


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we raise instead."""


class _EventLoop:
    """Starts libvirt's default event implementation once per process.

    The event loop is global state inside libvirt itself: it must be registered
    once, before any connection that wants events or keepalive, and be driven by
    exactly one thread. This class-level guard is the single place that knows."""

    _lock = threading.Lock()
    _thread: threading.Thread | None = None

    @classmethod
    def ensure_running(cls) -> None:
        with cls._lock:
            if cls._thread is not None:
                return
            libvirt.registerErrorHandler(_ignore_libvirt_error, None)
            if libvirt.virEventRegisterDefaultImpl() < 0:
                raise HypervisorError("cannot register libvirt's default event loop")
            thread = threading.Thread(target=cls._run, name="libvirt-events", daemon=True)
            thread.start()
            cls._thread = thread

    @staticmethod
    def _run() -> None:
        while True:
            try:
                libvirt.virEventRunDefaultImpl()
            except libvirt.libvirtError:
                log.exception("libvirt event loop iteration failed")
                time.sleep(0.1)  # never spin if the loop keeps failing


def _cause(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _is_active(dom: libvirt.virDomain) -> bool:
    """Whether the domain runs; a transient domain that vanished does not."""
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise


def _abort_job(dom: libvirt.virDomain) -> None:
    try:
        dom.abortJob()
    except libvirt.libvirtError as exc:
        log.debug("abortJob on %s: %s", dom.name(), _cause(exc))


class LibvirtHypervisor:
    """ports.Hypervisor for one libvirt URI. Connects lazily, reconnects after
    libvirtd restarts, and is safe to call from many threads."""

    def __init__(
        self,
        uri: str,
        *,
        capacity_override: HostCapacity | None = None,
        keepalive_interval_s: int = 2,
        keepalive_count: int = 3,
        reconnect_interval_s: float = 0.2,
        resync_interval_s: float = 5.0,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.uri = uri
        self._capacity_override = capacity_override
        self._keepalive = (keepalive_interval_s, keepalive_count)
        self._reconnect_interval_s = reconnect_interval_s
        self._resync_interval_s = resync_interval_s
        self._poll_interval_s = poll_interval_s
        # Held across connect and close only; event callbacks never take it, so
        # they cannot deadlock against a caller that is reconnecting.
        self._conn_lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._generation = 0  # bumps per connection; stale callbacks are dropped
        self._fanout = DomainEventFanout(uri)
        self._incoming = IncomingMigrations()  # touched by libvirt's event thread only
        self._migrating: set[str] = set()  # guarded by _migrating_lock
        self._migrating_lock = threading.Lock()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------ connection

    def _connection(self) -> libvirt.virConnect:
        with self._conn_lock:
            if self._closed.is_set():
                raise HypervisorError(f"hypervisor {self.uri} is closed")
            conn = self._conn
            if conn is None or not _alive(conn):
                conn = self._reconnect_locked()
            if self._fanout.has_listeners and self._fanout.epoch != self._generation:
                self._subscribe_locked(conn)
            return conn

    def _reconnect_locked(self) -> libvirt.virConnect:
        if self._conn is not None:
            self._drop_locked(self._conn)
            self._conn = None
        _EventLoop.ensure_running()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to {self.uri}: {_cause(exc)}") from exc
        self._generation += 1
        # Local drivers (test:///) have neither keepalive nor a close callback;
        # nothing can vanish under them, and the watcher polls liveness anyway.
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(*self._keepalive)
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._on_close, self._generation)
        self._conn = conn
        return conn

    @staticmethod
    def _drop_locked(conn: libvirt.virConnect) -> None:
        for undo in (conn.unregisterCloseCallback, conn.close):
            with contextlib.suppress(libvirt.libvirtError):
                undo()  # the connection is usually dead already; best effort

    def _subscribe_locked(self, conn: libvirt.virConnect) -> None:
        generation = self._generation
        mark = self._fanout.begin(generation)  # accept this connection's events first
        try:
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, generation
            )
        except libvirt.libvirtError as exc:
            self._fanout.begin(0)  # not subscribed: the next call tries again
            raise HypervisorError(
                f"cannot subscribe to domain events on {self.uri}: {_cause(exc)}"
            ) from exc
        try:
            self._resync(conn, generation, mark)
        except HypervisorError as exc:
            # events flow already; the watcher's periodic resync catches up
            log.warning("first state read after subscribing failed: %s", exc)

    def _resync(self, conn: libvirt.virConnect, generation: int, mark: int) -> None:
        try:
            current = {info.name: info.state for info in self._list(conn)}
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"listing domains on {self.uri} failed: {_cause(exc)}") from exc
        self._fanout.resync(generation, current, mark)

    def _on_close(self, _conn: object, reason: int, _generation: int) -> None:
        log.info("libvirt connection to %s closed (reason %s)", self.uri, reason)
        self._wake.set()

    def _on_lifecycle(
        self, _conn: object, dom: libvirt.virDomain, event: int, detail: int, generation: int
    ) -> None:
        name = dom.name()
        mapped = self._incoming.adjust(name, event, detail, map_event(event, detail))
        if mapped is not None:
            self._fanout.publish(generation, name, *mapped)

    def _watch(self) -> None:
        """Keep a live, subscribed connection while anyone listens, and compare
        states every resync_interval_s: libvirt sends no event for a domain that
        died while libvirtd was restarting or reconnecting to it."""
        next_resync = time.monotonic() + self._resync_interval_s
        while not self._closed.is_set():
            self._wake.wait(timeout=max(0.0, min(1.0, next_resync - time.monotonic())))
            self._wake.clear()
            try:
                conn = self._connection()
                if time.monotonic() >= next_resync:
                    next_resync = time.monotonic() + self._resync_interval_s
                    self._resync(conn, self._generation, self._fanout.mark())
            except HypervisorError as exc:
                if self._closed.is_set():
                    return
                log.debug("reconnect to %s failed: %s", self.uri, exc)
                self._closed.wait(self._reconnect_interval_s)
                self._wake.set()

    # ------------------------------------------------------------ helpers

    def _fail(self, action: str, name: str, exc: libvirt.libvirtError) -> HypervisorError:
        conn = self._conn
        if conn is not None and not _alive(conn):
            self._wake.set()
        return HypervisorError(f"{action} of domain {name!r} on {self.uri} failed: {_cause(exc)}")

    def _read(self, action: str, read: Callable[[libvirt.virConnect], T]) -> T:
        """A read-only call, retried once when the connection turns out dead."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return read(conn)
            except libvirt.libvirtError as exc:
                if attempt == 1 and not _alive(conn):
                    continue
                raise HypervisorError(f"{action} on {self.uri} failed: {_cause(exc)}") from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _conn_for(self, action: str, name: str) -> libvirt.virConnect:
        try:
            return self._connection()
        except HypervisorError as exc:
            raise HypervisorError(f"{action} of domain {name!r} failed: {exc}") from exc

    def _require(self, action: str, name: str) -> libvirt.virDomain:
        dom = self._find(action, name)
        if dom is None:
            raise HypervisorError(
                f"{action} of domain {name!r} on {self.uri} failed: no such domain"
            )
        return dom

    def _find(self, action: str, name: str) -> libvirt.virDomain | None:
        try:
            return self._lookup(self._conn_for(action, name), name)
        except libvirt.libvirtError as exc:
            raise self._fail(action, name, exc) from exc

    def _list(self, conn: libvirt.virConnect) -> list[DomainInfo]:
        with self._migrating_lock:
            migrating = set(self._migrating)
        infos = []
        for dom in conn.listAllDomains(0):
            try:
                name = dom.name()
                state, reason = dom.state()
                _, max_kib, _, vcpus, _ = dom.info()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # a transient domain went away while we listed
                raise
            mapped = map_state(state, reason)
            if name in migrating and mapped == DomainState.RUNNING:
                mapped = DomainState.MIGRATING
            infos.append(DomainInfo(name, mapped, max_kib // 1024, vcpus))
        return sorted(infos, key=lambda info: info.name)

    # ------------------------------------------------------------ Hypervisor

    def capacity(self) -> HostCapacity:
        if self._capacity_override is not None:
            return self._capacity_override
        info = self._read("node info", lambda conn: conn.getInfo())
        return HostCapacity(memory_mib=int(info[1]), vcpus=int(info[2]))

    def list_domains(self) -> list[DomainInfo]:
        return self._read("listing domains", self._list)

    def domain_states(self) -> dict[str, DomainState]:
        """Every domain's state in one libvirt call (list_domains makes two more per
        domain, for its memory and vCPUs): for a watcher that polls many hosts often,
        such as the lab's observer."""
        def read(conn: libvirt.virConnect) -> dict[str, DomainState]:
            return {dom.name(): map_state(int(stats.get("state.state", -1)),
                                          int(stats.get("state.reason", 0)))
                    for dom, stats in conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)}

        return self._read("listing domain states", read)

    def define(self, name: str, xml: str) -> None:
        """Define (or redefine, when the XML changed since our last define)."""
        try:
            xml_name = domxml.domain_name(xml)
        except domxml.DomainXmlError as exc:
            raise HypervisorError(f"define of domain {name!r} on {self.uri} failed: {exc}") from exc
        if xml_name != name:
            raise HypervisorError(
                f"define of domain {name!r} on {self.uri} failed: the XML names {xml_name!r}"
            )
        digest = domxml.xml_digest(xml)
        dom = self._find("define", name)
        try:
            # An XML without a <uuid> gets one derived from the VM's name: every host then
            # defines the VM under the same uuid, so a live migration back to a host that
            # still holds an old inactive definition (fenced, or stopped there) is accepted
            # instead of refused as "already exists with uuid" (failback, drains).
            uuid = str(uuidlib.uuid5(VM_UUID_NAMESPACE, name))
            if dom is not None:
                if self._stamp_of(dom) == digest:
                    return
                uuid = dom.UUIDString()
            self._conn_for("define", name).defineXML(domxml.stamped(xml, digest, uuid))
        except libvirt.libvirtError as exc:
            raise self._fail("define", name, exc) from exc

    @staticmethod
    def _stamp_of(dom: libvirt.virDomain) -> str | None:
        try:
            element = dom.metadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                domxml.STAMP_NS,
                libvirt.VIR_DOMAIN_AFFECT_CONFIG,
            )
        except libvirt.libvirtError:
            return None  # no stamp, or a transient domain: treat as changed
        return domxml.stamp_digest(element)

    def start(self, name: str) -> None:
        """Start a defined domain; a domain that already runs is left alone. A start
        refused because a disk is locked by a live process raises DiskLockHeld."""
        dom = self._require("start", name)
        try:
            if not dom.isActive():
                dom.create()
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                if _is_active(dom):
                    return  # someone else started it meanwhile: the goal is met
            failure = self._fail("start", name, exc)
            why = held_lock(exc.get_error_code() or 0, exc.get_error_domain() or 0, _cause(exc))
            if why:
                raise DiskLockHeld(str(failure), why) from exc
            raise failure from exc

    def shutdown(self, name: str, timeout_s: float) -> None:
        """Ask the guest to power off; destroy it if it still runs after timeout_s."""
        dom = self._find("shutdown", name)
        try:
            if dom is None or not _is_active(dom):
                return
            deadline = time.monotonic() + timeout_s
            try:
                dom.shutdown()
            except libvirt.libvirtError as exc:
                if not _is_active(dom):
                    return
                log.info("shutdown request for %s failed (%s); destroying", name, _cause(exc))
                deadline = time.monotonic()  # nobody will act on the request
            if self._wait_inactive(dom, deadline):
                return
            log.info("domain %s still running after %.1f s; destroying", name, timeout_s)
            self._destroy(dom)
            if _is_active(dom):
                raise HypervisorError(
                    f"shutdown of domain {name!r} on {self.uri} failed: still running after destroy"
                )
        except libvirt.libvirtError as exc:
            raise self._fail("shutdown", name, exc) from exc

    def _wait_inactive(self, dom: libvirt.virDomain, deadline: float) -> bool:
        while _is_active(dom):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self._poll_interval_s, remaining))
        return True

    @staticmethod
    def _destroy(dom: libvirt.virDomain) -> None:
        try:
            dom.destroy()
        except libvirt.libvirtError:
            if _is_active(dom):
                raise

    def destroy(self, name: str) -> None:
        """Power the domain off at once; an unknown or stopped domain is no error."""
        dom = self._find("destroy", name)
        try:
            if dom is not None and _is_active(dom):
                self._destroy(dom)
        except libvirt.libvirtError as exc:
            raise self._fail("destroy", name, exc) from exc

    def undefine(self, name: str) -> None:
        """Remove the domain from this host: a running domain (persistent or
        transient) is destroyed first, then its definition is removed. Callers
        that want a graceful stop call shutdown() first."""
        dom = self._find("undefine", name)
        if dom is None:
            return
        try:
            if _is_active(dom):
                self._destroy(dom)
            if self._lookup(self._conn_for("undefine", name), name) is None:
                return  # it was transient: destroying it removed it
            try:
                dom.undefineFlags(_UNDEFINE_ALL)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED:
                    raise
                dom.undefine()  # drivers without snapshots/NVRAM refuse those flags
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise self._fail("undefine", name, exc) from exc

    def migrate(
        self,
        name: str,
        dest_uri: str,
        timeout_s: float,
        *,
        peer_to_peer: bool = True,
        bandwidth_mib_s: int = 0,
        migration_uri: str | None = None,
    ) -> None:
        """Live-migrate to the libvirtd at dest_uri; the definition moves with
        the domain and replaces a stale inactive one there (migration.py); an
        active domain of that name there refuses it. Peer-to-peer lets the source
        libvirtd reach dest_uri itself; otherwise this client talks to both. After
        timeout_s the migration job is aborted and the domain keeps running here."""
        dom = self._require("migrate", name)
        params: dict[str, Any] = {}
        if bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib_s)
        if migration_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migration_uri
        what = f"migration of domain {name!r} from {self.uri} to {dest_uri}"
        with self._migrating_lock:
            self._migrating.add(name)
        try:
            with abort_after(timeout_s, lambda: _abort_job(dom), f"migration of {name}") as aborted:
                run_migration(dom, dest_uri, params, peer_to_peer, what)
        except libvirt.libvirtError as exc:
            if aborted.is_set():
                raise HypervisorError(
                    f"{what} did not finish within {timeout_s:g} s and was aborted: {_cause(exc)}"
                ) from exc
            raise HypervisorError(f"{what} failed: {_cause(exc)}") from exc
        finally:
            with self._migrating_lock:
                self._migrating.discard(name)

    def subscribe(self, listener: DomainListener) -> None:
        """Deliver (name, state, reason) for every lifecycle change, from a
        dispatcher thread; keeps reconnecting in the background from now on."""
        self._fanout.add(listener)
        with self._conn_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name=f"hv-watch {self.uri}", daemon=True
                )
                self._watcher.start()
        try:
            self._connection()
        except HypervisorError as exc:
            log.warning("subscribed while %s is unreachable: %s", self.uri, exc)
            self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._fanout.close()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5.0)
        with self._conn_lock:
            if self._conn is not None:
                self._drop_locked(self._conn)
                self._conn = None

    def __enter__(self) -> LibvirtHypervisor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
