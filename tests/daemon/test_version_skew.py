"""Two releases in one cluster, as real peer processes (issue 8, hole 3).

A rolling upgrade has reached h1 and h2: they run a newer release (tests/daemon/
newer_peer.py) that knows one more command, `frobnicate`; h3 still runs this one.
The newer peers refuse to propose it and name h3. Forced into the log anyway, it
stops h3: h3 applies nothing past it, says why in `hactl status` and its log, and
exits 76 (again on every restart: it never skips the entry), while h1 and h2 go on.
Upgraded, h3 applies the entry as the others did and their digests agree."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.lab.cluster import LabCluster, LabNode
from hacluster.rpc.client import RpcClient
from hacluster.rpc.protocol import ErrorCode, RpcError

from .newer_peer import FROBNICATED_VM_STABLE_S, SOCKET
from .support import converged

Factory = Callable[..., LabCluster]
NEWER = [sys.executable, str(Path(__file__).with_name("newer_peer.py"))]
LINGER_S = 4.0  # [timing] halt_linger_s of h3: it answers `status` this long once halted
EXIT_VERSION_SKEW = 76


def restart(node: LabNode, program: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Stop the host's peer cleanly, start it again (this release, or `program`)."""
    node.host.stop_peer()
    return node.host.start_peer(program)


def frobnicate(node: LabNode, force: bool = False) -> dict[str, Any]:
    with RpcClient.connect(str(node.host.spec.path / SOCKET), timeout_s=30) as rpc:
        result: dict[str, Any] = rpc.call("test.frobnicate", {"force": force})
        return result


def refusal(node: LabNode) -> RpcError:
    try:
        frobnicate(node)
    except RpcError as exc:
        if exc.code is ErrorCode.CONFLICT:
            return exc
        raise
    raise AssertionError("frobnicate was proposed while a host cannot read it")


def hactl(node: LabNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster.cli.hactl", "--connect",
                           node.host.spec.rpc_socket, *args],
                          capture_output=True, text=True, timeout=30)


def vm_stable_s(lab: LabCluster, name: str) -> float:
    """A setting that only applying frobnicate changes (in this test)."""
    return float(lab.call("settings.show", name=name)["settings"]["vm_stable_s"])


def halted_status(lab: LabCluster, name: str, seen: dict[str, Any]) -> Callable[[], bool]:
    def check() -> bool:
        seen.update(lab.call("status", name=name)["peer"])
        return bool(seen["halted"])

    return check


def test_a_newer_command_is_refused_then_forced_in_halts_the_older_peer(
        lab_factory: Factory) -> None:
    lab = lab_factory(3)
    h1, h2, h3 = (lab.nodes[n] for n in ("h1", "h2", "h3"))
    # fencing off: h3's host stays up while its halted peer answers `status`
    lab.call("cluster.maintenance", {"on": True}, name="h1")
    for node in (h1, h2):  # upgraded first; h3 restarts last, so it does not lead
        restart(node, NEWER)
    h3.host.spec = dataclasses.replace(
        h3.host.spec, timing=(*h3.host.spec.timing, ("halt_linger_s", LINGER_S)))
    h3.host.write()
    older = restart(h3)
    lab.wait(lambda: lab.call("status", name="h3")["peer"]["caught_up"], 30, "h3 back")
    lab.wait(lambda: refusal(h1).details["hosts"] == ["h3"], 60,
             "h1 and h2 announced that they understand frobnicate")

    # (a) the gate: never proposed, and h3 named as the host that lacks it
    refused = refusal(h2)
    assert refused.details == {"command": "frobnicate", "version": 1, "hosts": ["h3"]}
    assert "frobnicate v1 is not understood by every host: h3 (" in refused.message
    assert not lab.call("status", name="h3")["peer"]["halted"]

    # (b) forced into the log anyway: h3 stops at that entry and says why
    forced = frobnicate(h1, force=True)
    assert forced["status"] == "committed", forced
    index = forced["index"]
    peer: dict[str, Any] = {}
    lab.wait(halted_status(lab, "h3", peer), 20, "h3 halted")
    report = peer["halted"]
    assert (report["index"], report["command_type"], report["version"]) == \
        (index, "frobnicate", 1)
    assert report["exit_code"] == EXIT_VERSION_SKEW
    assert "frobnicate" not in report["understands"]["commands"]
    assert report["understands"]["entry_formats"] == [1, 2]
    assert peer["applied_index"] < index and not peer["is_leader"]
    shown = hactl(h3, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"HALTED: h3 applies nothing more and exits with code {EXIT_VERSION_SKEW}" \
        in shown.stdout
    assert f"cannot apply log index {index} (frobnicate v1, entry format" in shown.stdout
    assert "unknown command type 'frobnicate'" in shown.stdout
    listed = hactl(h3, "vm", "list")
    assert listed.returncode == 3 and "halted" in listed.stderr
    assert older.wait(LINGER_S + 30) == EXIT_VERSION_SKEW
    log = (h3.host.spec.path / "peer.log").read_text()
    assert "halted: this peer applies nothing more" in log
    assert f"cannot apply log index {index}" in log

    # the newer peers are unaffected: they applied it and still commit
    for name in ("h1", "h2"):
        status = lab.call("status", name=name)["peer"]
        assert not status["halted"] and status["applied_index"] >= index
        assert vm_stable_s(lab, name) == FROBNICATED_VM_STABLE_S
    assert lab.call("cluster.maintenance", {"on": True}, name="h2")["index"] > index

    # restarted on the same release it halts again at the same entry: never skipped
    assert h3.host.start_peer().wait(LINGER_S + 60) == EXIT_VERSION_SKEW
    # upgraded, it applies the entry like the others did: equal state everywhere
    h3.host.start_peer(NEWER)
    lab.wait(converged(lab, at_least=index), 60, "upgraded h3 caught up, equal digests")
    assert vm_stable_s(lab, "h3") == FROBNICATED_VM_STABLE_S
