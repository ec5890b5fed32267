"""A single `hacluster peer` process: systemd notifications (READY, WATCHDOG,
STOPPING), SIGHUP reload (what applies, what needs a restart), SIGTERM exit,
and a broken configuration refused with the key named."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftlab.harness import free_ports

PEER = [sys.executable, "-m", "hacluster.cli.main", "peer", "--config"]


def raft_and_lease_ports(taken: tuple[int, ...] = ()) -> int:
    """A Raft port the kernel says is free (and not one of `taken`, picked earlier for
    something else), whose next port (the lease port) is free for UDP too."""
    while True:
        port = free_ports(1)[0]
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as lease:
            try:
                lease.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def write_config(base: Path, level: str = "info", extra: str = "", rpc: str = "",
                 rpc_port: int = 0) -> Path:
    port = raft_and_lease_ports(taken=(rpc_port,))
    secret = base / "secret"
    if not secret.exists():
        secret.write_text(secrets.token_hex(16))
        secret.chmod(0o600)
    path = base / "peer.toml"
    path.write_text(
        f'[peer]\nname = "solo"\nraft_address = "127.0.0.1:{port}"\ndata_dir = "{base}/data"\n'
        f'[cluster]\nsecret_file = "{secret}"\n[leases]\nport = {port + 1}\n'
        '[hypervisor]\nuri = "test:///default"\nmemory_mib = 1024\nvcpus = 2\n'
        f'[rpc]\nsocket = "{base}/hactl.sock"\n{rpc}[log]\nlevel = "{level}"\n{extra}')
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def messages_until(sock: socket.socket, wanted: str, log: Path) -> list[str]:
    seen = []
    while wanted not in seen:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            pytest.fail(f"no {wanted} after {seen}; the peer logged:\n{log.read_text()}")
    return seen


def test_systemd_notifications(tmp_path: Path, notify_socket: socket.socket) -> None:
    config = write_config(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": "1000000"}
    log = tmp_path / "peer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*PEER, str(config)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        for wanted in ("READY=1", "WATCHDOG=1"):
            assert wanted in messages_until(notify_socket, wanted, log)
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in messages_until(notify_socket, "STOPPING=1", log)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_sighup_applies_what_it_can_and_names_the_rest(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    log = tmp_path / "peer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*PEER, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "peer running" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        text = config.read_text().replace('level = "info"', 'level = "debug"')
        config.write_text(text + "[raft]\nelection_timeout_max_s = 0.5\n")
        proc.send_signal(signal.SIGHUP)
        while "configuration reloaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        line = next(x for x in log.read_text().splitlines() if "configuration reloaded" in x)
        assert "applied=log" in line and "needs_restart=[raft]" in line
        config.write_text("[peer\nbroken")
        proc.send_signal(signal.SIGHUP)
        while "reload refused" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert proc.poll() is None  # a bad reload never stops the peer
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_broken_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="[timing]\nagent_tick_s = -1\n")
    done = subprocess.run([*PEER, str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "[timing] agent_tick_s: must be > 0" in done.stderr


def test_hactl_reaches_a_peer_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    from rpc.support import make_pki  # tests/rpc/support.py: a throwaway CA

    pki = make_pki(tmp_path)
    port = free_ports(1)[0]
    config = write_config(tmp_path, rpc_port=port, rpc=(
        f'tcp_address = "127.0.0.1:{port}"\ntls_cert = "{pki.server_cert}"\n'
        f'tls_key = "{pki.server_key}"\ntls_client_ca = "{pki.ca_cert}"\n'))
    proc = subprocess.Popen([*PEER, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    hactl = [sys.executable, "-m", "hacluster.cli.hactl", "--connect", f"127.0.0.1:{port}",
             "--cafile", pki.ca_cert]
    try:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run([*hactl, "--cert", pki.client_cert, "--key", pki.client_key,
                                   "--json", "status"], capture_output=True, text=True,
                                  timeout=30)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert '"name": "solo"' in done.stdout
        refused = subprocess.run([*hactl, "status"], capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode == 3 and "unauthenticated" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_sighup_rotates_rpc_tokens_without_a_restart(tmp_path: Path) -> None:
    from rpc.support import make_pki  # tests/rpc/support.py: a throwaway CA

    pki = make_pki(tmp_path)
    port = free_ports(1)[0]
    tokens, old, new = tmp_path / "tokens", tmp_path / "old.token", tmp_path / "new.token"
    old.write_text("a" * 32)
    new.write_text("b" * 32)
    tokens.write_text(f"ops:{'a' * 32}\n")
    tokens.chmod(0o600)
    config = write_config(tmp_path, rpc_port=port, rpc=(
        f'tcp_address = "127.0.0.1:{port}"\ntls_cert = "{pki.server_cert}"\n'
        f'tls_key = "{pki.server_key}"\ntokens_file = "{tokens}"\n'))
    log = tmp_path / "peer.log"
    hactl = [sys.executable, "-m", "hacluster.cli.hactl", "--connect", f"127.0.0.1:{port}",
             "--cafile", pki.ca_cert]

    def status(token: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*hactl, "--token-file", str(token), "--json", "status"],
                              capture_output=True, text=True, timeout=30)

    def wait_logged(text: str, times: int) -> None:
        deadline = time.monotonic() + 30
        while log.read_text().count(text) < times:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)

    with open(log, "wb") as out:
        proc = subprocess.Popen([*PEER, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_logged("peer running", 1)
        assert status(old).returncode == 0
        tokens.write_text(f"ops:{'b' * 32}\n")
        proc.send_signal(signal.SIGHUP)
        wait_logged("RPC credentials reloaded", 1)
        refused = status(old)
        assert refused.returncode == 3 and "unauthenticated" in refused.stderr
        assert status(new).returncode == 0
        tokens.write_text("no colon here\n")  # broken: the current tokens stay
        proc.send_signal(signal.SIGHUP)
        wait_logged("RPC credentials reload refused", 1)
        assert "line 1" in log.read_text() and "b" * 32 not in log.read_text()
        assert status(new).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_sigusr1_writes_every_threads_stack_and_the_peer_goes_on(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    log = tmp_path / "peer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*PEER, str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "peer running" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        while "most recent call first" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        assert log.read_text().count("Thread 0x") >= 2  # the loop, Raft, the watchdog...
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_read_only_data_directory_is_named_not_a_traceback(tmp_path: Path) -> None:
    """A disk remounted read-only (as after I/O errors) must give one clear line."""
    config = write_config(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(data)], check=True)
    try:
        run = subprocess.run([*PEER, str(config)], capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["umount", str(data)], check=True)
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr
    assert "Read-only file system" in run.stderr and str(data) in run.stderr
