"""RedfishFencer against sushy-tools' emulator over TLS on loopback."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest

from hacluster.fence.redfish import RedfishFencer
from hacluster.ports import BmcTarget, FenceAction, FenceOutcome, PowerState, Secret
from raftlab.harness import free_ports

from .redfish_emulator import FakeSystem, RedfishEmulator, sushy_unavailable_reason
from .support import PASSWORD, assert_no_secret, assert_one_line, timed

_REASON = sushy_unavailable_reason()
pytestmark = [
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    # pyghmi's CA-verifying path builds its SSL context the deprecated way.
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
]

USER = "root"
# One fake system per test that changes power, so tests do not depend on order.
SYSTEMS = {
    name: FakeSystem(name, str(uuid.uuid4()), power_on=name != "already-off")
    for name in ("off", "already-off", "reboot", "identify", "probe", "no-verify", "tls")
}


@pytest.fixture(scope="module")
def emulators(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedfishEmulator, RedfishEmulator]]:
    """A normal emulator and one that refuses power-off, booted in parallel."""
    base = tmp_path_factory.mktemp("redfish")
    normal = RedfishEmulator(base / "normal", list(SYSTEMS.values()), USER, PASSWORD)
    refusing = RedfishEmulator(
        base / "refusing",
        [FakeSystem("only", str(uuid.uuid4()))],
        USER,
        PASSWORD,
        disable_power_off=True,
    )
    try:
        for emulator in (normal.start(), refusing.start()):
            emulator.wait_ready()
        yield normal, refusing
    finally:
        normal.stop()
        refusing.stop()


@pytest.fixture(scope="module")
def emulator(emulators: tuple[RedfishEmulator, RedfishEmulator]) -> RedfishEmulator:
    return emulators[0]


@pytest.fixture(scope="module")
def redfish() -> RedfishFencer:
    return RedfishFencer(poll_interval_s=0.05)


def target(emulator: RedfishEmulator, system: str | None, **overrides: object) -> BmcTarget:
    options = [("tls_fingerprint", emulator.fingerprint)]
    if system:
        options.append(("sysurl", SYSTEMS[system].uuid if system in SYSTEMS else system))
    base = BmcTarget(
        host=system or "h",
        driver="redfish",
        address="127.0.0.1",
        port=emulator.port,
        username=USER,
        password=Secret(PASSWORD),
        options=tuple(options),
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_off_reads_back_off(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    result = redfish.fence(target(emulator, "off"), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert "read back off" in result.evidence
    assert result.method == f"redfish https://127.0.0.1:{emulator.port}"
    assert redfish.probe(target(emulator, "off"), 10).power is PowerState.OFF
    assert_one_line(result)
    assert_no_secret(result)


def test_already_off(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    result = redfish.fence(target(emulator, "already-off"), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ALREADY_OFF, result.evidence
    assert "sending" not in result.evidence


def test_reboot(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    result = redfish.fence(target(emulator, "reboot"), FenceAction.REBOOT, 10)
    assert result.outcome is FenceOutcome.REBOOTED, result.evidence
    assert "sending power off" in result.evidence and "sending power on" in result.evidence


def test_identify(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    result = redfish.fence(target(emulator, "identify"), FenceAction.IDENTIFY, 10)
    assert result.outcome is FenceOutcome.NOTIFIED, result.evidence
    assert redfish.probe(target(emulator, "identify"), 10).power is PowerState.ON


def test_probe(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    probe = redfish.probe(target(emulator, "probe"), 10)
    assert probe.ok and probe.power is PowerState.ON, probe.detail
    assert_one_line(probe)
    assert_no_secret(probe)


def test_wrong_password_is_auth_rejected(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    wrong = target(emulator, "probe", password=Secret("Wr0ng-Redfish"))
    result = redfish.fence(wrong, FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.AUTH_REJECTED, result.evidence
    assert "Wr0ng-Redfish" not in result.evidence
    assert "auth-rejected" in redfish.probe(wrong, 10).detail


def test_refused_power_off_is_command_rejected(
    emulators: tuple[RedfishEmulator, RedfishEmulator], redfish: RedfishFencer
) -> None:
    refusing = emulators[1]
    result = redfish.fence(target(refusing, None), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.COMMAND_REJECTED, result.evidence
    assert "sending power off" in result.evidence


def test_nothing_listening_is_unreachable(redfish: RedfishFencer) -> None:
    (port,) = free_ports(1)
    silent = BmcTarget("h", "redfish", "127.0.0.1", port, "u", Secret("p"), verify_tls=False)
    result = timed(lambda: redfish.fence(silent, FenceAction.OFF, 2.0), 2.0)
    assert result.outcome is FenceOutcome.UNREACHABLE, result.evidence


def test_untrusted_certificate_is_refused(
    emulator: RedfishEmulator, redfish: RedfishFencer
) -> None:
    unpinned = target(emulator, "tls", options=(("sysurl", SYSTEMS["tls"].uuid),))
    result = redfish.fence(unpinned, FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ERROR and "certificate" in result.evidence
    wrong_pin = target(emulator, "tls", options=(("tls_fingerprint", "ab" * 32),))
    assert redfish.fence(wrong_pin, FenceAction.OFF, 10).outcome is FenceOutcome.ERROR
    assert redfish.probe(target(emulator, "tls"), 10).power is PowerState.ON  # untouched


def test_verify_tls_off_accepts_any_certificate(
    emulator: RedfishEmulator, redfish: RedfishFencer
) -> None:
    loose = target(
        emulator, "no-verify", options=(("sysurl", SYSTEMS["no-verify"].uuid),), verify_tls=False
    )
    assert redfish.fence(loose, FenceAction.OFF, 10).outcome is FenceOutcome.OFF


def test_several_systems_need_sysurl(emulator: RedfishEmulator, redfish: RedfishFencer) -> None:
    result = redfish.fence(target(emulator, None), FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ERROR and "sysurl" in result.evidence


def test_unknown_option_is_a_config_error(
    emulator: RedfishEmulator, redfish: RedfishFencer
) -> None:
    odd = target(emulator, "probe", options=(("sysurl", "x"), ("tls_fingerprnt", "x")))
    result = redfish.fence(odd, FenceAction.OFF, 10)
    assert result.outcome is FenceOutcome.ERROR and "tls_fingerprnt" in result.evidence
