"""What the lab's witnesses outside the product say about a power loss and the
recovery after it: the BMC simulators' power logs and power reads, and the
observer's view of every libvirtd. Nothing here asks the cluster. Used by
bench/failover.py and bench/scale.py.

The phases of one recovery, each from a witness:

    power loss    the BMC's power-off entry with the lab's cause (when it began:
                  the host's processes are frozen first, then killed)
    first read    the first `get power` the victim's BMC answered "off" after the
                  loss: the leader's probe or fence looking (the product's detection,
                  as the BMC sees it; nothing outside the product sees it sooner). A
                  read answered "on" while the power-off ran is left out: it was asked
                  before (the victim checking its own BMC, say)
    fence read    the last read answering "off" before the first of the victim's
                  VMs ran elsewhere (a fence of a host already off changes no power:
                  this read is the fence as the BMC witnesses it)
    VM starts     the observer's first sighting of each VM running on another host

A phase whose witness saw nothing is None and named in `missing`: never 0 s.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hacluster.lab.bmc import BmcSim, PowerEvent, PowerRead
from hacluster.lab.observer import Observer


@dataclass(frozen=True)
class Recovery:
    victim: str
    vms: tuple[str, ...]  # the victim's VMs when its power was cut
    power_loss: float | None
    first_read: float | None
    fence_read: float | None
    starts: dict[str, float | None] = field(default_factory=dict)  # vm -> first seen elsewhere

    @property
    def missing(self) -> list[str]:
        """The witnesses that saw nothing (each one a phase left out, never 0 s)."""
        out = [] if self.power_loss is not None else ["power-loss"]
        out += [] if self.first_read is not None else ["bmc-read"]
        out += [] if self.fence_read is not None else ["bmc-read-off"]
        return out + [f"vm-start:{vm}" for vm, at in sorted(self.starts.items()) if at is None]

    @property
    def last_start(self) -> float | None:
        seen = [at for at in self.starts.values() if at is not None]
        return max(seen) if seen and len(seen) == len(self.starts) else None

    @property
    def first_start(self) -> float | None:
        return min((at for at in self.starts.values() if at is not None), default=None)

    def phases(self) -> dict[str, float | None]:
        """Seconds: total (loss to the last VM running elsewhere), first_vm, detection
        (loss to the first read), fence (first read to the fence read), restart (fence
        read to the last VM running)."""
        return {
            "total_s": _between(self.power_loss, self.last_start),
            "first_vm_s": _between(self.power_loss, self.first_start),
            "detection_s": _between(self.power_loss, self.first_read),
            "fence_s": _between(self.first_read, self.fence_read),
            "restart_s": _between(self.fence_read, self.last_start),
        }


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def power_loss(events: Iterable[PowerEvent], cause: str, after: float) -> float | None:
    """When the power-off with `cause` logged at or after `after` began."""
    return next((e.began for e in events
                 if e.event == "power-off" and e.cause == cause and e.mono >= after), None)


def reads_after_loss(reads: Sequence[PowerRead], loss: float,
                     until: float | None) -> tuple[float | None, float | None]:
    """(first read answering off after the loss, last read answering off before
    `until`)."""
    off = [r.mono for r in reads if r.mono >= loss and not r.on]
    first = off[0] if off else None
    last = [at for at in off if until is None or at <= until]
    return first, (last[-1] if last else None)


def recovery(bmc: BmcSim, observer: Observer, victim: str, vms: Iterable[str], cause: str,
             after: float) -> Recovery:
    """The witnesses' account of the victim's power cut (logged with `cause`, at or
    after `after`) and of its VMs starting elsewhere."""
    loss = power_loss(bmc.events(), cause, after)
    since = after if loss is None else loss
    starts = {vm: observer.first_start(vm, since, not_on=victim) for vm in sorted(vms)}
    seen = [at for at in starts.values() if at is not None]
    first_read, fence_read = (None, None) if loss is None else reads_after_loss(
        bmc.reads(), loss, min(seen) if seen else None)
    return Recovery(victim, tuple(sorted(vms)), loss, first_read, fence_read, starts)


@dataclass(frozen=True)
class IpmiPowerOff:
    host: str
    at: float
    detail: str


def ipmi_power_offs(bmcs: dict[str, BmcSim], after: float) -> list[IpmiPowerOff]:
    """Every power-off an IPMI client made (a fence) at or after `after`: on a host
    that was not cut, a false fence. A fence of a host already off is not here (it
    changed nothing)."""
    return sorted((IpmiPowerOff(host, e.mono, e.detail) for host, bmc in bmcs.items()
                   for e in bmc.events()
                   if e.event == "power-off" and e.cause.startswith("ipmi") and e.mono >= after),
                  key=lambda p: p.at)
