"""IPMI-over-LAN fencing with pyghmi (the only module importing pyghmi.ipmi).

`IpmiFencer` (parent side) runs each attempt in a worker process and kills it
at the deadline (see `worker.py` for why). The worker side is `worker_main`
and `open_session` below; pyghmi is imported only there, so the daemon process
itself never loads it.

pyghmi traps handled here (see MACHINE-NOTES):
- Credentials go in as bytes: with str, a second Command to the same BMC in
  one process hangs.
- `set_power(wait=True)` sleeps >= 1 s per read; we send with wait=False and
  poll `get_power` ourselves.
- One I/O thread and event loop serve all of a process's sessions, so a silent
  BMC slows the others, and pyghmi can block ~29 s or forever: a worker process
  per attempt, killed at the deadline, reused only after a clean answer.
- Even on its own, a synchronous pyghmi call now and then stalled ~0.5-1 s: the
  reply arrives and pyghmi's I/O thread queues it between the caller's check and
  its registering as a waiter, so the caller sleeps until its retransmit timer
  (`_io_wait`). The worker caps each of those waits at WAKE_UP_S
  (`bound_pyghmi_waits`): every pyghmi wait loop re-checks after a wait, so a
  queued reply is seen within that (measured: 300 `get_power` to ipmi_sim, max
  0.96 s and 7% over 0.3 s before, max 0.04 s after).
- Sessions are logged out after the answer went to the parent: BMCs have few
  session slots, and a session cached from before a BMC reboot costs ~20 s of
  retries when pyghmi reuses it.
- pyghmi chooses the cipher suite itself: it offers 17 (SHA-256) and falls back
  to 3 (SHA-1) when the BMC refuses. A target asking for another suite cannot be
  served by pyghmi (use driver "agent" with fence_ipmilan for that).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from hacluster.fence.attempt import (
    Attempt,
    AuthRejected,
    BadConfig,
    CommandRejected,
    FenceFailure,
    NoAnswer,
    describe_error,
)
from hacluster.fence.procedure import (
    PowerSession,
    finish_fence,
    finish_probe,
    invalid_deadline,
    outcome_for,
)
from hacluster.fence.worker import (
    CLEANUP_THREAD_PREFIX,
    Launcher,
    Request,
    WorkerFailed,
    run_in_worker,
)
from hacluster.ports import (
    BmcProbe,
    BmcTarget,
    FenceAction,
    FenceOutcome,
    FenceResult,
    PowerState,
)

SUPPORTED_CIPHER_SUITES = (3, 17)
# pyghmi's words for "no reply": login gives up with no message, commands with
# "timeout" or "Session no longer connected".
_NO_ANSWER_TEXTS = ("", "none", "timeout", "session no longer connected")
_AUTH_TEXTS = ("password", "unauthorized", "invalid role", "integrity", "rakp")


# ------------------------------------------------------------------ child side


def _login_failure(err: Exception) -> FenceFailure:
    """Translate an error raised while pyghmi opened the session."""
    text = str(err).strip()
    lowered = text.lower()
    if "unable to transmit" in lowered or "name or service" in lowered:
        return BadConfig(f"cannot send to BMC address: {describe_error(err)}")
    if isinstance(err, OSError) or lowered in _NO_ANSWER_TEXTS:
        return NoAnswer("no answer to session setup")
    if any(word in lowered for word in _AUTH_TEXTS):
        return AuthRejected(f"BMC refused the credentials: {text}")
    return CommandRejected(f"BMC refused a session: {text}")


def _command_failure(err: Exception, what: str) -> Exception:
    """Translate an error raised by a command on an open session."""
    from pyghmi import exceptions as pyghmi_exc

    text = str(err).strip()
    if isinstance(err, OSError) or text.lower() in _NO_ANSWER_TEXTS:
        return NoAnswer(f"no answer to {what}")
    if isinstance(err, pyghmi_exc.PyghmiException):
        return CommandRejected(f"BMC rejected {what}: {text}")
    return err  # not a BMC answer: a bug or a library surprise, reported as ERROR


class _IpmiSession:
    def __init__(self, cmd: Any, identify_s: int) -> None:
        self._cmd = cmd
        self._identify_s = identify_s

    def read_power(self) -> PowerState:
        try:
            state = self._cmd.get_power().get("powerstate")
        except Exception as err:
            raise _command_failure(err, "get power") from None
        return {"on": PowerState.ON, "off": PowerState.OFF}.get(state, PowerState.UNKNOWN)

    def _set_power(self, state: str) -> None:
        try:
            self._cmd.set_power(state, wait=False)
        except Exception as err:
            raise _command_failure(err, f"power {state}") from None

    def power_off(self) -> None:
        self._set_power("off")

    def power_on(self) -> None:
        self._set_power("on")

    def identify(self) -> str:
        try:
            self._cmd.set_identify(on=True, duration=self._identify_s)
        except Exception as err:
            raise _command_failure(err, "chassis identify") from None
        return f"sent chassis identify for {self._identify_s} s"

    def close(self) -> None:
        # Log out once the answer is out (worker.serve waits for this thread).
        def logout() -> None:
            # A dead BMC cannot be logged out of: nothing more to do then.
            with contextlib.suppress(Exception):
                self._cmd.ipmi_session.logout()

        threading.Thread(target=logout, name=f"{CLEANUP_THREAD_PREFIX}-logout").start()


def open_session(request: Request, attempt: Attempt) -> PowerSession:
    """Log in (child side)."""
    from pyghmi.ipmi import command as ipmi_command

    user, password = str(request["username"]), str(request["password"])
    attempt.note(f"login as {user or '(anonymous)'}")
    try:
        cmd = ipmi_command.Command(
            bmc=str(request["address"]),
            userid=user.encode(),
            password=password.encode(),
            port=int(request["port"]),
        )
    except Exception as err:
        raise _login_failure(err) from None
    return _IpmiSession(cmd, int(request["identify_s"]))


# ------------------------------------------------------------------ parent side


def _config_error(target: BmcTarget) -> str | None:
    if not target.address:
        return "no BMC address"
    if target.cipher_suite not in (None, *SUPPORTED_CIPHER_SUITES):
        return f"cipher suite {target.cipher_suite} not supported by pyghmi (3 or 17)"
    return None


# Only a worker whose BMC behaved is reused: after silence or a refusal,
# pyghmi's process-wide state may hold a half-dead session.
_CLEAN_OUTCOMES = frozenset(
    {FenceOutcome.OFF, FenceOutcome.ALREADY_OFF, FenceOutcome.REBOOTED, FenceOutcome.NOTIFIED}
)


class IpmiFencer:
    """ports.Fencer over IPMI v2 (RMCP+); safe to share between threads.
    Keeps one idle worker process; `close()` stops it."""

    def __init__(
        self, *, poll_interval_s: float = 0.05, identify_s: int = 15, keep_idle: bool = True
    ) -> None:
        self._poll_s = poll_interval_s
        self._identify_s = max(1, min(255, identify_s))
        self._launcher = Launcher(__name__, "worker_main", keep_idle=keep_idle)

    def warm(self) -> None:
        """Start the idle worker now, so the first attempt does not wait
        ~0.2 s for an interpreter and pyghmi's import."""
        self._launcher.warm()

    def close(self) -> None:
        """Stop the idle worker (attempts still running are not affected)."""
        self._launcher.close()

    @staticmethod
    def method(target: BmcTarget) -> str:
        return f"ipmi {target.address}:{target.port}"

    def _run(
        self, op: str, target: BmcTarget, action: FenceAction, attempt: Attempt
    ) -> dict[str, Any] | None:
        """One request in a worker; None if it had no answer by the deadline."""
        request = {
            "op": op,
            "action": action.value,
            "address": target.address,
            "port": target.port,
            "username": target.username,
            "password": target.password.reveal(),
            "poll_s": self._poll_s,
            "identify_s": self._identify_s,
        }
        proc, reusable = self._launcher.take(), False
        try:
            final = run_in_worker(proc, request, attempt, target.password)
            if final is not None:
                answer = final.get("fence") or final.get("probe") or [None]
                reusable = answer[0] in _CLEAN_OUTCOMES or answer[0] is True
            return final
        finally:
            self._launcher.release(proc, reusable)

    def fence(self, target: BmcTarget, action: FenceAction, deadline_s: float) -> FenceResult:
        method = self.method(target)
        if invalid_deadline(deadline_s):
            return FenceResult(FenceOutcome.ERROR, f"invalid deadline {deadline_s!r}", method)
        attempt = Attempt(deadline_s)
        problem = _config_error(target)
        done: tuple[FenceOutcome, str] | None
        if action is FenceAction.NONE:
            done = (FenceOutcome.NOTIFIED, "action none: nothing sent")
        elif problem:
            done = (FenceOutcome.ERROR, problem)
        else:
            try:
                final = self._run("fence", target, action, attempt)
                done = None if final is None else _fence_answer(final)
            except WorkerFailed as err:
                done = (outcome_for(err, attempt, action), str(err))
        return finish_fence(target, action, attempt, done, deadline_s, method)

    def probe(self, target: BmcTarget, deadline_s: float) -> BmcProbe:
        method = self.method(target)
        if invalid_deadline(deadline_s):
            return BmcProbe(False, PowerState.UNKNOWN, f"invalid deadline {deadline_s!r}")
        attempt = Attempt(deadline_s)
        problem = _config_error(target)
        done: tuple[bool, PowerState, str] | None
        if problem:
            done = (False, PowerState.UNKNOWN, f"error: {problem}")
        else:
            try:
                final = self._run("probe", target, FenceAction.NONE, attempt)
                done = None if final is None else _probe_answer(final)
            except WorkerFailed as err:
                done = (False, PowerState.UNKNOWN, f"error: {err}")
        return finish_probe(target, attempt, done, deadline_s, method)


def _fence_answer(final: dict[str, Any]) -> tuple[FenceOutcome, str]:
    try:
        outcome, detail = final["fence"]
        return FenceOutcome(outcome), str(detail)
    except (KeyError, TypeError, ValueError):
        raise WorkerFailed(f"fence worker answered {str(final)[:200]}") from None


def _probe_answer(final: dict[str, Any]) -> tuple[bool, PowerState, str]:
    try:
        ok, power, detail = final["probe"]
        return bool(ok), PowerState(power), str(detail)
    except (KeyError, TypeError, ValueError):
        raise WorkerFailed(f"fence worker answered {str(final)[:200]}") from None


WAKE_UP_S = 0.02  # longest a pyghmi caller sleeps before it looks at its replies again


def bound_pyghmi_waits() -> bool:
    """Cap pyghmi's internal waits at WAKE_UP_S (see the module's notes); False when
    this pyghmi has no `_io_wait` of the expected shape (then nothing is changed)."""
    import inspect

    from pyghmi.ipmi.private import session

    original = getattr(session, "_io_wait", None)
    if original is None or getattr(original, "bounded", False):
        return original is not None
    if list(inspect.signature(original).parameters) != ["timeout", "myaddr", "evq"]:
        return False

    def bounded_io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
        original(min(timeout, WAKE_UP_S), myaddr, evq)

    bounded_io_wait.bounded = True  # type: ignore[attr-defined]
    session._io_wait = bounded_io_wait
    return True


def worker_main() -> int:
    """Entry point of the worker process (see `worker.Launcher`)."""
    from hacluster.fence.worker import serve

    def import_pyghmi() -> object:
        from pyghmi.ipmi import command

        bound_pyghmi_waits()
        return command

    return serve(open_session, import_pyghmi)
