"""IpmiFencer against real ipmi_sim BMCs over UDP on loopback."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from hacluster.fence.ipmi import IpmiFencer, bound_pyghmi_waits
from hacluster.lab.bmc import BmcMode, BmcSim
from hacluster.ports import BmcTarget, FenceAction, FenceOutcome, FenceResult, PowerState, Secret

from .support import (
    PASSWORD,
    assert_no_secret,
    assert_one_line,
    start_host_process,
    timed,
    wait_until,
)


def power_events(bmc: BmcSim) -> list[str]:
    return [e.event for e in bmc.events() if e.event.startswith("power-")]


def test_off_from_on_reads_back_off_and_the_host_is_gone(
    make_bmc: Callable[..., BmcSim], ipmi: IpmiFencer
) -> None:
    host = start_host_process()
    try:
        bmc = make_bmc(power_off_cmd=["kill", "-KILL", "--", f"-{host.pid}"])
        result = ipmi.fence(bmc.target("h1"), FenceAction.OFF, 10)
        assert result.outcome is FenceOutcome.OFF, result.evidence
        assert result.outcome.host_is_off
        assert bmc.power is PowerState.OFF
        # "read back off" must mean the workload is dead: the hook ran first.
        assert host.poll() is not None or host.wait(timeout=5) is not None
        assert "sending power off" in result.evidence and "read back off" in result.evidence
        assert result.method == f"ipmi 127.0.0.1:{bmc.port}"
        assert [(e.event, e.cause) for e in bmc.events()] == [("power-off", "ipmi")]
        assert_one_line(result)
        assert_no_secret(result)
    finally:
        host.kill()
        host.wait()


def test_already_off_sends_nothing(make_bmc: Callable[..., BmcSim], ipmi: IpmiFencer) -> None:
    bmc = make_bmc(power_on=False)
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ALREADY_OFF, result.evidence
    assert result.outcome.host_is_off
    assert "sending power" not in result.evidence
    assert power_events(bmc) == []


def test_already_off_mode(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.ALREADY_OFF)
    assert bmc.power is PowerState.OFF
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ALREADY_OFF, result.evidence
    assert [e.cause for e in bmc.events()] == ["lab"]  # only the lab's own switch


def test_reboot_is_off_then_on(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    result = ipmi.fence(bmc.target(), FenceAction.REBOOT, 10)
    assert result.outcome is FenceOutcome.REBOOTED, result.evidence
    assert result.outcome.host_is_off  # it was read back off before power-on
    assert power_events(bmc) == ["power-off", "power-on"]
    assert bmc.power is PowerState.ON


def test_identify_blinks_and_leaves_power_alone(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    # ipmi_sim implements Chassis Identify and hands it to chassis_control,
    # which logs it: so we can see the request arrive.
    result = ipmi.fence(bmc.target(), FenceAction.IDENTIFY, 10)
    assert result.outcome is FenceOutcome.NOTIFIED, result.evidence
    assert not result.outcome.host_is_off
    assert [e.event for e in bmc.events()] == ["identify"]
    assert bmc.power is PowerState.ON


def test_action_none_touches_nothing(silent_udp_port: int, ipmi: IpmiFencer) -> None:
    target = BmcTarget("h", address="127.0.0.1", port=silent_udp_port, username="u")
    result = ipmi.fence(target, FenceAction.NONE, 5)
    assert result.outcome is FenceOutcome.NOTIFIED
    assert result.duration_s < 1
    assert "nothing sent" in result.evidence


def test_nothing_listening_is_unreachable_within_deadline(
    silent_udp_port: int, ipmi: IpmiFencer
) -> None:
    target = BmcTarget(
        "h", address="127.0.0.1", port=silent_udp_port, username="u", password=Secret("p")
    )
    result = timed(lambda: ipmi.fence(target, FenceAction.OFF, 1.5), 1.5)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence
    assert not result.outcome.host_is_off
    assert_one_line(result)


def test_frozen_bmc_is_unreachable_within_deadline(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.FROZEN)  # port open, packets swallowed
    result = timed(lambda: ipmi.fence(bmc.target(), FenceAction.OFF, 1.5), 1.5)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence
    assert "abandoned" in result.evidence


def test_stopped_bmc_is_unreachable(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.UNREACHABLE)
    assert bmc.pid is None
    result = timed(lambda: ipmi.fence(bmc.target(), FenceAction.OFF, 1.0), 1.0)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence


def test_bmc_dying_after_the_off_command_is_a_timeout(
    make_bmc: Callable[..., BmcSim], ipmi: IpmiFencer
) -> None:
    # The power-off hook freezes ipmi_sim itself: the command went out, but
    # nothing can ever be read back. That is TIMEOUT, not UNREACHABLE.
    bmc = make_bmc(power_off_cmd='kill -STOP "$(cat ipmi_sim.pid)"')
    # Deadlines here leave room for the login and first read, which pyghmi
    # occasionally stalls for ~1 s (a lost wake-up it recovers from by retrying).
    result = timed(lambda: ipmi.fence(bmc.target(), FenceAction.OFF, 2.5), 2.5)
    assert result.outcome is FenceOutcome.TIMEOUT, result.evidence
    assert "sending power off" in result.evidence


def test_wrong_password_is_auth_rejected(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    target = bmc.target(password=Secret("Not-The-Pw-77"))
    result = ipmi.fence(target, FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.AUTH_REJECTED, result.evidence
    assert bmc.power is PowerState.ON
    assert "Not-The-Pw-77" not in result.evidence


def test_bmc_configured_with_other_password_is_auth_rejected(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.REJECT_CREDENTIALS)
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.AUTH_REJECTED, result.evidence
    assert_no_secret(result)


def test_unknown_user_is_auth_rejected(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    result = ipmi.fence(bmc.target(username="nobody"), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.AUTH_REJECTED, result.evidence


def test_slow_bmc_beyond_deadline_is_timeout(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.SLOW, delay_s=8.0)
    result = timed(lambda: ipmi.fence(bmc.target(), FenceAction.OFF, 2.5), 2.5)
    assert result.outcome is FenceOutcome.TIMEOUT, result.evidence
    assert "power not read back off" in result.evidence
    assert not result.outcome.host_is_off


def test_slow_bmc_within_deadline_is_polled_until_off(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    bmc.set_mode(BmcMode.SLOW, delay_s=0.4)
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    # the delayed change writes the power file first, then its log line
    wait_until(lambda: len(bmc.events()) == 2, 5, "the delayed power-off logged")
    assert [e.event for e in bmc.events()] == ["power-accepted", "power-off"]


def test_probe(bmc: BmcSim, ipmi: IpmiFencer, silent_udp_port: int) -> None:
    ok = ipmi.probe(bmc.target(), 5)
    assert ok.ok and ok.power is PowerState.ON, ok.detail
    bmc.set_power(False)
    assert ipmi.probe(bmc.target(), 5).power is PowerState.OFF
    rejected = ipmi.probe(bmc.target(password=Secret("wrong-pw-1")), 5)
    assert not rejected.ok and rejected.power is PowerState.UNKNOWN
    assert "auth-rejected" in rejected.detail
    dead = bmc.target(port=silent_udp_port)
    silent = ipmi.probe(dead, 1.0)
    assert not silent.ok and "unreachable" in silent.detail
    assert silent.duration_s < 1.0 + 0.75
    for probe in (ok, rejected, silent):
        assert_one_line(probe)
        assert_no_secret(probe)


def test_two_bmcs_fenced_at_once(make_bmc: Callable[..., BmcSim], ipmi: IpmiFencer) -> None:
    first, second = make_bmc(), make_bmc()
    results: dict[str, FenceResult] = {}

    def fence(name: str, sim: BmcSim) -> None:
        results[name] = ipmi.fence(sim.target(name), FenceAction.OFF, 10)

    threads = [
        threading.Thread(target=fence, args=(n, s)) for n, s in [("a", first), ("b", second)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert {n: r.outcome for n, r in results.items()} == {
        "a": FenceOutcome.OFF,
        "b": FenceOutcome.OFF,
    }


def test_restarted_bmc_gets_a_fresh_session(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    # pyghmi would reuse the old session after the BMC restarts and spend
    # ~20 s retrying; we log out after every attempt, so this stays fast.
    assert ipmi.fence(bmc.target(), FenceAction.OFF, 5).outcome is FenceOutcome.OFF
    bmc.set_mode(BmcMode.UNREACHABLE)
    bmc.set_mode(BmcMode.WORKS)  # a new ipmi_sim process on the same port
    bmc.set_power(True)
    result = ipmi.fence(bmc.target(), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.OFF, result.evidence


def test_unsupported_cipher_suite_is_a_config_error(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    result = ipmi.fence(bmc.target(cipher_suite=1), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.ERROR
    assert "cipher suite 1" in result.evidence
    assert ipmi.fence(bmc.target(cipher_suite=3), FenceAction.OFF, 5).outcome is FenceOutcome.OFF


def test_invalid_deadline_is_an_error(bmc: BmcSim, ipmi: IpmiFencer) -> None:
    for deadline in (0, -1, float("nan")):
        assert ipmi.fence(bmc.target(), FenceAction.OFF, deadline).outcome is FenceOutcome.ERROR
    assert bmc.power is PowerState.ON


def test_missing_address_is_an_error(ipmi: IpmiFencer) -> None:
    result = ipmi.fence(dataclasses.replace(BmcTarget("h"), address=""), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.ERROR


def test_a_worker_stuck_at_the_deadline_is_killed_and_not_reused(
    make_bmc: Callable[..., BmcSim], ipmi: IpmiFencer
) -> None:
    frozen, healthy = make_bmc(), make_bmc()
    frozen.set_mode(BmcMode.FROZEN)
    used: list[subprocess.Popen[bytes]] = []
    take = ipmi._launcher.take

    def recording_take() -> subprocess.Popen[bytes]:
        used.append(take())
        return used[-1]

    ipmi._launcher.take = recording_take  # type: ignore[method-assign]
    try:
        stuck = ipmi.fence(frozen.target(), FenceAction.OFF, 1.0)
        assert stuck.outcome is FenceOutcome.UNREACHABLE
        # Killed, so it cannot send anything after we reported.
        assert used[0].poll() is not None
        assert ipmi.fence(healthy.target(), FenceAction.OFF, 5).outcome is FenceOutcome.OFF
        assert used[1] is not used[0]
    finally:
        del ipmi._launcher.take


def test_pyghmi_waits_are_bounded_so_a_queued_reply_is_never_slept_through(
        bmc: BmcSim, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyghmi could sleep until its retransmit timer (about 1 s) with the reply already
    queued (fence/ipmi.py notes). The worker caps each wait: a wait asked for 5 s returns
    within a fraction of it, the cap is applied once, and commands still work."""
    from pyghmi.ipmi import command
    from pyghmi.ipmi.private import session

    monkeypatch.setattr(session, "_io_wait", session._io_wait)  # restored afterwards
    ipmi_command = command.Command(bmc=b"127.0.0.1", userid=b"admin",
                                   password=PASSWORD.encode(), port=bmc.port)
    assert bound_pyghmi_waits() and bound_pyghmi_waits()
    bounded = session._io_wait
    assert bound_pyghmi_waits() and session._io_wait is bounded  # not wrapped twice
    started = time.monotonic()
    session._io_wait(5.0)
    assert time.monotonic() - started < 1.0
    assert all(ipmi_command.get_power()["powerstate"] == "on" for _ in range(20))
    ipmi_command.ipmi_session.logout()
