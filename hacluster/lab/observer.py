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
    at: float  # time.monotonic()
    host: str
    vm: str
    running: bool  # True: started running there; False: stopped running there


@dataclass(frozen=True)
class PowerChange:
    at: float  # time.monotonic() when the change was done, as the BMC logged it
    host: str
    on: bool
    cause: str  # ipmi (a fence or an IPMI client), lab (the test or bench), ...
    began: float  # when it started: a power-off kills the host between began and at


@dataclass
class Observer:
    hypervisors: dict[str, Callable[[], Hypervisor]]  # host -> connect
    powered: Callable[[str], bool]  # host -> is its BMC power on
    interval_s: float = 0.05
    ignore: frozenset[str] = frozenset()  # domains that are not cluster VMs
    power_log: Callable[[str], Sequence[PowerEvent]] | None = None  # host -> BMC log
    sightings: list[Sighting] = field(default_factory=list)
    power_changes: list[PowerChange] = field(default_factory=list)
    _power_seen: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    _running: dict[str, set[str]] = field(default_factory=dict)
    _conns: dict[str, Hypervisor | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for conn in self._conns.values():
            if conn is not None:
                conn.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _domains(self, host: str) -> set[str]:
        if not self.powered(host):
            self._drop(host)
            return set()
        conn = self._conns.get(host)
        try:
            if conn is None:
                conn = self._conns[host] = self.hypervisors[host]()
            return {d.name for d in conn.list_domains()
                    if d.state is DomainState.RUNNING and d.name not in self.ignore}
        except HypervisorError:
            self._drop(host)
            return set()

    def _drop(self, host: str) -> None:
        conn = self._conns.pop(host, None)
        if conn is not None:
            conn.close()

    def _read_power_logs(self) -> list[PowerChange]:
        if self.power_log is None:
            return []
        new: list[PowerChange] = []
        for host in sorted(self.hypervisors):
            entries = [e for e in self.power_log(host) if e.event in ("power-on", "power-off")]
            new += [PowerChange(e.mono, host, e.event == "power-on", e.cause, e.began)
                    for e in entries[self._power_seen.get(host, 0):]]
            self._power_seen[host] = len(entries)
        return sorted(new, key=lambda change: change.at)

    def sample(self) -> None:
        now = time.monotonic()
        seen = {host: self._domains(host) for host in sorted(self.hypervisors)}
        changes = self._read_power_logs()
        with self._lock:
            self.power_changes += changes
            for host, names in seen.items():
                before = self._running.get(host, set())
                self.sightings += [Sighting(now, host, vm, True) for vm in sorted(names - before)]
                self.sightings += [Sighting(now, host, vm, False) for vm in sorted(before - names)]
                self._running[host] = names
            where: dict[str, list[str]] = {}
            for host, names in seen.items():
                for vm in names:
                    where.setdefault(vm, []).append(host)
            for vm, hosts in sorted(where.items()):
                if len(hosts) > 1:
                    self.violations.append(f"{vm} seen running on {', '.join(hosts)}")

    def running(self) -> dict[str, set[str]]:
        with self._lock:
            return {h: set(v) for h, v in self._running.items()}

    def where(self, vm: str) -> list[str]:
        return sorted(h for h, names in self.running().items() if vm in names)

    def power_offs(self, host: str, after: float = 0.0) -> list[PowerChange]:
        with self._lock:
            return [c for c in self.power_changes
                    if c.host == host and not c.on and c.at >= after]

    def first_start(self, vm: str, after: float, not_on: str = "") -> float | None:
        with self._lock:
            for s in self.sightings:
                if s.vm == vm and s.running and s.at >= after and s.host != not_on:
                    return s.at
        return None
