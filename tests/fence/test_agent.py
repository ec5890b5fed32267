"""AgentFencer: Debian's fence_ipmilan against ipmi_sim, and small fake agents
for the exit-code and deadline handling."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.fence.agent import AgentFencer
from hacluster.lab.bmc import BmcSim
from hacluster.ports import BmcTarget, FenceAction, FenceOutcome, PowerState, Secret

from .support import (
    PASSWORD,
    assert_no_secret,
    assert_one_line,
    processes_mentioning,
    timed,
    wait_until,
)

# fence_ipmilan waits power_wait (2 s) after a power change by default.
FAST = (("power_wait", "0"),)


def ipmilan(bmc: BmcSim, **overrides: object) -> BmcTarget:
    base: dict[str, object] = {
        "driver": "agent",
        "agent": "fence_ipmilan",
        "cipher_suite": 3,  # ipmi_sim needs it with ipmitool
        "options": FAST,
    }
    return bmc.target("h1", **{**base, **overrides})


def test_status_probe(bmc: BmcSim, agent: AgentFencer) -> None:
    probe = agent.probe(ipmilan(bmc), 10)
    assert probe.ok and probe.power is PowerState.ON, probe.detail
    bmc.set_power(False)
    assert agent.probe(ipmilan(bmc), 10).power is PowerState.OFF
    assert_one_line(probe)


def test_off_reads_back_off(bmc: BmcSim, agent: AgentFencer) -> None:
    result = agent.fence(ipmilan(bmc), FenceAction.OFF, 15)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert bmc.power is PowerState.OFF
    assert "fence_ipmilan off exit 0" in result.evidence
    assert "fence_ipmilan status exit 2" in result.evidence  # read back off
    assert result.method.startswith("agent fence_ipmilan")
    assert_no_secret(result)


def test_already_off(make_bmc: Callable[..., BmcSim], agent: AgentFencer) -> None:
    bmc = make_bmc(power_on=False)
    result = agent.fence(ipmilan(bmc), FenceAction.OFF, 15)
    assert result.outcome is FenceOutcome.ALREADY_OFF, result.evidence
    assert " off exit" not in result.evidence
    assert [e.event for e in bmc.events()] == []


def test_reboot(bmc: BmcSim, agent: AgentFencer) -> None:
    result = agent.fence(ipmilan(bmc), FenceAction.REBOOT, 20)
    assert result.outcome is FenceOutcome.REBOOTED, result.evidence
    assert [e.event for e in bmc.events()] == ["power-off", "power-on"]


def test_identify_and_none_run_nothing(silent_udp_port: int, agent: AgentFencer) -> None:
    target = BmcTarget("h", "agent", "127.0.0.1", silent_udp_port, agent="fence_ipmilan")
    for action in (FenceAction.IDENTIFY, FenceAction.NONE):
        result = agent.fence(target, action, 5)
        assert result.outcome is FenceOutcome.NOTIFIED, result.evidence
        assert "exit" not in result.evidence


def test_unreachable_is_killed_at_the_deadline(silent_udp_port: int, agent: AgentFencer) -> None:
    target = BmcTarget(
        "h",
        "agent",
        "127.0.0.1",
        silent_udp_port,
        username="admin",
        password=Secret(PASSWORD),
        cipher_suite=3,
        agent="fence_ipmilan",
    )
    result = timed(lambda: agent.fence(target, FenceAction.OFF, 1.5), 1.5)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence
    assert "killed" in result.evidence
    # The agent's process group went with it: no ipmitool left for that port.
    wait_until(lambda: not processes_mentioning(f"-p {silent_udp_port}"), 5, "ipmitool gone")


def test_wrong_password_is_an_error_not_off(bmc: BmcSim, agent: AgentFencer) -> None:
    # fence_ipmilan reports a bad password like any other session failure
    # ("Unable to obtain correct plug status"), so it cannot be AUTH_REJECTED.
    result = agent.fence(ipmilan(bmc, password=Secret("Wr0ng-Pw.x")), FenceAction.OFF, 15)
    assert result.outcome is FenceOutcome.ERROR, result.evidence
    assert "exit 1" in result.evidence
    assert "Wr0ng-Pw.x" not in result.evidence
    assert bmc.power is PowerState.ON


@pytest.mark.parametrize(
    ("agent_name", "options", "expect"),
    [
        ("rm", (), "fence_* executable"),
        ("fence_does_not_exist", (), "not found"),
        ("fence_ipmilan", (("power_wait", "0\naction=on"),), "single key=value"),
    ],
)
def test_bad_configuration_is_an_error(
    agent: AgentFencer, agent_name: str, options: tuple[tuple[str, str], ...], expect: str
) -> None:
    target = BmcTarget("h", "agent", "127.0.0.1", 623, agent=agent_name, options=options)
    result = agent.fence(target, FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.ERROR
    assert expect in result.evidence


def write_agent(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_stdin_protocol_and_exit_codes(tmp_path: Path) -> None:
    # A fake agent that records its stdin and answers status from a file.
    state = tmp_path / "state"
    state.write_text("on")
    seen = tmp_path / "seen"
    script = write_agent(
        tmp_path,
        "fence_fake",
        f'cat > "{seen}.$$"; action=$(sed -n "s/^action=//p" "{seen}.$$")\n'
        f'cat "{seen}.$$" >> "{seen}"\n'
        f'case "$action" in\n'
        f'  status) [ "$(cat {state})" = on ] && exit 0 || exit 2;;\n'
        f"  off) echo off > {state}; exit 0;;\n"
        "  *) exit 1;;\nesac\n",
    )
    target = BmcTarget(
        "h",
        "agent",
        "10.0.0.9",
        6230,
        username="root",
        password=Secret(PASSWORD),
        cipher_suite=17,
        agent=script,
        options=(("plug", "vm-7"), ("ipport", "6231")),
    )
    result = AgentFencer(poll_interval_s=0.01).fence(target, FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    first_call = seen.read_text().split("action=")[1].splitlines()
    assert first_call == [
        "status",
        "ip=10.0.0.9",
        "ipport=6231",  # options override the defaults
        "username=root",
        f"password={PASSWORD}",  # on stdin only
        "cipher=17",
        "plug=vm-7",
    ]
    assert_no_secret(result)


def test_hanging_agent_and_its_children_are_killed(tmp_path: Path) -> None:
    # Odd durations, so the check below cannot mistake someone else's sleep.
    script = write_agent(tmp_path, "fence_hang", "cat > /dev/null; sleep 3171 & exec sleep 3172\n")
    target = BmcTarget("h", "agent", "127.0.0.1", 623, agent=script)
    fencer = AgentFencer()
    result = timed(lambda: fencer.fence(target, FenceAction.OFF, 1.0), 1.0)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence
    probe = fencer.probe(target, 0.5)
    assert not probe.ok and "unreachable" in probe.detail
    wait_until(lambda: not processes_mentioning("sleep 317"), 5, "the agent and its child killed")


def test_default_ipmi_port_is_not_forced_on_other_agents() -> None:
    from hacluster.fence.agent import _stdin_lines

    target = BmcTarget("h", "agent", "10.0.0.9", 623, agent="fence_virsh")
    assert "ipport" not in _stdin_lines(target, "fence_virsh")
    assert _stdin_lines(target, "fence_ipmilan")["ipport"] == "623"
    assert _stdin_lines(dataclasses.replace(target, port=22), "fence_virsh")["ipport"] == "22"
