"""One simulated host of a lab cluster: a private libvirtd and a peer process,
powered on and off together (by its BMC simulator's chassis script). With a
network namespace (`HostSpec.netns`), both run inside it: the peer through
`nsenter --net`, libvirtd (and its QEMU processes) in its own namespaces
entered from that one; the RPC and libvirt sockets are files, reachable from
the root namespace.

Layout of DIR:
    host.json     what this host is (name, address, ports, paths)
    peer.toml     the peer's configuration
    peer.pid      the running peer (its own process group)
    peer.log      its logs (appended across power cycles)
    libvirtd/     the private libvirtd instance
    data/         the peer's Raft journal and snapshots (survive power cycles)

`python -m hacluster.lab.host DIR power-off|power-on|status` is what the BMC's
chassis script runs; it must return quickly (ipmi_sim waits for it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hacluster.lab.cgroups import join_argv
from hacluster.lab.libvirtd import LabLibvirtd, LibvirtdSpec
from hacluster.lab.watchdog import feed_file


@dataclass(frozen=True)
class HostSpec:
    name: str
    directory: str
    address: str  # this host's own loopback address (or namespace address)
    raft_port: int
    lease_port: int
    peers: tuple[str, ...]  # "name=address:port" of the initial voters
    secret_file: str
    role: str = "voter"
    memory_mib: int = 8192
    vcpus: int = 8
    driver: str = "test"  # libvirt driver of the private instance: test | qemu
    log_level: str = "info"
    timing: tuple[tuple[str, float], ...] = ()  # [timing] overrides
    netns: str = ""  # network namespace (under /run/netns) the host lives in
    backend_address: str = ""  # a second network to renew leases over ("" = one link)
    notify_hook: str = ""  # [notify] hook
    watchdog_timeout_s: float = 0.0  # > 0: a watchdog (hacluster/lab/watchdog.py)
    self_fence_s: float = 0.0
    cgroup_procs: str = ""  # the cgroup.procs file the peer joins (loopback isolation)
    raft: tuple[tuple[str, float], ...] = ()  # [raft] overrides (RaftSettings fields)
    lockspace_dir: str = ""  # disk leases: the lockspace every host's virtlockd shares
    storage_paths: tuple[str, ...] = ()  # [storage] heartbeat_paths (a shared directory)
    storage_checks: int = 3
    storage_interval_s: float = 2.0
    metrics_port: int = 0  # > 0: [metrics] address on this host's address
    # Where the hacluster release the peer runs is ("" = this package): a directory
    # holding an older release's `hacluster/` (a rolling upgrade test, tests/upgrade).
    release: str = ""

    @property
    def path(self) -> Path:
        return Path(self.directory)

    @property
    def raft_address(self) -> str:
        return f"{self.address}:{self.raft_port}"

    @property
    def rpc_socket(self) -> str:
        return str(self.path / "hactl.sock")


def package_pythonpath(release: str = "") -> str:
    """PYTHONPATH for the lab's Python children (peers, the BMC's power hooks):
    this very hacluster package first, not another checkout that the
    virtualenv happens to have installed (a worktree's lab would otherwise run
    the main checkout's peers and hooks); or, given `release`, that directory
    first and this package not at all (a peer of an older release)."""
    root = str(Path(__file__).resolve().parents[2])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and p not in (root, release)]
    return os.pathsep.join([release or root, *rest])


class LabHost:
    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        # QEMU hosts receive live migrations on their own address; libvirtd
        # derives distinct hostnames and host UUIDs from the directory path.
        self.libvirtd = LabLibvirtd(LibvirtdSpec(
            base_dir=str(spec.path / "libvirtd"), driver=spec.driver,  # type: ignore[arg-type]
            netns=spec.netns or None,
            migration_host=spec.address if spec.driver == "qemu" else None,
            lockspace_dir=spec.lockspace_dir or None))

    @classmethod
    def load(cls, directory: str | Path) -> LabHost:
        raw = json.loads(Path(directory, "host.json").read_text())
        raw["peers"] = tuple(raw["peers"])
        raw["timing"] = tuple(tuple(p) for p in raw["timing"])
        raw["raft"] = tuple(tuple(p) for p in raw.get("raft", ()))
        raw["storage_paths"] = tuple(raw.get("storage_paths", ()))
        return cls(HostSpec(**raw))

    def write(self) -> None:
        self.spec.path.mkdir(parents=True, exist_ok=True)
        feed_file(self.spec.path).parent.mkdir(exist_ok=True)
        (self.spec.path / "host.json").write_text(json.dumps(asdict(self.spec), indent=1))
        (self.spec.path / "peer.toml").write_text(self.peer_config())

    def peer_config(self) -> str:
        s = self.spec
        timing = "".join(f"{k} = {v}\n" for k, v in s.timing)
        raft = ("\n[raft]\n" + "".join(f"{k} = {v}\n" for k, v in s.raft)) if s.raft else ""
        # Peer-to-peer live migration: the source libvirtd connects to this
        # URI (a Unix socket on the shared filesystem, so no TCP listener).
        migration = f'migration_uri = "{self.libvirtd.uri}"\n' if s.driver == "qemu" else ""
        backend = f', backend = "{s.backend_address}"' if s.backend_address else ""
        return (
            f'[peer]\nname = "{s.name}"\nraft_address = "{s.raft_address}"\n'
            f'data_dir = "{s.path / "data"}"\nrole = "{s.role}"\n\n'
            f'[cluster]\nsecret_file = "{s.secret_file}"\n'
            f"peers = {json.dumps(list(s.peers))}\n\n"
            f'[leases]\nport = {s.lease_port}\nlinks = {{ main = "{s.address}"{backend} }}\n\n'
            f'[hypervisor]\nuri = "{self.libvirtd.uri}"\n{migration}memory_mib = {s.memory_mib}\n'
            f"vcpus = {s.vcpus}\nshutdown_timeout_s = 5.0\n{self._disk_lease_config()}\n"
            f'[rpc]\nsocket = "{s.rpc_socket}"\n\n'
            f"[timing]\n{timing}\n"
            f'[notify]\nhook = "{s.notify_hook}"\n\n'
            f'[log]\nlevel = "{s.log_level}"\n'
            f"{self._metrics_config()}"
            f"{self._watchdog_config()}"
            f"{self._storage_config()}"
            f"{raft}"
        )

    def _metrics_config(self) -> str:
        s = self.spec
        return f'\n[metrics]\naddress = "{s.address}:{s.metrics_port}"\n' \
            if s.metrics_port else ""

    @property
    def metrics_url(self) -> str:
        return f"http://{self.spec.address}:{self.spec.metrics_port}/metrics"

    def _disk_lease_config(self) -> str:
        """The peer checks the instance's own qemu.conf and qemu-lockd.conf."""
        if not self.spec.lockspace_dir:
            return ""
        return (f'disk_leases = true\ndisk_lease_dir = "{self.spec.lockspace_dir}"\n'
                f'libvirt_config_dir = "{self.libvirtd.base / "etc"}"\n')

    def disk_image(self, vm: str) -> Path:
        """Where this host keeps the disk image its libvirtd sees as
        /var/lib/libvirt/images/VM.img (hacluster.lab.cluster says why per host)."""
        return self.libvirtd.base / "lib" / "images" / f"{vm}.img"

    def _watchdog_config(self) -> str:
        s = self.spec
        if s.watchdog_timeout_s <= 0:
            return ""
        fed = str(feed_file(s.path))
        return (f'\n[watchdog]\nkind = "command"\ncommand = {json.dumps(["touch", fed])}\n'
                f'disarm_command = {json.dumps(["rm", "-f", fed])}\n'
                f"timeout_s = {s.watchdog_timeout_s}\nself_fence_s = {s.self_fence_s}\n")

    def _storage_config(self) -> str:
        s = self.spec
        if not s.storage_paths:
            return ""
        return (f"\n[storage]\nheartbeat_paths = {json.dumps(list(s.storage_paths))}\n"
                f"checks = {s.storage_checks}\ncheck_interval_s = {s.storage_interval_s}\n"
                f"read_timeout_s = {s.storage_interval_s}\n")

    # ------------------------------------------------------------ power

    @property
    def pid_file(self) -> Path:
        return self.spec.path / "peer.pid"

    def peer_pid(self) -> int | None:
        """The running peer; an exited one not yet reaped (a zombie) is not running."""
        try:
            pid = int(self.pid_file.read_text())
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        return None if stat.rsplit(") ", 1)[1].startswith("Z") else pid

    def power_on(self) -> None:
        if self.libvirtd.init_pid() is None:
            self.libvirtd.start()
        if self.peer_pid() is None:
            self.start_peer()

    def start_peer(self, program: list[str] | None = None) -> subprocess.Popen[bytes]:
        """Start the peer (`hacluster peer`, or `program`, given --config) in the
        background, of the release `spec.release`; the handle tells how it exited (tests)."""
        program = program or [sys.executable, "-m", "hacluster.cli.main", "peer"]
        argv = [*program, "--config", str(self.spec.path / "peer.toml")]
        if self.spec.cgroup_procs:  # a network cut tells the host's sockets by their cgroup
            argv = join_argv(self.spec.cgroup_procs, argv)
        if self.spec.netns:  # nsenter execs the peer: the pid below is the peer's
            argv = ["nsenter", f"--net=/run/netns/{self.spec.netns}", *argv]
        log = open(self.spec.path / "peer.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.spec.path,
            env=dict(os.environ, PYTHONPATH=package_pythonpath(self.spec.release)))
        log.close()
        self.pid_file.write_text(str(proc.pid))
        return proc

    def power_off(self) -> None:
        """Everything dies at once, as in a power cut: no clean shutdown.
        That includes children the peer started in sessions of their own (its
        IPMI workers), which a kill of its process group would miss."""
        pid = self.peer_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGSTOP)  # frozen: it starts no child meanwhile
            _kill_all({pid, *_descendants(pid)})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.libvirtd.kill_all()
        if self.spec.netns:  # whatever else still runs in the host's namespace
            _kill_all(_pids_in_netns(self.spec.netns))
        self.pid_file.unlink(missing_ok=True)
        feed_file(self.spec.path).unlink(missing_ok=True)  # a power cut clears a watchdog

    def stop_peer(self, timeout_s: float = 15.0) -> None:
        """A clean SIGTERM of the peer only (the host keeps running)."""
        pid = self.peer_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while self.peer_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.peer_pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def pids(self) -> set[int]:
        """Live processes of this host: the peer and its descendants, the
        libvirtd instance (QEMU included), anything in its namespace."""
        pid = self.peer_pid()
        found = {pid, *_descendants(pid)} if pid is not None else set()
        found |= {p for p, _ in self.libvirtd.processes()}
        if self.spec.netns:
            found |= _pids_in_netns(self.spec.netns)
        return {p for p in found if not _zombie(p)}

    def status(self) -> dict[str, object]:
        return {"name": self.spec.name, "peer_pid": self.peer_pid(),
                "libvirtd": self.libvirtd.init_pid() is not None}


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ")"
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 1:
            out[int(entry)] = int(fields[1])
    return out


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _pids_in_netns(name: str) -> set[int]:
    """Processes whose network namespace is /run/netns/NAME."""
    try:
        wanted = os.stat(f"/run/netns/{name}")
    except OSError:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            ns = os.stat(f"/proc/{entry}/ns/net")
            if (ns.st_dev, ns.st_ino) == (wanted.st_dev, wanted.st_ino):
                found.add(int(entry))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in "ZX"
    except (OSError, IndexError):
        return True  # gone


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in ("power-off", "power-on", "status"):
        print("usage: python -m hacluster.lab.host DIR power-off|power-on|status",
              file=sys.stderr)
        return 2
    host = LabHost.load(argv[0])
    if argv[1] == "power-off":
        host.power_off()
    elif argv[1] == "power-on":
        host.power_on()
    else:
        print(json.dumps(host.status()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
