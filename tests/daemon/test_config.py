"""The peer configuration: validated at start, errors name the key, and the
shipped example documents every key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hacluster.config import SECTIONS, ConfigError, load_config, parse_config, read_secret
from hacluster.raft.settings import RaftSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "contrib" / "hacluster.example.toml"
MINIMAL = {"peer": {"name": "h1", "raft_address": "10.0.0.1:7440"}}


def test_the_example_loads_and_documents_every_key() -> None:
    config = load_config(EXAMPLE)
    assert config.peer.name == "h1"
    text = EXAMPLE.read_text()
    tables = {**SECTIONS, "raft": RaftSettings}
    for table, cls in tables.items():
        block = re.split(rf"^\[{table}\]$", text, flags=re.M)[1].split("\n[", 1)[0]
        keys = set(re.findall(r"^(\w+) =", block, re.M))
        missing = {f.name for f in dataclasses.fields(cls)} - keys
        assert not missing, f"[{table}] keys missing from the example: {missing}"


def test_defaults_are_enough() -> None:
    config = parse_config(MINIMAL)
    assert config.timing.propose_timeout_s > 0 and config.raft.fsync


@pytest.mark.parametrize(("doc", "message"), [
    ({}, r"missing table \[peer\]"),
    ({"peer": {"name": "h1"}}, r"\[peer\]: missing required key\(s\) raft_address"),
    ({**MINIMAL, "nonsense": {}}, r"unknown table\(s\) nonsense"),
    ({**MINIMAL, "timing": {"agent_tick_s": "fast"}},
     r"\[timing\] agent_tick_s: expected a number"),
    ({**MINIMAL, "timing": {"agent_tick_s": -1}}, r"\[timing\] agent_tick_s: must be > 0"),
    ({**MINIMAL, "hypervisor": {"urii": "x"}}, r"\[hypervisor\]: unknown key 'urii'"),
    ({"peer": {"name": "bad name", "raft_address": "x:1"}}, r"\[peer\] name"),
    ({"peer": {"name": "h1", "raft_address": "nohost"}}, r"\[peer\] raft_address"),
    ({**MINIMAL, "cluster": {"peers": ["h2"]}}, r"\[cluster\] peers"),
    ({**MINIMAL, "rpc": {"tcp_address": "0.0.0.0:7443"}}, r"needs tls_cert and tls_key"),
    ({**MINIMAL, "raft": {"election_timeout_min_s": 1.0}}, r"\[raft\] election_timeout_max_s"),
    ({**MINIMAL, "log": {"level": "loud"}}, r"\[log\] level"),
    ({**MINIMAL, "storage": {"heartbeat_paths": ["pool"]}},
     r"\[storage\] heartbeat_paths: heartbeat path 'pool': expected an absolute directory"),
    ({**MINIMAL, "storage": {"checks": 0}}, r"\[storage\] checks: must be 1..100"),
    ({**MINIMAL, "storage": {"read_timeout_s": 0}}, r"\[storage\] read_timeout_s: must be > 0"),
])
def test_errors_name_the_key(doc: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        parse_config(doc, "test.toml")


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[peer\nname = ")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(path)


def test_secret_file_must_be_private_and_long(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("short")
    secret.chmod(0o600)
    config = parse_config({**MINIMAL, "cluster": {"secret_file": str(secret)}})
    with pytest.raises(ConfigError, match="shorter than 16"):
        read_secret(config)
    secret.write_text("x" * 32)
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_secret(config)
    secret.chmod(0o600)
    assert read_secret(config) == "x" * 32


def test_a_peer_with_disk_leases_refuses_to_start_on_a_libvirt_without_them(
        tmp_path: Path) -> None:
    """`hacluster peer` exits 2 naming libvirt's file and option; it edits nothing."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "qemu.conf").write_text('user = "root"\n')
    secret = tmp_path / "secret"
    secret.write_text("s" * 32)
    secret.chmod(0o600)
    config = tmp_path / "peer.toml"
    config.write_text(f'[peer]\nname = "h1"\nraft_address = "127.0.0.1:7440"\n'
                      f'data_dir = "{tmp_path / "data"}"\n[cluster]\nsecret_file = "{secret}"\n'
                      f'[hypervisor]\ndisk_leases = true\nlibvirt_config_dir = "{etc}"\n')
    done = subprocess.run([sys.executable, "-m", "hacluster.cli.main", "peer", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert (f"[hypervisor] disk_leases: {etc}/qemu.conf sets lock_manager to nothing"
            in done.stderr)
    assert (etc / "qemu.conf").read_text() == 'user = "root"\n'
