"""What the soak's judge reads (hacluster.lab.soakcheck) and what it says: the
witnesses' records (observer sightings, BMC power log entries, which peer
processes lived, the peers' views at the end), and violations, recoveries,
verdicts. All times are time.monotonic() of the machine that ran the lab."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hacluster.lab.nemesis.base import FaultRecord


@dataclass(frozen=True)
class Seen:
    """An observer sighting: `vm` started (running) or stopped running on `host`,
    noticed by the look that began at `at` and ended at `by`; the previous look
    at that host began at `after`."""

    at: float
    host: str
    vm: str
    running: bool
    after: float
    by: float

    def line(self) -> str:
        return (f"observer {self.at:.3f}: {self.vm} {'running' if self.running else 'gone'} "
                f"on {self.host} (between {self.after:.3f} and {self.by:.3f})")


@dataclass(frozen=True)
class Power:
    """A BMC power log entry: the change began at `began`, was done at `at`."""

    at: float
    began: float
    host: str
    on: bool
    cause: str
    detail: str = "command exit 0"  # what the power hook (the simulated host) answered

    def line(self) -> str:
        return (f"bmc {self.host} {self.at:.3f}: power-{'on' if self.on else 'off'} "
                f"cause={self.cause} began={self.began:.3f} ({self.detail})")


@dataclass(frozen=True)
class Alive:
    """From `at` on, the host's peer process was alive (or not)."""

    at: float
    host: str
    alive: bool


@dataclass(frozen=True)
class PeerEnd:
    """What one peer says at the end of the run."""

    host: str
    applied_index: int
    digest: str
    vms: tuple[str, ...]
    settings: dict[str, Any]
    fences: tuple[tuple[int, str, str], ...]  # (token, host, result)


@dataclass
class Evidence:
    hosts: list[str]
    voters: list[str]
    vms: list[str]  # HA VMs the soak defined
    sightings: list[Seen]
    power: list[Power]
    faults: list[FaultRecord]
    liveness: list[Alive]
    fence_cap: int
    fence_window_s: float
    fence_grace_s: float  # a fence this long after a justifying fault still counts as justified
    recovery_bound_s: float
    vms_per_host: int  # how many of the VMs one host has room for
    ended_at: float
    final: list[PeerEnd] = field(default_factory=list)
    expected_settings: dict[str, Any] = field(default_factory=dict)
    ledger_seen: list[tuple[float, int, str]] = field(default_factory=list)  # (when, token, host)
    watchdog_timeout_s: float = 0.0  # > 0: every host has a watchdog with this timeout
    feeds: dict[str, list[float]] = field(default_factory=dict)  # host -> feeds it saw


@dataclass(frozen=True)
class Violation:
    rule: str
    at: float
    hosts: tuple[str, ...]
    vms: tuple[str, ...]
    summary: str
    evidence: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "at": round(self.at, 3), "hosts": list(self.hosts),
                "vms": list(self.vms), "summary": self.summary, "evidence": list(self.evidence)}


@dataclass
class Recovery:
    fault: int
    kind: str
    outage_s: float | None  # first VM missing (or the operator's confirm) -> every VM
    #                         running again (None: no outage)
    settle_s: float | None  # heal -> every VM running (None: not within the bound)
    operator_s: float | None = None  # the part of the outage spent waiting for an operator


@dataclass
class Verdict:
    violations: list[Violation]
    recoveries: list[Recovery]
    findings: list[Violation] = field(default_factory=list)  # worth a look, not unsafe

    @property
    def false_fences(self) -> list[Violation]:
        return [v for v in self.violations if v.rule == "false-fence"]


def evidence_from_json(raw: dict[str, Any]) -> Evidence:
    """The evidence a soak saved (evidence.json), to judge it again."""
    raw = dict(raw)
    raw["sightings"] = [Seen(**s) for s in raw["sightings"]]
    raw["power"] = [Power(**p) for p in raw["power"]]
    raw["faults"] = [FaultRecord.from_json(f) for f in raw["faults"]]
    raw["liveness"] = [Alive(**a) for a in raw["liveness"]]
    raw["final"] = [PeerEnd(**{**p, "vms": tuple(p["vms"]),
                               "fences": tuple(tuple(f) for f in p["fences"])})
                    for p in raw.get("final", [])]
    raw["ledger_seen"] = [tuple(x) for x in raw.get("ledger_seen", [])]
    return Evidence(**raw)
