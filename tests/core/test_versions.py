"""The version gate (core/versions.py) and the announcements it reads (apply)."""

from __future__ import annotations

import pytest

from hacluster.core.versions import (
    BASELINE_COMMANDS,
    admit,
    announcement,
    this_peer,
    understood_by,
)
from hacluster.fsm import commands as c
from hacluster.fsm.events import Event
from hacluster.fsm.model import HostVersions
from hacluster.fsm.states import HostState

from .builders import Cluster, kinds, only

NEW = ("frobnicate", 1)  # a command of a newer release
# Command types added since release 0.1.0, whose peers never announce.
SINCE_0_1_0 = {c.AnnounceVersions, c.HoldFence, c.CancelFence, c.ReportWatchdog,
               c.WatchdogConfirm, c.ReportStorage, c.StorageChecked, c.PlannedShutdown,
               c.SetShutdownPolicy, c.MakeRoom, c.TagHost, c.SetHostFencing, c.FailbackVm}


def announce(cluster: Cluster, name: str, commands: tuple[tuple[str, int], ...] = (),
             formats: tuple[int, ...] = (1, 2)) -> list[Event]:
    mine = commands or tuple(sorted({*this_peer(name).commands, NEW}))
    return cluster.run(c.AnnounceVersions(name=name, commands=mine, entry_formats=formats))


def mixed_cluster() -> Cluster:
    """h1 and h2 run a newer release (they know frobnicate v1); h3 runs 0.1.0."""
    cluster = Cluster()
    cluster.add_hosts("h1", "h2", "h3")
    announce(cluster, "h1")
    announce(cluster, "h2")
    return cluster


# ---------------------------------------------------------------- the baseline


def test_the_baseline_is_release_0_1_0_every_command_at_version_1() -> None:
    released = {(cls.TYPE, 1) for cls in c.ALL_COMMANDS if cls not in SINCE_0_1_0}
    assert set(BASELINE_COMMANDS) == released and len(BASELINE_COMMANDS) == 27


def test_a_host_that_never_announced_understands_the_baseline() -> None:
    cluster = Cluster()
    cluster.add_host("h3")
    assert understood_by(cluster.state, "h3") == HostVersions("h3", BASELINE_COMMANDS, (1,))


# ---------------------------------------------------------------- the gate


def test_a_command_some_host_lacks_is_refused_naming_the_host() -> None:
    admission = admit(mixed_cluster().state, *NEW)
    assert not admission.admitted and admission.entry_format == 0
    assert admission.lacking == ("h3",)
    assert "frobnicate v1 is not understood by every host" in admission.refusal
    assert "h3 (never announced: release 0.1.0" in admission.refusal
    assert "h1" not in admission.refusal and "h2" not in admission.refusal


def test_a_newer_version_is_refused_naming_the_version_the_host_knows() -> None:
    cluster = mixed_cluster()
    announce(cluster, "h3", commands=(("host-load", 1), ("noop", 1)))
    admission = admit(cluster.state, "host-load", 2)
    assert admission.lacking == ("h1", "h2", "h3")
    assert "h3 (knows host-load v1)" in admission.refusal
    assert "does not know" not in admission.refusal
    assert "h1 (knows host-load v1)" in admission.refusal


def test_a_baseline_command_is_admitted_in_format_1_while_a_host_is_on_the_baseline() -> None:
    assert admit(mixed_cluster().state, "vm-migrate", 1).entry_format == 1


def test_once_every_host_announced_the_command_is_admitted_in_format_2() -> None:
    cluster = mixed_cluster()
    announce(cluster, "h3")
    admission = admit(cluster.state, *NEW)
    assert admission.admitted and admission.entry_format == 2


def test_a_removed_host_no_longer_holds_anything_back() -> None:
    cluster = mixed_cluster()
    cluster.ok(c.SetHostMaintenance(name="h3", on=True))
    cluster.ok(c.RemoveHost(name="h3"))
    assert cluster.host_state("h3") is HostState.REMOVED
    assert admit(cluster.state, *NEW).entry_format == 2


def test_the_format_is_the_newest_this_peer_writes_and_every_host_reads() -> None:
    cluster = Cluster()
    cluster.add_hosts("h1", "h2")
    announce(cluster, "h1", formats=(1, 2, 3))
    announce(cluster, "h2", formats=(1, 2, 3))
    assert admit(cluster.state, "noop", 1, writable=(1, 2)).entry_format == 2
    assert admit(cluster.state, "noop", 1, writable=(1, 2, 3)).entry_format == 3
    announce(cluster, "h2", formats=(3,))
    refused = admit(cluster.state, "noop", 1, writable=(1, 2))
    assert "no log entry format is read by every host" in refused.refusal


def test_a_new_cluster_writes_what_every_release_reads() -> None:
    assert admit(Cluster().state, "add-host", 1).entry_format == 1


def test_the_announcement_is_exempt_and_written_in_format_1() -> None:
    cluster = mixed_cluster()
    announce(cluster, "h2", commands=(("noop", 1),))  # knows nothing of announcements
    admission = admit(cluster.state, c.AnnounceVersions.TYPE, 1)
    assert admission.admitted and admission.entry_format == 1


# ---------------------------------------------------------------- announcements


def test_this_peer_announces_what_its_codec_decodes() -> None:
    mine = this_peer("h1")
    assert set(mine.commands) == {(t, v) for t, cls in c.COMMANDS_BY_TYPE.items()
                                  for v in cls.versions_read()}
    assert ("settings", 1) in mine.commands and ("settings", 2) in mine.commands
    assert (c.AnnounceVersions.TYPE, 1) in mine.commands and mine.entry_formats == (1, 2)


def test_a_peer_announces_until_the_state_says_what_it_understands() -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    first = announcement(cluster.state, "h1")
    assert first is not None and first.entry_formats == (1, 2)
    events = cluster.ok(first)
    assert kinds(events) == ["versions-announced"]
    understood = sum(len(cls.versions_read()) for cls in c.ALL_COMMANDS)
    assert f"understands {understood} command versions, reads log entry formats 1, 2" \
        in events[0].message
    assert announcement(cluster.state, "h1") is None
    assert cluster.ok(first) == []  # the same again changes nothing


def test_a_changed_announcement_names_what_was_gained_and_lost() -> None:
    cluster = mixed_cluster()
    events = announce(cluster, "h1", commands=(("host-load", 2), ("noop", 1)))
    message = only(events, "versions-announced")[0].message
    assert "now understands host-load v2" in message
    assert "no longer understands" in message and "frobnicate v1" in message


@pytest.mark.parametrize(("commands", "formats", "problem"), [
    ((), (1,), "at least one command"),
    ((("noop", 1),), (), "at least one command"),
    ((("noop", 0),), (1,), "'noop' v0"),
    ((("Not A Type", 1),), (1,), "'Not A Type' v1"),
    ((("noop", 1),), (0,), "entry format 0"),
])
def test_a_malformed_announcement_is_rejected(commands: tuple[tuple[str, int], ...],
                                              formats: tuple[int, ...], problem: str) -> None:
    cluster = Cluster()
    cluster.add_host("h1")
    events = cluster.run(c.AnnounceVersions(name="h1", commands=commands,
                                            entry_formats=formats))
    assert kinds(events) == ["rejected"] and problem in events[0].message
    assert cluster.state.versions == {}


def test_an_unknown_host_cannot_announce() -> None:
    events = announce(Cluster(), "ghost")
    assert kinds(events) == ["rejected"] and "unknown host" in events[0].message


def test_removing_a_host_forgets_its_announcement() -> None:
    """Added again, it may run another release: it counts as the baseline until its
    peer announces again."""
    cluster = mixed_cluster()
    cluster.ok(c.SetHostMaintenance(name="h2", on=True))
    cluster.ok(c.RemoveHost(name="h2"))
    assert "h2" not in cluster.state.versions
    cluster.ok(c.AddHost(name="h2"))
    assert understood_by(cluster.state, "h2").commands == BASELINE_COMMANDS
