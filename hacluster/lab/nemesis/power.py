"""Power faults: a host loses power (its BMC still answers and reads off), or
its whole chassis dies (the BMC goes dark with it, so nobody can read the
power: only an operator's confirmation releases its VMs)."""

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
    """Host and BMC dark together. After `confirm_after_s` the operator, who
    knows the chassis is dead, confirms the fence by hand (hactl fence confirm)."""

    kind = "chassis-death"

    def __init__(self, lab: LabCluster, index: int, host: str, confirm_after_s: float) -> None:
        super().__init__(lab, index, f"{host}'s chassis dies (host off, BMC unreachable); "
                         f"an operator confirms after {confirm_after_s:.0f}s", [host],
                         down=[host])
        self.host = host
        self.confirm_after_s = confirm_after_s
        self._confirmed = False
        self._next_try_s = confirm_after_s

    def _apply(self) -> None:
        bmc = self.lab.nodes[self.host].bmc
        bmc.set_mode(BmcMode.UNREACHABLE)
        self.lab.power_off(self.host, "nemesis: chassis death")

    def during(self, elapsed_s: float) -> None:
        """Confirm once the cluster waits for it (refused before: tried every 2 s)."""
        if self._confirmed or elapsed_s < self._next_try_s:
            return
        self._next_try_s = elapsed_s + 2.0
        at = confirm_by_operator(self.lab, self.host, "soak: chassis dead, power cords out")
        if at is not None:
            self._confirmed = True
            self.record.confirms.append((at, self.host))

    def _heal(self) -> None:
        self.lab.nodes[self.host].bmc.set_mode(BmcMode.WORKS)
        self.lab.power_on(self.host)


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
