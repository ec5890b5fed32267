"""The watchdog a peer feeds (daemon/watchdog.py): the device protocol against a
stand-in device file (this machine has no /dev/watchdog and no softdog), the command
kind with real commands, and the feeder's decisions over a stepped clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.core.selffence import SelfFence
from hacluster.daemon.watchdog import (
    CommandWatchdog,
    LinuxWatchdog,
    WatchdogError,
    WatchdogFeeder,
)
from hacluster.fsm.model import Watchdog, WatchdogKind


def test_a_device_file_is_fed_by_writes_and_disarmed_by_the_magic_close(tmp_path: Path) -> None:
    stand_in = tmp_path / "watchdog"
    stand_in.write_bytes(b"")
    device = LinuxWatchdog(str(stand_in), timeout_s=10.0)
    device.arm()  # no ioctls on a plain file: fed by a write, as the kernel accepts
    device.feed()
    device.disarm()
    assert stand_in.read_bytes() == b"\0\0V"
    with pytest.raises(WatchdogError, match="is not armed"):
        device.feed()


def test_a_missing_device_is_named(tmp_path: Path) -> None:
    device = LinuxWatchdog(str(tmp_path / "nope"), timeout_s=10.0)
    with pytest.raises(WatchdogError, match=r"cannot open watchdog .*nope: No such file"):
        device.arm()


def test_the_command_kind_runs_its_commands(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    device = CommandWatchdog(["touch", str(fed)], ["rm", "-f", str(fed)], timeout_s=5.0)
    device.arm()
    assert fed.exists()
    device.disarm()
    assert not fed.exists()
    failing = CommandWatchdog(["sh", "-c", "echo broken >&2; exit 3"], [], timeout_s=5.0)
    with pytest.raises(WatchdogError, match="exited 3: broken"):
        failing.feed()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_feeder_arms_on_the_first_allowance_and_fires_once(tmp_path: Path) -> None:
    stand_in = tmp_path / "watchdog"
    stand_in.write_bytes(b"")
    clock, fired = Clock(), []
    policy = SelfFence(self_fence_s=8.0)
    feeder = WatchdogFeeder(LinuxWatchdog(str(stand_in), 5.0), policy,
                            lambda: fired.append(clock.now), clock)
    feeder.step()
    assert not feeder.armed and stand_in.read_bytes() == b""  # never acknowledged
    assert feeder.record(8.0) == Watchdog(WatchdogKind.DEVICE, 5.0, 8.0, armed=False)
    policy.sent(1, clock.now)
    policy.acknowledged(1)
    for _ in range(3):
        feeder.step()
        clock.now += 2.0
    assert feeder.armed and stand_in.read_bytes() == b"\0\0\0"
    assert feeder.record(8.0).armed
    clock.now = 108.0  # the allowance ran out
    feeder.step()
    feeder.step()
    assert fired == [108.0]
    assert stand_in.read_bytes() == b"\0\0\0"  # not fed again: the machine resets
    assert feeder.record(8.0).armed  # still armed: it resets the machine
    feeder.stop(disarm=False)
