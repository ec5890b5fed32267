"""An observer independent of the cluster's own state: polls every host's
libvirtd (at 10 Hz or more) for the domains that really run, and reads every
BMC's power log (each change stamped by the BMC itself, so none is missed
between two samples). It records changes with timestamps and flags any VM
seen running on two powered hosts at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hacluster.lab.bmc import PowerEvent
from hacluster.ports import DomainState, Hypervisor, HypervisorError


@dataclass(frozen=True)
class Sighting:
    at: float  # time.monotonic() when the look that saw the change began
    host: str
    vm: str
    running: bool  # True: started running there; False: stopped running there
    after: float = 0.0  # the change happened after this (the previous look began)
    by: float = 0.0  # ... and before this (the look that saw it ended)


@dataclass(frozen=True)
class PowerChange:
    at: float  # time.monotonic() when the change was done, as the BMC logged it
    host: str
    on: bool
    cause: str  # ipmi (a fence or an IPMI client), lab (the test or bench), ...
    began: float  # when it started: a power-off kills the host between began and at


@dataclass
class Observer:
    """One thread per host looks at its libvirtd every `interval_s`, so a slow
    or dying libvirtd delays nobody else's observations."""

    hypervisors: dict[str, Callable[[], Hypervisor]]  # host -> connect
    powered: Callable[[str], bool]  # host -> is its BMC power on
    interval_s: float = 0.05
    ignore: frozenset[str] = frozenset()  # domains that are not cluster VMs
    power_log: Callable[[str], Sequence[PowerEvent]] | None = None  # host -> BMC log
    sightings: list[Sighting] = field(default_factory=list)
    power_changes: list[PowerChange] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    samples: int = 0  # looks at one host, all hosts together
    gaps_s: list[float] = field(default_factory=list)  # between two looks at one host
    _last_look: dict[str, float] = field(default_factory=dict)
    _power_seen: dict[str, int] = field(default_factory=dict)
    _running: dict[str, set[str]] = field(default_factory=dict)
    _conns: dict[str, Hypervisor | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: bool = False

    def __post_init__(self) -> None:
        self.hypervisors = dict(self.hypervisors)  # add_host extends our own copy

    def start(self) -> None:
        with self._lock:
            self._started = True
            hosts = sorted(self.hypervisors)
        for host in hosts:
            self._watch(host)

    def add_host(self, host: str, connect: Callable[[], Hypervisor]) -> None:
        """Watch a host that joined after the start (a lab's add_host): from its
        first look on, like the others; a host added before start() waits for it."""
        with self._lock:
            if host in self.hypervisors:
                raise ValueError(f"the observer already watches {host}")
            self.hypervisors[host] = connect
            started = self._started and not self._stop.is_set()
        if started:
            self._watch(host)

    def _watch(self, host: str) -> None:
        thread = threading.Thread(target=self._loop, args=(host,),
                                  name=f"observer-{host}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(self.hypervisors)

    def stop(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        for conn in list(self._conns.values()):
            if conn is not None:
                conn.close()

    def _loop(self, host: str) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample_host(host)
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _domains(self, host: str) -> set[str]:
        if not self.powered(host):
            self._drop(host)
            return set()
        conn = self._conns.get(host)
        try:
            if conn is None:
                with self._lock:
                    connect = self.hypervisors[host]
                conn = self._conns[host] = connect()
            # one libvirt call per look where the driver offers it (a lab of 25 hosts
            # looked at 10 times a second would otherwise load every libvirtd)
            states = getattr(conn, "domain_states", None)
            if states is not None:
                return {name for name, state in states().items()
                        if state is DomainState.RUNNING and name not in self.ignore}
            return {d.name for d in conn.list_domains()
                    if d.state is DomainState.RUNNING and d.name not in self.ignore}
        except HypervisorError:
            self._drop(host)
            return set()

    def _drop(self, host: str) -> None:
        conn = self._conns.pop(host, None)
        if conn is not None:
            conn.close()

    def _read_power_log(self, host: str) -> list[PowerChange]:
        if self.power_log is None:
            return []
        entries = [e for e in self.power_log(host) if e.event in ("power-on", "power-off")]
        new = [PowerChange(e.mono, host, e.event == "power-on", e.cause, e.began)
               for e in entries[self._power_seen.get(host, 0):]]
        self._power_seen[host] = len(entries)
        return new

    def sample(self) -> None:
        """One look at every host in turn (the threads do this on their own)."""
        for host in self.hosts():
            self.sample_host(host)

    def sample_host(self, host: str) -> None:
        began = time.monotonic()
        names = self._domains(host)
        changes = self._read_power_log(host)
        ended = time.monotonic()
        with self._lock:
            previous = self._last_look.get(host)
            self.samples += 1
            if previous is not None:
                self.gaps_s.append(began - previous)
            self._last_look[host] = began
            self.power_changes = sorted(self.power_changes + changes, key=lambda c: c.at)
            before = self._running.get(host, set())
            self.sightings += [Sighting(began, host, vm, vm in names, previous or 0.0, ended)
                               for vm in sorted(names ^ before)]
            self._running[host] = names
            # other hosts as last seen (at most one look ago), if still powered
            for vm in sorted(names):
                others = [h for h, seen in sorted(self._running.items())
                          if h != host and vm in seen and self.powered(h)]
                if others:
                    self.violations.append(f"{vm} seen running on {host} and {', '.join(others)}")

    def running(self) -> dict[str, set[str]]:
        with self._lock:
            return {h: set(v) for h, v in self._running.items()}

    def where(self, vm: str) -> list[str]:
        return sorted(h for h, names in self.running().items() if vm in names)

    def power_offs(self, host: str, after: float = 0.0) -> list[PowerChange]:
        with self._lock:
            return [c for c in self.power_changes
                    if c.host == host and not c.on and c.at >= after]

    def first_sighting(self, vm: str, after: float, *, running: bool = True, on: str = "",
                       not_on: str = "") -> Sighting | None:
        """The earliest change of `vm` seen at or after `after` (the host threads
        append concurrently, so the list is only roughly in time order)."""
        with self._lock:
            found = [s for s in self.sightings
                     if s.vm == vm and s.running is running and s.at >= after
                     and s.host != not_on and (not on or s.host == on)]
        return min(found, key=lambda s: s.at, default=None)

    def first_start(self, vm: str, after: float, not_on: str = "") -> float | None:
        found = self.first_sighting(vm, after, not_on=not_on)
        return None if found is None else found.at
