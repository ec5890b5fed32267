"""Exceptions raised by the Raft adapter."""

from __future__ import annotations


class RaftError(Exception):
    """Base class of every error raised by hacluster.raft."""


class CorruptStorage(RaftError):
    """A journal, meta or snapshot file failed its checks; the peer refuses to start.

    Restart with rebuild=True to move the bad files aside and catch up from the others.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


class StorageError(RaftError):
    """Writing Raft state to disk failed (disk full, I/O error): the node halts."""


class ApplyFailed(RaftError):
    """The state machine's apply/snapshot/restore callback raised: the node halts,
    because continuing would let this peer's state diverge from the others."""


class NodeHalted(RaftError):
    """The node stopped after a fatal error; the cause is chained."""
