"""What every fault has: a kind, a description, `apply()` and `heal()`, and a
record of what it did (the only thing the soak's checker reads of it)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hacluster.lab.cluster import LabCluster


@dataclass
class FaultRecord:
    """One fault as it happened. Times are time.monotonic().

    down: hosts the fault takes down or freezes (power, peer killed or paused,
    its journal swapped): fencing them while it lasts is justified.
    drops: (src, dst, percent) packet drops between hosts while it lasts.
    confirms: (time, host) fences an operator confirmed by hand meanwhile.
    waits: (time, host) when the operator first saw the cluster wait for them
    (a host `fence-failed`): expected without a watchdog, listed in the summary.
    recover_while: the VMs must run again within the recovery bound of the
    fault's start while it still lasts (nobody needs to heal it: chassis death
    with a watchdog)."""

    index: int
    kind: str
    description: str
    hosts: list[str]
    applied_at: float = 0.0
    healed_at: float = 0.0
    down: list[str] = field(default_factory=list)
    drops: list[tuple[str, str, int]] = field(default_factory=list)
    confirms: list[tuple[float, str]] = field(default_factory=list)
    waits: list[tuple[float, str]] = field(default_factory=list)
    recover_while: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FaultRecord:
        raw = dict(raw)
        raw["drops"] = [tuple(d) for d in raw.get("drops", [])]
        raw["confirms"] = [tuple(c) for c in raw.get("confirms", [])]
        raw["waits"] = [tuple(c) for c in raw.get("waits", [])]
        return cls(**raw)


class Fault:
    """Subclasses set `kind`, build `record` in __init__ (description, hosts,
    down, drops) and implement `_apply` and `_heal`."""

    kind = "fault"

    def __init__(self, lab: LabCluster, index: int, description: str, hosts: list[str],
                 **record: Any) -> None:
        self.lab = lab
        self.record = FaultRecord(index, self.kind, description, hosts, **record)

    def apply(self) -> None:
        self.record.applied_at = time.monotonic()
        self._apply()

    def heal(self) -> None:
        try:
            self._heal()
        finally:
            self.record.healed_at = time.monotonic()

    def during(self, elapsed_s: float) -> None:
        """Called about every 0.1 s while the fault lasts (operator actions)."""

    def holds_on(self) -> bool:
        """Whether the fault wants to last beyond its planned hold (the soak
        allows it up to the recovery bound more): a dead chassis stays dead
        until the cluster did without it."""
        return False

    def _apply(self) -> None:
        raise NotImplementedError

    def _heal(self) -> None:
        raise NotImplementedError
