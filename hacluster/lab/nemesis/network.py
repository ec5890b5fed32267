"""Network faults between hosts, all made of directed drops
(hacluster.lab.linkfaults): isolation, splits, one-way cuts, loss. The BMC
network stays up (it is the management network)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacluster.lab.linkfaults import Drop, isolate, lossy, split
from hacluster.lab.nemesis.base import Fault

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


class LinkFault(Fault):
    def __init__(self, lab: LabCluster, index: int, description: str, hosts: list[str],
                 drops: list[Drop]) -> None:
        super().__init__(lab, index, description, hosts,
                         drops=[(d.src, d.dst, d.percent) for d in drops])
        self.drops = drops
        self._id = ""

    def _apply(self) -> None:
        self._id = self.lab.isolation.links.install(self.drops)

    def _heal(self) -> None:
        if self._id:
            self.lab.isolation.links.remove(self._id)


class Isolate(LinkFault):
    kind = "isolate"

    def __init__(self, lab: LabCluster, index: int, host: str, role: str = "") -> None:
        label = f"the leader ({host})" if role == "leader" else host
        super().__init__(lab, index, f"{label} cut off from every other host", [host],
                         isolate(host, list(lab.nodes)))


class Split(LinkFault):
    kind = "split"

    def __init__(self, lab: LabCluster, index: int, minority: list[str]) -> None:
        rest = [h for h in lab.nodes if h not in minority]
        super().__init__(lab, index, f"split {'+'.join(minority)} | {'+'.join(rest)}",
                         minority + rest, split(minority, rest))


class OneWay(LinkFault):
    kind = "one-way"

    def __init__(self, lab: LabCluster, index: int, src: str, dst: str, role: str = "") -> None:
        super().__init__(lab, index, f"one-way cut: {src} -> {dst} dropped, {dst} -> {src} "
                         f"passes{f' ({role})' if role else ''}", [src, dst], [Drop(src, dst)])


class Loss(LinkFault):
    kind = "loss"

    def __init__(self, lab: LabCluster, index: int, hosts: list[str], percent: int) -> None:
        super().__init__(lab, index, f"{percent}% packet loss each way between "
                         f"{', '.join(hosts)}", hosts, lossy(hosts, percent))
