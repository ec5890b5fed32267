"""One `hacluster peer` process of its own (a one-voter cluster on test:///default),
driven through hactl, for the tests of the history and notifications."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from daemon.test_peer_signals import PEER, write_config

VM_XML = ("<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory>"
          "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")


class SoloPeer:
    def __init__(self, base: Path, extra: str = "") -> None:
        self.base = base
        self.config = write_config(base, extra=extra)
        self.log = base / "peer.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*PEER, str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while self.hactl("--json", "status", check=False).returncode != 0 or \
                not json.loads(self.hactl("--json", "status").stdout)["freshness"]["caught_up"]:
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                self.log.read_text()
            time.sleep(0.1)
        # the version gate admits this release's newer commands once the peer announced it
        while not any(e.get("kind") == "versions-announced" for e in self.events()):
            assert time.monotonic() < deadline and self.proc.poll() is None, \
                self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.log.read_text()

    def hactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                               str(self.base / "hactl.sock"), *args],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 or not check, done.stderr
        return done

    def events(self, *args: str) -> list[dict[str, object]]:
        out = self.hactl("--json", "events", "--last", "1000", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


