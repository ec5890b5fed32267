"""A simulated BMC for tests and the demo: OpenIPMI's ipmi_sim on a UDP port.

`BmcSim.start(dir)` writes a lan.conf and an emulator command file into `dir`,
starts `ipmi_sim` on `address` and a free UDP port (or the one given), and
points its `chassis_control` at `hacluster.lab.chassis`, which keeps the power
state in `dir/power`, runs `power_off_cmd` / `power_on_cmd` when the power
changes (e.g. `["kill", "-KILL", "--", f"-{pgid}"]` to kill a simulated host's
process group; procps kill needs the `--`) and appends every
change to `dir/power.log` (JSON lines with wall and CLOCK_MONOTONIC times), so
an end-to-end observer can check when a host really lost power. Every `get power`
an IPMI client asks is logged too (`reads()`): a fence of a host that is already
off changes no power, and its reads are all the BMC sees of it.

Modes simulate the BMC faults a fencer must tell apart (`set_mode`):

- WORKS: answers, changes power at once.
- SLOW: acknowledges a power command but changes the power `delay_s` later.
- ALREADY_OFF: powers the chassis off now (running the off command), then WORKS.
- UNREACHABLE: ipmi_sim is stopped; nothing listens on the port.
- FROZEN: ipmi_sim is SIGSTOPped; the port is open but nothing answers (a BMC
  that hangs mid-session). Leaving FROZEN restarts it, so queued requests are
  dropped rather than answered late.
- REJECT_CREDENTIALS: ipmi_sim runs with a different password than `password`.

A mode change that restarts ipmi_sim also drops a SLOW change still pending.
Clients need cipher suite 3 against ipmi_sim (`ipmitool -C 3`, fence_ipmilan
`cipher=3`); pyghmi falls back to it on its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from hacluster.lab import chassis
from hacluster.ports import BmcTarget, PowerState, Secret

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,16}$")
_PASSWORD_RE = re.compile(r"^[A-Za-z0-9._-]{1,20}$")  # IPMI 2.0 allows 20 bytes
_START_ATTEMPTS = 5


class BmcSimError(RuntimeError):
    """ipmi_sim could not be started or configured."""


class BmcMode(enum.StrEnum):
    WORKS = "works"
    SLOW = "slow"
    ALREADY_OFF = "already-off"
    UNREACHABLE = "unreachable"
    FROZEN = "frozen"
    REJECT_CREDENTIALS = "reject-credentials"


@dataclasses.dataclass(frozen=True)
class PowerEvent:
    """One line of power.log. event: power-off, power-on, power-accepted (a
    slow BMC took the command), identify. cause: ipmi, ipmi-delayed, lab.
    A power change began at `began` (its hook killed or started the host's
    processes) and was done at `mono`; both CLOCK_MONOTONIC."""

    wall: float
    mono: float
    event: str
    cause: str
    detail: str
    began: float = 0.0


@dataclasses.dataclass(frozen=True)
class PowerRead:
    """One `get power` an IPMI client asked (a fence's or a probe's read, a
    host checking its own BMC): when (CLOCK_MONOTONIC) and what it answered."""

    mono: float
    on: bool


def _free_udp_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:  # an address of another namespace: any free port will do
            probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _owns_udp_port(pid: int, port: int) -> bool:
    """Is `port` bound by a socket of process `pid`? Read from the process's own
    /proc view, so it also works when it runs in another network namespace.
    (ipmi_sim does not exit when its port is taken, so we must check.)"""
    inodes: set[str] = set()
    for table in ("udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
    return False


def rmcp_ping(address: str, port: int, timeout_s: float) -> bool:
    """Send an RMCP/ASF presence ping; True if the BMC answered with a pong."""
    ping = bytes([6, 0, 0xFF, 6, 0, 0, 0x11, 0xBE, 0x80, 0x42, 0, 0])
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.sendto(ping, (address, port))
            data, _ = sock.recvfrom(512)
        except OSError:
            return False
    return len(data) > 8 and data[8] == 0x40  # ASF presence pong


def _command_argv(command: str | Sequence[str] | None) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return list(command)


@dataclasses.dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    serves_password: str
    frozen: bool = False


class BmcSim:
    """One ipmi_sim BMC. Build with `BmcSim.start(...)`; always `stop()` it
    (or use it as a context manager)."""

    def __init__(
        self,
        directory: Path,
        address: str,
        port: int,
        user: str,
        password: str,
        launch_prefix: Sequence[str],
    ) -> None:
        self.directory = directory
        self.address = address
        self.port = port
        self.user = user
        self._password = password
        self._launch_prefix = list(launch_prefix)
        self._mode = BmcMode.WORKS
        self._proc: _Process | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------ creation

    @classmethod
    def start(
        cls,
        directory: str | os.PathLike[str],
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        user: str = "admin",
        password: str | None = None,
        power_on: bool = True,
        power_off_cmd: str | Sequence[str] | None = None,
        power_on_cmd: str | Sequence[str] | None = None,
        cmd_timeout_s: float = 10.0,
        launch_prefix: Sequence[str] = (),
    ) -> BmcSim:
        """Start ipmi_sim; `port=0` picks a free one. The power commands run in
        `directory`; given as a str they run through /bin/sh -c, a sequence is
        executed as is. `launch_prefix` wraps ipmi_sim's command line (e.g.
        `ip netns exec NAME` to serve from a network namespace)."""
        password = password if password is not None else secrets.token_hex(8)
        if not _NAME_RE.match(user) or not _PASSWORD_RE.match(password):
            raise BmcSimError("user/password: letters, digits, '._-' only (16/20 chars max)")
        path = Path(directory).resolve()
        if re.search(r'["\s]', str(path)):
            raise BmcSimError(f"directory path must not contain quotes or blanks: {path}")
        path.mkdir(parents=True, exist_ok=True)
        sim = cls(path, address, port, user, password, launch_prefix)
        sim._write_static_files(power_on, power_off_cmd, power_on_cmd, cmd_timeout_s)
        try:
            sim._spawn(password, pick_port=port == 0)
        except BaseException:
            sim.stop()
            raise
        return sim

    def _write_static_files(
        self,
        power_on: bool,
        power_off_cmd: str | Sequence[str] | None,
        power_on_cmd: str | Sequence[str] | None,
        cmd_timeout_s: float,
    ) -> None:
        d = self.directory
        chassis.write_json(
            d / chassis.CONFIG_FILE,
            {
                "power_off_cmd": _command_argv(power_off_cmd),
                "power_on_cmd": _command_argv(power_on_cmd),
                "cmd_timeout_s": cmd_timeout_s,
            },
        )
        chassis.write_json(d / chassis.MODE_FILE, {"mode": "works", "delay_s": 0.0})
        (d / chassis.PENDING_FILE).unlink(missing_ok=True)
        (d / chassis.POWER_FILE).write_text("1" if power_on else "0")
        (d / chassis.LOG_FILE).touch()
        # ipmi_sim blocks on this program for every request, and clients
        # retransmit after about a second: `get power` (polled during a fence)
        # is answered by the shell alone (bash: its clock and its echo are
        # builtins, no fork), logged with the time; the rest goes to Python.
        python = " ".join(shlex.quote(arg) for arg in chassis.command_argv(d))
        wrapper = d / "chassis-control.sh"
        wrapper.write_text(
            "#!/bin/bash\n"
            'if [ "$1 $2" = "get power" ]; then\n'
            f"  read -r state < {shlex.quote(str(d / chassis.POWER_FILE))}\n"
            '  [ "$state" = 1 ] || state=0\n'
            f'  echo "$EPOCHREALTIME $state" >> {shlex.quote(str(d / chassis.READS_FILE))}\n'
            '  echo "power:$state"\n'
            "  exit 0\n"
            "fi\n"
            f'exec {python} "$@"\n'
        )
        wrapper.chmod(0o755)
        # Emulator commands: one BMC at IPMB address 0x20 (device id 0x23,
        # IPMI 2.0, arbitrary manufacturer/product ids), enabled.
        (d / "emu.cmd").write_text(
            "mc_setbmc 0x20\n"
            "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n"
            "mc_enable 0x20\n"
        )

    def _lan_conf(self, port: int, password: str) -> str:
        auths = "none md2 md5 straight"
        return (
            f'name "hacluster-lab-{port}"\n'
            "set_working_mc 0x20\n"
            "  startlan 1\n"
            f"    addr {self.address} {port}\n"
            "    priv_limit admin\n"
            f"    allowed_auths_callback {auths}\n"
            f"    allowed_auths_user {auths}\n"
            f"    allowed_auths_operator {auths}\n"
            f"    allowed_auths_admin {auths}\n"
            f"    guid {secrets.token_hex(16)}\n"
            "  endlan\n"
            f'  chassis_control "{self.directory / "chassis-control.sh"}"\n'
            f'  user 2 true "{self.user}" "{password}" admin 10 {auths}\n'
        )

    def _spawn(self, password: str, *, pick_port: bool) -> None:
        """Start ipmi_sim serving `password`; retry on a new port if the one
        picked was taken meanwhile."""
        for _ in range(_START_ATTEMPTS if pick_port else 1):
            if pick_port:
                self.port = _free_udp_port(self.address)
            if self._launch(password):
                return
        raise BmcSimError(
            f"ipmi_sim did not bind {self.address}:{self.port}; log: {self._log_tail()}"
        )

    def _launch(self, password: str, ready_timeout_s: float = 5.0) -> bool:
        d = self.directory
        state = d / "ipmi_state"
        shutil.rmtree(state, ignore_errors=True)  # persisted users would override lan.conf
        state.mkdir()
        (d / "lan.conf").write_text(self._lan_conf(self.port, password))
        argv = [
            *self._launch_prefix,
            "ipmi_sim",
            "-c",
            str(d / "lan.conf"),
            "-f",
            str(d / "emu.cmd"),
            "-s",
            str(state),
            "-n",
        ]
        with open(d / "ipmi_sim.log", "ab") as log:
            popen = subprocess.Popen(
                argv,
                cwd=d,  # the power commands run here too: relative paths mean this dir
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._proc = _Process(popen, password)
        (d / "ipmi_sim.pid").write_text(f"{popen.pid}\n")
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and popen.poll() is None:
            if _owns_udp_port(popen.pid, self.port) and self._answers(deadline):
                return True
            time.sleep(0.01)
        self._kill()
        return False

    def _answers(self, deadline: float) -> bool:
        if self._launch_prefix:
            return True  # maybe another namespace: we may not reach it from here
        return rmcp_ping(self.address, self.port, max(0.05, min(0.5, deadline - time.monotonic())))

    # ------------------------------------------------------------ state

    @property
    def password(self) -> Secret:
        return Secret(self._password)

    @property
    def mode(self) -> BmcMode:
        return self._mode

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.popen.pid if proc and proc.popen.poll() is None else None

    @property
    def power(self) -> PowerState:
        on = chassis.read_power(self.directory)
        return PowerState.UNKNOWN if on is None else PowerState.ON if on else PowerState.OFF

    @property
    def log_path(self) -> Path:
        return self.directory / chassis.LOG_FILE

    def events(self) -> list[PowerEvent]:
        out: list[PowerEvent] = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                raw = json.loads(line)
                out.append(
                    PowerEvent(
                        float(raw["wall"]),
                        float(raw["mono"]),
                        str(raw["event"]),
                        str(raw["cause"]),
                        str(raw.get("detail", "")),
                        float(raw.get("began", raw["mono"])),
                    )
                )
        return out

    def reads(self) -> list[PowerRead]:
        """Every `get power` answered so far, oldest first, on CLOCK_MONOTONIC
        (converted from the wall clock the shell logs, with today's offset)."""
        offset = time.time() - time.monotonic()
        out: list[PowerRead] = []
        with contextlib.suppress(FileNotFoundError):
            for line in (self.directory / chassis.READS_FILE).read_text().splitlines():
                with contextlib.suppress(ValueError):
                    wall, state = line.split()
                    out.append(PowerRead(float(wall) - offset, state == "1"))
        return out

    def set_power(self, on: bool, cause: str = "lab") -> bool:
        """Change the power directly (as if someone pressed the button); runs the
        power command and logs like an IPMI change. False if already there."""
        with chassis.locked(self.directory):
            return chassis.apply_power(self.directory, on, cause)

    def wait_for_power(self, state: PowerState, timeout_s: float) -> float:
        """Poll the power file until it reads `state`; return the seconds taken."""
        start = time.monotonic()
        while self.power != state:
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"BMC power still {self.power.value} after {timeout_s} s")
            time.sleep(0.005)
        return time.monotonic() - start

    def target(self, host: str = "host", **overrides: object) -> BmcTarget:
        """A BmcTarget for this BMC (IPMI unless overridden)."""
        base = BmcTarget(
            host=host,
            driver="ipmi",
            address=self.address,
            port=self.port,
            username=self.user,
            password=self.password,
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    # ------------------------------------------------------------ modes

    def set_mode(self, mode: BmcMode, *, delay_s: float = 5.0) -> None:
        """Switch fault mode; `delay_s` is the SLOW mode's power change delay."""
        with self._lock:
            slow = mode is BmcMode.SLOW
            chassis.write_json(
                self.directory / chassis.MODE_FILE,
                {"mode": "slow" if slow else "works", "delay_s": delay_s if slow else 0.0},
            )
            if mode is BmcMode.ALREADY_OFF:
                self.set_power(False)
            if mode is BmcMode.UNREACHABLE:
                self._kill()
            elif mode is BmcMode.FROZEN:
                self._ensure_serving(self._password)
                self._freeze()
            else:
                wanted = self._wrong_password() if mode is BmcMode.REJECT_CREDENTIALS else None
                self._ensure_serving(wanted or self._password)
            self._mode = mode

    def _wrong_password(self) -> str:
        proc = self._proc
        if proc and proc.serves_password != self._password:
            return proc.serves_password
        return ("x" + secrets.token_hex(9))[:20]

    def _ensure_serving(self, password: str) -> None:
        proc = self._proc
        alive = proc is not None and proc.popen.poll() is None
        if alive and proc is not None and not proc.frozen and proc.serves_password == password:
            return
        self._kill()
        self._spawn(password, pick_port=False)

    def _freeze(self) -> None:
        proc = self._proc
        if proc and proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGSTOP)
            proc.frozen = True

    # ------------------------------------------------------------ teardown

    def _kill(self) -> None:
        """SIGKILL ipmi_sim's process group (also chassis programs and pending
        slow changes it started), then reap ipmi_sim."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)

    def stop(self) -> None:
        """Stop ipmi_sim for good. The directory and its power.log stay."""
        with self._lock:
            self._kill()

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "ipmi_sim.log").read_text()[-300:].replace("\n", " | ")
        return ""

    def __enter__(self) -> BmcSim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BmcSim({self.address}:{self.port}, mode={self._mode.value}, pid={self.pid})"
