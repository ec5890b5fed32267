"""The version gate: a command goes into the log only when every host can read it.

During a rolling upgrade the peers run different releases. A peer that meets an entry it
cannot decode stops applying (fsm/codec.py `UnreadableEntry`) instead of skipping it, so
a proposer must not write what some host cannot read. Every peer announces what it
understands (`AnnounceVersions`, recorded in `ClusterState.versions`); a host that never
announced runs release 0.1.0 and understands exactly the baseline below.

`admit` is the rule: a command (type, version) is admitted when every host that is not
removed (voters, members, witnesses) understands it, and the entry is written in the
newest log entry format that all of them read. The announcement itself is exempt (it
is how the gate learns) and is always written in format 1, which every release reads.
Pure: the proposer calls it with its replica's state (daemon/proposer.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from hacluster.fsm import commands as c
from hacluster.fsm.codec import ENTRY_FORMATS
from hacluster.fsm.model import ClusterState, HostVersions
from hacluster.fsm.states import HostState

# Release 0.1.0 (which never announces): these command types at version 1, entry format 1.
# Frozen on purpose: never derive it from ALL_COMMANDS, which grows.
BASELINE_COMMANDS: tuple[tuple[str, int], ...] = tuple(sorted((t, 1) for t in (
    "add-host", "remove-host", "host-ready", "bmc-health", "peer-stopped", "host-addresses",
    "host-role", "host-load", "host-maintenance", "host-bmc", "host-suspect", "host-alive",
    "fence-request", "fence-confirm", "fence-failed", "fence-admin-confirm", "fence-retry",
    "add-vm", "remove-vm", "vm-set", "vm-desired", "vm-migrate", "vm-report", "settings",
    "bmc-defaults", "cluster-maintenance", "noop")))
BASELINE_ENTRY_FORMATS: tuple[int, ...] = (1,)
ANNOUNCEMENT_FORMAT = 1  # the announcement must reach every release's decoder


@dataclass(frozen=True)
class Admission:
    """The gate's answer: the entry format to write, or why the command is refused."""

    entry_format: int = 0
    refusal: str = ""  # "" when admitted
    lacking: tuple[str, ...] = ()  # hosts that do not understand the command

    @property
    def admitted(self) -> bool:
        return not self.refusal


def this_peer(name: str) -> HostVersions:
    """What this build understands: the registered command classes, the entry formats
    its codec reads (embedders and tests may register more commands)."""
    commands = tuple(sorted((t, v) for t, cls in c.COMMANDS_BY_TYPE.items()
                            for v in cls.versions_read()))
    return HostVersions(name, commands, tuple(sorted(ENTRY_FORMATS)))


def understood_by(state: ClusterState, name: str) -> HostVersions:
    """What a host understands: its announcement, else the 0.1.0 baseline."""
    return state.versions.get(name) or HostVersions(name, BASELINE_COMMANDS,
                                                    BASELINE_ENTRY_FORMATS)


def announcement(state: ClusterState, name: str,
                 mine: HostVersions | None = None) -> c.AnnounceVersions | None:
    """The announcement this peer must propose, or None if the state already says it.
    `mine`: what it understands (default: this build, `this_peer`)."""
    mine = mine or this_peer(name)
    if state.versions.get(name) == mine:
        return None
    return c.AnnounceVersions(name=name, commands=mine.commands,
                              entry_formats=mine.entry_formats)


def _readers(state: ClusterState) -> list[HostVersions]:
    return [understood_by(state, n) for n in sorted(state.hosts)
            if state.hosts[n].state is not HostState.REMOVED]


def admit(state: ClusterState, command_type: str, version: int,
          writable: tuple[int, ...] = ENTRY_FORMATS) -> Admission:
    """May a command of this type and version be proposed, and in which entry format?"""
    if command_type == c.AnnounceVersions.TYPE:
        return Admission(ANNOUNCEMENT_FORMAT)
    readers = _readers(state)
    lacking = [r for r in readers if (command_type, version) not in r.commands]
    if lacking:
        names = tuple(r.name for r in lacking)
        shown = ", ".join(_what_it_knows(state, r, command_type) for r in lacking)
        return Admission(0, f"{command_type} v{version} is not understood by every host: "
                         f"{shown}; upgrade {'it' if len(names) == 1 else 'them'} first",
                         names)
    formats = set(writable)
    for reader in readers:
        formats &= set(reader.entry_formats)
    if not readers:  # nobody known yet (a new cluster): what every release reads
        formats &= set(BASELINE_ENTRY_FORMATS)
    if not formats:
        return Admission(0, "no log entry format is read by every host (this peer writes "
                         f"{', '.join(map(str, writable))})")
    return Admission(max(formats))


def _what_it_knows(state: ClusterState, reader: HostVersions, command_type: str) -> str:
    if reader.name not in state.versions:
        return f"{reader.name} (never announced: release 0.1.0, every command at v1 only)"
    known = [v for t, v in reader.commands if t == command_type]
    if not known:
        return f"{reader.name} (does not know {command_type})"
    return f"{reader.name} (knows {command_type} v{', v'.join(map(str, known))})"
