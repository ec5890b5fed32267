"""Fencing levels (core/fencelevels.py, SetHostFencing): the plan, the order, a level
succeeds only when all its devices do, the evidence, and what is checked before proposing."""

from __future__ import annotations

import pytest

from hacluster.core import versions
from hacluster.core.bmc import bmc_spec
from hacluster.core.fencelevels import (
    DeviceOutcome,
    LevelOutcome,
    device_action,
    fence_plan,
    fence_verdict,
    next_level,
)
from hacluster.fsm import commands as c
from hacluster.fsm.apply_fence import fences_in_window
from hacluster.fsm.codec import command_summary
from hacluster.fsm.model import (
    BmcOverride,
    BmcSettings,
    FenceAction,
    FenceDevice,
    FenceLevel,
    FenceResult,
    HostRole,
)
from hacluster.fsm.states import HostState
from hacluster.fsm.validate import find_problem

from .builders import Cluster

PDU1 = FenceDevice("agent", "pdu1", agent="fence_apc_snmp", options=(("plug", "3"),))
PDU2 = FenceDevice("agent", "pdu2", agent="fence_apc_snmp", options=(("plug", "3"),))
LEVELS = (FenceLevel((FenceDevice("bmc"),)), FenceLevel((PDU1, PDU2)))

OFF = DeviceOutcome(FenceResult.OFF, "power off sent; read back off", "agent a")
OFF_B = DeviceOutcome(FenceResult.OFF, "power off sent; read back off", "agent b")
DARK = DeviceOutcome(FenceResult.UNREACHABLE, "no answer", "ipmi 10.0.1.1:623")
REFUSED = DeviceOutcome(FenceResult.AUTH_REJECTED, "bad password", "agent b")


def cluster_with_levels(levels: tuple[FenceLevel, ...] = LEVELS) -> Cluster:
    cluster = Cluster()
    cluster.ok(c.SetBmcDefaults(bmc=BmcSettings(username="admin", sealed_password=b"S",
                                                cipher_suite=3)))
    cluster.add_hosts("h1", "h2", bmc=BmcOverride(address="10.0.1.1"))
    cluster.ok(c.SetHostFencing(name="h1", levels=levels))
    return cluster


# ---------------------------------------------------------------- the plan

def test_without_levels_the_host_bmc_is_the_only_level_and_reads_as_before() -> None:
    cluster = cluster_with_levels()
    plan = fence_plan(cluster.state, "h2")
    assert plan.implicit and len(plan.levels) == 1 and len(plan.levels[0]) == 1
    assert plan.levels[0][0].spec == bmc_spec(cluster.state, "h2")
    done = [LevelOutcome(1, (DARK,))]
    assert fence_verdict(plan, done) == (DARK.result, DARK.evidence, DARK.method)
    assert next_level(plan, done, FenceAction.OFF) is None  # no retry within the attempt


def test_levels_resolve_in_order_with_the_bmc_and_inherited_credentials() -> None:
    cluster = cluster_with_levels((
        FenceLevel((FenceDevice("bmc"),)),
        FenceLevel((FenceDevice("ipmi", "10.0.9.1"), FenceDevice("ipmi", "10.0.9.2", port=6230,
                                                               username="pdu"))),
        FenceLevel((PDU1,))))
    plan = fence_plan(cluster.state, "h1")
    assert not plan.implicit
    assert [[d.name for d in level] for level in plan.levels] == [
        ["ipmi 10.0.1.1:623"], ["ipmi 10.0.9.1:623", "ipmi 10.0.9.2:6230"],
        ["agent fence_apc_snmp pdu1:623"]]
    first, second = plan.levels[1]
    assert (first.spec.username, first.spec.sealed_password, first.spec.cipher_suite) == \
        ("admin", b"S", 3)  # an ipmi device without credentials takes the cluster's
    assert second.spec.username == "pdu"
    pdu = plan.levels[2][0].spec
    assert (pdu.username, pdu.sealed_password, pdu.cipher_suite, pdu.options) == \
        ("", b"", -1, (("plug", "3"),))  # an agent takes nothing from the BMC defaults


def test_a_bmc_device_without_an_address_is_planned_and_fails_visibly() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    cluster.ok(c.SetHostFencing(name="h1", levels=(FenceLevel((FenceDevice("bmc"),)),
                                                   FenceLevel((PDU1,)))))
    plan = fence_plan(cluster.state, "h1")
    assert plan.levels[0][0].spec is None and plan.levels[1][0].spec is not None


# ---------------------------------------------------------------- order and verdict

def test_levels_are_tried_in_order_until_one_succeeds() -> None:
    plan = fence_plan(cluster_with_levels().state, "h1")
    assert next_level(plan, [], FenceAction.OFF) == 0
    failed = [LevelOutcome(1, (DARK,))]
    assert next_level(plan, failed, FenceAction.OFF) == 1
    assert next_level(plan, [*failed, LevelOutcome(2, (OFF, OFF_B))], FenceAction.OFF) is None
    assert next_level(plan, [LevelOutcome(1, (OFF,))], FenceAction.OFF) is None
    assert next_level(plan, [*failed, LevelOutcome(2, (OFF, REFUSED))], FenceAction.OFF) is None
    # none / identify power nothing off: only the first level is told
    assert next_level(plan, [LevelOutcome(1, (DARK,))], FenceAction.NONE) is None


def test_a_level_succeeds_only_when_all_its_devices_read_back_off() -> None:
    assert LevelOutcome(2, (OFF, OFF_B)).succeeded
    assert not LevelOutcome(2, (OFF, REFUSED)).succeeded
    assert not LevelOutcome(2, ()).succeeded
    manual = DeviceOutcome(FenceResult.MANUAL, "", "x")
    assert not LevelOutcome(1, (manual,)).succeeded  # only an operator says that


def test_the_second_level_confirms_and_the_evidence_names_it_and_every_device() -> None:
    plan = fence_plan(cluster_with_levels().state, "h1")
    result, evidence, method = fence_verdict(
        plan, [LevelOutcome(1, (DARK,)), LevelOutcome(2, (OFF, OFF_B))])
    assert result is FenceResult.OFF
    assert method == "level 2: agent a + agent b"
    assert evidence.startswith("level 1 of 2 failed (1 of 1 device(s) failed): "
                               "ipmi 10.0.1.1:623: unreachable: no answer; ")
    assert "level 2 of 2 confirmed off (2 of 2 device(s) off): agent a: off: power off " \
           "sent; read back off | agent b: off:" in evidence


def test_a_level_with_one_failed_device_falls_through_and_says_what_stays_off() -> None:
    plan = fence_plan(cluster_with_levels().state, "h1")
    result, evidence, method = fence_verdict(
        plan, [LevelOutcome(1, (DARK,)), LevelOutcome(2, (OFF, REFUSED))])
    assert result is FenceResult.AUTH_REJECTED  # the last level's failure
    assert method == "levels 1-2"
    assert "level 2 of 2 failed (1 of 2 device(s) failed)" in evidence
    assert evidence.endswith("(left off: agent a)")


def test_all_levels_already_off_is_already_off_and_one_device_keeps_its_result() -> None:
    plan = fence_plan(cluster_with_levels().state, "h1")
    already = DeviceOutcome(FenceResult.ALREADY_OFF, "already off", "agent a")
    assert fence_verdict(plan, [LevelOutcome(1, (DARK,)), LevelOutcome(2, (already, already))]
                         )[0] is FenceResult.ALREADY_OFF
    assert fence_verdict(plan, [LevelOutcome(1, (already, OFF))])[0] is FenceResult.OFF
    rebooted = DeviceOutcome(FenceResult.REBOOTED, "cycled", "ipmi x")
    assert fence_verdict(plan, [LevelOutcome(1, (rebooted,))])[0] is FenceResult.REBOOTED


def test_a_level_skipped_for_leadership_ends_the_walk_as_a_failure() -> None:
    plan = fence_plan(cluster_with_levels().state, "h1")
    done = [LevelOutcome(1, (DARK,)), LevelOutcome(2, (), skipped="leadership lost")]
    assert next_level(plan, done, FenceAction.OFF) is None
    result, evidence, method = fence_verdict(plan, done)
    assert result is FenceResult.UNREACHABLE and method == "level 1"
    assert evidence.endswith("level 2 of 2 not run: leadership lost")


def test_a_reboot_through_several_devices_only_powers_off() -> None:
    assert device_action(FenceAction.REBOOT, 2) is FenceAction.OFF
    assert device_action(FenceAction.REBOOT, 1) is FenceAction.REBOOT
    assert device_action(FenceAction.OFF, 3) is FenceAction.OFF


# ---------------------------------------------------------------- one incident, one fence

def test_a_multi_level_fence_is_one_fence_against_the_cap() -> None:
    cluster = cluster_with_levels()
    token = cluster.fence("h1")
    plan = fence_plan(cluster.state, "h1")
    result, evidence, method = fence_verdict(
        plan, [LevelOutcome(1, (DARK,)), LevelOutcome(2, (OFF, OFF_B))])
    cluster.ok(c.ConfirmFence(host="h1", token=token, result=result, evidence=evidence,
                              method=method))
    assert cluster.host_state("h1") is HostState.FENCED
    record = cluster.state.fence_record(token)
    assert record is not None and record.method == "level 2: agent a + agent b"
    assert "level 2 of 2 confirmed off" in record.result_evidence
    assert len(fences_in_window(cluster.state)) == 1


def test_all_levels_failing_is_a_failed_attempt_with_the_usual_retries() -> None:
    cluster = cluster_with_levels()
    token = cluster.fence("h1")
    done = [LevelOutcome(1, (DARK,)), LevelOutcome(2, (OFF, REFUSED))]
    result, evidence, method = fence_verdict(fence_plan(cluster.state, "h1"), done)
    events = cluster.ok(c.FenceFailed(host="h1", token=token, result=result,
                                      evidence=evidence, method=method))
    assert [e.get("final") for e in events if e.kind == "fence-failed"] == ["False"]
    assert cluster.host_state("h1") is HostState.FENCING  # the manager retries, as before


# ---------------------------------------------------------------- the command

def test_levels_are_set_shown_as_an_event_and_cleared() -> None:
    cluster = cluster_with_levels()
    assert cluster.host("h1").fence_levels == LEVELS
    events = cluster.ok(c.SetHostFencing(name="h1", levels=()))
    assert cluster.host("h1").fence_levels == ()
    assert "fencing levels changed: none: its BMC alone" in [e.message for e in events]


def test_a_witness_gets_no_levels_and_an_unknown_host_is_refused() -> None:
    cluster = Cluster()
    cluster.add_host("w1", role=HostRole.WITNESS)
    for name in ("w1", "nosuch"):
        events = cluster.run(c.SetHostFencing(name=name, levels=LEVELS))
        assert [e.kind for e in events] == ["rejected"]


def test_sealed_device_passwords_are_left_out_of_summaries() -> None:
    sealed = FenceDevice("ipmi", "10.0.9.1", sealed_password=b"SEALED-XYZ")
    command = c.SetHostFencing(name="h1", levels=(FenceLevel((sealed,)),))
    summary = command_summary(command)
    assert "SEALED-XYZ" not in repr(summary) and "SEALED-XYZ" not in repr(command)
    assert summary["levels"][0]["devices"][0]["address"] == "10.0.9.1"


def test_the_version_gate_refuses_levels_until_every_host_understands_them() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    refused = versions.admit(cluster.state, c.SetHostFencing.TYPE, 1)
    assert not refused.admitted and "h1" in refused.refusal and "host-fencing" in refused.refusal
    cluster.announce_all()
    assert versions.admit(cluster.state, c.SetHostFencing.TYPE, 1).admitted


@pytest.mark.parametrize(("levels", "why"), [
    (tuple(FenceLevel((FenceDevice("bmc"),)) for _ in range(5)), "at most 4 fencing levels"),
    ((FenceLevel(tuple(FenceDevice("ipmi", f"10.0.0.{i}") for i in range(5))),),
     "level 1: at most 4 devices per level"),
    ((FenceLevel(()),), "level 1 has no device"),
    ((FenceLevel((PDU1, PDU1)),), "level 1: a device is listed twice"),
    ((FenceLevel((FenceDevice("pdu", "x"),)),), "unknown device kind 'pdu': one of bmc, ipmi"),
    ((FenceLevel((FenceDevice("bmc", "10.0.0.1"),)),), "it takes no address"),
    ((FenceLevel((FenceDevice("ipmi"),)),), "level 1, device 1 (ipmi): an address is needed"),
    ((FenceLevel((FenceDevice("ipmi", "a;b"),)),), "expected a host name or an IP address"),
    ((FenceLevel((FenceDevice("ipmi", "x", port=70000),)),), "port 70000 out of range"),
    ((FenceLevel((FenceDevice("agent", "x"),)),), "an agent device names its fence agent"),
    ((FenceLevel((FenceDevice("ipmi", "x", agent="fence_x"),)),), "only an agent device"),
    ((FenceLevel((FenceDevice("agent", "x", agent="/bin/sh"),)),), "expected a fence_*"),
    ((FenceLevel((FenceDevice("ipmi", "x", options=(("a", "b"),)),)),), "takes no options"),
    ((FenceLevel((FenceDevice("agent", "x", agent="fence_x", options=(("k", "a\nb"),)),)),),
     "expected key=value on one line"),
    ((FenceLevel((FenceDevice("agent", "x", agent="fence_x", options=(("k", "1"), ("k", "2"))),
                  )),), "an option is given twice"),
    ((FenceLevel((FenceDevice("agent", "x", agent="fence_x", options=(("action", "on"),)),)),),
     "is set by hacluster"),
    ((FenceLevel((PDU1,)), FenceLevel((FenceDevice("redfish", "x", cipher_suite=-2),))),
     "level 2, device 1 (redfish): cipher suite -2 out of range"),
])
def test_bad_levels_are_refused_naming_level_device_and_problem(
        levels: tuple[FenceLevel, ...], why: str) -> None:
    command = c.SetHostFencing(name="h1", levels=levels)
    problem = find_problem(command)
    assert problem is not None and problem.field == "levels" and why in problem.message
    applied = find_problem(command, at_apply=True)  # a new command: apply refuses it alike
    assert applied is not None and applied.message == problem.message


@pytest.mark.parametrize("address", ["10.0.0.1", "pdu-1.example.com", "::1", "[fe80::1]",
                                     "fe80::1"])
def test_addresses_that_are_accepted(address: str) -> None:
    levels = (FenceLevel((FenceDevice("ipmi", address),)),)
    assert find_problem(c.SetHostFencing(name="h1", levels=levels)) is None
