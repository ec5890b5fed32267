"""sushy-tools' Redfish emulator over TLS on loopback, for the Redfish tests.

The emulator's fake driver applies a power change 1-11 s after the request
("hardware is not immediate"). We launch it through a small bootstrap that
pins that delay to 0, so a change shows on the next read. The certificate is
self-signed and generated here; users are in a bcrypt htpasswd file.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from raftlab.harness import free_ports

_BOOTSTRAP = """
import sys
from sushy_tools.emulator.resources.systems import fakedriver

class _NoDelay:
    @staticmethod
    def randint(low, high):
        return 0

fakedriver.random = _NoDelay
from sushy_tools.emulator import main
sys.argv = ["sushy-emulator", "--config", sys.argv[1]]
sys.exit(main.main())
"""


def sushy_unavailable_reason() -> str | None:
    try:
        import bcrypt  # noqa: F401
        import sushy_tools  # noqa: F401
    except ImportError as err:
        return f"sushy-tools not installed ({err}); pip install sushy-tools"
    return None


def _free_tcp_port() -> int:
    """A port free now, outside the ephemeral range, never given twice here; the
    emulator binds it about a second later, so wait_ready retries if it was taken."""
    return free_ports(1)[0]


def make_self_signed(directory: Path) -> tuple[Path, Path, str]:
    """Cert and key for 127.0.0.1; returns (cert, key, sha256 of the DER)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hacluster-test-bmc")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bmc.crt", directory / "bmc.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return cert_path, key_path, fingerprint


@dataclass(frozen=True)
class FakeSystem:
    name: str
    uuid: str
    power_on: bool = True


class RedfishEmulator:
    """One sushy-emulator process. `start()` returns before it is ready; call
    `wait_ready()` (so several can boot in parallel)."""

    def __init__(
        self,
        directory: Path,
        systems: Sequence[FakeSystem],
        user: str,
        password: str,
        *,
        disable_power_off: bool = False,
    ) -> None:
        self.directory = directory
        self.systems = list(systems)
        self.user = user
        self.password = password
        self.disable_power_off = disable_power_off
        self.port = 0
        self.fingerprint = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, cert: Path, key: Path) -> Path:
        import bcrypt

        htpasswd = self.directory / "htpasswd"
        digest = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd.write_text(f"{self.user}:{digest}\n")
        systems: list[dict[str, object]] = [
            {
                "uuid": s.uuid,
                "name": s.name,
                "power_state": "On" if s.power_on else "Off",
                "external_notifier": False,
                "nics": [],
            }
            for s in self.systems
        ]
        config = self.directory / "emulator.conf"
        state = self.directory / "state"
        state.mkdir(exist_ok=True)
        config.write_text(
            f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
            f"SUSHY_EMULATOR_LISTEN_PORT = {self.port}\n"
            f"SUSHY_EMULATOR_SSL_CERT = {str(cert)!r}\n"
            f"SUSHY_EMULATOR_SSL_KEY = {str(key)!r}\n"
            f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
            f"SUSHY_EMULATOR_FAKE_DRIVER = True\n"
            f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
            f"SUSHY_EMULATOR_STATE_DIR = {str(state)!r}\n"
            f"SUSHY_EMULATOR_DISABLE_POWER_OFF = {self.disable_power_off!r}\n"
        )
        return config

    def start(self) -> RedfishEmulator:
        self.directory.mkdir(parents=True, exist_ok=True)
        cert, key, self.fingerprint = make_self_signed(self.directory)
        self.port = _free_tcp_port()
        config = self._write_config(cert, key)
        with open(self.directory / "emulator.log", "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return self

    def _answers(self) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.sendall(b"GET /redfish/v1/ HTTP/1.0\r\nHost: x\r\n\r\n")
                return tls.recv(16).startswith(b"HTTP/1.")
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 30.0, attempts: int = 3) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._proc is None or self._proc.poll() is not None:
                if attempts > 1 and "Address already in use" in self.log_tail():
                    self.start()  # someone took the port meanwhile: another one
                    self.wait_ready(timeout_s, attempts - 1)
                    return
                raise RuntimeError(f"sushy-emulator exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sushy-emulator not ready: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "emulator.log").read_text()[-800:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
