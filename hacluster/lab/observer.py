"""An observer independent of the cluster's own state: polls every host's
libvirtd (at 10 Hz or more) for the domains that really run, and reads every
BMC's power log. It records changes with timestamps and flags any VM seen
running on two powered hosts at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.ports import DomainState, Hypervisor, HypervisorError


@dataclass(frozen=True)
class Sighting:
    at: float  # time.monotonic()
    host: str
    vm: str
    running: bool  # True: started running there; False: stopped running there


@dataclass
class Observer:
    hypervisors: dict[str, Callable[[], Hypervisor]]  # host -> connect
    powered: Callable[[str], bool]  # host -> is its BMC power on
    interval_s: float = 0.05
    ignore: frozenset[str] = frozenset()  # domains that are not cluster VMs
    sightings: list[Sighting] = field(default_factory=list)
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

    def sample(self) -> None:
        now = time.monotonic()
        seen = {host: self._domains(host) for host in sorted(self.hypervisors)}
        with self._lock:
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

    def first_start(self, vm: str, after: float, not_on: str = "") -> float | None:
        with self._lock:
            for s in self.sightings:
                if s.vm == vm and s.running and s.at >= after and s.host != not_on:
                    return s.at
        return None
