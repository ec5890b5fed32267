"""The BMC simulator itself, driven by an independent client (ipmitool)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.lab.bmc import BmcMode, BmcSim, BmcSimError, rmcp_ping
from hacluster.ports import PowerState

from .support import PASSWORD, assert_no_secret, need, wait_until


def ipmitool(bmc: BmcSim, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess[str]:
    need("ipmitool")
    # -C 3: ipmi_sim's cipher suite; -E: password from the environment, not argv.
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-N", "1", "-R", "1", "-H", bmc.address,
            "-p", str(bmc.port), "-U", bmc.user, "-E", *args]  # fmt: skip
    env = {**os.environ, "IPMI_PASSWORD": password}
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)


def test_ipmitool_switches_power_and_the_log_records_it(
    make_bmc: Callable[..., BmcSim], tmp_path: Path
) -> None:
    marker = tmp_path / "powered-on"
    bmc = make_bmc(power_on_cmd=f"touch {marker}")
    assert "Chassis Power is on" in ipmitool(bmc, "chassis", "power", "status").stdout
    assert ipmitool(bmc, "chassis", "power", "off").returncode == 0
    assert bmc.power is PowerState.OFF
    assert ipmitool(bmc, "chassis", "power", "on").returncode == 0
    assert bmc.power is PowerState.ON and marker.exists()
    events = bmc.events()
    assert [(e.event, e.cause) for e in events] == [("power-off", "ipmi"), ("power-on", "ipmi")]
    assert events[0].mono <= events[1].mono and events[0].wall <= events[1].wall


def test_power_reads_are_logged_with_what_they_answered(bmc: BmcSim) -> None:
    """A fence of a host that is already off changes no power: its reads are what
    the BMC witnesses of it."""
    before = time.monotonic()
    assert "Chassis Power is on" in ipmitool(bmc, "chassis", "power", "status").stdout
    bmc.set_power(False)
    assert "Chassis Power is off" in ipmitool(bmc, "chassis", "power", "status").stdout
    after = time.monotonic()
    reads = bmc.reads()
    assert reads[0].on is True and reads[-1].on is False
    assert [r.on for r in reads] == sorted((r.on for r in reads), reverse=True)
    assert before - 0.05 <= reads[0].mono <= reads[-1].mono <= after + 0.05
    assert reads[0].mono <= bmc.events()[0].mono <= reads[-1].mono


def test_set_power_from_the_lab_runs_the_commands(
    make_bmc: Callable[..., BmcSim], tmp_path: Path
) -> None:
    log = tmp_path / "hooks"
    bmc = make_bmc(power_off_cmd=["sh", "-c", f"echo off >> {log}"])
    assert bmc.set_power(False)
    assert not bmc.set_power(False)  # already off: nothing runs twice
    assert log.read_text() == "off\n"
    assert [(e.event, e.cause) for e in bmc.events()] == [("power-off", "lab")]


def test_modes_seen_from_the_wire(bmc: BmcSim) -> None:
    assert rmcp_ping(bmc.address, bmc.port, 2)
    bmc.set_mode(BmcMode.UNREACHABLE)
    assert bmc.pid is None and not rmcp_ping(bmc.address, bmc.port, 0.2)
    bmc.set_mode(BmcMode.FROZEN)
    assert bmc.pid is not None and not rmcp_ping(bmc.address, bmc.port, 0.2)
    bmc.set_mode(BmcMode.REJECT_CREDENTIALS)
    assert ipmitool(bmc, "chassis", "power", "status").returncode != 0
    bmc.set_mode(BmcMode.WORKS)
    assert ipmitool(bmc, "chassis", "power", "status").returncode == 0


def test_slow_mode_accepts_then_switches_later(bmc: BmcSim) -> None:
    bmc.set_mode(BmcMode.SLOW, delay_s=0.3)
    assert ipmitool(bmc, "chassis", "power", "off").returncode == 0
    assert bmc.power is PowerState.ON  # accepted, not done yet
    bmc.wait_for_power(PowerState.OFF, 10)
    # the delayed change writes the power file first, then its log line
    wait_until(lambda: len(bmc.events()) == 2, 5, "the delayed power-off logged")
    assert [e.event for e in bmc.events()] == ["power-accepted", "power-off"]
    assert [e.cause for e in bmc.events()][-1] == "ipmi-delayed"


def test_stop_kills_ipmi_sim_and_keeps_the_log(bmc: BmcSim) -> None:
    pid = bmc.pid
    assert pid is not None
    bmc.set_power(False)
    bmc.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert bmc.pid is None
    assert [e.event for e in bmc.events()] == ["power-off"]
    bmc.stop()  # idempotent


def test_password_stays_out_of_reprs(bmc: BmcSim) -> None:
    assert_no_secret(bmc, bmc.target(), bmc.password, *bmc.events())


def test_bad_credentials_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BmcSimError):
        BmcSim.start(tmp_path, password='quote"me')
