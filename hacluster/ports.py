"""Ports: the small interfaces between the pure core and the adapters.

The pure core never imports an adapter; the daemon wires adapters to these
Protocols, and the simulator wires fakes to the same Protocols.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

# The core owns these names; re-exported for adapters.
from hacluster.core.agent import DomainState as DomainState
from hacluster.fsm.model import FenceAction as FenceAction


class Secret:
    """A string that never shows itself in repr, str, logs or events."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


# ---------------------------------------------------------------- fencing


class FenceOutcome(enum.StrEnum):
    """What one fence attempt achieved. Only OFF and ALREADY_OFF release VMs."""

    OFF = "off"  # commanded off, power read back as off
    ALREADY_OFF = "already-off"  # power read as off before we sent anything
    REBOOTED = "rebooted"  # reboot action: read back off, then powered on
    NOTIFIED = "notified"  # action none/identify: nothing was powered off
    UNREACHABLE = "unreachable"  # no answer from the BMC
    AUTH_REJECTED = "auth-rejected"  # BMC refused the credentials
    COMMAND_REJECTED = "command-rejected"  # BMC refused the power command
    TIMEOUT = "timeout"  # command sent, power never read back as off in time
    ERROR = "error"  # anything else (bad config, agent crashed, ...)

    @property
    def host_is_off(self) -> bool:
        return self in (FenceOutcome.OFF, FenceOutcome.ALREADY_OFF, FenceOutcome.REBOOTED)


@dataclass(frozen=True)
class BmcTarget:
    """Everything a fence backend needs to reach one host's BMC (already resolved
    from cluster defaults and per-host overrides; the password is revealed only
    inside the backend)."""

    host: str
    driver: str = "ipmi"  # ipmi | redfish | agent
    address: str = ""
    port: int = 623
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))
    cipher_suite: int | None = None
    agent: str = ""  # fence agent executable for driver "agent", e.g. fence_ipmilan
    options: tuple[tuple[str, str], ...] = ()  # extra key=value for agents / redfish
    verify_tls: bool = True


@dataclass(frozen=True)
class FenceResult:
    outcome: FenceOutcome
    evidence: str  # one line: what was sent and what was read back
    method: str  # e.g. "ipmi 127.0.0.1:6230"
    duration_s: float = 0.0


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BmcProbe:
    """Result of a health check of a BMC (does it answer, what does it read)."""

    ok: bool
    power: PowerState
    detail: str
    duration_s: float = 0.0


class Fencer(Protocol):
    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        """Run the action; never raise, never exceed deadline_s by more than a little."""
        ...

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe: ...


# ---------------------------------------------------------------- hypervisor


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: DomainState
    memory_mib: int = 0
    vcpus: int = 0


@dataclass(frozen=True)
class HostCapacity:
    memory_mib: int
    vcpus: int


class HypervisorError(Exception):
    """A hypervisor operation failed; the message names the domain and the cause."""


class DiskLockHeld(HypervisorError):
    """A start was refused because a disk of the domain is locked by a live process
    (libvirt's lock manager, or QEMU's own image lock): a copy may run elsewhere, so
    neither a retry here nor a start on another host can succeed or is wanted.
    `why` is the short cause, for the VM's report."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


DomainListener = Callable[[str, DomainState, str], None]  # name, new state, reason


class Hypervisor(Protocol):
    def capacity(self) -> HostCapacity: ...

    def list_domains(self) -> list[DomainInfo]: ...

    def define(self, name: str, xml: str) -> None: ...

    def start(self, name: str) -> None: ...

    def shutdown(self, name: str, timeout_s: float) -> None:
        """Graceful shutdown, then destroy after timeout_s; raises HypervisorError
        only if the domain is still running afterwards."""
        ...

    def destroy(self, name: str) -> None: ...

    def undefine(self, name: str) -> None: ...

    def migrate(self, name: str, dest_uri: str, timeout_s: float) -> None: ...

    def subscribe(self, listener: DomainListener) -> None:
        """Call listener from any thread when a domain changes state."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- replication


class ProposeStatus(enum.StrEnum):
    COMMITTED = "committed"  # applied at the returned index
    NOT_LEADER = "not-leader"  # never entered the log; retry elsewhere
    MAYBE = "maybe"  # timed out or leader changed: may or may not have been applied


@dataclass(frozen=True)
class ProposeResult:
    status: ProposeStatus
    index: int = 0
    term: int = 0
    result: object = None  # whatever the apply callback returned


ApplyCallback = Callable[[bytes, int], object]  # (command bytes, log index) -> result


class ReplicatedLog(Protocol):
    """A Raft log of opaque byte commands, applied in order on every peer."""

    def propose(self, data: bytes, timeout_s: float) -> ProposeResult: ...

    def is_leader(self) -> bool: ...

    def leader(self) -> str | None: ...

    def term(self) -> int: ...

    def applied_index(self) -> int: ...


class Notifier(Protocol):
    """Delivers one notification (daemon/notify.py); raises if it could not (it is
    retried, daemon/delivery.py)."""

    def notify(self, event: dict[str, object]) -> None: ...
