"""Safety invariants, judged by the simulator in simulated real time from what really
happened (fake hypervisors, power, the network, the order entries committed in), never
from one peer's view of the cluster."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hacluster.fsm.model import ClusterState, Desired, FenceResult


@dataclass
class Observer:
    violations: list[str] = field(default_factory=list)
    # vm -> (host, time) where a live copy was lost to a power cut nobody confirmed yet
    unconfirmed_loss: dict[str, tuple[str, float]] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)  # log index -> state digest
    committed: dict[int, bytes] = field(default_factory=dict)  # log index -> entry
    incidents: list[float] = field(default_factory=list)  # real times of automatic fences
    highest_committed_term: int = 0  # of any entry any peer applied
    last_unhealthy: dict[str, float] = field(default_factory=dict)
    false_fences: list[str] = field(default_factory=list)
    fence_power_offs: int = 0
    limits_changed: dict[str, int] = field(default_factory=dict)  # vm -> log index
    watchdog_resets: list[str] = field(default_factory=list)

    def fail(self, now: float, message: str) -> None:
        self.violations.append(f"t={now:.2f}: {message}")

    # ------------------------------------------------------------ the log

    def entry_applied(self, index: int, data: bytes, term: int, now: float) -> bool:
        """A peer applied a committed entry; True the first time this index is seen.
        Nothing committed is ever lost or changed: every peer applies the same bytes."""
        self.highest_committed_term = max(self.highest_committed_term, term)
        known = self.committed.get(index)
        if known is None:
            self.committed[index] = data
            return True
        if known != data:
            self.fail(now, f"log index {index} was applied with two different entries")
        return False

    def check_digest(self, peer: str, index: int, digest: str, now: float) -> None:
        known = self.digests.setdefault(index, digest)
        if known != digest:
            self.fail(now, f"peer {peer} state digest {digest} at index {index} differs "
                      f"from {known}")

    def fresh_read(self, peer: str, applied: int, committed_before: int, now: float) -> None:
        """An agent acts on state its read barrier called fresh: it must hold everything
        committed before it asked (a deposed leader must not have answered)."""
        if applied < committed_before:
            self.fail(now, f"stale read: {peer} acted on state at index {applied}, but index "
                      f"{committed_before} had committed before it asked")

    # ------------------------------------------------------------ fencing

    def fence_incident(self, now: float, cap: int, window_s: float) -> None:
        """An automatic fence incident committed (first seen now, real time): never more
        than `cap` in any real window of `window_s`."""
        self.incidents.append(now)
        inside = [t for t in self.incidents if now - window_s + 1e-6 < t <= now]
        if len(inside) > cap:
            self.fail(now, f"{len(inside)} automatic fence incidents within {window_s:g}s of "
                      f"real time exceed the cap {cap}")

    def fence_commanded(self, by: str, term: int, now: float) -> None:
        """A leader sends a fence command: only the leader of the moment may (no later
        term committed anything yet)."""
        if term < self.highest_committed_term:
            self.fail(now, f"{by} fenced in term {term} after a leader of term "
                      f"{self.highest_committed_term} committed")

    def fence_power_off(self, host: str, by: str, term: int, now: float,
                        healthy_since: float | None, lease_s: float) -> None:
        """A fence powers a running host off. It was not commanded against a host that
        had been healthy (peer running, reachable from a majority) for a whole lease
        (`healthy_since`, when commanded; None: it was not)."""
        self.fence_power_offs += 1
        if healthy_since is not None and now - healthy_since > lease_s + 1.0:
            text = (f"false fence: {host} powered off by {by} although healthy and "
                    f"reachable from a majority since t={healthy_since:.1f}")
            self.false_fences.append(f"t={now:.2f}: {text}")
            self.fail(now, text)

    def fence_not_superseded(self, host: str, token: int, truth: ClusterState | None,
                             now: float) -> None:
        """A fence attempt's power-off lands after the cluster counted that host reset
        by its watchdog under a later token: the attempt outlived the decision, and a
        host repaired meanwhile is powered off again."""
        record = truth.hosts.get(host) if truth is not None else None
        current = truth.fence_record(record.fence_token) if truth and record else None
        if token and current is not None and current.token != token and \
                current.result is FenceResult.SELF_FENCED and current.token > token:
            self.fail(now, f"{host} powered off by fence attempt {token} after the cluster "
                      f"counted it reset by its watchdog (token {current.token})")

    def watchdog_reset(self, host: str, now: float, healthy: bool) -> None:
        """A watchdog reset its host: expected of a host cut off from its leader; of a
        healthy one it costs availability, never safety (listed, not a violation)."""
        self.watchdog_resets.append(f"t={now:.2f}: {host}" + (" (healthy)" if healthy else ""))

    def watchdog_confirmed(self, host: str, powered: bool, live_vms: list[str],
                           now: float) -> None:
        """A host whose fence failed was counted fenced by its watchdog: by then it must
        have reset, or at least destroyed its VMs (its self-fence)."""
        if powered and live_vms:
            self.fail(now, f"{host} counted reset by its watchdog while it still runs "
                      f"{', '.join(live_vms)}")

    # ------------------------------------------------------------ VMs

    def power_lost(self, host: str, live_vms: Iterable[str], now: float) -> None:
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
        """A copy of vm came up on host: never while a lost copy awaits its fence."""
        lost = self.unconfirmed_loss.get(vm)
        if lost is not None and lost[0] != host:
            self.fail(now, f"{vm} started on {host} before the fence of {lost[0]} was "
                      f"confirmed (copy lost there at t={lost[1]:.2f})")
        self.unconfirmed_loss.pop(vm, None)

    def start_decided(self, vm: str, host: str, now: float, truth: ClusterState | None,
                      neighbours: Iterable[str] = ()) -> None:
        """An agent decides to start vm on host, beside the live `neighbours`. `truth`:
        the most advanced committed state: the start must respect its desired state,
        host limits and anti-affinity (judged when decided: the operator may change
        them while the start runs)."""
        record = truth.vms.get(vm) if truth is not None else None
        if record is None:
            return
        if record.desired is not Desired.STARTED:
            self.fail(now, f"{vm} started on {host} although desired {record.desired.value}")
        # Limits constrain placements: a VM placed before they changed may still run
        # (or resume) there until it is placed anew.
        placed_after = record.placement > self.limits_changed.get(vm, 0)
        if record.allowed_hosts and host not in record.allowed_hosts and placed_after:
            self.fail(now, f"{vm} started on {host}, outside its hosts "
                      f"{', '.join(record.allowed_hosts)}")
        group = record.anti_affinity
        for other in sorted(neighbours) if group else ():
            peer = truth.vms.get(other) if truth is not None else None
            if other != vm and peer is not None and peer.anti_affinity == group:
                self.fail(now, f"{vm} started on {host} beside {other}, both of "
                          f"anti-affinity group {group}")

    def start_in_order(self, vm: str, host: str, now: float, truth: ClusterState | None,
                       live: set[str]) -> None:
        """An agent starts vm: every VM it starts after (mandatory start order) must
        really run somewhere (a live copy on a powered host), not merely be placed."""
        record = truth.vms.get(vm) if truth is not None else None
        if truth is None or record is None or not record.start_after:
            return
        down = sorted(d for d in record.start_after if d in truth.vms and d not in live)
        if down:
            self.fail(now, f"{vm} started on {host} before {', '.join(down)} ran "
                      "(start order)")

    def check_single_copy(self, running: dict[str, list[str]], now: float) -> None:
        """running: vm -> powered hosts with a live copy."""
        for vm, hosts in sorted(running.items()):
            if len(hosts) > 1:
                self.fail(now, f"{vm} runs on {len(hosts)} powered hosts: {', '.join(hosts)}")
