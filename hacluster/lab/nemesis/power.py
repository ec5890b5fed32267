"""Power faults: a host loses power (its BMC still answers and reads off), or
its whole chassis dies (the BMC goes dark with it, so nobody can read the
power: only an operator's confirmation releases its VMs, or its watchdog)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hacluster.lab.bmc import BmcMode
from hacluster.lab.nemesis.base import Fault

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


class PowerLoss(Fault):
    kind = "power-loss"

    def __init__(self, lab: LabCluster, index: int, host: str) -> None:
        super().__init__(lab, index, f"{host} loses power (its BMC answers, reads off)",
                         [host], down=[host])
        self.host = host

    def _apply(self) -> None:
        self.lab.power_off(self.host, "nemesis: power loss")

    def _heal(self) -> None:
        self.lab.power_on(self.host)


class ChassisDeath(Fault):
    """Host and BMC dark together; the chassis stays dark until the cluster did
    without it (or the soak's patience ran out: `holds_on`).

    Without a watchdog nobody can prove the host off: the cluster must wait for an
    operator (the host ends `fence-failed`). The operator, who knows the chassis is
    dead, confirms by hand (hactl fence confirm) once the cluster shows it waits
    (and `confirm_after_s` passed); the wait is recorded and listed, not a fault of
    the cluster. With a watchdog (`watchdog=True`) nobody confirms anything: the
    cluster counts the host reset by its watchdog, and its VMs must run elsewhere
    within the recovery bound of the death, while the chassis is still dark."""

    kind = "chassis-death"

    def __init__(self, lab: LabCluster, index: int, host: str, confirm_after_s: float,
                 watchdog: bool = False) -> None:
        how = ("its watchdog must do without an operator" if watchdog else
               f"an operator confirms once the cluster waits (not before {confirm_after_s:.0f}s)")
        super().__init__(lab, index, f"{host}'s chassis dies (host off, BMC unreachable); "
                         f"{how}", [host], down=[host], recover_while=watchdog)
        self.host = host
        self.confirm_after_s = confirm_after_s
        self.watchdog = watchdog
        self._confirmed = False
        self._next_try_s = confirm_after_s
        self._vms: set[str] = set()

    def _apply(self) -> None:
        if self.lab.observer is not None:
            self._vms = set(self.lab.observer.running().get(self.host, ()))
        bmc = self.lab.nodes[self.host].bmc
        bmc.set_mode(BmcMode.UNREACHABLE)
        self.lab.power_off(self.host, "nemesis: chassis death")

    def during(self, elapsed_s: float) -> None:
        """The operator looks at the cluster every 2 s and confirms once it waits."""
        if self.watchdog or self._confirmed or elapsed_s < self._next_try_s:
            return
        self._next_try_s = elapsed_s + 2.0
        if not self.record.waits:
            if host_state(self.lab, self.host) != "fence-failed":
                return
            self.record.waits.append((time.monotonic(), self.host))
        at = confirm_by_operator(self.lab, self.host, "soak: chassis dead, power cords out")
        if at is not None:
            self._confirmed = True
            self.record.confirms.append((at, self.host))

    def holds_on(self) -> bool:
        if not self.watchdog:
            return not self._confirmed
        if self.lab.observer is None:
            return False
        running = self.lab.observer.running()
        elsewhere = {vm for h, names in running.items() if h != self.host for vm in names}
        return not self._vms <= elsewhere

    def _heal(self) -> None:
        if not self.watchdog and not self._confirmed:
            self.record.notes.append("healed before the operator confirmed")
        self.lab.nodes[self.host].bmc.set_mode(BmcMode.WORKS)
        self.lab.power_on(self.host)


def host_state(lab: LabCluster, host: str) -> str | None:
    """The host's state as `hactl status` shows it (None: nobody answers)."""
    from hacluster.rpc.protocol import RpcError

    try:
        with lab.client(timeout_s=5.0) as rpc:
            hosts = rpc.call("host.list", {})["hosts"]
    except (RpcError, RuntimeError, OSError):
        return None
    return next((h["state"] for h in hosts if h["name"] == host), None)


def confirm_by_operator(lab: LabCluster, host: str, reason: str) -> float | None:
    """`hactl fence confirm HOST`; returns when it was sent, None if refused
    (the host waits for no confirmation, or no quorum)."""
    from hacluster.rpc.protocol import ErrorCode, RpcError

    at = time.monotonic()
    try:
        lab.call("fence.confirm", {"host": host, "reason": reason})
    except RpcError as exc:  # "maybe applied" counts: the checker then allows starts from here
        return at if exc.code is ErrorCode.MAYBE_APPLIED else None
    except (RuntimeError, OSError):
        return None
    return at
