"""BMC faults of a healthy host: slow, unreachable, frozen (answers nothing
mid-session), rejecting our credentials. Nothing should be fenced for them;
the cluster only reports the BMC as failing its checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacluster.lab.bmc import BmcMode
from hacluster.lab.nemesis.base import Fault

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster

MODES = (BmcMode.SLOW, BmcMode.UNREACHABLE, BmcMode.FROZEN, BmcMode.REJECT_CREDENTIALS)


class BmcFault(Fault):
    kind = "bmc"

    def __init__(self, lab: LabCluster, index: int, host: str, mode: BmcMode) -> None:
        if mode not in MODES:
            raise ValueError(f"not a BMC fault: {mode.value}")
        super().__init__(lab, index, f"{host}'s BMC {mode.value}", [host])
        self.kind = f"bmc-{mode.value}"
        self.record.kind = self.kind
        self.host = host
        self.mode = mode

    def _apply(self) -> None:
        self.lab.nodes[self.host].bmc.set_mode(self.mode, delay_s=4.0)

    def _heal(self) -> None:
        self.lab.nodes[self.host].bmc.set_mode(BmcMode.WORKS)
