"""Private libvirtd instances for tests and the demo (needs root).

Each instance lives under its own directory and in its own mount, UTS and PID
namespaces (optionally inside a network namespace from hacluster.lab.netns):

    unshare ──> tini (PID 1 of the instance) ──> sh ──> sleep   (the "holder")
                 ├─ virtlockd --daemon     (disk leases only; started before libvirtd)
                 ├─ libvirtd --daemon      (started with nsenter, reparented to tini)
                 ├─ qemu-system-x86_64 ... (children of libvirtd)
                 └─ virsh                  (test driver only: keeps its state alive)

Inside, /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt
are bind mounts of the instance directory and /run is a fresh tmpfs, so the
system libvirtd and its default sockets are never touched (empty mount points
for those directories are created if missing). Sockets live in DIR/s/, outside
any mount, so clients connect from the root namespace with `instance.uri`.

Killing tini, PID 1 of the instance's PID namespace, makes the kernel kill
every process of the instance at once: that is the simulated power-off, also
available as `python -m hacluster.lab.libvirtd kill DIR`. Definitions in
DIR/etc survive it, like a host's disk; /run does not, like a host's RAM.

Disk leases (`LibvirtdSpec.lockspace_dir`): qemu.conf selects libvirt's lockd lock
manager and qemu-lockd.conf puts the lease files in that directory. Every instance runs
its own virtlockd, as every real host does: its socket is /run/libvirt/virtlockd-sock in
the instance's private /run, where libvirtd's lockd plugin looks for it (as root it
never starts one itself). The lease files are fcntl-locked by each virtlockd process,
so instances sharing the directory exclude each other as hosts sharing a lockspace on
shared storage do; a power-off kills the instance's virtlockd and releases its leases.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Driver = Literal["test", "qemu"]
_MOUNTED = ("/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt")
_TOOLS = ("unshare", "nsenter", "tini", "libvirtd", "virsh")
_SOCKET_MAX = 107  # sun_path limit, minus the terminating NUL


@dataclass(frozen=True)
class LibvirtdSpec:
    """Everything that defines one instance; saved as DIR/spec.json on start."""

    base_dir: str
    driver: Driver = "qemu"
    netns: str | None = None  # a name under /run/netns, or None for the root namespace
    hostname: str = ""  # default: "lab-<directory name>-<hash of the path>"
    host_uuid: str = ""  # default: derived from the directory path
    migration_host: str | None = None  # address peers send migration streams to
    migration_ports: tuple[int, int] = (49152, 49215)
    # Disk leases: libvirt's lockd lock manager with its own virtlockd, its lease
    # files in this directory (shared by every instance that should exclude the
    # others, like a lockspace on shared storage). None: no lock manager.
    lockspace_dir: str | None = None

    def resolved(self) -> LibvirtdSpec:
        base = Path(self.base_dir).absolute()
        host_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{base}"))
        return dataclasses.replace(
            self,
            base_dir=str(base),
            # live migration needs distinct hostnames and host UUIDs: derive
            # both from the full path, not just the directory name
            hostname=self.hostname or f"lab-{base.name[:20]}-{host_uuid[:6]}",
            host_uuid=self.host_uuid or host_uuid,
            migration_ports=tuple(self.migration_ports),  # type: ignore[arg-type]
        )


class LabError(RuntimeError):
    """A lab instance could not be started, stopped or inspected."""


def unavailable_reason(driver: Driver = "qemu") -> str | None:
    """Why private instances cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "private libvirtd instances need root (mount and PID namespaces)"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if driver == "qemu":
        if _qemu_driver_module() is None:
            return "libvirt's QEMU driver module is not installed"
        if shutil.which("qemu-system-x86_64") is None:
            return "qemu-system-x86_64 is not installed"
    return None


def _qemu_driver_module() -> str | None:
    patterns = ("/usr/lib/*/libvirt/connection-driver", "/usr/lib*/libvirt/connection-driver")
    for pattern in patterns:
        for found in sorted(glob.glob(f"{pattern}/libvirt_driver_qemu.so")):
            return found
    return None


# ------------------------------------------------------------ processes


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _ns_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _children_of(parent: int) -> list[int]:
    found = []
    for pid in _all_pids():
        stat = _read(f"/proc/{pid}/stat")
        # the command name may contain spaces and parentheses: split after the last ")"
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(parent):
            found.append(pid)
    return found


def _cmdline(pid: int) -> list[str]:
    return [part for part in _read(f"/proc/{pid}/cmdline").split("\0") if part]


def _wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.01)


# ------------------------------------------------------------ configuration


def _libvirtd_conf(spec: LibvirtdSpec, sock_dir: Path) -> str:
    return "\n".join(
        [
            f'unix_sock_dir = "{sock_dir}"',
            'unix_sock_rw_perms = "0700"',
            'unix_sock_ro_perms = "0700"',
            'unix_sock_admin_perms = "0700"',
            'auth_unix_rw = "none"',
            'auth_unix_ro = "none"',
            f'host_uuid = "{spec.host_uuid}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "",
        ]
    )


def _qemu_conf(spec: LibvirtdSpec) -> str:
    lines = [
        'stdio_handler = "file"',  # no virtlogd to run
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        "remember_owner = 0",
        'security_driver = "none"',
        "cgroup_controllers = [ ]",  # instances must not fight over the host's cgroups
        "namespaces = [ ]",
        f"migration_port_min = {spec.migration_ports[0]}",
        f"migration_port_max = {spec.migration_ports[1]}",
    ]
    if spec.migration_host:
        lines.append(f'migration_host = "{spec.migration_host}"')
    if spec.lockspace_dir:
        lines.append('lock_manager = "lockd"')
    return "\n".join(lines) + "\n"


def _lockd_conf(spec: LibvirtdSpec) -> str:
    """qemu-lockd.conf: a lease on every writable disk, held on a file of the
    shared lockspace named by a hash of the disk's path (indirect locking)."""
    return (f'auto_disk_leases = 1\nrequire_lease_for_disks = 0\n'
            f'file_lockspace_dir = "{spec.lockspace_dir}"\n')


def _virtlockd_conf() -> str:
    return 'log_outputs = "3:file:/var/log/libvirt/virtlockd.log"\n'


def _with_line(path: str, line: str, unless_prefix: str = "") -> str:
    text = _read(path)
    if unless_prefix and any(entry.startswith(unless_prefix) for entry in text.splitlines()):
        return text
    return text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"


def _system_files(spec: LibvirtdSpec) -> dict[str, str]:
    """Files of /etc the instance sees in place of the host's."""
    # libvirtd resolves its own hostname (migration cookies, capabilities); in a
    # namespace that cannot reach the host's DNS server that costs two 5 s
    # timeouts per lookup, so the name is in /etc/hosts and DNS is absent.
    address = spec.migration_host or "127.0.1.1"
    files = {"/etc/hosts": _with_line("/etc/hosts", f"{address} {spec.hostname}")}
    if spec.netns:
        files["/etc/resolv.conf"] = "# no DNS inside lab namespaces\n"
    if spec.driver == "qemu":
        # The QEMU driver resolves the user "libvirt-qemu" at start even when
        # qemu.conf says root; hosts without libvirt-daemon-system lack it.
        passwd = "libvirt-qemu:x:64055:64055::/nonexistent:/bin/false"
        files["/etc/passwd"] = _with_line("/etc/passwd", passwd, "libvirt-qemu:")
        files["/etc/group"] = _with_line("/etc/group", "libvirt-qemu:x:64055:", "libvirt-qemu:")
    return files


def _holder_script(base: Path, spec: LibvirtdSpec) -> str:
    binds = [
        (base / "etc", "/etc/libvirt"),
        (base / "lib", "/var/lib/libvirt"),
        (base / "cache", "/var/cache/libvirt"),
        (base / "log", "/var/log/libvirt"),
    ]
    binds += [(base / "sys" / Path(path).name, path) for path in sorted(_system_files(spec))]
    q = shlex.quote
    steps = ["set -e", f"hostname {q(spec.hostname)}", f"mkdir -p {' '.join(_MOUNTED)}"]
    steps += [f"mount --bind {q(str(src))} {q(dst)}" for src, dst in binds]
    steps += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mkdir -p /run/libvirt"]
    steps += [f"touch {q(str(base / 'ready'))}", "exec sleep infinity"]
    return "\n".join(steps)


# ------------------------------------------------------------ the instance


class LabLibvirtd:
    """One private libvirtd (test driver or QEMU) in its own namespaces."""

    def __init__(self, spec: LibvirtdSpec) -> None:
        self.spec = spec.resolved()
        self.base = Path(self.spec.base_dir)
        self._holder: subprocess.Popen[bytes] | None = None
        if self.socket_path.startswith("/run/") or len(self.socket_path) + 6 > _SOCKET_MAX:
            raise LabError(f"unusable socket path {self.socket_path!r} (not /run, short)")

    @classmethod
    def from_dir(cls, base_dir: str | Path) -> LabLibvirtd:
        """The instance whose spec.json a previous start() wrote."""
        raw = json.loads(Path(base_dir, "spec.json").read_text())
        raw["migration_ports"] = tuple(raw["migration_ports"])
        return cls(LibvirtdSpec(**raw))

    @property
    def socket_path(self) -> str:
        return str(Path(self.spec.base_dir).absolute() / "s" / "libvirt-sock")

    @property
    def uri(self) -> str:
        """Client URI from the root namespace. The explicit +unix transport also
        makes it acceptable as a peer-to-peer migration destination."""
        path = "/default" if self.spec.driver == "test" else "/system"
        return f"{self.spec.driver}+unix://{path}?socket={self.socket_path}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Power on: fresh namespaces and /run, then libvirtd (and the keeper)."""
        reason = unavailable_reason(self.spec.driver)
        if reason:
            raise LabError(reason)
        if self.init_pid() is not None:
            raise LabError(f"instance {self.base} is already running")
        self._prepare_dirs()
        self._start_holder(timeout_s)
        try:
            self.start_daemon(timeout_s)
        except (LabError, subprocess.TimeoutExpired):
            self.kill_all()
            raise

    def _prepare_dirs(self) -> None:
        for sub in ("etc", "lib", "cache", "log", "s", "drivers"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for stale in ("ready", "init.pid"):
            (self.base / stale).unlink(missing_ok=True)
        for sock in (self.base / "s").iterdir():
            sock.unlink()
        (self.base / "etc" / "libvirtd.conf").write_text(_libvirtd_conf(self.spec, self.base / "s"))
        (self.base / "etc" / "qemu.conf").write_text(_qemu_conf(self.spec))
        for name in ("qemu-lockd.conf", "virtlockd.conf"):
            (self.base / "etc" / name).unlink(missing_ok=True)
        if self.spec.lockspace_dir:
            Path(self.spec.lockspace_dir).mkdir(parents=True, exist_ok=True)
            (self.base / "etc" / "qemu-lockd.conf").write_text(_lockd_conf(self.spec))
            (self.base / "etc" / "virtlockd.conf").write_text(_virtlockd_conf())
        link = self.base / "drivers" / "libvirt_driver_qemu.so"
        link.unlink(missing_ok=True)
        module = _qemu_driver_module()
        if self.spec.driver == "qemu" and module:
            link.symlink_to(module)  # the only module loaded: no network/storage drivers
        shutil.rmtree(self.base / "sys", ignore_errors=True)
        (self.base / "sys").mkdir()
        for path, text in _system_files(self.spec).items():
            (self.base / "sys" / Path(path).name).write_text(text)
        spec_json = json.dumps(dataclasses.asdict(self.spec), indent=2)
        (self.base / "spec.json").write_text(spec_json)

    def _start_holder(self, timeout_s: float) -> None:
        argv = ["unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child"]
        argv += ["--mount-proc", "--propagation", "private"]
        argv += ["tini", "-s", "--", "sh", "-c", _holder_script(self.base, self.spec)]
        if self.spec.netns:
            argv = ["nsenter", f"--net=/run/netns/{self.spec.netns}", *argv]
        with open(self.base / "holder.log", "ab") as log:
            # A session of its own: the instance outlives a CLI that started it
            # and ignores the terminal's Ctrl-C, like a separate machine would.
            self._holder = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        holder = self._holder
        try:
            _wait_for(
                lambda: (self.base / "ready").exists() or holder.poll() is not None,
                timeout_s,
                f"namespaces of {self.base}",
            )
            if holder.poll() is not None:
                raise LabError(f"holder of {self.base} exited: {self._log_tail('holder.log')}")
            init = _children_of(holder.pid)
            if len(init) != 1:
                raise LabError(f"cannot find the init process of {self.base}")
            (self.base / "init.pid").write_text(f"{init[0]}\n")
        except LabError:
            self.kill_all()
            raise

    def _nsenter(self, command: str, timeout_s: float) -> None:
        init = self.init_pid()
        if init is None:
            raise LabError(f"instance {self.base} is not running")
        argv = ["nsenter", "-t", str(init), "-m", "-u", "-n", "-p", "--", "sh", "-c", command]
        env = dict(os.environ, LIBVIRT_DRIVER_DIR=str(self.base / "drivers"))
        done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise LabError(f"{command!r} in {self.base} failed: {done.stderr.decode().strip()}")

    def start_daemon(self, timeout_s: float = 20.0) -> None:
        """Start libvirtd inside the running namespaces (also after stop_daemon);
        with disk leases, its virtlockd first (which outlives libvirtd restarts)."""
        if self.spec.lockspace_dir and self._pids_of("virtlockd") == []:
            self._nsenter("virtlockd --daemon --config /etc/libvirt/virtlockd.conf "
                          "--pid-file /run/virtlockd.pid", timeout_s)
        self._nsenter(
            "libvirtd --daemon --config /etc/libvirt/libvirtd.conf --pid-file /run/libvirtd.pid",
            timeout_s,
        )
        _wait_for(self._answers, timeout_s, f"libvirtd of {self.base} to answer")
        if self.spec.driver == "test":
            # The test driver forgets its state when the last client leaves; a
            # virsh waiting for events forever holds one connection open.
            keeper = f"virsh -q -c {shlex.quote(self.uri)} event --all --loop"
            self._nsenter(f"{keeper} </dev/null >/dev/null 2>&1 &", timeout_s)
            # until it is connected, the next client to leave would wipe the state
            _wait_for(self._has_clients, timeout_s, f"the keeper of {self.base} to connect")

    def _answers(self) -> bool:
        if not os.path.exists(self.socket_path):
            return False
        probe = subprocess.run(
            ["virsh", "-q", "-c", self.uri, "uri"], capture_output=True, timeout=30, check=False
        )
        return probe.returncode == 0

    def _has_clients(self) -> bool:
        admin = os.path.join(os.path.dirname(self.socket_path), "libvirt-admin-sock")
        listing = subprocess.run(
            ["virt-admin", "-q", "-c", f"libvirtd:///system?socket={admin}",
             "srv-clients-list", "libvirtd"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        return listing.returncode == 0 and bool(listing.stdout.strip())

    def stop_daemon(self, timeout_s: float = 10.0) -> None:
        """Stop libvirtd (and the keeper) only; QEMU processes keep running,
        as they do when a real libvirtd restarts."""
        victims = [
            pid
            for pid, cmd in self.processes()
            if cmd and Path(cmd[0]).name in ("libvirtd", "virsh")
        ]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

        def gone() -> bool:
            return all(_ns_of(pid) is None for pid in victims)

        try:
            _wait_for(gone, timeout_s, f"libvirtd of {self.base} to stop")
        except LabError:
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_for(gone, timeout_s, f"libvirtd of {self.base} to die")

    def restart_daemon(self, timeout_s: float = 20.0) -> None:
        self.stop_daemon(timeout_s)
        self.start_daemon(timeout_s)

    def init_pid(self) -> int | None:
        return _verified_init(self.base)

    def _pids_of(self, program: str) -> list[int]:
        return [pid for pid, cmd in self.processes() if cmd and Path(cmd[0]).name == program]

    def processes(self) -> list[tuple[int, list[str]]]:
        """(pid in the root namespace, argv) of every process of the instance."""
        init = self.init_pid()
        if init is None:
            return []
        ns = _ns_of(init)
        return [(pid, _cmdline(pid)) for pid in _all_pids() if pid != init and _ns_of(pid) == ns]

    def qemu_pid(self, domain: str) -> int | None:
        for pid, argv in self.processes():
            if (
                argv
                and "qemu-system" in Path(argv[0]).name
                and f"guest={domain}," in " ".join(argv)
            ):
                return pid
        return None

    def kill_all(self, timeout_s: float = 10.0) -> None:
        """Power off: every process of the instance dies at once."""
        kill_instance(self.base, timeout_s)
        if self._holder is not None:
            if self._holder.poll() is None:  # init unknown yet: --kill-child does it
                self._holder.kill()
            self._holder.wait(timeout=timeout_s)
            self._holder = None

    stop = kill_all  # an instance has no state worth a graceful stop

    def _log_tail(self, name: str, lines: int = 5) -> str:
        return " | ".join(_read(str(self.base / name)).strip().splitlines()[-lines:])

    def __enter__(self) -> LabLibvirtd:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.kill_all()


def _verified_init(base: Path) -> int | None:
    """The instance's init pid, if that process is alive and really ours: its
    command line names the instance directory (guards against pid reuse)."""
    try:
        pid = int((base / "init.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    marker = str(base.absolute() / "ready")
    return pid if any(marker in arg for arg in _cmdline(pid)) else None


def kill_instance(base_dir: str | Path, timeout_s: float = 10.0) -> bool:
    """SIGKILL every process of the instance in base_dir; False if none ran.
    Callable from any process (the BMC simulator's power-off)."""
    base = Path(base_dir).absolute()
    init = _verified_init(base)
    if init is None:
        return False
    ns = _ns_of(init)
    # The kernel kills the rest of a PID namespace when its init dies.
    with contextlib.suppress(ProcessLookupError):
        os.kill(init, signal.SIGKILL)
    _wait_for(
        lambda: not any(_ns_of(pid) == ns for pid in _all_pids()),
        timeout_s,
        f"processes of {base} to die",
    )
    (base / "init.pid").unlink(missing_ok=True)
    return True


# ------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hacluster.lab.libvirtd")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start an instance (reuses DIR/spec.json if present)")
    start.add_argument("dir")
    start.add_argument("--driver", choices=["test", "qemu"], default=None)
    start.add_argument("--netns", default=None)
    start.add_argument("--hostname", default="")
    start.add_argument("--migration-host", default=None)
    start.add_argument("--lockspace", default=None, help="disk leases in this shared directory")
    for name, text in (("kill", "SIGKILL every process (power off)"), ("status", "show processes")):
        sub.add_parser(name, help=text).add_argument("dir")
    args = parser.parse_args(argv)
    if args.command == "kill":
        return 0 if kill_instance(args.dir) else 1
    if args.command == "status":
        instance = LabLibvirtd.from_dir(args.dir)
        for pid, cmd in instance.processes():
            print(pid, " ".join(cmd)[:120])
        return 0 if instance.init_pid() else 1
    if Path(args.dir, "spec.json").exists() and args.driver is None:
        instance = LabLibvirtd.from_dir(args.dir)
    else:
        spec = LibvirtdSpec(args.dir, args.driver or "qemu", args.netns, args.hostname)
        instance = LabLibvirtd(dataclasses.replace(spec, migration_host=args.migration_host,
                                                   lockspace_dir=args.lockspace))
    if instance.init_pid() is None:  # powering on a running host changes nothing
        try:
            instance.start()
        except LabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(instance.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
