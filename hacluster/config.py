"""The peer's local configuration: one frozen Config, read from TOML and
validated at start; every error names the file, the table and the key.

Only what is local to a peer lives here (addresses, paths, timeouts of this
process). What the cluster decides with (fence cap, lease timings, BMC
settings, placement selector) is replicated state, changed with hactl.
contrib/hacluster.example.toml documents every key.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacluster.fsm.context import NAME_RE
from hacluster.fsm.validate import heartbeat_paths_problem
from hacluster.fsm.wire import WireError, spec_of
from hacluster.raft.settings import RaftSettings, RaftSettingsError


class ConfigError(ValueError):
    """The configuration is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class PeerConfig:
    name: str  # this host's name in the cluster
    raft_address: str  # host:port this peer binds and advertises for Raft
    data_dir: str = "/var/lib/hacluster"
    role: str = "voter"  # voter | member | witness


@dataclass(frozen=True)
class ClusterConfig:
    secret_file: str = "/etc/hacluster/secret"
    # Initial voters "name=host:port", used only when this peer starts with an empty
    # data directory; later membership changes go through hactl host add/remove.
    peers: tuple[str, ...] = ()


@dataclass(frozen=True)
class LeaseConfig:
    port: int = 7441  # UDP port of the lease listener, on every link address
    # name -> local address; a host renews over every link (any one keeps its lease)
    links: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HypervisorConfig:
    uri: str = "qemu:///system"
    # URI other hosts' libvirtd use to live-migrate to this one ("" = uri), e.g.
    # "qemu+tls://10.0.0.1/system"
    migration_uri: str = ""
    memory_mib: int = 0  # 0: read from libvirt, minus reserve_memory_mib
    vcpus: int = 0  # 0: read from libvirt
    reserve_memory_mib: int = 1024
    shutdown_timeout_s: float = 30.0
    migrate_timeout_s: float = 120.0
    # Disk leases (docs/safety.md): libvirt's lockd lock manager refuses to start a disk
    # that a live QEMU on another host holds. true: the peer checks at start that libvirt
    # is configured so (qemu.conf, qemu-lockd.conf in libvirt_config_dir) and refuses
    # to start if not; it never edits libvirt's files (contrib/libvirt/ has them).
    disk_leases: bool = False
    disk_lease_dir: str = ""  # expected qemu-lockd.conf file_lockspace_dir; "" = any
    libvirt_config_dir: str = "/etc/libvirt"


@dataclass(frozen=True)
class RpcConfig:
    socket: str = "/run/hacluster/hactl.sock"
    tcp_address: str = ""  # e.g. "10.0.0.1:7443"; empty: Unix socket only
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # require client certificates signed by this CA
    tokens_file: str = ""  # or: bearer tokens, one "user:token" per line
    max_frame_bytes: int = 4 * 1024 * 1024
    max_connections: int = 64  # per listener
    max_anonymous_per_source: int = 8  # TCP connections of one address not yet authenticated
    frame_timeout_s: float = 10.0  # a frame must arrive whole within this
    idle_timeout_s: float = 600.0  # an idle connection is closed after this
    write_timeout_s: float = 10.0  # a client that does not read its replies is dropped
    handshake_timeout_s: float = 10.0  # TLS handshake and first authenticated request


@dataclass(frozen=True)
class TimingConfig:
    manager_tick_s: float = 0.1  # leader decision loop
    agent_tick_s: float = 0.2  # host reconcile loop (also woken by libvirt events)
    propose_timeout_s: float = 5.0  # one proposal: committed, or "maybe"
    read_barrier_timeout_s: float = 1.0  # agent freshness check through the leader
    bmc_check_interval_s: float = 60.0  # own BMC health probe
    bmc_check_timeout_s: float = 10.0
    notify_timeout_s: float = 10.0  # notification hook run time
    stop_grace_s: float = 5.0  # SIGTERM: time to finish in-flight work
    # systemd's TimeoutStopSec: a planned shutdown (core/shutdown.py) ends within it
    stop_timeout_s: float = 300.0
    halt_linger_s: float = 10.0  # a halted peer answers `hactl status` this long, then exits


@dataclass(frozen=True)
class WatchdogConfig:
    """Self-fencing (daemon/watchdog.py): fed only while a leader acknowledges this host."""

    kind: str = "none"  # none | device | command
    device: str = "/dev/watchdog"  # kind device: hardware watchdog or softdog
    command: tuple[str, ...] = ()  # kind command: argv run at every feed
    disarm_command: tuple[str, ...] = ()  # kind command: argv run on a clean stop
    timeout_s: float = 10.0  # the watchdog resets the machine this long after a feed
    self_fence_s: float = 10.0  # unacknowledged this long: destroy VMs, stop feeding


@dataclass(frozen=True)
class StorageConfig:
    """The storage activity check (core/storage.py, daemon/storage.py): no heartbeat
    path, no heartbeats written and no check of this host."""

    heartbeat_paths: tuple[str, ...] = ()  # shared storage directories (every host mounts)
    checks: int = 3  # consecutive checks that see nothing written before a fence
    check_interval_s: float = 2.0  # between two reads of a silent host's storage
    read_timeout_s: float = 2.0  # one check's reads (the leader's deadline)
    write_timeout_s: float = 2.0  # a heartbeat write slower than this is reported


@dataclass(frozen=True)
class NotifyConfig:
    hook: str = ""  # executable; gets one JSON event on stdin per notification
    webhook_url: str = ""  # http(s) URL; gets each notification's JSON as a POST
    webhook_token_file: str = ""  # its first line is sent as "Authorization: Bearer ..."
    webhook_timeout_s: float = 5.0  # one POST, to its answer
    attempts: int = 4  # tries per notification and channel (1: no retry)
    retry_backoff_s: float = 2.0  # the first pause between tries; doubles


@dataclass(frozen=True)
class MetricsConfig:
    address: str = ""  # host:port of the Prometheus endpoint (/metrics); "" = off


@dataclass(frozen=True)
class HistoryConfig:
    """The event history on this peer (daemon/history.py)."""

    dir: str = ""  # "" = DATA_DIR/history
    max_mib: int = 64  # the oldest records go beyond this size ...
    max_age_days: float = 90.0  # ... or this age


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json


@dataclass(frozen=True)
class Config:
    peer: PeerConfig
    cluster: ClusterConfig = ClusterConfig()
    leases: LeaseConfig = LeaseConfig()
    hypervisor: HypervisorConfig = HypervisorConfig()
    rpc: RpcConfig = RpcConfig()
    timing: TimingConfig = TimingConfig()
    notify: NotifyConfig = NotifyConfig()
    log: LogConfig = LogConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    storage: StorageConfig = StorageConfig()
    history: HistoryConfig = HistoryConfig()
    metrics: MetricsConfig = MetricsConfig()
    raft: RaftSettings = field(default_factory=RaftSettings)
    source: str = "<defaults>"

    @property
    def data_path(self) -> Path:
        return Path(self.peer.data_dir)


SECTIONS: dict[str, type] = {
    "peer": PeerConfig, "cluster": ClusterConfig, "leases": LeaseConfig,
    "hypervisor": HypervisorConfig, "rpc": RpcConfig, "timing": TimingConfig,
    "notify": NotifyConfig, "log": LogConfig, "watchdog": WatchdogConfig,
    "storage": StorageConfig,
    "history": HistoryConfig, "metrics": MetricsConfig,
}


def _section(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    spec = spec_of(cls)
    values = {}
    for key, raw in table.items():
        if key not in spec.names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(spec.names)})")
        hint = dict(zip(spec.names, spec.decoders, strict=True))[key]
        if isinstance(raw, dict):  # inline tables of strings, e.g. leases.links
            raw = sorted(raw.items())
        try:
            values[key] = hint(raw)
        except WireError as exc:
            raise ConfigError(f"{where} {key}: {exc}") from None
    missing = sorted(spec.required - values.keys())
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**values)


def _raft(table: Any, where: str) -> RaftSettings:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {f.name for f in dataclasses.fields(RaftSettings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in table.items()}
    try:
        return RaftSettings(**values)
    except RaftSettingsError as exc:
        raise ConfigError(f"{where} {exc.field}: {exc}") from None


def parse_config(doc: dict[str, Any], source: str = "<config>") -> Config:
    unknown = sorted(set(doc) - set(SECTIONS) - {"raft"})
    if unknown:
        raise ConfigError(f"{source}: unknown table(s) {', '.join(unknown)} (known: "
                          f"{', '.join([*SECTIONS, 'raft'])})")
    if "peer" not in doc:
        raise ConfigError(f"{source}: missing table [peer] (name and raft_address)")
    parts = {name: _section(cls, doc[name], f"{source}: [{name}]")
             for name, cls in SECTIONS.items() if name in doc}
    raft = _raft(doc.get("raft", {}), f"{source}: [raft]")
    config = Config(raft=raft, source=source, **parts)
    problem = config_problem(config)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    return config


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(doc, str(path))


def _address_problem(key: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{key}: expected host:port, got {value!r}"
    return ""


def config_problem(c: Config) -> str:
    """The first semantic problem ("" if none), naming the key."""
    checks = [
        ("" if NAME_RE.match(c.peer.name) else
         f"[peer] name: {c.peer.name!r} is not a valid host name"),
        _address_problem("[peer] raft_address", c.peer.raft_address),
        ("" if c.peer.role in ("voter", "member", "witness") else
         f"[peer] role: expected voter|member|witness, got {c.peer.role!r}"),
        ("" if c.log.level in ("debug", "info", "warning", "error") else
         f"[log] level: expected debug|info|warning|error, got {c.log.level!r}"),
        ("" if c.log.format in ("text", "json") else
         f"[log] format: expected text|json, got {c.log.format!r}"),
        ("" if 0 < c.leases.port < 65536 else f"[leases] port: {c.leases.port} out of range"),
        ("" if c.rpc.tcp_address == "" or (c.rpc.tls_cert and c.rpc.tls_key) else
         "[rpc] tcp_address needs tls_cert and tls_key (TCP is TLS only)"),
        ("" if not c.rpc.tcp_address or c.rpc.tls_client_ca or c.rpc.tokens_file else
         "[rpc] tcp_address needs tls_client_ca or tokens_file (every request is "
         "authenticated)"),
    ]
    for peer in c.cluster.peers:
        name, sep, addr = peer.partition("=")
        checks.append("" if sep and NAME_RE.match(name) else
                      f"[cluster] peers: expected name=host:port, got {peer!r}")
        if sep:
            checks.append(_address_problem("[cluster] peers", addr))
    checks.append(_address_problem("[rpc] tcp_address", c.rpc.tcp_address)
                  if c.rpc.tcp_address else "")
    checks.append(_address_problem("[metrics] address", c.metrics.address)
                  if c.metrics.address else "")
    checks.append("" if c.rpc.max_frame_bytes >= 1024 else
                  f"[rpc] max_frame_bytes: must be >= 1024, got {c.rpc.max_frame_bytes}")
    checks.append("" if c.rpc.max_connections > 0 else "[rpc] max_connections: must be > 0")
    checks.append("" if c.watchdog.kind in ("none", "device", "command") else
                  f"[watchdog] kind: expected none|device|command, got {c.watchdog.kind!r}")
    checks.append("" if c.watchdog.kind != "command" or c.watchdog.command else
                  "[watchdog] command: kind command needs the command to run at every feed")
    checks.append("" if c.watchdog.kind != "device" or c.watchdog.device else
                  "[watchdog] device: kind device needs the device path")
    checks.append("" if c.rpc.max_anonymous_per_source > 0 else
                  "[rpc] max_anonymous_per_source: must be > 0")
    checks.append(("[storage] heartbeat_paths: " + problem) if (
        problem := heartbeat_paths_problem(c.storage.heartbeat_paths)) else "")
    checks.append("" if 1 <= c.storage.checks <= 100 else
                  f"[storage] checks: must be 1..100, got {c.storage.checks}")
    checks.append("" if c.history.max_mib >= 1 else
                  f"[history] max_mib: must be >= 1, got {c.history.max_mib}")
    checks.append("" if math.isfinite(c.history.max_age_days) and c.history.max_age_days > 0
                  else f"[history] max_age_days: must be > 0, got {c.history.max_age_days}")
    checks.append("" if not c.notify.webhook_url or c.notify.webhook_url.startswith(
        ("http://", "https://")) else
        f"[notify] webhook_url: expected http://... or https://..., got {c.notify.webhook_url!r}")
    checks.append("" if 1 <= c.notify.attempts <= 20 else
                  f"[notify] attempts: must be 1 to 20, got {c.notify.attempts}")
    for section in (c.hypervisor, c.timing, c.rpc, c.watchdog, c.storage, c.notify):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if f.name.endswith("_s") and not (math.isfinite(value) and value > 0):
                checks.append(f"[{_table_of(section)}] {f.name}: must be > 0, got {value}")
    return next((p for p in checks if p), "")


def _table_of(section: object) -> str:
    return next(name for name, cls in SECTIONS.items() if isinstance(section, cls))


def read_secret(c: Config) -> str:
    """The cluster secret; mandatory, from a file only root can read."""
    path = Path(c.cluster.secret_file)
    try:
        mode = path.stat().st_mode
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"[cluster] secret_file: cannot read {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"[cluster] secret_file: {path} is readable by group/others "
                          f"(mode {mode & 0o777:o}); chmod 600 it")
    if len(secret) < 16:
        raise ConfigError(f"[cluster] secret_file: {path} holds a secret shorter than 16 "
                          "characters")
    return secret
