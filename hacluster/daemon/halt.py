"""A peer that cannot go on applying the log: why, what it reads, its exit code.

The Raft node halts when apply, snapshot or restore raises (raft/engine.py), and the
peer then stops serving (daemon/peer.py). When the cause is something this peer cannot
read (fsm/codec.py `UnreadableLog`: a log entry or a snapshot written by a newer
release), it exits with EXIT_VERSION_SKEW, on which systemd does not restart it
(contrib/systemd/hacluster.service): running it again would only halt again at the same
entry. Upgrade it; it then applies the entry like the others did.
"""

from __future__ import annotations

from typing import Any

from hacluster.core.versions import this_peer
from hacluster.fsm.codec import SNAPSHOT_FORMATS, UnreadableEntry, UnreadableLog

EXIT_VERSION_SKEW = 76  # cannot read the cluster's log: upgrade this peer (not restarted)
EXIT_HALTED = 1  # any other halt (disk full, a bug in apply): restarted by systemd


def unreadable_cause(exc: BaseException | None) -> UnreadableLog | None:
    """The UnreadableLog behind a Raft halt (it is chained as cause), if that was it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UnreadableLog):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_code_for(exc: BaseException) -> int:
    return EXIT_VERSION_SKEW if unreadable_cause(exc) is not None else EXIT_HALTED


def understands(name: str) -> dict[str, Any]:
    mine = this_peer(name)
    return {"entry_formats": list(mine.entry_formats),
            "snapshot_formats": list(SNAPSHOT_FORMATS),
            "commands": {t: v for t, v in mine.commands}}


def halt_report(exc: BaseException, name: str) -> dict[str, Any]:
    """For `hactl status` and the log: why this peer stopped applying, and where."""
    cause = unreadable_cause(exc)
    remedy = ("upgrade this peer: it then reads what the others wrote and applies it as they "
              "did" if cause is not None else "see this peer's log; systemd restarts it")
    report: dict[str, Any] = {"reason": str(cause or exc), "exit_code": exit_code_for(exc),
                              "remedy": remedy, "understands": understands(name)}
    if isinstance(cause, UnreadableEntry):
        entry = cause.entry
        report.update(index=cause.index, problem=entry.problem,
                      entry_format=entry.entry_format, command_type=entry.command_type,
                      version=entry.version)
    return report
