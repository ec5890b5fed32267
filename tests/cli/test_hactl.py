"""hactl against real peers: tables, --json, exit codes, the shell, --help."""

from __future__ import annotations

import json
import os
import random
import socket as sk
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hacluster.cli.commands import COMMANDS, build_parser
from hacluster.cli.shell import Names, candidates
from hacluster.hypervisor.domxml import minimal_domain_xml
from hacluster.lab.cluster import LabCluster

Factory = Callable[..., LabCluster]


def hactl(lab: LabCluster, *args: str,
          stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return hactl_on(lab, "h1", *args, stdin=stdin)


def hactl_on(lab: LabCluster, host: str, *args: str,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    socket = lab.nodes[host].host.spec.rpc_socket
    return subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect", socket,
                           *args], capture_output=True, text=True, input=stdin, timeout=60)


@pytest.mark.parametrize("spec", COMMANDS, ids=[" ".join(s.words) for s in COMMANDS])
def test_every_command_has_help_with_examples(spec: object,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser("/nonexistent")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*spec.words, "--help"])  # type: ignore[attr-defined]
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "hactl " in out


def test_no_peer_is_a_clear_error_and_exit_3(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                           str(tmp_path / "missing.sock"), "status"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert "missing.sock" in done.stderr


def test_a_domain_xml_file_over_the_limit_is_refused_before_anything_else(
        tmp_path: Path) -> None:
    """Not read, not sent: refused even when no peer answers (exit 2, not 3)."""
    huge = tmp_path / "huge.xml"
    with huge.open("wb") as f:
        f.truncate(3 * 1024 * 1024)
    done = subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                           str(tmp_path / "missing.sock"), "vm", "add", str(huge)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{huge}: 3145728 bytes; a domain XML may have at most 262144 bytes" in done.stderr


def test_commands_against_a_running_cluster(lab_factory: Factory, tmp_path: Path) -> None:
    lab = lab_factory(3)
    xml = tmp_path / "db1.xml"
    xml.write_text(minimal_domain_xml("db1", 256, 1, "test"))
    added = hactl(lab, "vm", "add", str(xml), "--priority", "7", "--anti-affinity", "db")
    assert added.returncode == 0, added.stderr
    assert "vm-added db1" in added.stdout
    lab.wait(lambda: lab.vms()["db1"]["state"] == "started", 20, "db1 running")
    status = hactl(lab, "status")
    assert status.returncode == 0 and "leader" in status.stdout and "h1" in status.stdout
    listed = json.loads(hactl(lab, "--json", "vm", "list").stdout)
    assert [v["name"] for v in listed["vms"]] == ["db1"]
    assert listed["freshness"]["applied_index"] > 0
    explained = hactl(lab, "explain", "db1")
    assert "if" in explained.stdout and "died now" in explained.stdout
    assert hactl(lab, "vm", "show", "nope").returncode == 1  # not found
    tagged = hactl(lab, "host", "tag", "h2", "add", "ssd")
    assert tagged.returncode == 0 and "tag ssd added" in tagged.stdout, tagged.stderr
    assert json.loads(hactl(lab, "--json", "host", "show", "h2").stdout)["host"]["tags"] == \
        ["ssd"]
    looped = hactl(lab, "vm", "set", "db1", "--start-after", "db1")
    assert looped.returncode == 2 and "VM db1 cannot start after itself" in looped.stderr
    related = hactl(lab, "vm", "set", "db1", "--colocation", "shop", "--required-tags", "ssd")
    assert related.returncode == 0, related.stderr
    shown = json.loads(hactl(lab, "--json", "vm", "show", "db1").stdout)["vm"]
    assert (shown["colocation"], shown["required_tags"]) == ("shop", ["ssd"])
    refused = hactl(lab, "vm", "remove", "db1")  # running: refused by the cluster
    assert refused.returncode == 1 and "stop it first" in refused.stderr
    bad = hactl(lab, "settings", "set", "lease_ttl_s=0.1")  # refused before it is proposed
    assert bad.returncode == 2 and "lease timings" in bad.stderr
    assert "(field: lease_ttl_s)" in bad.stderr
    assert hactl(lab, "host", "maintenance").returncode == 2  # usage error
    config = hactl(lab, "--json", "config", "show")
    assert config.returncode == 0 and "secret_file" in config.stdout
    bmc = json.loads(hactl(lab, "--json", "bmc", "show").stdout)
    assert bmc["defaults"]["password"] == "<sealed>"
    assert lab.nodes["h1"].bmc.password.reveal() not in json.dumps(bmc)


def test_the_shell_runs_piped_commands(lab_factory: Factory) -> None:
    lab = lab_factory(3)
    done = hactl(lab, stdin="host list\nhelp\nsettings show\nexit\n")
    assert done.returncode == 0, done.stderr
    assert "h3" in done.stdout and "commands (add --help" in done.stdout
    assert "lease_ttl_s" in done.stdout


def test_shell_completion_knows_commands_and_names() -> None:
    names = Names(client=None)
    names.hosts, names.vms = ["h1", "h2"], ["db1"]
    assert "host" in candidates([], names) and "exit" in candidates([], names)
    assert "maintenance" in candidates(["host"], names)
    assert candidates(["host", "maintenance"], names) == ["h1", "h2"]
    assert candidates(["vm", "migrate"], names) == ["db1"]
    assert candidates(["vm", "migrate", "db1"], names) == ["h1", "h2"]


def test_garbage_on_a_peers_socket_does_not_disturb_it(lab_factory: Factory) -> None:
    """Bad frames get an error or a closed connection; the peer keeps serving."""
    lab = lab_factory(3)
    path = lab.nodes["h2"].host.spec.rpc_socket
    rng = random.Random(7)
    for _ in range(200):
        with sk.socket(sk.AF_UNIX, sk.SOCK_STREAM) as conn:
            conn.settimeout(2)
            conn.connect(path)
            kind = rng.randrange(3)
            if kind == 0:
                payload = os.urandom(rng.randrange(1, 64))
            elif kind == 1:  # a length prefix that lies
                payload = struct.pack(">I", rng.randrange(1 << 32)) + os.urandom(8)
            else:  # a valid frame header with a garbage msgpack body
                body = os.urandom(rng.randrange(1, 32))
                payload = struct.pack(">I", len(body)) + body
            try:
                conn.sendall(payload)
                conn.shutdown(sk.SHUT_WR)
                conn.recv(4096)
            except OSError:
                pass
    peer = lab.call("status", name="h2")["peer"]
    assert peer["name"] == "h2"
    assert hactl(lab, "status").returncode == 0
    # counted for status (as unreadable frames from root's uid), logged a few times only
    rpc = peer["refused"]["rpc"]
    assert rpc["kinds"]["bad_frame"] >= 100 and rpc["recent"][0]["source"] == "unix:uid=0"
    log = (lab.nodes["h2"].host.spec.path / "peer.log").read_text()
    assert 1 <= log.count("rpc: refused unix caller") <= 5
    shown = hactl_on(lab, "h2", "status").stdout
    assert "refused: rpc " in shown and "bad_frame" in shown
    as_json = json.loads(hactl_on(lab, "h2", "--json", "status").stdout)
    assert as_json["peer"]["refused"]["rpc"]["total"] >= 100


@pytest.mark.parametrize("words", [[], ["host"], ["vm"], ["fence"], ["cluster"], ["config"],
                                   ["settings"], ["bmc"]])
def test_every_group_and_the_top_level_help_show_examples(
        words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser("/nonexistent").parse_args([*words, "--help"])
    assert "examples:\n  hactl " in capsys.readouterr().out


def test_preferred_hosts_failback_and_host_ready_become_their_params() -> None:
    parser = build_parser("/nonexistent")
    args = parser.parse_args(["vm", "set", "db1", "--prefer", "h1=250,h2,h3", "--failback",
                              "auto"])
    assert args.spec.params(args) == {"name": "db1", "failback": "auto",
                                      "preferred_hosts": [["h1", 250], ["h2", 90], ["h3", 80]]}
    cleared = parser.parse_args(["vm", "set", "db1", "--prefer", ""])
    assert cleared.spec.params(cleared) == {"name": "db1", "preferred_hosts": []}
    bad = parser.parse_args(["vm", "set", "db1", "--prefer", "h1=lots"])
    with pytest.raises(ValueError, match="the score after '=' must be a whole number"):
        bad.spec.params(bad)
    ready = parser.parse_args(["host", "ready", "h2"])
    assert (ready.spec.method, ready.spec.params(ready)) == \
        ("host.maintenance", {"name": "h2", "on": False, "ready": True})
