"""`hactl host fencing` against a real peer: levels set, shown (passwords sealed),
refused with a clear error, cleared; the password never reaches the log in clear."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.solo import SoloPeer

PASSWORD = "Pdu-Secr3t.Pw_77"


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[SoloPeer]:
    peer = SoloPeer(tmp_path)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def levels_shown(peer: SoloPeer) -> list[str]:
    return list(json.loads(peer.hactl("--json", "host", "show", "solo").stdout)["host"]
                ["fence_levels"])


def test_levels_are_set_shown_refused_and_cleared(solo: SoloPeer, tmp_path: Path) -> None:
    secret_file = tmp_path / "pdu.pw"
    secret_file.write_text(PASSWORD + "\n")
    done = solo.hactl("host", "fencing", "solo", "--level", "bmc", "--level",
                      f"agent:fence_apc_snmp:10.0.3.1,plug=3,password-file={secret_file}",
                      "ipmi:10.0.3.2:6230,username=pdu")
    assert "fencing levels changed: 2 level(s), devices per level 1/2" in done.stdout
    assert levels_shown(solo) == [
        "1: bmc (the host's BMC settings)",
        "2: agent fence_apc_snmp 10.0.3.1 password=<sealed> plug=3 + "
        "ipmi 10.0.3.2:6230 username=pdu"]
    assert "(2 levels)" in solo.hactl("host", "list").stdout

    refused = solo.hactl("host", "fencing", "solo", "--level", "agent:rm:10.0.3.1",
                         check=False)
    assert refused.returncode != 0
    assert "level 1, device 1 (agent): fence agent 'rm': expected a fence_* executable" \
        in refused.stderr
    unreadable = solo.hactl("host", "fencing", "solo", "--level", "pdu:10.0.3.1",
                            check=False)
    assert unreadable.returncode == 2 and "expected bmc, ipmi:ADDRESS" in unreadable.stderr
    assert len(levels_shown(solo)) == 2  # nothing refused was applied

    solo.hactl("host", "fencing", "solo", "--clear")
    assert levels_shown(solo) == []
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path
    assert PASSWORD not in solo.log.read_text()
