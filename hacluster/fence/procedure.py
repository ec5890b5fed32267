"""The fence procedure, written once over a small `PowerSession` interface.

off:      read power; already off -> ALREADY_OFF (nothing sent); else send off
          and poll the power state until it reads off -> OFF, or TIMEOUT.
reboot:   off as above (already off is fine), then on; read back on -> REBOOTED.
          If the host was confirmed off but power-on fails, the result is OFF:
          the host is safely down, it just did not come back.
none:     NOTIFIED, nothing sent.
identify: light the chassis identify LED -> NOTIFIED.

No answer before any power command went out is UNREACHABLE; after it, TIMEOUT.
Backends supply `open_session`. IPMI runs the procedure in a worker process
killed at the deadline (worker.py), Redfish in a thread abandoned at the
deadline, and the agent backend bounds each agent run itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from hacluster.fence.attempt import (
    Abandoned,
    Attempt,
    AuthRejected,
    BadConfig,
    CommandRejected,
    FenceFailure,
    NoAnswer,
    describe_error,
    run_abandonable,
    scrub,
)
from hacluster.ports import BmcProbe, BmcTarget, FenceAction, FenceOutcome, FenceResult, PowerState


class PowerSession(Protocol):
    """What a backend offers once connected. Methods raise FenceFailure
    subclasses; `close` must not raise."""

    def read_power(self) -> PowerState: ...

    def power_off(self) -> None: ...

    def power_on(self) -> None: ...

    def identify(self) -> str:
        """Light the identify LED; return what was done, for evidence."""
        ...

    def close(self) -> None: ...


SessionOpener = Callable[[Attempt], PowerSession]


class NotConfirmed(FenceFailure):
    """The power never read back as wanted before the deadline."""


_FAILURE_OUTCOMES: dict[type[FenceFailure], FenceOutcome] = {
    AuthRejected: FenceOutcome.AUTH_REJECTED,
    CommandRejected: FenceOutcome.COMMAND_REJECTED,
    BadConfig: FenceOutcome.ERROR,
    NotConfirmed: FenceOutcome.TIMEOUT,
}


def outcome_for(
    failure: BaseException | None, attempt: Attempt, action: FenceAction
) -> FenceOutcome:
    """Classify a failure (None: the worker was abandoned at the deadline)."""
    if attempt.confirmed_off and action is FenceAction.REBOOT:
        return FenceOutcome.OFF
    if failure is None or isinstance(failure, (NoAnswer, Abandoned)):
        return FenceOutcome.TIMEOUT if attempt.power_command_sent else FenceOutcome.UNREACHABLE
    for kind, outcome in _FAILURE_OUTCOMES.items():
        if isinstance(failure, kind):
            return outcome
    return FenceOutcome.ERROR


def _read(session: PowerSession, attempt: Attempt) -> PowerState:
    attempt.checkpoint()
    state = session.read_power()
    attempt.note(f"read {state.value}")
    return state


def _await_power(session: PowerSession, attempt: Attempt, want: PowerState, poll_s: float) -> int:
    """Poll until the power reads `want`; return the number of reads. A read
    that gets no answer is retried (BMCs can be busy while switching power)."""
    reads = 0
    while True:
        try:
            reads += 1
            attempt.checkpoint()
            state = session.read_power()
            attempt.update(last_read=f"{state.value} (read {reads})")
            if state is want:
                attempt.note(f"read back {want.value} (read {reads})")
                return reads
        except NoAnswer as err:
            attempt.update(last_read=f"no answer ({err})")
        if attempt.remaining() <= 0:
            raise NotConfirmed(
                f"power not read back {want.value} within the deadline; "
                f"last read {attempt.last_read}"
            )
        attempt.sleep(poll_s)


def _power_off(session: PowerSession, attempt: Attempt, poll_s: float) -> FenceOutcome:
    if _read(session, attempt) is PowerState.OFF:
        attempt.update(confirmed_off=True)
        return FenceOutcome.ALREADY_OFF
    attempt.checkpoint()
    attempt.update(power_command_sent=True)
    attempt.note("sending power off")  # noted first: the reply may never come
    session.power_off()
    attempt.note("power off accepted")
    _await_power(session, attempt, PowerState.OFF, poll_s)
    attempt.update(confirmed_off=True)
    return FenceOutcome.OFF


def _reboot(session: PowerSession, attempt: Attempt, poll_s: float) -> tuple[FenceOutcome, str]:
    _power_off(session, attempt, poll_s)
    try:
        attempt.checkpoint()
        attempt.note("sending power on")
        session.power_on()
        attempt.note("power on accepted")
        _await_power(session, attempt, PowerState.ON, poll_s)
    except FenceFailure as err:
        return FenceOutcome.OFF, f"confirmed off, but power on failed: {err}"
    return FenceOutcome.REBOOTED, "off confirmed, then powered on"


def run_action(
    open_session: SessionOpener, action: FenceAction, attempt: Attempt, poll_s: float
) -> tuple[FenceOutcome, str]:
    """The whole procedure; never raises except Abandoned."""
    if action is FenceAction.NONE:
        return FenceOutcome.NOTIFIED, "action none: nothing sent"
    try:
        attempt.checkpoint()
        session = open_session(attempt)
    except FenceFailure as err:
        return outcome_for(err, attempt, action), str(err)
    try:
        attempt.note("session open")
        if action is FenceAction.IDENTIFY:
            attempt.checkpoint()
            return FenceOutcome.NOTIFIED, session.identify()
        if action is FenceAction.REBOOT:
            return _reboot(session, attempt, poll_s)
        outcome = _power_off(session, attempt, poll_s)
        if outcome is FenceOutcome.ALREADY_OFF:
            return outcome, "already off: nothing sent"
        return outcome, "power read back off"
    except FenceFailure as err:
        return outcome_for(err, attempt, action), str(err)
    finally:
        session.close()


FenceDone = tuple[FenceOutcome, str]
ProbeDone = tuple[bool, PowerState, str]


def invalid_deadline(deadline_s: float) -> bool:
    return not (
        isinstance(deadline_s, (int, float)) and math.isfinite(deadline_s) and deadline_s > 0
    )


def _gave_up_detail(attempt: Attempt, deadline_s: float) -> str:
    if attempt.confirmed_off:
        what = "power on not confirmed"
    elif attempt.power_command_sent:
        what = f"power not read back off; last read {attempt.last_read}"
    else:
        what = "no answer"
    return f"{what} within the {deadline_s:g} s deadline; attempt abandoned"


def finish_fence(
    target: BmcTarget,
    action: FenceAction,
    attempt: Attempt,
    done: FenceDone | None,
    deadline_s: float,
    method: str,
) -> FenceResult:
    """The FenceResult of an attempt (`done` None: given up at the deadline)."""
    if done is None:
        outcome, detail = outcome_for(None, attempt, action), _gave_up_detail(attempt, deadline_s)
    else:
        outcome, detail = done
    steps = "; ".join([*attempt.notes(), detail])
    evidence = f"{action.value} via {method}: {steps}; {attempt.elapsed() * 1000:.0f}ms total"
    return FenceResult(outcome, scrub(evidence, target.password), method, attempt.elapsed())


def _probe_failure(err: FenceFailure, attempt: Attempt) -> ProbeDone:
    kind = outcome_for(err, attempt, FenceAction.NONE).value
    return False, PowerState.UNKNOWN, f"{kind}: {err}"


def probe_action(open_session: SessionOpener, attempt: Attempt) -> ProbeDone:
    """Open a session and read the power state once."""
    try:
        session = open_session(attempt)
    except FenceFailure as err:
        return _probe_failure(err, attempt)
    try:
        state = _read(session, attempt)
        return True, state, f"answers, power {state.value}"
    except FenceFailure as err:
        return _probe_failure(err, attempt)
    finally:
        session.close()


def finish_probe(
    target: BmcTarget, attempt: Attempt, done: ProbeDone | None, deadline_s: float, method: str
) -> BmcProbe:
    if done is None:
        done = (False, PowerState.UNKNOWN, f"unreachable: no answer within {deadline_s:g} s")
    ok, power, detail = done
    text = scrub(f"{method}: {detail}; {attempt.elapsed() * 1000:.0f}ms", target.password)
    return BmcProbe(ok, power, text, attempt.elapsed())


def fence_with(
    open_session: SessionOpener,
    target: BmcTarget,
    action: FenceAction,
    deadline_s: float,
    method: str,
    *,
    poll_s: float,
    threaded: bool,
) -> FenceResult:
    """Run one attempt in this thread (the backend bounds every call itself)
    or in a thread abandoned at the deadline; never raises."""
    if invalid_deadline(deadline_s):
        return FenceResult(FenceOutcome.ERROR, f"invalid deadline {deadline_s!r}", method)
    attempt = Attempt(deadline_s)
    done: FenceDone | None
    try:
        if threaded:
            done = run_abandonable(
                lambda: run_action(open_session, action, attempt, poll_s),
                attempt,
                name=f"fence-{target.host}",
            )
        else:
            done = run_action(open_session, action, attempt, poll_s)
    except Exception as err:  # a backend bug must not crash the caller
        done = (outcome_for(err, attempt, action), describe_error(err))
    return finish_fence(target, action, attempt, done, deadline_s, method)


def probe_with(
    open_session: SessionOpener,
    target: BmcTarget,
    deadline_s: float,
    method: str,
    *,
    threaded: bool,
) -> BmcProbe:
    """Probe in this thread or in an abandonable one; never raises."""
    if invalid_deadline(deadline_s):
        return BmcProbe(False, PowerState.UNKNOWN, f"invalid deadline {deadline_s!r}")
    attempt = Attempt(deadline_s)
    done: ProbeDone | None
    try:
        if threaded:
            done = run_abandonable(
                lambda: probe_action(open_session, attempt), attempt, f"probe-{target.host}"
            )
        else:
            done = probe_action(open_session, attempt)
    except Exception as err:
        done = (False, PowerState.UNKNOWN, f"error: {describe_error(err)}")
    return finish_probe(target, attempt, done, deadline_s, method)


class SessionFencer:
    """A ports.Fencer made of one method: open a PowerSession for a target.
    `threaded`: run each attempt in a thread abandoned at the deadline (for
    libraries that cannot bound their own calls)."""

    threaded = False

    def __init__(self, poll_interval_s: float) -> None:
        self._poll_s = poll_interval_s

    def method(self, target: BmcTarget) -> str:
        raise NotImplementedError

    def _open(self, target: BmcTarget, attempt: Attempt) -> PowerSession:
        raise NotImplementedError

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        return fence_with(lambda attempt: self._open(target, attempt), target, action,
                          deadline_s, self.method(target), poll_s=self._poll_s,
                          threaded=self.threaded)

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        return probe_with(lambda attempt: self._open(target, attempt), target, deadline_s,
                          self.method(target), threaded=self.threaded)
