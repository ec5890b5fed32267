"""Randomized fault schedules: safety after every step, liveness after healing.

At least 500 schedules per run, from a fixed base seed so that CI is repeatable.
HACLUSTER_SOAK=1 runs 20,000 from a random base (more ground covered, with no time
limit); the base is printed on failure and HACLUSTER_CHAOS_SEED=<seed> replays from any
seed; HACLUSTER_CHAOS_COUNT=<n> sets how many schedules run.
"""

from __future__ import annotations

import os
import random

import pytest

from hacluster.fsm import commands as c
from hacluster.fsm.model import HostRole
from hacluster.sim.chaos import run_schedule, stuck_vms
from hacluster.sim.world import Simulation

SOAK = bool(os.environ.get("HACLUSTER_SOAK"))
SCHEDULES = int(os.environ.get("HACLUSTER_CHAOS_COUNT", 20_000 if SOAK else 500))
BASE = int(os.environ.get("HACLUSTER_CHAOS_SEED",
                          random.SystemRandom().randrange(10**9) if SOAK else 1_000))


@pytest.mark.timeout(0 if SOAK else 300)  # 0: a soak runs as long as it takes
def test_random_fault_schedules_keep_every_invariant() -> None:
    failures = []
    for seed in range(BASE, BASE + SCHEDULES):
        result = run_schedule(seed)
        if not result.ok:
            failures.append(result)
            if len(failures) >= 3:
                break
    report = "\n\n".join(
        f"seed {r.seed}: violations={r.violations[:3]} stuck={r.stuck[:3]}\n  "
        + "\n  ".join(r.actions) for r in failures)
    assert not failures, f"base seed {BASE} (replay: HACLUSTER_CHAOS_SEED=<seed>)\n{report}"


def _three_hosts() -> Simulation:
    sim = Simulation(step_s=0.05)
    for name in ("h1", "h2", "h3"):
        sim.add_host(name, 8192, 8, HostRole.VOTER)
    sim.run_until(0.5)
    for name in ("h1", "h2", "h3"):
        sim.admin(c.AddHost(name=name, memory_mib=8192, vcpus=8))
    sim.run_until(1.0)
    for i in range(3):
        sim.admin(c.AddVm(name=f"vm{i}", xml="<domain/>", memory_mib=1024, vcpus=1))
    sim.run_until(2.0)
    return sim


def test_observer_catches_a_lying_operator() -> None:
    """The checker can fail: confirming a host that still runs its VMs makes two copies."""
    sim = _three_hosts()
    victim = sim.hosts[sim.leader or "h1"].state.vms["vm2"].host
    sim.net.isolate(victim)
    sim.run_until(4.0)  # suspect, not yet fenced
    sim.admin(c.AdminConfirmFence(host=victim, who="careless", reason="assumed dead"))
    sim.run_until(6.0)
    assert any("runs on 2 powered hosts" in v for v in sim.observer.violations)


def test_observer_catches_a_start_before_the_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker can fail: releasing VMs of a dead host without a fence is reported."""
    sim = _three_hosts()
    victim = sim.hosts[sim.leader or "h1"].state.vms["vm2"].host
    sim.power_off(victim, "test")
    sim.run_until(3.5)
    sim.admin(c.AdminConfirmFence(host=victim, who="op", reason="confirmed"))
    sim.observer.unconfirmed_loss["vm2"] = (victim, 2.0)  # forget the confirm
    sim.run_until(6.0)
    assert any("before the fence of" in v for v in sim.observer.violations)


def test_liveness_check_reports_a_vm_that_does_not_run() -> None:
    sim = _three_hosts()
    assert stuck_vms(sim) == []
    for host in sim.hosts.values():
        host.hyper.domains.pop("vm1", None)
    assert any(s.startswith("vm1:") for s in stuck_vms(sim))
