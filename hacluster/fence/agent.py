"""Fencing through an external fence agent (fence-agents: fence_ipmilan, ...).

The agent gets its options as key=value lines on stdin: action, ip, ipport
(not for a non-IPMI agent when the port is 623, BmcTarget's default), username,
password (never on our command line), lanplus=1 for IPMI agents, cipher=N
when the target names a cipher suite, then `BmcTarget.options` (which override
the defaults, e.g. power_wait=0). Exit codes: 0 success,
for `status` 0 = on and 2 = off, anything else is a failure.

Each agent run gets what is left of the attempt's deadline; an agent still
running then is killed with its whole process group (it was started in a new
session), so no ipmitool child lingers.

Limits of the protocol: fence agents report most failures as exit 1 with a
free-text message. Messages that clearly mean "no answer" or "bad login" are
classified; fence_ipmilan says the same for a wrong password as for other
session failures, so that case ends up as ERROR with the agent's message.
Fence agents have no identify action: identify is NOTIFIED without running one.
Note that fence_ipmilan hands the password to ipmitool with -P (visible in
the process list while it runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence

from hacluster.fence.attempt import (
    Attempt,
    AuthRejected,
    BadConfig,
    CommandRejected,
    FenceFailure,
    NoAnswer,
)
from hacluster.fence.procedure import NotConfirmed, PowerSession, SessionFencer
from hacluster.ports import BmcTarget, PowerState

DEFAULT_SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
IPMI_PORT = 623
_AGENT_NAME = re.compile(r"^fence_[A-Za-z0-9_.-]+$")
_OPTION_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_NOISE = ("DeprecationWarning", "from pipes import", "Parse error: Ignoring unknown option")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_NO_ANSWER_WORDS = (
    "connection timed out",
    "unable to connect",
    "connection refused",
    "no route to host",
    "network is unreachable",
    "host unreachable",
)
_AUTH_WORDS = (
    "invalid password",
    "incorrect password",
    "authentication failed",
    "login failed",
    "unauthorized",
    "access denied",
    "invalid user",
)


def _summary(output: str) -> str:
    """The agent's last meaningful lines, without warnings and timestamps."""
    lines = [
        _TIMESTAMP.sub("", line.strip())
        for line in output.splitlines()
        if line.strip() and not any(noise in line for noise in _NOISE)
    ]
    return " / ".join(lines[-2:]) or "no output"


def _classify(action: str, code: int, summary: str) -> FenceFailure:
    text = f"agent {action} exit {code}: {summary}"
    lowered = summary.lower()
    if any(word in lowered for word in _NO_ANSWER_WORDS):
        return NoAnswer(text)
    if any(word in lowered for word in _AUTH_WORDS):
        return AuthRejected(text)
    if action in ("off", "on") and "timed out waiting" in lowered:
        return NotConfirmed(text)
    if action in ("off", "on") and code == 1:
        return CommandRejected(text)
    return FenceFailure(text)


def _stdin_lines(target: BmcTarget, agent_name: str) -> dict[str, str]:
    """Everything but `action`, in the order the agent should see it."""
    options: dict[str, str] = {}
    if target.address:
        options["ip"] = target.address
    # 623 is BmcTarget's default, IPMI's port: other agents (fence_virsh,
    # fence_redfish, ...) should use their own default rather than that.
    if target.port and (target.port != IPMI_PORT or agent_name.startswith("fence_ipmi")):
        options["ipport"] = str(target.port)
    if target.username:
        options["username"] = target.username
    if target.password.reveal():
        options["password"] = target.password.reveal()
    if agent_name.startswith("fence_ipmi"):
        options["lanplus"] = "1"
    if target.cipher_suite is not None:
        options["cipher"] = str(target.cipher_suite)
    for key, value in target.options:
        if not _OPTION_KEY.match(key) or any(c in value for c in "\r\n\0"):
            raise BadConfig(f"agent option {key!r} is not a single key=value line")
        options[key] = value
    return options


class _AgentSession:
    def __init__(self, path: str, options: dict[str, str], attempt: Attempt) -> None:
        self._path = path
        self._name = os.path.basename(path)
        self._options = options
        self._attempt = attempt

    def run(self, action: str) -> tuple[int, str]:
        """Run the agent once within the attempt's remaining time."""
        timeout = self._attempt.remaining()
        if timeout <= 0:
            raise NoAnswer(f"deadline reached before agent {action}")
        payload = "".join(f"{k}={v}\n" for k, v in {"action": action, **self._options}.items())
        try:
            proc = subprocess.Popen(
                [self._path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "LC_ALL": "C"},
            )
        except OSError as err:
            raise BadConfig(f"cannot run {self._path}: {err.strerror}") from None
        try:
            out, _ = proc.communicate(payload.encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise NoAnswer(f"agent {action} still running at the deadline; killed") from None
        summary = _summary(out.decode(errors="replace"))
        self._attempt.note(f"{self._name} {action} exit {proc.returncode} ({summary})")
        return proc.returncode, summary

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        # The agent leads its own process group (new session): kill all of it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # Reap it; a grandchild that left the group may still hold the pipe.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=2)

    def read_power(self) -> PowerState:
        code, summary = self.run("status")
        if code in (0, 2):
            return PowerState.ON if code == 0 else PowerState.OFF
        raise _classify("status", code, summary)

    def _switch(self, action: str) -> None:
        code, summary = self.run(action)
        if code != 0:
            raise _classify(action, code, summary)

    def power_off(self) -> None:
        self._switch("off")

    def power_on(self) -> None:
        self._switch("on")

    def identify(self) -> str:
        return "fence agents have no identify action; nothing sent"

    def close(self) -> None:
        pass


class AgentFencer(SessionFencer):
    """ports.Fencer running fence-agents executables (`BmcTarget.agent`)."""

    def __init__(
        self,
        *,
        poll_interval_s: float = 0.5,
        search_path: Sequence[str] = DEFAULT_SEARCH_PATH,
    ) -> None:
        super().__init__(poll_interval_s)
        self._search_path = os.pathsep.join(
            [*search_path, *os.environ.get("PATH", "").split(os.pathsep)]
        )

    def method(self, target: BmcTarget) -> str:
        return f"agent {target.agent or '?'} {target.address}:{target.port}"

    def _resolve(self, agent: str) -> str:
        """Only fence_* executables: the name comes from cluster settings, and
        this keeps a typo or a hostile value from running something else."""
        if not _AGENT_NAME.match(os.path.basename(agent)):
            raise BadConfig(f"agent must be a fence_* executable, not {agent!r}")
        found = agent if os.sep in agent else shutil.which(agent, path=self._search_path)
        if not found or not os.access(found, os.X_OK):
            raise BadConfig(f"fence agent {agent!r} not found")
        return found

    def _open(self, target: BmcTarget, attempt: Attempt) -> PowerSession:
        path = self._resolve(target.agent)
        return _AgentSession(path, _stdin_lines(target, os.path.basename(path)), attempt)

