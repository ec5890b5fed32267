"""Randomized fault schedules over the simulated cluster (hacluster/sim/world.py, the
daemon's own decision code per peer over a Raft model that misbehaves): safety after
every step, liveness after healing.

At least 500 schedules per run, from a fixed base seed so that CI is repeatable, spread
over two processes. HACLUSTER_SOAK=1 runs 20,000 from a random base (more ground
covered, with no time limit); the base is printed on failure and
HACLUSTER_CHAOS_SEED=<seed> replays from any seed; HACLUSTER_CHAOS_COUNT=<n> sets how
many schedules run. `hacluster sim chaos --schedules N --seed S` does the same outside
pytest.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from hacluster.fsm import commands as c
from hacluster.fsm.model import HostRole
from hacluster.sim.chaos import run_many, stuck_vms
from hacluster.sim.world import World

SOAK = bool(os.environ.get("HACLUSTER_SOAK"))
SCHEDULES = int(os.environ.get("HACLUSTER_CHAOS_COUNT", 20_000 if SOAK else 500))
BASE = int(os.environ.get("HACLUSTER_CHAOS_SEED",
                          random.SystemRandom().randrange(10**9) if SOAK else 1_000))


@pytest.mark.timeout(0 if SOAK else 600)  # 0: a soak runs as long as it takes
def test_random_fault_schedules_keep_every_invariant() -> None:
    summary = run_many(BASE, SCHEDULES, workers=2, stop_after=3)
    report = "\n\n".join(
        f"seed {r.seed}: violations={r.violations[:3]} stuck={r.stuck[:3]}\n  "
        + "\n  ".join(r.actions) for r in summary.failures)
    assert summary.ran >= min(SCHEDULES, 500) or summary.failures
    assert not summary.failures, (
        f"base seed {BASE} (replay: hacluster sim chaos --seed <seed> --schedules 1)\n{report}")


def three_hosts() -> World:
    world = World(seed=7)
    for name in ("h1", "h2", "h3"):
        world.add_host(name, 8192, 8, HostRole.VOTER)
    world.start()
    world.elect("h1")
    world.run_until(world.now + 1.0)
    for i in range(3):
        world.admin_wait(c.AddVm(name=f"vm{i}", xml="<domain/>", memory_mib=1024, vcpus=1,
                                 allowed_hosts=(f"h{i + 2}",) if i < 2 else ()))
    world.run_until(world.now + 1.5)
    return world


def test_observer_catches_a_lying_operator() -> None:
    """The checker can fail: confirming a host that still runs its VMs makes two copies."""
    world = three_hosts()
    truth = world.truth()
    assert truth is not None
    victim = truth.vms["vm2"].host
    world.net.isolate(victim)
    world.run_until(world.now + 2.0)  # suspect, not yet fenced
    world.admin(c.AdminConfirmFence(host=victim, who="careless", reason="assumed dead"))
    world.run_until(world.now + 3.0)
    assert any("runs on 2 powered hosts" in v for v in world.observer.violations)


def test_observer_catches_a_start_before_the_fence() -> None:
    """The checker can fail: releasing VMs of a dead host without a fence is reported."""
    world = three_hosts()
    truth = world.truth()
    assert truth is not None
    victim = truth.vms["vm2"].host
    # No power reads: otherwise the leader reads the power off and fences within 2 s.
    assert world.admin_wait(c.SetSettings(probe_after_s=0.0))
    world.power_off(victim, "test")
    world.run_until(world.now + 2.0)  # suspect, not yet fenced
    assert world.admin_wait(c.AdminConfirmFence(host=victim, who="op", reason="confirmed"))
    world.observer.unconfirmed_loss["vm2"] = (victim, world.now)  # forget the confirm
    world.run_until(world.now + 3.0)
    assert any("before the fence of" in v for v in world.observer.violations)


def test_observer_catches_a_false_fence() -> None:
    """The checker can fail: an operator's confirm is not a fence, but a fence asked by
    a retry against a healthy host... is deliberate; a lease fence of a healthy host is
    not. A BMC command aimed at a healthy host by hand is reported."""
    world = three_hosts()
    world.run_until(world.now + 5.0)
    world._fence_power_off("h3", "test", term=99, lease_s=3.0, healthy_since=0.0)
    assert world.observer.false_fences and "false fence: h3" in world.observer.false_fences[0]


def test_observer_catches_a_stale_leader_acting() -> None:
    world = three_hosts()
    world.observer.fence_commanded("h1", term=0, now=world.now)
    assert any("after a leader of term" in v for v in world.observer.violations)


def test_liveness_check_reports_a_vm_that_does_not_run() -> None:
    world = three_hosts()
    assert stuck_vms(world) == []
    for host in world.hosts.values():
        host.hyper.domains.pop("vm1", None)
    assert any(s.startswith("vm1:") for s in stuck_vms(world))


def test_cli_runs_schedules_and_reports_json(capsys: pytest.CaptureFixture[str]) -> None:
    from hacluster.cli.main import main

    assert main(["sim", "chaos", "--schedules", "3", "--seed", "42", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["schedules"] == 3 and doc["failed"] == 0 and doc["seed"] == 42


def test_cli_names_a_failed_seed_and_exits_1(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hacluster.cli.main import main
    from hacluster.sim import chaos

    def failing(seed: int) -> chaos.ChaosResult:
        return chaos.ChaosResult(seed, ["t=1.00: vm0 runs on 2 powered hosts"], ["t=0.5 x"])

    monkeypatch.setattr(chaos, "run_schedule", failing)
    assert main(["sim", "chaos", "--schedules", "2", "--seed", "9"]) == 1
    err = capsys.readouterr().err
    assert "seed 9: FAILED" in err and "runs on 2 powered hosts" in err
