"""The soak's checker on synthetic timelines: it passes a clean failover and
CAN fail, on every rule (two copies, a start before the power-off or before an
operator's confirm, a cap breach, a false fence, a slow recovery, a final
disagreement or a loss)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from hacluster.lab.nemesis.base import FaultRecord
from hacluster.lab.soakcheck import judge, recovery_stats
from hacluster.lab.soakevidence import Alive, Evidence, PeerEnd, Power, Seen

HOSTS = ["h1", "h2", "h3"]


def seen(at: float, host: str, vm: str, running: bool = True) -> Seen:
    return Seen(at, host, vm, running, at - 0.05, at + 0.01)


def off(at: float, host: str, cause: str = "lab") -> Power:
    return Power(at, at - 0.02, host, False, cause)


def on(at: float, host: str) -> Power:
    return Power(at, at - 0.5, host, True, "lab")


def fault(index: int, kind: str, hosts: list[str], applied: float, healed: float,
          **more: Any) -> FaultRecord:
    return FaultRecord(index, kind, f"{kind} of {', '.join(hosts)}", hosts, applied, healed,
                       **more)


def final(**settings: Any) -> list[PeerEnd]:
    return [PeerEnd(h, 42, "abc", ("vm1", "vm2"), dict(settings), ()) for h in HOSTS]


def evidence(sightings: list[Seen], power: list[Power], faults: list[FaultRecord],
             **more: Any) -> Evidence:
    base = Evidence(
        hosts=HOSTS, voters=HOSTS, vms=["vm1", "vm2"],
        sightings=[seen(1, "h1", "vm1"), seen(1, "h2", "vm2"), *sightings], power=power,
        faults=faults, liveness=[Alive(0, h, True) for h in HOSTS], fence_cap=2,
        fence_window_s=60, fence_grace_s=4, recovery_bound_s=30, vms_per_host=10,
        ended_at=100, final=final())
    return dataclasses.replace(base, **more)


def rules(ev: Evidence) -> list[str]:
    return [v.rule for v in judge(ev).violations]


def test_a_clean_failover_passes_and_its_outage_is_measured() -> None:
    ev = evidence([seen(10.05, "h1", "vm1", False), seen(12.0, "h3", "vm1")],
                  [off(10.0, "h1"), on(20.0, "h1")], [fault(1, "power-loss", ["h1"], 10, 20,
                                                            down=["h1"])])
    verdict = judge(ev)
    assert verdict.violations == []
    (rec,) = verdict.recoveries
    assert rec.outage_s == pytest.approx(2.0)  # power-off at 10.0 -> running on h3 at 12.0
    assert rec.settle_s == 0
    assert recovery_stats(verdict.recoveries)["all"]["count"] == 1


def test_two_copies_at_once_is_a_violation() -> None:
    ev = evidence([seen(10.0, "h3", "vm1"), seen(12.0, "h1", "vm1", False)], [], [])
    (violation,) = [v for v in judge(ev).violations if v.rule == "two-copies"]
    assert violation.vms == ("vm1",) and set(violation.hosts) == {"h1", "h3"}
    assert any("h3" in line for line in violation.evidence)


def test_a_start_before_the_power_off_completed_is_a_violation() -> None:
    # vm1 seen gone from h1 at 10.05 (the power-off began 9.98 and ended 10.6), then it
    # started on h3 by 10.31: before the host was certainly off
    slow_off = Power(10.6, 9.98, "h1", False, "ipmi")
    ev = evidence([seen(10.05, "h1", "vm1", False), seen(10.3, "h3", "vm1")], [slow_off],
                  [fault(1, "isolate", ["h1"], 5, 20,
                         drops=[("h1", "h2", 100), ("h1", "h3", 100)])])
    assert "start-before-release" in rules(ev)


def test_a_dead_chassis_needs_an_operator_before_a_start_elsewhere() -> None:
    base = [seen(10.05, "h1", "vm1", False), seen(15.0, "h3", "vm1")]
    chassis = fault(1, "chassis-death", ["h1"], 10, 30, down=["h1"])
    assert "start-before-release" in rules(evidence(base, [off(10.0, "h1")], [chassis]))
    confirmed = dataclasses.replace(chassis, confirms=[(14.0, "h1")])
    assert rules(evidence(base, [off(10.0, "h1")], [confirmed])) == []


def test_with_a_watchdog_a_dead_chassis_releases_its_vms_once_it_surely_reset() -> None:
    # h1 last fed its watchdog (timeout 5 s) at 9.5, its chassis died at 10: nobody could
    # tell that from an isolated host whose watchdog resets it by 14.5
    base = [seen(10.05, "h1", "vm1", False)]
    chassis = fault(1, "chassis-death", ["h1"], 10, 40, down=["h1"], recover_while=True)
    dog = {"watchdog_timeout_s": 5.0, "feeds": {"h1": [8.5, 9.5], "h2": [9.9]}}
    early = evidence([*base, seen(13.0, "h3", "vm1")], [off(10.0, "h1")], [chassis], **dog)
    assert "start-before-release" in rules(early)
    late = evidence([*base, seen(15.0, "h3", "vm1")], [off(10.0, "h1")], [chassis], **dog)
    assert rules(late) == []
    never_fed = dataclasses.replace(late, feeds={})  # never armed: only an operator helps
    assert "start-before-release" in rules(never_fed)


def test_with_a_watchdog_a_dead_chassis_must_recover_while_it_is_still_dark() -> None:
    chassis = fault(1, "chassis-death", ["h1"], 10, 80, down=["h1"], recover_while=True)
    dog = {"watchdog_timeout_s": 5.0, "feeds": {"h1": [9.5]}, "ended_at": 200}
    # back at 50: 40 s after the death, beyond the 30 s bound, though the heal came later
    slow = evidence([seen(10.05, "h1", "vm1", False), seen(50.0, "h3", "vm1")],
                    [off(10.0, "h1")], [chassis], **dog)
    (late,) = [v for v in judge(slow).violations if v.rule == "recovery"]
    assert "began" in late.summary and late.vms == ("vm1",)
    quick = evidence([seen(10.05, "h1", "vm1", False), seen(20.0, "h3", "vm1")],
                     [off(10.0, "h1")], [chassis], **dog)
    assert rules(quick) == []


def test_an_outage_that_waited_for_an_operator_is_timed_from_the_confirm() -> None:
    chassis = fault(1, "chassis-death", ["h1"], 10, 40, down=["h1"],
                    confirms=[(25.0, "h1")], waits=[(24.0, "h1")])
    ev = evidence([seen(10.05, "h1", "vm1", False), seen(26.0, "h3", "vm1")],
                  [off(10.0, "h1")], [chassis])
    verdict = judge(ev)
    assert verdict.violations == []
    (rec,) = verdict.recoveries
    assert rec.operator_s == pytest.approx(15.0) and rec.outage_s == pytest.approx(1.0)


def test_a_restart_in_place_long_after_a_fence_needs_no_confirm() -> None:
    # vm1 moved from h1 (IPMI fence at 10) to h3; h1's BMC froze later (40-50); at 60
    # h3's libvirtd lost its domains and vm1 restarted in place: not a start elsewhere
    frozen = fault(2, "bmc-frozen", ["h1"], 40, 50)
    isolated = fault(1, "isolate", ["h1"], 5, 20, drops=[("h1", "h2", 100), ("h1", "h3", 100)])
    ev = evidence([seen(10.05, "h1", "vm1", False), seen(12.0, "h3", "vm1"),
                   seen(60.0, "h3", "vm1", False), seen(61.0, "h3", "vm1")],
                  [off(10.0, "h1", "ipmi")], [isolated, frozen])
    assert "start-before-release" not in rules(ev)


def test_more_fences_than_the_cap_in_a_window_is_a_violation() -> None:
    fences = [off(10 + i, h, "ipmi") for i, h in enumerate(HOSTS)]
    pauses = [fault(i + 1, "pause-peer", [h], 5 + i, 20, down=[h]) for i, h in enumerate(HOSTS)]
    ev = evidence([], fences, pauses, final=[])
    assert "fence-cap" in rules(ev)
    spread = [off(10 + 100 * i, h, "ipmi") for i, h in enumerate(HOSTS)]
    spread_faults = [fault(i + 1, "pause-peer", [h], 5 + 100 * i, 20 + 100 * i, down=[h])
                     for i, h in enumerate(HOSTS)]
    assert "fence-cap" not in rules(evidence([], spread, spread_faults, ended_at=400))


def test_fencing_a_healthy_reachable_host_is_a_false_fence() -> None:
    ev = evidence([], [off(30.0, "h2", "ipmi")], [])
    verdict = judge(ev)
    assert [v.hosts for v in verdict.false_fences] == [("h2",)]


def test_a_one_way_cut_leaves_the_host_reachable_so_its_fence_is_false() -> None:
    one_way = fault(1, "one-way", ["h1", "h2"], 20, 40, drops=[("h2", "h1", 100)])
    ev = evidence([], [off(30.0, "h2", "ipmi")], [one_way])
    assert [v.rule for v in judge(ev).false_fences] == ["false-fence"]


def test_loss_leaves_the_host_reachable_so_its_fence_is_false() -> None:
    loss = fault(1, "loss", HOSTS, 20, 40, drops=[(a, b, 30) for a in HOSTS for b in HOSTS
                                                  if a != b])
    assert len(judge(evidence([], [off(30.0, "h2", "ipmi")], [loss])).false_fences) == 1


def test_a_watchdog_reset_of_a_healthy_reachable_host_is_a_false_fence() -> None:
    assert len(judge(evidence([], [off(30.0, "h2", "watchdog")], [],
                              watchdog_timeout_s=5.0)).false_fences) == 1
    # a minority host gives up and resets up to the watchdog's timeout after the heal
    split = fault(1, "split", HOSTS, 20, 28, drops=[("h2", "h1", 100), ("h2", "h3", 100),
                                                    ("h1", "h2", 100), ("h3", "h2", 100)])
    assert judge(evidence([], [off(36.0, "h2", "watchdog")], [split],
                          watchdog_timeout_s=5.0)).false_fences == []
    assert len(judge(evidence([], [off(45.0, "h2", "watchdog")], [split],
                              watchdog_timeout_s=5.0)).false_fences) == 1


def test_a_host_left_without_a_majority_by_dead_voters_may_reset_itself() -> None:
    # h1's chassis died, h3 was fenced just before: h2 alone resets itself (soak seed 5)
    chassis = fault(1, "chassis-death", ["h1"], 20, 60, down=["h1"], recover_while=True)
    power = [off(20.0, "h1"), off(18.0, "h3", "ipmi"), off(40.0, "h2", "watchdog")]
    verdict = judge(evidence([], power, [chassis], watchdog_timeout_s=10.0))
    assert [v.hosts for v in verdict.false_fences] == [("h3",)]  # h3 was healthy


def test_fences_of_isolated_paused_or_dead_peers_are_justified() -> None:
    isolated = fault(1, "isolate", ["h2"], 20, 40, drops=[("h2", "h1", 100), ("h2", "h3", 100),
                                                          ("h1", "h2", 100), ("h3", "h2", 100)])
    assert judge(evidence([], [off(30.0, "h2", "ipmi")], [isolated])).false_fences == []
    paused = fault(1, "pause-peer", ["h2"], 20, 28, down=["h2"])
    # healed at 28, fenced at 30: within the grace, a fence decided during the pause
    assert judge(evidence([], [off(30.0, "h2", "ipmi")], [paused])).false_fences == []
    assert len(judge(evidence([], [off(40.0, "h2", "ipmi")], [paused])).false_fences) == 1
    died = [Alive(0, h, True) for h in HOSTS] + [Alive(25, "h2", False)]
    assert judge(evidence([], [off(30.0, "h2", "ipmi")], [], liveness=died)).false_fences == []


def test_vms_not_back_within_the_bound_after_a_heal_is_a_violation() -> None:
    ev = evidence([seen(10.05, "h1", "vm1", False)], [off(10.0, "h1")],
                  [fault(1, "power-loss", ["h1"], 10, 20, down=["h1"])])
    (late,) = [v for v in judge(ev).violations if v.rule == "recovery"]
    assert late.vms == ("vm1",)
    no_room = dataclasses.replace(ev, vms_per_host=0)
    assert "recovery" not in rules(no_room)


def test_the_end_state_must_agree_and_keep_everything() -> None:
    split_brain = final()
    split_brain[1] = dataclasses.replace(split_brain[1], digest="xyz")
    assert rules(evidence([], [], [], final=split_brain)) == ["final"]
    lost_vm = final()
    lost_vm[2] = dataclasses.replace(lost_vm[2], vms=("vm2",))
    assert rules(evidence([], [], [], final=lost_vm)) == ["lost"]
    assert rules(evidence([], [], [], final=final(vm_stable_s=600),
                          expected_settings={"vm_stable_s": 601})) == ["lost"] * 3
    seen_then = [(50.0, 7, "h2")]
    assert rules(evidence([], [], [], ledger_seen=seen_then)) == ["lost"] * 3
    ledger = [dataclasses.replace(p, fences=((7, "h2", "off"),)) for p in final()]
    assert rules(evidence([], [], [], final=ledger, ledger_seen=seen_then)) == []
    assert rules(evidence([], [], [], final=[])) == ["final"]


def test_a_power_off_without_a_completed_fence_record_is_a_finding() -> None:
    fenced = [off(30.0, "h2", "ipmi")]
    paused = [fault(1, "pause-peer", ["h2"], 20, 28, down=["h2"])]
    verdict = judge(evidence([], fenced, paused))
    assert verdict.violations == []
    assert [f.rule for f in verdict.findings] == ["unrecorded-fence"]
    ledger = [dataclasses.replace(p, fences=((7, "h2", "off"),)) for p in final()]
    assert judge(evidence([], fenced, paused, final=ledger)).findings == []


def test_a_failed_power_hook_fails_the_run() -> None:
    broken = Power(10.0, 9.9, "h1", False, "lab", "command exit 1")
    assert "lab" in rules(evidence([], [broken], []))


def _flapping(host: str, start: float, times: int, period: float) -> list[Alive]:
    """The peer starts and dies again, `times` times, `period` apart."""
    out = []
    for i in range(times):
        out += [Alive(start + i * period, host, False), Alive(start + i * period + 0.1, host, True)]
    return out


def test_a_peer_that_keeps_dying_on_a_powered_host_is_a_crash_loop() -> None:
    ev = evidence([], [], [], liveness=[*(Alive(0, h, True) for h in HOSTS),
                                        *_flapping("h2", 20, 5, 3.0)])
    (violation,) = [v for v in judge(ev).violations if v.rule == "crash-loop"]
    assert violation.hosts == ("h2",) and len(violation.evidence) == 4


def test_deaths_a_fault_or_a_power_off_explains_are_no_crash_loop() -> None:
    killed = fault(1, "kill-peer", ["h2"], 19, 40, down=["h2"])
    ev = evidence([], [off(60.0, "h3"), on(61.0, "h3"), off(70.0, "h3"), on(71.0, "h3"),
                       off(80.0, "h3"), on(81.0, "h3"), off(90.0, "h3")], [killed],
                  liveness=[*(Alive(0, h, True) for h in HOSTS), *_flapping("h2", 20, 5, 3.0),
                            *(Alive(t, "h3", alive) for t in (60.0, 70.0, 80.0, 90.0)
                              for alive in (False,)),
                            *(Alive(t + 1.5, "h3", True) for t in (60.0, 70.0, 80.0))])
    assert "crash-loop" not in rules(ev)
