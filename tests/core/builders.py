"""Builders for core tests: a ClusterState grown only by applying real commands.

Every command goes through `encode_command` and `apply(bytes)`, so each test also
exercises the codec. `Cluster.run` fails the test on an internal-error event
(an illegal state edge), which apply reports with `bug=1`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from hacluster.core import versions
from hacluster.fsm import ClusterState, apply, encode_command, state_digest
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import FenceResult, Host, HostRole, Vm
from hacluster.fsm.states import HostState, VmState

START_TIME = 1_000.0


class Cluster:
    """A replicated state plus a log cursor and a proposer's log clock."""

    def __init__(self, **settings: Any) -> None:
        self.state = ClusterState()
        self.index = 0
        self.clock = START_TIME
        self.log: list[bytes] = []
        if settings:
            self.run(c.SetSettings(**settings))

    # ------------------------------------------------------------ the log

    def entry(
        self,
        cmd: c.Command,
        *,
        request_id: str = "",
        origin: str = "test",
        at: float | None = None,
        step: float = 1.0,
        wall: float | None = None,
    ) -> bytes:
        """`at`: the proposer's log clock; `wall`: its wall clock (default: the same)."""
        self.clock = self.clock + step if at is None else at
        stamp = self.clock if wall is None else wall
        return encode_command(c.Envelope(cmd, request_id, origin, stamp, self.clock))

    def apply_bytes(self, data: bytes, *, check: bool = True) -> list[Event]:
        self.index += 1
        self.log.append(data)
        events = apply(self.state, data, self.index)
        if check:
            bugs = [str(e) for e in events if e.get("bug")]
            assert not bugs, f"internal error while applying entry {self.index}: {bugs}"
        return events

    def run(
        self,
        cmd: c.Command,
        *,
        request_id: str = "",
        origin: str = "test",
        at: float | None = None,
        step: float = 1.0,
        wall: float | None = None,
        check: bool = True,
    ) -> list[Event]:
        data = self.entry(cmd, request_id=request_id, origin=origin, at=at, step=step, wall=wall)
        return self.apply_bytes(data, check=check)

    def ok(self, cmd: c.Command, **kw: Any) -> list[Event]:
        """Run a command that must not be rejected."""
        events = self.run(cmd, **kw)
        rejected = [str(e) for e in events if e.kind in ("rejected", "undecodable")]
        assert not rejected, f"{cmd.TYPE} was rejected: {rejected}"
        return events

    # ------------------------------------------------------------ lookups

    def host(self, name: str) -> Host:
        return self.state.hosts[name]

    def vm(self, name: str) -> Vm:
        return self.state.vms[name]

    def host_state(self, name: str) -> HostState:
        return self.state.hosts[name].state

    def vm_state(self, name: str) -> VmState:
        return self.state.vms[name].state

    # ------------------------------------------------------------ hosts

    def add_host(
        self, name: str, memory_mib: int = 16_384, vcpus: int = 8, *, ready: bool = True, **kw: Any
    ) -> Host:
        # Non-voting by default: these tests apply entries directly, without a Raft
        # majority, so the quorum guard (tested on its own) must not get in the way.
        kw.setdefault("role", HostRole.MEMBER)
        self.ok(c.AddHost(name=name, memory_mib=memory_mib, vcpus=vcpus, **kw))
        if ready:
            self.ok(c.HostReady(name=name))
        return self.host(name)

    def add_hosts(self, *names: str, **kw: Any) -> None:
        for name in names:
            self.add_host(name, **kw)

    def announce_all(self) -> None:
        """Every host announces what this build understands, so the version gate
        (core/versions.py) admits every command and version this build writes."""
        for name in sorted(self.state.hosts):
            announcement = versions.announcement(self.state, name)
            if announcement is not None:
                self.ok(announcement)

    def suspect(self, host: str) -> list[Event]:
        return self.ok(c.MarkHostSuspect(name=host, evidence="lease overdue"))

    def request_fence(self, host: str, **kw: Any) -> list[Event]:
        return self.run(
            c.RequestFence(host=host, reason="lease expired", evidence="no renewal"), **kw
        )

    def fence(self, host: str) -> int:
        """Suspect then RequestFence; returns the token (must be granted)."""
        if self.host_state(host) is HostState.ONLINE:
            self.suspect(host)
        events = self.request_fence(host)
        assert any(e.kind == "fence-requested" for e in events), events
        return self.host(host).fence_token

    def confirm(
        self, host: str, token: int | None = None, result: FenceResult = FenceResult.OFF, **kw: Any
    ) -> list[Event]:
        token = self.host(host).fence_token if token is None else token
        return self.run(
            c.ConfirmFence(
                host=host, token=token, result=result, evidence="power read back off", method="ipmi"
            ),
            **kw,
        )

    def fail_fence(
        self, host: str, result: FenceResult = FenceResult.TIMEOUT, token: int | None = None
    ) -> list[Event]:
        token = self.host(host).fence_token if token is None else token
        return self.run(
            c.FenceFailed(
                host=host, token=token, result=result, evidence="no answer", method="ipmi"
            )
        )

    # ------------------------------------------------------------ VMs

    def add_vm(
        self,
        name: str,
        memory_mib: int = 1_024,
        vcpus: int = 1,
        *,
        start: bool = True,
        xml: str = "<domain/>",
        **kw: Any,
    ) -> Vm:
        """Define a VM; when it was placed and start is set, report it started."""
        self.ok(c.AddVm(name=name, xml=xml, memory_mib=memory_mib, vcpus=vcpus, **kw))
        if start and self.vm_state(name) is VmState.STARTING:
            self.report(name, "started")
        return self.vm(name)

    def report(
        self, vm: str, observed: str, *, host: str | None = None, detail: str = ""
    ) -> list[Event]:
        record = self.vm(vm)
        return self.run(
            c.VmReport(
                name=vm,
                host=record.host if host is None else host,
                placement=record.placement,
                observed=observed,
                detail=detail,
            )
        )


# ---------------------------------------------------------------- helpers


def kinds(events: Iterable[Event]) -> list[str]:
    return [e.kind for e in events]


def only(events: Iterable[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


def content_digest(state: ClusterState) -> str:
    """Digest of the state with applied_index zeroed (what a no-op must not change)."""
    return state_digest(dataclasses.replace(state, applied_index=0))


def indexes(
    state: ClusterState,
) -> tuple[dict[str, set[str]], dict[str, tuple[Any, ...]], set[str]]:
    """The derived indexes in comparable form; empty entries are dropped."""
    by_host = {h: set(names) for h, names in state.vms_by_host.items() if names}
    usage = {
        h: (u.memory_mib, u.vcpus, u.count, tuple(sorted(u.groups.items())))
        for h, u in state.usage.items()
        if u.count or u.memory_mib or u.vcpus or u.groups
    }
    return by_host, usage, set(state.pending)


def rebuilt_indexes(
    state: ClusterState,
) -> tuple[dict[str, set[str]], dict[str, tuple[Any, ...]], set[str]]:
    return indexes(dataclasses.replace(state))  # __post_init__ rebuilds from the records
