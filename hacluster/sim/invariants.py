"""Safety invariants, checked by the simulator after every step from what
really happened (fake hypervisors, power), not from the cluster's own view."""

from __future__ import annotations

from dataclasses import dataclass, field

from hacluster.fsm.model import ClusterState, FenceResult


@dataclass
class Observer:
    violations: list[str] = field(default_factory=list)
    # vm -> (host, time) where a live copy was lost to a power cut nobody confirmed yet
    unconfirmed_loss: dict[str, tuple[str, float]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)  # log index -> state digest
    checked_fences: int = 0

    def fail(self, now: float, message: str) -> None:
        self.violations.append(f"t={now:.2f}: {message}")

    # ------------------------------------------------------------ events from the world

    def power_lost(self, host: str, live_vms: list[str], now: float) -> None:
        for vm in live_vms:
            self.unconfirmed_loss[vm] = (host, now)

    def fence_confirmed(self, host: str) -> None:
        for vm, (lost_on, _) in list(self.unconfirmed_loss.items()):
            if lost_on == host:
                del self.unconfirmed_loss[vm]

    def host_vouched(self, host: str, vm: str) -> None:
        """The host itself, powered again, reported the VM not running."""
        lost = self.unconfirmed_loss.get(vm)
        if lost is not None and lost[0] == host:
            del self.unconfirmed_loss[vm]

    def vm_started(self, vm: str, host: str, now: float) -> None:
        lost = self.unconfirmed_loss.get(vm)
        if lost is not None and lost[0] != host:
            self.fail(
                now,
                f"{vm} started on {host} before the fence of {lost[0]} was "
                f"confirmed (copy lost there at t={lost[1]:.2f})",
            )
        self.unconfirmed_loss.pop(vm, None)

    # ------------------------------------------------------------ per-step checks

    def check_single_copy(self, running: dict[str, list[str]], now: float) -> None:
        for vm, hosts in sorted(running.items()):
            if len(hosts) > 1:
                self.fail(now, f"{vm} runs on {len(hosts)} powered hosts: {', '.join(hosts)}")

    def check_digest(self, peer: str, index: int, digest: str, now: float) -> None:
        known = self.digests.setdefault(index, digest)
        if known != digest:
            self.fail(
                now, f"peer {peer} state digest {digest} at index {index} differs from {known}"
            )

    def check_fence_cap(self, state: ClusterState, now: float) -> None:
        """At each automatic incident, incidents within the window <= the cap."""
        window = state.settings.fence_window_s
        incidents = [
            r
            for r in state.fences
            if r.attempt == 1
            and r.result is not FenceResult.MANUAL
            and not r.evidence.startswith("retry by")
        ]
        for record in incidents[self.checked_fences :]:
            inside = [
                r
                for r in incidents
                if record.requested_at - window < r.requested_at <= record.requested_at
            ]
            if len(inside) > state.settings.fence_cap:
                self.fail(
                    now,
                    f"{len(inside)} fences within {window:g}s exceed the cap "
                    f"{state.settings.fence_cap}",
                )
        self.checked_fences = len(incidents)
