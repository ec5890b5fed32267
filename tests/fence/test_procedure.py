"""The shared fence procedure over fake sessions (no BMC, no network)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.fence.attempt import Attempt, AuthRejected, CommandRejected, NoAnswer
from hacluster.fence.procedure import PowerSession, fence_with, probe_with
from hacluster.ports import (
    BmcTarget,
    FenceAction,
    FenceOutcome,
    FenceResult,
    PowerState,
    Secret,
)

from .support import PASSWORD, assert_no_secret, timed, wait_until

TARGET = BmcTarget("h", "fake", "192.0.2.1", 623, "admin", Secret(PASSWORD))


@dataclass
class FakeSession:
    """Power that switches after `reads_until_off` reads; scripted failures."""

    on: bool = True
    reads_until_off: int = 0
    fail_read: list[Exception] = field(default_factory=list)
    fail_on: Exception | None = None
    block_read: threading.Event | None = None
    calls: list[str] = field(default_factory=list)
    pending_off: int | None = None

    def read_power(self) -> PowerState:
        self.calls.append("read")
        if self.block_read is not None:
            self.block_read.wait()
        if self.fail_read:
            raise self.fail_read.pop(0)
        if self.pending_off is not None:
            self.pending_off -= 1
            if self.pending_off < 0:
                self.on, self.pending_off = False, None
        return PowerState.ON if self.on else PowerState.OFF

    def power_off(self) -> None:
        self.calls.append("off")
        self.pending_off = self.reads_until_off

    def power_on(self) -> None:
        self.calls.append("on")
        if self.fail_on is not None:
            raise self.fail_on
        self.on = True

    def identify(self) -> str:
        self.calls.append("identify")
        return "blinked"

    def close(self) -> None:
        self.calls.append("close")


def opener(session: FakeSession) -> Callable[[Attempt], PowerSession]:
    def open_session(attempt: Attempt) -> PowerSession:
        return session

    return open_session


def raise_(err: Exception) -> Callable[[], None]:
    def fail() -> None:
        raise err

    return fail


def run(
    session: FakeSession, action: FenceAction, deadline: float = 5, threaded: bool = False
) -> FenceResult:
    return fence_with(
        opener(session),
        TARGET,
        action,
        deadline,
        "fake",
        poll_s=0.001,
        threaded=threaded,
    )


def test_off_polls_until_off() -> None:
    session = FakeSession(reads_until_off=3)
    result = run(session, FenceAction.OFF)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert session.calls == ["read", "off", "read", "read", "read", "read", "close"]
    assert "read back off (read 4)" in result.evidence


def test_no_answer_while_polling_is_retried() -> None:
    session = FakeSession()
    send_off = session.power_off

    def off_then_busy() -> None:
        send_off()
        session.fail_read.append(NoAnswer("busy switching"))

    session.power_off = off_then_busy  # type: ignore[method-assign]
    result = run(session, FenceAction.OFF)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert session.calls.count("read") == 3  # before, no answer, off


def test_power_never_off_is_timeout_with_last_read() -> None:
    session = FakeSession(reads_until_off=10**9)
    result = timed(lambda: run(session, FenceAction.OFF, deadline=0.3), 0.3)
    assert result.outcome is FenceOutcome.TIMEOUT
    assert "last read on" in result.evidence


def test_no_answer_before_and_after_the_command() -> None:
    before = run(FakeSession(fail_read=[NoAnswer("silent")]), FenceAction.OFF)
    assert before.outcome is FenceOutcome.UNREACHABLE

    session = FakeSession()
    session.power_off = raise_(NoAnswer("lost"))  # type: ignore[method-assign]
    assert run(session, FenceAction.OFF).outcome is FenceOutcome.TIMEOUT


def test_rejections_keep_their_kind() -> None:
    auth = run(FakeSession(fail_read=[AuthRejected("no")]), FenceAction.OFF)
    assert auth.outcome is FenceOutcome.AUTH_REJECTED
    command = run(FakeSession(fail_read=[CommandRejected("no")]), FenceAction.OFF)
    assert command.outcome is FenceOutcome.COMMAND_REJECTED


def test_reboot_whose_power_on_fails_is_still_off() -> None:
    session = FakeSession(fail_on=CommandRejected("on refused"))
    result = run(session, FenceAction.REBOOT)
    assert result.outcome is FenceOutcome.OFF, result.evidence
    assert "power on failed" in result.evidence


def test_none_and_identify_never_touch_power() -> None:
    session = FakeSession()
    assert run(session, FenceAction.NONE).outcome is FenceOutcome.NOTIFIED
    assert session.calls == []
    assert run(session, FenceAction.IDENTIFY).outcome is FenceOutcome.NOTIFIED
    assert session.calls == ["identify", "close"]


def test_a_crashing_backend_is_an_error_not_an_exception() -> None:
    session = FakeSession(fail_read=[RuntimeError(f"boom {PASSWORD}")])
    result = run(session, FenceAction.OFF)
    assert result.outcome is FenceOutcome.ERROR
    assert "boom" in result.evidence
    assert_no_secret(result)


def test_abandoned_worker_sends_nothing_after_the_deadline() -> None:
    release = threading.Event()
    session = FakeSession(block_read=release)
    result = timed(lambda: run(session, FenceAction.OFF, deadline=0.3, threaded=True), 0.3)
    assert result.outcome is FenceOutcome.UNREACHABLE
    assert "abandoned" in result.evidence
    release.set()  # the stuck call returns now, long after we reported
    wait_until(lambda: "close" in session.calls, 5, "the worker to finish")
    assert "off" not in session.calls


def test_invalid_deadlines() -> None:
    for deadline in (0, -1, float("inf"), float("nan")):
        assert run(FakeSession(), FenceAction.OFF, deadline=deadline).outcome is FenceOutcome.ERROR
        probe = probe_with(opener(FakeSession()), TARGET, deadline, "fake", threaded=False)
        assert not probe.ok


def test_probe_reports_power() -> None:
    probe = probe_with(opener(FakeSession(on=False)), TARGET, 5, "fake", threaded=True)
    assert probe.ok and probe.power is PowerState.OFF
    failed = probe_with(
        opener(FakeSession(fail_read=[AuthRejected("nope")])),
        TARGET,
        5,
        "fake",
        threaded=False,
    )
    assert not failed.ok and failed.detail.startswith("fake: auth-rejected")
