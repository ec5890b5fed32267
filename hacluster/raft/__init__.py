"""Raft adapter: the only package that imports pysyncobj.

Public API: RaftNode (implements ports.ReplicatedLog), RaftSettings, the result/status
types and the storage exceptions. See hacluster.raft.node for the design notes.
"""

from hacluster.raft.engine import AppliedEntry
from hacluster.raft.errors import (
    ApplyFailed,
    CorruptStorage,
    NodeHalted,
    RaftError,
    StorageError,
)
from hacluster.raft.node import PartnerStatus, RaftNode, RaftProposeResult, RaftStatus
from hacluster.raft.settings import RaftSettings, RaftSettingsError

__all__ = [
    "AppliedEntry",
    "ApplyFailed",
    "CorruptStorage",
    "NodeHalted",
    "PartnerStatus",
    "RaftError",
    "RaftNode",
    "RaftProposeResult",
    "RaftSettings",
    "RaftSettingsError",
    "RaftStatus",
    "StorageError",
]
