"""A [metrics] address that cannot be used is a configuration error naming the key."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from daemon.test_peer_signals import PEER, write_config
from hacluster.config import ConfigError, parse_config


def test_a_busy_metrics_address_exits_2_naming_the_key(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, extra=f'[metrics]\naddress = "127.0.0.1:{port}"\n')
        done = subprocess.run([*PEER, str(config)], capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"[metrics] address: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_metrics_address_is_host_and_port() -> None:
    with pytest.raises(ConfigError, match=r"\[metrics\] address: expected host:port"):
        parse_config({"peer": {"name": "h1", "raft_address": "10.0.0.1:7440"},
                      "metrics": {"address": "9464"}})
