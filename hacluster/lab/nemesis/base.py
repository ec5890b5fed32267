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
    confirms: (time, host) fences an operator confirmed by hand meanwhile."""

    index: int
    kind: str
    description: str
    hosts: list[str]
    applied_at: float = 0.0
    healed_at: float = 0.0
    down: list[str] = field(default_factory=list)
    drops: list[tuple[str, str, int]] = field(default_factory=list)
    confirms: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FaultRecord:
        raw = dict(raw)
        raw["drops"] = [tuple(d) for d in raw.get("drops", [])]
        raw["confirms"] = [tuple(c) for c in raw.get("confirms", [])]
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

    def _apply(self) -> None:
        raise NotImplementedError

    def _heal(self) -> None:
        raise NotImplementedError
