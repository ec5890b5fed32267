"""A random fault schedule from a seed. Every random choice (kind, hosts,
durations, rates) is drawn here, up front, so a seed always yields the same
schedule; only "the leader" is resolved when the fault starts."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hacluster.lab.bmc import BmcMode
from hacluster.lab.nemesis.base import Fault
from hacluster.lab.nemesis.bmcfaults import MODES, BmcFault
from hacluster.lab.nemesis.disk import OldJournal, SmallDisk
from hacluster.lab.nemesis.network import Isolate, Loss, OneWay, Split
from hacluster.lab.nemesis.power import ChassisDeath, PowerLoss
from hacluster.lab.nemesis.process import (
    KillPeer,
    PauseLibvirtd,
    PausePeer,
    RestartLibvirtd,
    StarveCpu,
)

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


@dataclass(frozen=True)
class Plan:
    """One fault to come. picks: distinct host positions (in sorted order),
    as many as the kind may need; value: its rate or second duration."""

    kind: str
    hold_s: float
    picks: tuple[int, ...]
    value: float = 0.0
    variant: str = ""

    def describe(self) -> str:
        extra = f" {self.variant}" if self.variant else ""
        return f"{self.kind}{extra} hold {self.hold_s:.1f}s"


# how often each kind comes (relative weights)
WEIGHTS: dict[str, int] = {
    "power-loss": 3, "chassis-death": 1, "kill-peer": 2, "kill-leader": 1,
    "pause-peer": 2, "pause-leader": 2, "pause-libvirtd": 1, "restart-libvirtd": 1,
    "isolate": 2, "isolate-leader": 2, "split": 2, "one-way": 2, "one-way-leader": 2,
    "loss": 2, "bmc": 2, "disk-full": 1, "disk-readonly": 1, "old-journal": 1,
    "starve-cpu": 1,
}
KINDS = tuple(WEIGHTS)


def plan_one(rng: random.Random, kind: str, hosts: int, lease_s: float,
             loss: tuple[int, int]) -> Plan:
    picks = tuple(rng.sample(range(hosts), hosts))
    if kind in ("pause-peer", "pause-leader", "pause-libvirtd"):
        longer = rng.random() < 0.5
        factor = rng.uniform(1.5, 4.0) if longer else rng.uniform(0.2, 0.7)
        hold = min(15.0, lease_s * factor + (rng.uniform(1, 4) if longer else 0.0))
        return Plan(kind, round(hold, 2), picks, variant="long" if longer else "short")
    if kind == "loss":
        return Plan(kind, round(rng.uniform(15, 45), 1), picks, rng.randint(*loss),
                    variant=str(rng.randint(2, hosts)))
    if kind == "bmc":
        return Plan(kind, round(rng.uniform(5, 20), 1), picks, variant=rng.choice(MODES).value)
    if kind == "one-way-leader":
        return Plan(kind, round(rng.uniform(3, 15), 1), picks,
                    variant=rng.choice(["from-leader", "to-leader"]))
    if kind == "chassis-death":
        return Plan(kind, round(rng.uniform(20, 35), 1), picks, round(rng.uniform(3, 8), 1))
    if kind == "starve-cpu":
        return Plan(kind, round(rng.uniform(5, 15), 1), picks, rng.randint(10, 40))
    ranges = {"power-loss": (4, 15), "kill-peer": (1, 10), "kill-leader": (1, 10),
              "restart-libvirtd": (0.5, 3), "old-journal": (8, 20),
              "disk-full": (5, 15), "disk-readonly": (5, 15)}
    low, high = ranges.get(kind, (3, 15))
    return Plan(kind, round(rng.uniform(low, high), 1), picks)


def schedule(seed: int, hosts: int, lease_s: float, count: int,
             kinds: tuple[str, ...] = KINDS, loss: tuple[int, int] = (10, 50),
             hold_s: float = 0.0, loss_hosts: int = 0) -> list[Plan]:
    """hold_s > 0: every fault lasts exactly that long; loss_hosts > 0: every
    loss fault spans that many hosts. Both replace a drawn value after the
    draw, so the rest of the schedule stays that of the seed."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind {unknown[0]!r} (known: {', '.join(KINDS)})")
    if hosts < 3:
        raise ValueError("a soak needs at least 3 hosts")
    if not 0 <= loss_hosts <= hosts or loss_hosts == 1:
        raise ValueError(f"loss between {loss_hosts} hosts: 2-{hosts}, or 0 for random")
    rng = random.Random(seed)
    weights = [WEIGHTS[k] for k in kinds]
    plans = [plan_one(rng, rng.choices(kinds, weights)[0], hosts, lease_s, loss)
             for _ in range(count)]
    if hold_s > 0:
        plans = [dataclasses.replace(p, hold_s=hold_s) for p in plans]
    if loss_hosts:
        plans = [dataclasses.replace(p, variant=str(loss_hosts)) if p.kind == "loss" else p
                 for p in plans]
    return plans


def build(plan: Plan, lab: LabCluster, index: int, leader: str, lease_s: float,
          loaded: frozenset[str] = frozenset(), watchdog: bool = False) -> Fault:
    """The fault of `plan` on this lab (`leader`: the leader's host now; `loaded`:
    the hosts that run VMs now; `watchdog`: every host has one)."""
    names = sorted(lab.nodes)
    chosen = [names[i] for i in plan.picks]
    host = next((h for h in chosen if h in loaded), chosen[0])
    others = [h for h in chosen if h != leader]
    builders: dict[str, Callable[[], Fault]] = {
        "power-loss": lambda: PowerLoss(lab, index, host),
        "chassis-death": lambda: ChassisDeath(lab, index, host, plan.value, watchdog),
        "kill-peer": lambda: KillPeer(lab, index, host),
        "kill-leader": lambda: KillPeer(lab, index, leader, "the leader"),
        "pause-peer": lambda: PausePeer(lab, index, host, plan.hold_s, lease_s),
        "pause-leader": lambda: PausePeer(lab, index, leader, plan.hold_s, lease_s,
                                          "the leader"),
        "pause-libvirtd": lambda: PauseLibvirtd(lab, index, host, plan.hold_s, lease_s),
        "restart-libvirtd": lambda: RestartLibvirtd(lab, index, host),
        "isolate": lambda: Isolate(lab, index, host),
        "isolate-leader": lambda: Isolate(lab, index, leader, "leader"),
        "split": lambda: Split(lab, index, sorted(chosen[:(len(names) - 1) // 2])),
        "one-way": lambda: OneWay(lab, index, chosen[0], chosen[1]),
        "one-way-leader": lambda: (
            OneWay(lab, index, leader, others[0], "from the leader")
            if plan.variant == "from-leader"
            else OneWay(lab, index, others[0], leader, "to the leader")),
        "loss": lambda: Loss(lab, index, sorted(chosen[:int(plan.variant)]), int(plan.value)),
        "bmc": lambda: BmcFault(lab, index, host, BmcMode(plan.variant)),
        "disk-full": lambda: SmallDisk(lab, index, host),
        "disk-readonly": lambda: SmallDisk(lab, index, host, readonly=True),
        "old-journal": lambda: OldJournal(lab, index, host),
        "starve-cpu": lambda: StarveCpu(lab, index, host, int(plan.value)),
    }
    return builders[plan.kind]()
