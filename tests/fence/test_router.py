"""FenceRouter: dispatch by driver, plug-in backends, lazy imports."""

from __future__ import annotations

import subprocess
import sys

from hacluster.fence import FenceRouter, make_fencer
from hacluster.lab.bmc import BmcSim
from hacluster.ports import (
    BmcProbe,
    BmcTarget,
    FenceAction,
    FenceOutcome,
    FenceResult,
    PowerState,
    Secret,
)

from .support import PASSWORD, assert_no_secret


class RecordingFencer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, FenceAction]] = []

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        self.calls.append((target.host, action))
        return FenceResult(FenceOutcome.OFF, "recorded", "recording")

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        return BmcProbe(True, PowerState.ON, "recorded")


class BrokenFencer:
    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        raise RuntimeError(f"oops {target.password.reveal()}")

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        raise RuntimeError(f"oops {target.password.reveal()}")


def test_default_drivers() -> None:
    assert make_fencer().drivers() == ["agent", "ipmi", "redfish"]


def test_plugin_backend_is_used_and_built_once() -> None:
    built: list[RecordingFencer] = []

    def factory() -> RecordingFencer:
        built.append(RecordingFencer())
        return built[-1]

    router = make_fencer({"recording": factory})
    target = BmcTarget("h1", driver="recording")
    assert router.fence(target, FenceAction.OFF, 5).outcome is FenceOutcome.OFF
    assert router.probe(target, 5).ok
    router.fence(target, FenceAction.REBOOT, 5)
    assert len(built) == 1
    assert built[0].calls == [("h1", FenceAction.OFF), ("h1", FenceAction.REBOOT)]


def test_unknown_driver_is_an_error() -> None:
    router = FenceRouter({})
    result = router.fence(BmcTarget("h", driver="carrier-pigeon"), FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.ERROR
    assert "carrier-pigeon" in result.evidence
    assert not router.probe(BmcTarget("h", driver="carrier-pigeon"), 5).ok


def test_a_raising_backend_becomes_an_error_without_the_password() -> None:
    router = make_fencer({"broken": BrokenFencer})
    target = BmcTarget("h", driver="broken", password=Secret(PASSWORD))
    result = router.fence(target, FenceAction.OFF, 5)
    assert result.outcome is FenceOutcome.ERROR and "oops" in result.evidence
    probe = router.probe(target, 5)
    assert not probe.ok
    assert_no_secret(result, probe)


def test_routes_ipmi_to_a_real_bmc(bmc: BmcSim) -> None:
    router = make_fencer()
    try:
        result = router.fence(bmc.target("h1"), FenceAction.OFF, 10)
        assert result.outcome is FenceOutcome.OFF, result.evidence
    finally:
        router.close()


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, hacluster.fence as f\n"
        "r = f.make_fencer()\n"
        "r.fence(f.BmcTarget('h', driver='nope'), f.FenceAction.OFF, 1)\n"
        "assert not [m for m in sys.modules if m.startswith(('pyghmi', 'hacluster.fence.'))]\n"
        "r.backend('agent'); r.backend('ipmi')\n"
        "assert 'hacluster.fence.agent' in sys.modules\n"
        "assert 'pyghmi' not in sys.modules  # only IPMI worker processes import it\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
